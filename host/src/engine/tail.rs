//! The live tail: the end of every delivery attempt (outcome, reason, time,
//! the plugin's log lines and host calls) broadcast to whoever watches
//! (`GET /admin/tenants/{t}/tail`, `switchboard admin tail`). Publishing never
//! waits: with no watcher it does nothing, and a watcher that falls more than
//! [`BACKLOG`] attempts behind is told how many it missed and dropped.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::engine::trace::{TracedCall, TracedLog};

/// Attempts a watcher may fall behind before it is dropped.
pub const BACKLOG: usize = 1024;

/// One attempt's end, as watchers see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TailEvent {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The delivery.
    pub delivery_id: i64,
    /// The event.
    pub event_id: String,
    /// `done` or `failed`.
    pub outcome: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// When it ended, RFC 3339.
    pub at: String,
    /// Wall time, ms.
    pub ms: f64,
    /// The plugin's log lines.
    pub logs: Vec<TracedLog>,
    /// Its host calls.
    pub calls: Vec<TracedCall>,
}

/// Why a watcher's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    /// It fell this many attempts behind.
    Lagged(u64),
    /// The server is stopping.
    Closed,
}

/// The broadcast of attempt ends.
#[derive(Debug)]
pub struct Tail {
    tx: broadcast::Sender<Arc<TailEvent>>,
    stop: CancellationToken,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            tx: broadcast::channel(BACKLOG).0,
            stop: CancellationToken::new(),
        }
    }
}

/// One watcher's subscription.
#[derive(Debug)]
pub struct Watcher {
    rx: broadcast::Receiver<Arc<TailEvent>>,
    stop: CancellationToken,
}

impl Tail {
    /// Whether anyone watches: publishers skip building events otherwise.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends an attempt's end to every watcher; never waits.
    pub fn publish(&self, event: TailEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A new watcher, seeing attempts that end from now on.
    pub fn watch(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
            stop: self.stop.clone(),
        }
    }

    /// Ends every watcher's stream (the server is stopping).
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Watcher {
    /// The next attempt's end, or why there is none.
    pub async fn next(&mut self) -> Result<Arc<TailEvent>, Missed> {
        tokio::select! {
            got = self.rx.recv() => match got {
                Ok(event) => Ok(event),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Missed::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => Err(Missed::Closed),
            },
            _ = self.stop.cancelled() => Err(Missed::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> TailEvent {
        TailEvent {
            tenant: "acme".into(),
            plugin: "p".into(),
            delivery_id: n,
            event_id: "e".into(),
            outcome: "done",
            error: None,
            at: String::new(),
            ms: 1.0,
            logs: vec![],
            calls: vec![],
        }
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_what_it_missed_and_closing_ends_every_stream() {
        let tail = Tail::default();
        assert!(!tail.watched());
        tail.publish(event(0)); // nobody watching: dropped
        let mut w = tail.watch();
        assert!(tail.watched());
        tail.publish(event(1));
        assert_eq!(w.next().await.unwrap().delivery_id, 1);
        for n in 0..(BACKLOG as i64 + 5) {
            tail.publish(event(n));
        }
        assert_eq!(w.next().await.unwrap_err(), Missed::Lagged(5));
        tail.close();
        let mut late = tail.watch();
        assert_eq!(late.next().await.unwrap_err(), Missed::Closed);
    }
}
