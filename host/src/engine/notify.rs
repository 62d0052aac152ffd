//! Operational notices for the operator: a delivery that failed every retry
//! (`delivery.exhausted`), a plugin paused for a tenant (`plugin.paused`), a
//! plugin version refused at load (`version.rejected`). The engine files
//! them here and never waits: the queue is bounded, and a notice that does
//! not fit is dropped with a warning. The server sends them on (signed, with
//! retries) when `operator_webhook_url` is set; otherwise there is no queue.

use tokio::sync::mpsc;

/// Notices queued at most before new ones are dropped.
pub const QUEUE: usize = 1024;

/// One notice: its type, when, and what about.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notice {
    /// `delivery.exhausted`, `plugin.paused`, `version.rejected`,
    /// `canary.rolled_back`, `shadow.diverged`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When it happened, RFC 3339.
    pub timestamp: String,
    /// What it is about (tenant, plugin, …).
    pub data: serde_json::Value,
}

/// Where the engine files notices; cheap to clone. Without a receiver,
/// filing does nothing.
#[derive(Debug, Clone, Default)]
pub struct Notices {
    tx: Option<mpsc::Sender<Notice>>,
}

impl Notices {
    /// A queue of notices and its receiving end.
    pub fn channel() -> (Notices, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Notices { tx: Some(tx) }, rx)
    }

    /// Files a notice of `kind` about `data`, now; never waits.
    pub fn file(&self, kind: &'static str, data: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        let notice = Notice {
            kind,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data,
        };
        if tx.try_send(notice).is_err() {
            tracing::warn!(kind, "operator notice dropped: the queue is full or the sender has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_queue_without_waiting_and_overflow_is_dropped() {
        Notices::default().file("plugin.paused", serde_json::json!({})); // no queue: nothing
        let (notices, mut rx) = Notices::channel();
        for i in 0..QUEUE + 3 {
            notices.file("plugin.paused", serde_json::json!({ "n": i }));
        }
        let first = rx.recv().await.unwrap();
        assert_eq!((first.kind, first.data["n"].as_u64()), ("plugin.paused", Some(0)));
        let mut n = 1;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, QUEUE);
    }
}
