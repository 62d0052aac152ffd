//! The live tail: the end of every delivery attempt (outcome, reason, time,
//! the plugin's log lines and host calls) broadcast to whoever watches
//! (`GET /admin/tenants/{t}/tail`, `switchboard admin tail`). Publishing never
//! waits: with no watcher it does nothing, and a watcher that falls more than
//! [`BACKLOG`] attempts behind is told how many it missed and dropped.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::Event;
use crate::engine::trace::{Trace, TracedCall, TracedLog};

/// Attempts a watcher may fall behind before it is dropped.
pub const BACKLOG: usize = 1024;
/// Characters of an event's body a watcher sees.
pub const BODY_PREVIEW: usize = 160;

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
    /// The event's kind (`sms.received`, …).
    pub kind: &'static str,
    /// Its sender.
    pub from: String,
    /// Its recipient.
    pub to: String,
    /// The start of its body (at most [`BODY_PREVIEW`] characters).
    pub body: String,
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

impl TailEvent {
    /// The end of an attempt at delivering `event` to `plugin`, which took
    /// `ms` and failed with `error` if it did, as `trace` recorded it.
    pub fn ended(event: &Event, plugin: &str, delivery_id: i64, error: Option<String>, ms: f64, trace: Trace) -> TailEvent {
        TailEvent {
            tenant: event.tenant.clone(),
            plugin: plugin.to_string(),
            delivery_id,
            event_id: event.event_id.clone(),
            kind: event.kind.seed_name(),
            from: event.from.clone(),
            to: event.to.clone(),
            body: event.body.chars().take(BODY_PREVIEW).collect(),
            outcome: if error.is_none() { "done" } else { "failed" },
            error,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ms,
            logs: trace.logs,
            calls: trace.calls,
        }
    }
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

    /// The attempt ends `wanted` keeps, from now on, as a stream: it ends
    /// when the server stops, or after `Err(n)`, its last item, when the
    /// watcher fell `n` attempts behind and was dropped.
    pub fn follow<F>(&self, wanted: F) -> impl futures_util::Stream<Item = Result<Arc<TailEvent>, u64>> + Send + use<F>
    where
        F: Fn(&TailEvent) -> bool + Send + Sync + 'static,
    {
        let wanted = Arc::new(wanted);
        futures_util::stream::unfold(Some(self.watch()), move |watcher| {
            let wanted = wanted.clone();
            async move {
                let mut watcher = watcher?;
                loop {
                    match watcher.next().await {
                        Ok(e) if wanted(&e) => return Some((Ok(e), Some(watcher))),
                        Ok(_) => continue,
                        Err(Missed::Lagged(n)) => return Some((Err(n), None)),
                        Err(Missed::Closed) => return None,
                    }
                }
            }
        })
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
            kind: "sms.received",
            from: String::new(),
            to: String::new(),
            body: String::new(),
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

    #[tokio::test]
    async fn following_keeps_the_wanted_ends_and_stops_after_a_lag() {
        use futures_util::StreamExt as _;
        let tail = Tail::default();
        let mut odd = Box::pin(tail.follow(|e| e.delivery_id % 2 == 1));
        for n in 0..4 {
            tail.publish(event(n));
        }
        assert_eq!(odd.next().await.unwrap().unwrap().delivery_id, 1);
        assert_eq!(odd.next().await.unwrap().unwrap().delivery_id, 3);
        for n in 0..(BACKLOG as i64 + 2) {
            tail.publish(event(n));
        }
        assert_eq!(odd.next().await.unwrap().unwrap_err(), 2);
        assert!(odd.next().await.is_none());
    }
}
