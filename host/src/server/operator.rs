//! Sends the engine's operational notices to `operator_webhook_url`, one at
//! a time in order, as Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature` over the JSON body with `operator_webhook_secret`).
//! A notice that is not answered 2xx is sent again after 1 s, 5 s, 30 s and
//! 2 min, with the same `webhook-id` (receivers dedupe on it), then given
//! up with an error in the log.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::OperatorWebhook;
use crate::engine::notify::Notice;

/// Waits before each retry of a notice.
pub const RETRIES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

/// Sends notices from `rx` until every sender is gone.
pub async fn send_notices(hook: OperatorWebhook, mut rx: mpsc::Receiver<Notice>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the operator webhook client; notices are not sent");
            return;
        }
    };
    while let Some(notice) = rx.recv().await {
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let body = match serde_json::to_vec(&notice) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, kind = notice.kind, "cannot encode an operator notice");
                continue;
            }
        };
        let mut waits = RETRIES.iter();
        loop {
            let ts = chrono::Utc::now().timestamp().to_string();
            let signature = crate::intake::auth::standard_webhooks_signature(hook.secret.expose(), &id, &ts, &body);
            let sent = client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", &ts)
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            match waits.next() {
                Some(wait) => {
                    tracing::warn!(kind = notice.kind, %id, error = %why, retry_in = ?wait, "operator notice not delivered");
                    tokio::time::sleep(*wait).await;
                }
                None => {
                    tracing::error!(kind = notice.kind, %id, error = %why, "operator notice given up after every retry");
                    break;
                }
            }
        }
    }
}
