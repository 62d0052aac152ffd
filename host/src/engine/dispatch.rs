//! The dispatcher: runs each stored delivery on a fresh plugin instance with
//! its deadline and memory cap, records the outcome, schedules retries,
//! holds deliveries of paused plugins, and drains on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wasmtime::{Store, UpdateDeadline};

use crate::domain::Event;
use crate::engine::capabilities::{Invocation, PluginCtx, to_wit};
use crate::engine::effects::Live;
use crate::engine::effects::journal::Journal;
use crate::engine::lanes::{LONG_RUN_AFTER, LaneError, LongLane};
use crate::engine::plugins::{LoadedPlugin, Registry};
use crate::engine::scheduler::{Budget, FairQueue};
use crate::engine::tenant::Tenant;
use crate::engine::trace::Tracer;
use crate::storage::{Db, DeliveryOutcome, Finished};

/// One delivery to run: a stored event for one plugin.
#[derive(Debug, Clone)]
pub struct Job {
    /// The delivery's id in the database.
    pub delivery_id: i64,
    /// Plugin name.
    pub plugin: String,
    /// The event.
    pub event: Arc<Event>,
    /// The trace of the webhook that brought it, if traces are exported.
    pub parent: crate::telemetry::Parent,
}

/// Why an invocation failed. The `Display` form is what gets recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The plugin returned its `plugin-error`.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// It ran past its deadline.
    #[error("deadline exceeded ({0} ms)")]
    Deadline(u128),
    /// It tried to grow memory past its cap.
    #[error("memory limit ({0} MiB): {1}")]
    Memory(usize, String),
    /// It went over a per-event quota.
    #[error("{0}")]
    Limit(String),
    /// It overflowed the wasm stack.
    #[error("stack overflow (wasm stack limit {0} KiB)")]
    StackOverflow(usize),
    /// It trapped (panic, unreachable, …).
    #[error("trap: {0}")]
    Trap(String),
    /// The event is larger than the plugin accepts.
    #[error("event input too large ({0} bytes, limit {1})")]
    InputTooLarge(usize, usize),
    /// It could not be instantiated.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The host stopped while it ran.
    #[error("{0}")]
    Shutdown(crate::engine::lanes::LaneClosed),
    /// The plugin is no longer loaded for the tenant.
    #[error("plugin `{0}` is not loaded")]
    NotLoaded(String),
}

impl InvokeError {
    /// A trap or a failed instantiation says little by itself: the end of
    /// what the guest wrote to stderr (a traceback, a panic message) is
    /// added to it.
    fn explained_by(self, stderr: Option<String>) -> InvokeError {
        match (self, stderr) {
            (InvokeError::Trap(m), Some(err)) => InvokeError::Trap(format!("{m}; stderr:\n{err}")),
            (InvokeError::Instantiate(m), Some(err)) => InvokeError::Instantiate(format!("{m}; stderr:\n{err}")),
            (e, _) => e,
        }
    }
}

#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// One invocation's wasm execution time, kept by the store's call hook and
/// the epoch callback: it runs from entering wasm (a call into it, a return
/// from a host function, a resume after a yield) to leaving it.
#[derive(Debug)]
struct WasmClock {
    base: Instant,
    /// Nanoseconds from `base` when wasm was last entered; `OUT` when not in wasm.
    since: AtomicU64,
    total: AtomicU64,
}

const OUT: u64 = u64::MAX;

impl WasmClock {
    fn new() -> WasmClock {
        WasmClock {
            base: Instant::now(),
            since: AtomicU64::new(OUT),
            total: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn enter(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
    }

    /// Stops the clock; returns the total so far.
    fn leave(&self) -> Duration {
        let since = self.since.swap(OUT, Ordering::Relaxed);
        let mut total = self.total.load(Ordering::Relaxed);
        if since != OUT {
            total += self.now().saturating_sub(since);
            self.total.store(total, Ordering::Relaxed);
        }
        Duration::from_nanos(total)
    }
}

/// Shared state every delivery needs.
#[derive(Debug, Clone)]
pub struct DispatchCtx {
    /// Plugin sets.
    pub registry: Arc<Registry>,
    /// Tenants by id.
    pub tenants: Arc<HashMap<String, Arc<Tenant>>>,
    /// Database.
    pub db: Db,
    /// Outbound HTTP client for plugins.
    pub http: reqwest::Client,
    /// Where long-running invocations finish.
    pub lane: Arc<LongLane>,
    /// Which plugins are paused for which tenants.
    pub paused: Arc<PauseBook>,
    /// Where delivery outcomes and times are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where attempt ends are broadcast to watchers.
    pub tail: Arc<crate::engine::tail::Tail>,
    /// Where the operator is told of exhausted deliveries and paused plugins.
    pub notices: crate::engine::notify::Notices,
}

/// Runs one plugin on one event in a fresh store: the core of dispatch,
/// shared by the server and the benchmarks. With a `lane`, an invocation that
/// runs wasm past [`LONG_RUN_AFTER`] finishes there; without, it stays put.
pub async fn invoke(plugin: &LoadedPlugin, inv: Invocation, event: &Event, lane: Option<&LongLane>) -> Result<(), InvokeError> {
    let engine = plugin.pre.engine();
    let timeout = plugin.manifest.limits.timeout;
    let stack = plugin.manifest.limits.wasm_stack_bytes;
    let size = event_size(event);
    if size > plugin.manifest.limits.event_bytes {
        return Err(InvokeError::InputTooLarge(size, plugin.manifest.limits.event_bytes));
    }
    let who = (inv.tenant.clone(), inv.plugin.clone());
    let trace = inv.trace.clone();
    let pacer = lane.map(|l| l.pacer(&inv.tenant.config.id));
    let mut store = Store::new(engine, PluginCtx::new(inv));
    store.limiter(|ctx| &mut ctx.limiter);
    // Count wasm time only: host calls and suspensions stop the clock.
    let clock = Arc::new(WasmClock::new());
    let (hook_clock, total_clock) = (clock.clone(), clock.clone());
    store.call_hook(move |_, hook| {
        if hook.entering_host() {
            hook_clock.leave();
        } else {
            hook_clock.enter();
        }
        Ok(())
    });
    // Check the deadline every epoch tick, yielding to other tasks meanwhile
    // so a spinning plugin cannot hold a thread. Past LONG_RUN_AFTER of wasm,
    // flag it so the yield hands it to the long lane; once there, each
    // further slice waits for the tenant's share of the lane.
    let long = Arc::new(AtomicBool::new(false));
    let flag = long.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| {
        if Instant::now() >= ctx.data().deadline {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        let ran = clock.leave();
        let was_long = flag.load(Ordering::Acquire);
        if !was_long && ran >= LONG_RUN_AFTER {
            flag.store(true, Ordering::Release);
        }
        let pace = pacer.clone().filter(|_| was_long);
        let clock = clock.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                if let Some(p) = pace {
                    p.next_slice().await;
                }
                clock.enter();
            }),
        ))
    });
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let (pre, input) = (plugin.pre.clone(), to_wit(event));
    let running = plugin.ticker.running();
    let call = async move {
        let _running = running;
        let run = async {
            let result = async {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| classify(&e, &store, timeout, stack))?;
                match instance.call_handle_event(&mut store, &input).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(InvokeError::Plugin(
                        crate::domain::cap(&e.message, crate::domain::MAX_RECORD).into_owned(),
                    )),
                    Err(e) => Err(classify(&e, &store, timeout, stack)),
                }
            }
            .await;
            let stderr = store.data_mut().drain_output();
            result.map_err(|e| e.explained_by(stderr))
        };
        // Elapsed: a host call (HTTP, JustCall) was still waiting at the deadline.
        tokio::time::timeout_at(deadline, run)
            .await
            .unwrap_or(Err(InvokeError::Deadline(timeout.as_millis())))
    };
    let result = match lane {
        Some(lane) => lane
            .run(call, &long, deadline, (&who.0.config.id, &who.1))
            .await
            .unwrap_or_else(|e| match e {
                LaneError::Overran => Err(InvokeError::Deadline(timeout.as_millis())),
                LaneError::Closed(e) => Err(InvokeError::Shutdown(e)),
            }),
        None => call.await,
    };
    trace.wasm_time(total_clock.leave());
    result
}

/// The bytes of text an event carries into the plugin.
fn event_size(e: &Event) -> usize {
    let strings = [
        &e.tenant,
        &e.event_id,
        &e.occurred_at,
        &e.message_id,
        &e.from,
        &e.to,
        &e.body,
        &e.justcall_number,
    ];
    strings.iter().map(|s| s.len()).sum::<usize>()
        + e.media_urls.iter().map(String::len).sum::<usize>()
        + e.contact_name.as_ref().map_or(0, String::len)
        + e.agent_id.as_ref().map_or(0, String::len)
}

fn classify(e: &wasmtime::Error, store: &Store<PluginCtx>, timeout: std::time::Duration, stack: usize) -> InvokeError {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return InvokeError::Deadline(timeout.as_millis());
    }
    if let Some(breach) = e.downcast_ref::<crate::engine::capabilities::LimitBreach>() {
        return InvokeError::Limit(breach.to_string());
    }
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::StackOverflow) {
        return InvokeError::StackOverflow(stack >> 10);
    }
    let message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    if store.data().limiter.memory_denied {
        return InvokeError::Memory(store.data().limiter_cap_mib(), message);
    }
    if e.downcast_ref::<wasmtime::Trap>().is_some() {
        InvokeError::Trap(message)
    } else {
        InvokeError::Instantiate(message)
    }
}

/// Which (tenant, plugin) pairs are paused: the dispatcher's copy of the
/// database's pause state, checked before each run.
#[derive(Debug, Default)]
pub struct PauseBook(std::sync::RwLock<HashSet<(String, String)>>);

impl PauseBook {
    /// Whether the plugin is paused for the tenant.
    pub fn is_paused(&self, tenant: &str, plugin: &str) -> bool {
        let set = crate::sync::read(&self.0);
        !set.is_empty() && set.contains(&(tenant.to_string(), plugin.to_string()))
    }

    fn set(&self, tenant: &str, plugin: &str, paused: bool) {
        let mut set = crate::sync::write(&self.0);
        let key = (tenant.to_string(), plugin.to_string());
        if paused {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

enum Work {
    One(Job),
    InOrder(Vec<Job>),
}

/// Accepts jobs and runs them fairly (see [`crate::engine::scheduler`]:
/// per-tenant queues and caps, round-robin, the memory budget); applies the
/// retry policy's verdicts (schedules retries, pauses plugins).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    queue: Arc<FairQueue<Work>>,
    ctx: DispatchCtx,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::One(j) => write!(f, "One({})", j.delivery_id),
            Work::InOrder(j) => write!(f, "InOrder({} jobs)", j.len()),
        }
    }
}

/// Waits for the dispatcher to finish its in-flight deliveries.
#[derive(Debug)]
pub struct DispatcherHandle {
    tracker: TaskTracker,
    pump: tokio::task::JoinHandle<()>,
}

impl DispatcherHandle {
    /// Stops taking new jobs and waits for running deliveries to end (each is
    /// bounded by its deadline). Jobs not yet started, and scheduled retries,
    /// stay pending in the database and run at the next start.
    pub async fn drain(self) {
        self.pump.abort();
        let _ = self.pump.await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Dispatcher {
    /// Starts the dispatcher under `budget`. `paused` is the database's pause
    /// state at start.
    pub fn start(ctx: DispatchCtx, budget: Budget, paused: Vec<(String, String)>) -> (Dispatcher, DispatcherHandle) {
        for (t, p) in &paused {
            ctx.paused.set(t, p, true);
        }
        let queue = FairQueue::new(budget);
        let tracker = TaskTracker::new();
        let spawner = tracker.clone();
        let dispatcher = Dispatcher { queue, ctx };
        let me = dispatcher.clone();
        let pump = tokio::spawn(async move {
            loop {
                let (work, admission) = me.queue.next().await;
                let me = me.clone();
                spawner.spawn(async move {
                    match work {
                        Work::One(job) => me.run(job).await,
                        Work::InOrder(jobs) => {
                            for job in jobs {
                                me.run(job).await;
                            }
                        }
                    }
                    drop(admission);
                });
            }
        });
        (dispatcher, DispatcherHandle { tracker, pump })
    }

    /// The memory limit of the plugin a job runs: what it reserves of the
    /// host's budget while it runs.
    fn memory_of(&self, job: &Job) -> usize {
        self.ctx
            .registry
            .get(&job.event.tenant, &job.plugin)
            .map_or(0, |p| p.manifest.limits.memory_bytes)
    }

    /// Queues a job in its tenant's queue.
    pub fn submit(&self, job: Job) {
        let memory = self.memory_of(&job);
        let tenant = job.event.tenant.clone();
        self.queue.push(&tenant, Work::One(job), memory);
    }

    /// Queues a job to run at `due_ms` (unix ms), or now if that has passed.
    pub fn submit_at(&self, job: Job, due_ms: Option<i64>) {
        let wait = due_ms.map_or(0, |d| d - crate::storage::now_ms());
        if wait <= 0 {
            self.submit(job);
        } else {
            self.retry_later(job, Duration::from_millis(wait as u64));
        }
    }

    fn retry_later(&self, job: Job, delay: Duration) {
        // The timer holds only a weak reference: after shutdown the queue is
        // gone (or nothing takes from it), and the retry stays pending in the
        // database for the next start.
        let queue = Arc::downgrade(&self.queue);
        let memory = self.memory_of(&job);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                let tenant = job.event.tenant.clone();
                queue.push(&tenant, Work::One(job), memory);
            }
        });
    }

    /// What is queued and running now.
    pub fn load(&self) -> crate::engine::scheduler::Load {
        self.queue.load()
    }

    /// What the long-run lane has done.
    pub fn lane_stats(&self) -> crate::engine::lanes::LaneStats {
        self.ctx.lane.stats()
    }

    /// Whether a plugin is paused for a tenant.
    pub fn is_paused(&self, tenant: &str, plugin: &str) -> bool {
        self.ctx.paused.is_paused(tenant, plugin)
    }

    /// Unpauses a plugin for a tenant and runs its held deliveries one after
    /// another in arrival order. `None` if it was not paused.
    pub async fn resume(&self, tenant: &str, plugin: &str) -> Result<Option<usize>, crate::storage::DbError> {
        // Unpause here first: a delivery held in the database meanwhile is
        // still among those the database releases below.
        let was = self.ctx.paused.is_paused(tenant, plugin);
        self.ctx.paused.set(tenant, plugin, false);
        let released = match self.ctx.db.resume_plugin(tenant, plugin).await {
            Ok(r) => r,
            Err(e) => {
                self.ctx.paused.set(tenant, plugin, was);
                return Err(e);
            }
        };
        let Some(held) = released else { return Ok(None) };
        let n = held.len();
        tracing::info!(tenant, plugin, held = n, "plugin resumed; running its held deliveries in order");
        let jobs = held
            .into_iter()
            .map(|p| Job {
                delivery_id: p.id,
                plugin: p.plugin,
                event: Arc::new(p.event),
                parent: Default::default(),
            })
            .collect();
        let jobs: Vec<Job> = jobs;
        if let Some(first) = jobs.first() {
            let memory = self.memory_of(first);
            self.queue.push(tenant, Work::InOrder(jobs), memory);
        }
        Ok(Some(n))
    }

    async fn run(&self, job: Job) {
        let ctx = &self.ctx;
        if ctx.paused.is_paused(&job.event.tenant, &job.plugin) {
            match ctx.db.hold_delivery(job.delivery_id).await {
                Ok(()) => {
                    tracing::info!(tenant = %job.event.tenant, plugin = %job.plugin, delivery = job.delivery_id, "plugin paused; delivery held")
                }
                Err(e) => tracing::error!(delivery = job.delivery_id, error = %e, "cannot hold delivery; it stays pending"),
            }
            return;
        }
        match run_job(ctx, &job).await {
            Some(Finished::Retry(delay)) => self.retry_later(job, delay),
            Some(Finished::Paused) => {
                ctx.paused.set(&job.event.tenant, &job.plugin, true);
                let about = serde_json::json!({ "tenant": job.event.tenant, "plugin": job.plugin, "delivery_id": job.delivery_id, "event_id": job.event.event_id });
                ctx.notices.file("delivery.exhausted", about.clone());
                ctx.notices.file("plugin.paused", about);
                tracing::warn!(
                    tenant = %job.event.tenant,
                    plugin = %job.plugin,
                    delivery = job.delivery_id,
                    "delivery failed its last retry; plugin paused for the tenant, new events are held until it is resumed"
                );
            }
            Some(Finished::Done) | None => {}
        }
    }
}

async fn run_job(ctx: &DispatchCtx, job: &Job) -> Option<Finished> {
    let tenant_id = job.event.tenant.as_str();
    let started = Instant::now();
    let started_ms = crate::storage::now_ms();
    let trace = Arc::new(Tracer::new());
    let mut plugin_hash = None;
    let result = match (ctx.tenants.get(tenant_id), ctx.registry.get(tenant_id, &job.plugin)) {
        (Some(tenant), Some(plugin)) => {
            plugin_hash = Some(plugin.hash.clone());
            // Not awaited: the commit is off the critical path (see the docs).
            ctx.db.start_delivery(job.delivery_id, plugin.hash.clone());
            let journal = Journal::new(ctx.db.clone(), job.delivery_id);
            // Every line logged while the plugin runs (its own log lines, host
            // calls) carries these as fields; `--log-format json` writes them.
            let span = tracing::info_span!(
                "delivery",
                tenant = tenant_id,
                plugin = %job.plugin,
                event = %job.event.event_id,
                delivery = job.delivery_id
            );
            job.parent.adopt(&span);
            trace.within(&span);
            let effects = Live::new(tenant.clone(), ctx.http.clone(), plugin.manifest.clone(), Some(journal))
                .with_traceparent(crate::telemetry::traceparent(&span));
            let inv = Invocation {
                tenant: tenant.clone(),
                plugin: Arc::from(plugin.name.as_str()),
                manifest: plugin.manifest.clone(),
                db: ctx.db.clone(),
                event_id: Arc::from(job.event.event_id.as_str()),
                effects: Arc::new(effects),
                trace: trace.clone(),
            };
            invoke(&plugin, inv, &job.event, Some(&ctx.lane)).instrument(span).await
        }
        _ => Err(InvokeError::NotLoaded(job.plugin.clone())),
    };
    let micros = started.elapsed().as_micros() as i64;
    let error = result
        .as_ref()
        .err()
        .map(|e| crate::domain::cap(&e.to_string(), crate::domain::MAX_RECORD).into_owned());
    if plugin_hash.is_some() {
        let wasm = Duration::from_micros(trace.wasm_us());
        ctx.metrics.delivery(
            tenant_id,
            &job.plugin,
            result.is_ok(),
            started.elapsed().as_secs_f64(),
            wasm.as_secs_f64(),
        );
        let ended_ms = crate::storage::now_ms();
        let t = trace.record(&ctx.db, job.delivery_id, plugin_hash, (started_ms, ended_ms), error.clone());
        if ctx.tail.watched() {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let ended = crate::engine::tail::TailEvent::ended(&job.event, &job.plugin, job.delivery_id, error.clone(), ms, t);
            ctx.tail.publish(ended);
        }
    }
    let outcome = match &result {
        Ok(()) => {
            tracing::info!(tenant = tenant_id, plugin = %job.plugin, event = %job.event.event_id, delivery = job.delivery_id, us = micros, "delivery done");
            DeliveryOutcome::Done
        }
        Err(e) => {
            tracing::warn!(tenant = tenant_id, plugin = %job.plugin, event = %job.event.event_id, delivery = job.delivery_id, us = micros, error = %crate::domain::escape_controls(&e.to_string()), "delivery failed");
            DeliveryOutcome::Failed(error.unwrap_or_default())
        }
    };
    match ctx.db.finish_delivery(job.delivery_id, outcome, micros).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(delivery = job.delivery_id, error = %e, "cannot record delivery outcome; it runs again at next start");
            None
        }
    }
}
