//! The dispatcher: runs each stored delivery on a fresh plugin instance with
//! its deadline and memory cap, records the outcome, schedules retries,
//! holds deliveries of paused plugins, and drains on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::domain::Event;
use crate::engine::capabilities::Invocation;
use crate::engine::effects::journal::Journal;
use crate::engine::effects::{Acts, Live, Witness};
use crate::engine::lanes::LongLane;
use crate::engine::plugins::Registry;
use crate::engine::scheduler::{Budget, FairQueue};
use crate::engine::shadow::ShadowRun;
use crate::engine::tenant::Tenant;
use crate::engine::trace::Tracer;
use crate::engine::trials::{Trial, TrialKind};
use crate::storage::{Db, DeliveryOutcome, Finished};

pub use crate::engine::invoke::{InvokeError, invoke};

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
    /// Versions on trial (canaries, shadows).
    pub trials: Arc<crate::engine::trials::Trials>,
    /// Where shadow runs wait.
    pub shadows: Arc<crate::engine::shadow::ShadowQueue>,
    /// Plugins' secrets.
    pub vault: Arc<crate::engine::secrets::Vault>,
    /// Timer time.
    pub clock: crate::domain::Clock,
    /// Tells the timekeeper a delivery changed timers.
    pub wake: crate::engine::timer_stage::Wake,
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
    let secrets = ctx.vault.for_plugin(tenant_id, &job.plugin);
    trace.hide(secrets.clone());
    let mut plugin_hash = None;
    let timers = crate::engine::timer_stage::TimerStage::new(ctx.clock);
    // A canary takes its share of contacts; a shadow needs what this run does.
    let trial = ctx.trials.get(tenant_id, &job.plugin);
    let (serving, arm) = match (ctx.registry.get(tenant_id, &job.plugin), &trial) {
        (Some(s), Some(t)) => {
            let (p, arm) = t.pick(s, &job.event);
            (Some(p), arm)
        }
        (s, _) => (s, None),
    };
    let shadow = trial
        .as_ref()
        .filter(|t| t.kind == TrialKind::Shadow)
        .map(|t| (t.clone(), Acts::hiding(secrets.clone())));
    let result = match (ctx.tenants.get(tenant_id), serving) {
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
            let live = Live::new(tenant.clone(), ctx.http.clone(), plugin.manifest.clone(), Some(journal))
                .with_traceparent(crate::telemetry::traceparent(&span));
            let effects: Arc<dyn crate::engine::effects::Effects> = match &shadow {
                Some((_, acts)) => Arc::new(Witness::new(live, acts.clone())),
                None => Arc::new(live),
            };
            let inv = Invocation {
                tenant: tenant.clone(),
                plugin: Arc::from(plugin.name.as_str()),
                manifest: plugin.manifest.clone(),
                db: ctx.db.clone(),
                event_id: Arc::from(job.event.event_id.as_str()),
                effects,
                trace: trace.clone(),
                kv: Default::default(),
                secrets: secrets.clone(),
                timers: timers.clone(),
            };
            invoke(&plugin, inv, &job.event, Some(&ctx.lane)).instrument(span).await
        }
        _ => Err(InvokeError::NotLoaded(job.plugin.clone())),
    };
    let micros = started.elapsed().as_micros() as i64;
    let error = result
        .as_ref()
        .err()
        .map(|e| crate::domain::cap(&crate::engine::secrets::scrub(&secrets, &e.to_string()), crate::domain::MAX_RECORD).into_owned());
    if let (Some(trial), Some(arm)) = (&trial, arm)
        && let Some(why) = trial.observe(arm, result.is_ok(), micros as u64)
    {
        roll_back_canary(ctx, tenant_id, &job.plugin, trial, why);
    }
    if let (Some((trial, acts)), Some(tenant)) = (shadow, ctx.tenants.get(tenant_id)) {
        ctx.shadows.submit(ShadowRun {
            trial,
            tenant: tenant.clone(),
            event: job.event.clone(),
            serving: acts.footprint(error.clone().unwrap_or_else(|| "done".into())),
            db: ctx.db.clone(),
            http: ctx.http.clone(),
            lane: ctx.lane.clone(),
            notices: ctx.notices.clone(),
            secrets: secrets.clone(),
        });
    }
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
        Err(_) => {
            // `error`: the failure as recorded, the plugin's secrets scrubbed.
            let shown = crate::domain::escape_controls(error.as_deref().unwrap_or_default()).into_owned();
            tracing::warn!(tenant = tenant_id, plugin = %job.plugin, event = %job.event.event_id, delivery = job.delivery_id, us = micros, error = %shown, "delivery failed");
            DeliveryOutcome::Failed(error.unwrap_or_default())
        }
    };
    // A failed attempt's timer changes are dropped with it.
    let changes = if result.is_ok() { timers.take() } else { Vec::new() };
    let changed = !changes.is_empty();
    match ctx.db.finish_delivery_with(job.delivery_id, outcome, micros, changes).await {
        Ok(f) => {
            if changed {
                ctx.wake.notify_one();
            }
            Some(f)
        }
        Err(e) => {
            tracing::error!(delivery = job.delivery_id, error = %e, "cannot record delivery outcome; it runs again at next start");
            None
        }
    }
}

/// Ends a canary past its margins: the serving version takes all traffic
/// again (retries included), the operator is told, and the audit log says why.
fn roll_back_canary(ctx: &DispatchCtx, tenant: &str, plugin: &str, trial: &Trial, why: String) {
    if ctx.trials.end(tenant, plugin, &format!("rolled back: {why}")).is_none() {
        return; // Another delivery's verdict got there first.
    }
    let version = trial.plugin.version.clone();
    tracing::warn!(%tenant, %plugin, %version, reason = %why, "canary rolled back");
    ctx.notices.file(
        "canary.rolled_back",
        serde_json::json!({ "tenant": tenant, "plugin": plugin, "version": version, "serving": trial.against, "reason": why }),
    );
    let (db, tenant, target) = (ctx.db.clone(), tenant.to_string(), format!("{plugin}@{version}"));
    tokio::spawn(async move {
        if let Err(e) = db.audit(&tenant, "switchboard", "canary.rollback", &target, &why).await {
            tracing::error!(%tenant, error = %e, "cannot write the audit log");
        }
    });
}
