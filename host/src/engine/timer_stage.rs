//! A delivery's timer changes, staged: what each key it touched ends up as,
//! committed by the dispatcher in the transaction that marks the delivery
//! done (and dropped if it fails), so a retried delivery never schedules
//! twice. Also [`Wake`], how a commit tells the timekeeper that the soonest
//! timer may have changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::domain::Clock;
use crate::storage::{DbError, TimerChange};
use crate::sync::lock;

/// Tells the timekeeper to look at the soonest timer again.
pub type Wake = Arc<tokio::sync::Notify>;

/// One key as this delivery leaves it.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    /// A timer with the key was pending when the delivery first touched it.
    pub(crate) existed: bool,
    /// Scheduled (due ms, payload, call seq) or cancelled (`None`).
    pub(crate) state: Option<(i64, Vec<u8>, u32)>,
}

/// A delivery's timer changes, keyed, in the order they end up.
#[derive(Debug)]
pub struct TimerStage {
    clock: Clock,
    keys: std::sync::Mutex<BTreeMap<String, Staged>>,
    seq: AtomicU32,
    /// The plugin's pending timers when the delivery first scheduled one.
    stored: tokio::sync::OnceCell<u64>,
}

impl TimerStage {
    /// An empty stage on `clock`.
    pub fn new(clock: Clock) -> Arc<TimerStage> {
        Arc::new(TimerStage {
            clock,
            keys: Default::default(),
            seq: AtomicU32::new(0),
            stored: Default::default(),
        })
    }

    /// The changes to commit with the delivery's success.
    pub fn take(&self) -> Vec<TimerChange> {
        std::mem::take(&mut *lock(&self.keys))
            .into_iter()
            .map(|(key, s)| match s.state {
                Some((due_ms, payload, seq)) => TimerChange::Schedule { key, due_ms, payload, seq },
                None => TimerChange::Cancel { key },
            })
            .collect()
    }

    /// The clock due times are read on.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The key as this delivery left it, if it touched it.
    pub(crate) fn get(&self, key: &str) -> Option<Staged> {
        lock(&self.keys).get(key).cloned()
    }

    /// Records what this delivery does to `key`.
    pub(crate) fn put(&self, key: String, staged: Staged) {
        lock(&self.keys).insert(key, staged);
    }

    /// The next host call's sequence number.
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The plugin's stored pending timers, counted once per delivery.
    pub(crate) async fn stored<F, Fut>(&self, count: F) -> Result<u64, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u64, DbError>>,
    {
        self.stored.get_or_try_init(count).await.copied()
    }

    /// Pending timers this delivery adds (negative: removes).
    pub(crate) fn net_added(&self) -> i64 {
        lock(&self.keys)
            .values()
            .map(|s| i64::from(s.state.is_some()) - i64::from(s.existed))
            .sum()
    }
}
