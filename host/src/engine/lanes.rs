//! Execution lanes: the low-priority lane that long-running plugin
//! invocations move to after their first milliseconds of wasm, and the rule
//! that their network and database work still runs on the I/O runtime.
//!
//! Every invocation starts on the server's runtime (the I/O lane), where a
//! well-behaved plugin finishes in microseconds. One that keeps executing wasm
//! past [`LONG_RUN_AFTER`] is moved, mid-flight, to the
//! [`LongLane`]: a separate runtime whose threads the OS schedules only when
//! nothing else wants the CPU (`SCHED_IDLE` on Linux, lowest niceness
//! elsewhere). A spinning tenant then uses spare cores only, and cannot delay
//! webhooks, the database writer or other tenants' plugins.
//!
//! Work a long runner starts that outlives its own call — pooled HTTP
//! connections — is sent back to the I/O runtime ([`on_io`]), so it never
//! runs at the lane's priority while another tenant waits for it. (Database
//! reads always run on the blocking pool of the runtime that opened the
//! database: see `storage`.)

use std::cell::OnceCell;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::runtime::{Handle, Runtime};
use tokio_util::task::AbortOnDropHandle;

thread_local! {
    /// On a long-lane thread: the I/O runtime its network work belongs to.
    static IO_RUNTIME: OnceCell<Handle> = const { OnceCell::new() };
}

/// Wasm execution time after which an invocation counts as long-running and
/// moves to the low-priority [`LongLane`]: well above what a well-behaved
/// plugin needs per event, so only spinners and heavy computations move.
/// Time in host calls (HTTP, JustCall, KV) and time suspended do not count.
pub const LONG_RUN_AFTER: Duration = Duration::from_millis(1);

/// The lane went away with the invocation still on it (the server stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host is shutting down")]
pub struct LaneClosed;

/// Why [`LongLane::run`] gave up on a moved invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// The server stopped.
    #[error(transparent)]
    Closed(#[from] LaneClosed),
    /// It was still on the lane past its deadline (the lane's threads got no
    /// CPU to end it); it is cancelled there.
    #[error("still running at its deadline")]
    Overran,
}

/// How long past its deadline a moved invocation may take to report its own
/// end before the caller stops waiting for it.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(20);

/// The low-priority runtime long-running invocations finish on.
#[derive(Debug)]
pub struct LongLane {
    rt: Option<Runtime>,
    pacer: Arc<DefaultKeyedRateLimiter<Arc<str>>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    moved: AtomicU64,
    running: AtomicU64,
}

/// What the lane has done, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LaneStats {
    /// Invocations moved to the lane since start.
    pub moved: u64,
    /// Invocations on the lane now.
    pub running: u64,
}

/// Counts one invocation on the lane until dropped.
struct OnLane(Arc<Counters>);

impl Drop for OnLane {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LongLane {
    /// Starts the lane; `io` is where its network and blocking database work
    /// is sent. Each tenant's long runners together get at most `cpu_percent`
    /// of one core, paced in `slice`s of wasm execution.
    pub fn start(io: Handle, cpu_percent: u32, slice: Duration) -> std::io::Result<LongLane> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
        let period = slice * 100 / cpu_percent.clamp(1, 100);
        let quota = Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(4).expect("non-zero"));
        let pacer = Arc::new(RateLimiter::keyed(quota));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sb-long-run")
            .enable_all()
            .on_thread_start(move || {
                IO_RUNTIME.with(|cell| {
                    let _ = cell.set(io.clone());
                });
                lower_current_thread();
            })
            .build()?;
        Ok(LongLane {
            rt: Some(rt),
            pacer,
            counters: Arc::default(),
        })
    }

    /// Runs `fut` here until `moved` is set while it is pending, then moves
    /// it to the lane and runs it to the end there, waiting at most until
    /// `deadline` + [`DEADLINE_GRACE`]. `who` (tenant, plugin) is for the log.
    pub async fn run<F>(
        &self,
        fut: F,
        moved: &AtomicBool,
        deadline: tokio::time::Instant,
        who: (&str, &str),
    ) -> Result<F::Output, LaneError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut fut = Box::pin(fut);
        let first = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if moved.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        if let Some(out) = first {
            return Ok(out);
        }
        let rt = self.rt.as_ref().ok_or(LaneClosed)?;
        tracing::debug!(tenant = who.0, plugin = who.1, "long-running; moved to the long-run lane");
        self.counters.moved.fetch_add(1, Ordering::Relaxed);
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        let on_lane = OnLane(self.counters.clone());
        let task = join(AbortOnDropHandle::new(rt.spawn(async move {
            let _on_lane = on_lane;
            fut.await
        })));
        match tokio::time::timeout_at(deadline + DEADLINE_GRACE, task).await {
            Ok(out) => Ok(out?),
            Err(_) => Err(LaneError::Overran),
        }
    }

    /// Counts of moved and running invocations.
    pub fn stats(&self) -> LaneStats {
        LaneStats {
            moved: self.counters.moved.load(Ordering::Relaxed),
            running: self.counters.running.load(Ordering::Relaxed),
        }
    }

    /// A tenant's CPU budget, which its long runners await between slices.
    pub fn pacer(&self, tenant: &str) -> Pacer {
        Pacer(self.pacer.clone(), Arc::from(tenant))
    }
}

/// Paces one tenant's long runners to its share of a core.
#[derive(Debug, Clone)]
pub struct Pacer(Arc<DefaultKeyedRateLimiter<Arc<str>>>, Arc<str>);

impl Pacer {
    /// Returns once the budget allows another slice of wasm.
    pub fn next_slice(&self) -> impl Future<Output = ()> + Send + 'static {
        let (pacer, tenant) = (self.0.clone(), self.1.clone());
        async move {
            while let Err(not_until) = pacer.check_key(&tenant) {
                tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now())).await;
            }
        }
    }
}

impl Drop for LongLane {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime; every invocation on it is bounded by its deadline anyway.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// On a long-lane thread, the I/O runtime; elsewhere `None`.
fn lane_io() -> Option<Handle> {
    IO_RUNTIME.with(|cell| cell.get().cloned())
}

/// Runs `fut` on the I/O runtime: in place there, as a task from a long-lane
/// thread (aborted if the caller gives up on it).
pub async fn on_io<F>(fut: F) -> Result<F::Output, LaneClosed>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match lane_io() {
        None => Ok(fut.await),
        Some(io) => join(AbortOnDropHandle::new(io.spawn(fut))).await,
    }
}

async fn join<T>(task: AbortOnDropHandle<T>) -> Result<T, LaneClosed> {
    match task.await {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(LaneClosed),
    }
}

fn lower_current_thread() {
    // SCHED_IDLE rather than the lowest niceness: a nice-19 thread waking from
    // its pacing sleep still preempts busy normal threads (measured: the
    // neighbour ratio went from 1.0 to 2.7; SCHED_BATCH at nice 19: 1.3). An
    // idle-class thread can starve while the machine is busy; `LongLane::run`
    // bounds the wait at the deadline.
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    #[cfg(target_os = "linux")]
    let lowered = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle),
    );
    #[cfg(not(target_os = "linux"))]
    let lowered = thread_priority::set_current_thread_priority(ThreadPriority::Min);
    if let Err(e) = lowered {
        tracing::warn!(error = ?e, "cannot lower the priority of a long-run thread; long-running plugins compete with the rest at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy (Linux), from field 41 of its
    /// stat line; SCHED_IDLE is 5.
    fn policy() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(38)?.parse().ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flagged_future_finishes_on_the_lane_and_its_io_runs_on_the_io_runtime() {
        let lane = LongLane::start(Handle::current(), 100, Duration::from_millis(1)).unwrap();
        let moved = AtomicBool::new(false);
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        // Not flagged: it finishes where it started.
        let here = lane
            .run(async { std::thread::current().name().map(str::to_string) }, &moved, far, ("t", "p"))
            .await
            .unwrap();
        assert_ne!(here.as_deref(), Some("sb-long-run"));

        let moved = std::sync::Arc::new(AtomicBool::new(false));
        let flag = moved.clone();
        let fut = async move {
            flag.store(true, Ordering::Release);
            tokio::task::yield_now().await;
            let on_lane = std::thread::current().name().map(str::to_string);
            let lane_policy = policy();
            let io = on_io(async { std::thread::current().name().map(str::to_string) }).await.unwrap();
            (on_lane, lane_policy, io)
        };
        let (on_lane, lane_policy, io) = lane.run(fut, &moved, far, ("t", "p")).await.unwrap();
        assert_eq!(on_lane.as_deref(), Some("sb-long-run"));
        if cfg!(target_os = "linux") {
            assert_eq!(lane_policy, Some(5), "SCHED_IDLE");
        }
        assert_ne!(io.as_deref(), Some("sb-long-run"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pacer_holds_long_runners_to_their_share_of_a_core() {
        let slice = Duration::from_micros(250);
        let lane = LongLane::start(Handle::current(), 10, slice).unwrap();
        let pacer = lane.pacer("a");
        // Another tenant's budget is its own.
        let other = lane.pacer("b");
        for _ in 0..100 {
            other.next_slice().await;
        }
        let window = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let (mut slices, mut busy) = (0u32, Duration::ZERO);
        while started.elapsed() < window {
            pacer.next_slice().await;
            let t = std::time::Instant::now();
            while t.elapsed() < slice {
                std::hint::spin_loop();
            }
            busy += t.elapsed();
            slices += 1;
        }
        // 10 % of 500 ms is 50 ms: 200 slices of 250 µs, plus a burst of 4
        // (unpaced, the loop would run ~2,000).
        assert!((150..=205).contains(&slices), "{slices} slices");
        assert!(busy < window / 8, "busy {busy:?} of {window:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_moved_invocation_that_cannot_end_is_given_up_on_at_its_deadline() {
        let lane = LongLane::start(Handle::current(), 100, Duration::from_millis(1)).unwrap();
        let moved = std::sync::Arc::new(AtomicBool::new(true));
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(100);
        let fut = async {
            tokio::task::yield_now().await;
            // Holds its lane thread, as a starved thread would.
            std::thread::sleep(Duration::from_millis(1500));
        };
        assert_eq!(lane.run(fut, &moved, deadline, ("t", "p")).await, Err(LaneError::Overran));
        assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    }
}
