//! One invocation: a plugin on one event in a fresh store, with its
//! deadline, memory cap and wasm clock, moved to the long-run lane when it
//! runs long; and how its failure is classified ([`InvokeError`]). The
//! dispatcher, shadow runs, `plugin test` and the benchmarks all run plugins
//! through [`invoke`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::domain::Event;
use crate::engine::capabilities::{Invocation, PluginCtx};
use crate::engine::lanes::{LONG_RUN_AFTER, LaneError, LongLane};
use crate::engine::plugins::LoadedPlugin;

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
    let (pre, input) = (plugin.pre.clone(), event.clone());
    let running = plugin.ticker.running();
    let call = async move {
        let _running = running;
        let run = async {
            let result = async {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| classify(&e, &store, timeout, stack))?;
                match instance.handle_event(&mut store, &input).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(message)) => Err(InvokeError::Plugin(
                        crate::domain::cap(&message, crate::domain::MAX_RECORD).into_owned(),
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
