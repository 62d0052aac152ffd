//! `switchboard send`: builds a valid SMS webhook in either wire format, signs
//! it as asked, posts it, and reports the status and reason; and the sample
//! event of each kind that `plugin test --event KIND` and `plugin new` use.

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::domain::EventKind;
use crate::intake::auth;

/// Which wire format to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// The integration guide's format.
    Seed,
    /// JustCall's v2.1 format.
    #[value(name = "v2.1")]
    V21,
}

/// How to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignWith {
    /// `x-justcall-signature` v1.
    #[value(name = "justcall-v1")]
    JustCallV1,
    /// Standard Webhooks.
    #[value(name = "standard-webhooks")]
    StandardWebhooks,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Switchboard's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Tenant id.
    pub tenant: String,
    /// Event kind.
    pub kind: EventKind,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub body: String,
    /// Wire format.
    pub format: WireFormat,
    /// Signing secret and scheme, if any.
    pub sign: Option<(SignWith, String)>,
    /// The URL JustCall signs (defaults to `{url}/webhooks/{tenant}`); must
    /// match the server's `public_url`.
    pub webhook_url: Option<String>,
    /// The JustCall message id the event is about (default: a fresh one).
    pub message_id: Option<String>,
}

/// The server's answer.
#[derive(Debug, Clone)]
pub struct SendResponse {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: String,
}

/// The customer in samples and `send`'s defaults.
pub const SAMPLE_CONTACT: &str = "+15125551234";
/// The tenant's line in samples and `send`'s defaults (the demo tenant's).
pub const SAMPLE_LINE: &str = "+15125550100";

/// A plausible event of one kind: from and to the right way round (the
/// customer writes `received`, opt-out and opt-in; the tenant's line sends
/// `sent`, whose status comes back as delivered or failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub body: String,
}

impl Sample {
    /// The sample of `kind`.
    pub fn of(kind: EventKind) -> Sample {
        let (from, to) = if is_inbound(kind) {
            (SAMPLE_CONTACT, SAMPLE_LINE)
        } else {
            (SAMPLE_LINE, SAMPLE_CONTACT)
        };
        let body = match kind {
            EventKind::Received => "CONFIRM",
            EventKind::Sent | EventKind::Delivered | EventKind::Failed => {
                "Your cleaning is booked for Tuesday at 10:00. Reply CONFIRM to confirm."
            }
            EventKind::OptOut => "STOP",
            EventKind::OptIn => "START",
            // Not a webhook: `send` refuses the kind before it gets here.
            EventKind::Timer => "",
        };
        Sample {
            from: from.into(),
            to: to.into(),
            body: body.into(),
        }
    }

    /// The sample as a seed-format webhook payload, pretty-printed.
    pub fn payload(kind: EventKind) -> String {
        let s = Sample::of(kind);
        let req = SendRequest {
            url: "http://127.0.0.1:8080".into(),
            tenant: "demo".into(),
            kind,
            from: s.from,
            to: s.to,
            body: s.body,
            format: WireFormat::Seed,
            sign: None,
            webhook_url: None,
            message_id: None,
        };
        let (payload, _) = build_payload(&req, &req.target());
        serde_json::to_string_pretty(&payload).expect("a JSON value prints")
    }
}

fn is_inbound(kind: EventKind) -> bool {
    matches!(kind, EventKind::Received | EventKind::OptOut | EventKind::OptIn)
}

impl SendRequest {
    /// Where the webhook is posted: `{url}/webhooks/{tenant}`.
    pub fn target(&self) -> String {
        format!("{}/webhooks/{}", self.url.trim_end_matches('/'), self.tenant)
    }
}

fn digits(n: &str) -> String {
    n.trim_start_matches('+').to_string()
}

/// Builds the JSON payload and its `type`/`event` name.
pub fn build_payload(req: &SendRequest, webhook_url: &str) -> (Value, String) {
    let now = Utc::now();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let inbound = is_inbound(req.kind);
    let line = if inbound { &req.to } else { &req.from };
    let contact = if inbound { &req.from } else { &req.to };
    match req.format {
        WireFormat::Seed => {
            let name = req.kind.seed_name().to_string();
            let payload = json!({
                "event": name,
                "timestamp": now.to_rfc3339_opts(SecondsFormat::Secs, true),
                "data": {
                    "message_id": req.message_id.clone().unwrap_or_else(|| format!("msg_{}", &id[id.len() - 12..])),
                    "direction": if inbound { "inbound" } else { "outbound" },
                    "from": req.from, "to": req.to, "body": req.body, "media_urls": [],
                    "justcall_number": line, "contact_name": null, "agent_id": null,
                }
            });
            (payload, name)
        }
        WireFormat::V21 => {
            let (name, delivery_status) = match req.kind {
                EventKind::Received => ("sms.received", "delivered"),
                EventKind::Sent => ("sms.sent", "sent"),
                EventKind::Delivered => ("sms.status_updated", "delivered"),
                EventKind::Failed => ("sms.status_updated", "failed"),
                EventKind::OptOut | EventKind::OptIn => ("jc.contact_status_updated", ""),
                EventKind::Timer => ("timer", ""),
            };
            let message_id = req
                .message_id
                .as_ref()
                .and_then(|m| m.parse::<i64>().ok())
                .unwrap_or_else(|| now.timestamp_millis());
            let data = if matches!(req.kind, EventKind::OptOut | EventKind::OptIn) {
                let out = req.kind == EventKind::OptOut;
                json!({
                    "id": now.timestamp_millis(), "contact_number": digits(contact), "name": null,
                    "status": { "blacklist": false, "dnd": out, "dnm": false },
                    "status_updated_at": now.format("%Y-%m-%d").to_string(),
                })
            } else {
                json!({
                    "id": message_id, "contact_number": digits(contact), "justcall_number": digits(line),
                    "direction": if inbound { "Incoming" } else { "Outgoing" },
                    "sms_date": now.format("%Y-%m-%d").to_string(), "sms_time": now.format("%H:%M:%S").to_string(),
                    "sms_info": { "body": req.body, "is_mms": "false", "mms": [] },
                    "delivery_status": delivery_status, "medium": "SMS",
                })
            };
            let payload = json!({ "request_id": id.to_uppercase(), "webhook_url": webhook_url, "type": name, "data": data });
            (payload, name.to_string())
        }
    }
}

/// Builds, signs and posts the webhook.
pub async fn send(req: &SendRequest) -> anyhow::Result<SendResponse> {
    let target = req.target();
    let webhook_url = req.webhook_url.clone().unwrap_or_else(|| target.clone());
    let (payload, type_name) = build_payload(req, &webhook_url);
    let body = serde_json::to_vec(&payload)?;
    let mut http = reqwest::Client::new().post(&target).header("content-type", "application/json");
    match &req.sign {
        Some((SignWith::JustCallV1, secret)) => {
            let ts = Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
            let sig = auth::justcall_v1_signature(secret, &webhook_url, &type_name, &ts);
            http = http
                .header(auth::JC_SIGNATURE, sig)
                .header(auth::JC_SIGNATURE_VERSION, "v1")
                .header(auth::JC_TIMESTAMP, ts);
        }
        Some((SignWith::StandardWebhooks, secret)) => {
            let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
            let ts = Utc::now().timestamp().to_string();
            let sig = auth::standard_webhooks_signature(secret, &id, &ts, &body);
            http = http
                .header(auth::SW_ID, id)
                .header(auth::SW_TIMESTAMP, ts)
                .header(auth::SW_SIGNATURE, sig);
        }
        None => {}
    }
    let resp = http.body(body).send().await?;
    Ok(SendResponse {
        status: resp.status().as_u16(),
        body: resp.text().await?,
    })
}

/// A tenant the simulator reports to, as JustCall would: its webhook, its
/// numbers, and how its webhooks are signed.
#[derive(Debug, Clone)]
pub struct ReportTo {
    /// Tenant id.
    pub tenant: String,
    /// Its JustCall numbers: a send from one of them is reported to it.
    pub numbers: Vec<String>,
    /// The signing scheme and secret, if its webhooks are signed.
    pub sign: Option<(SignWith, String)>,
}

/// What JustCall does after it sends an SMS: posts `sms.sent` to the
/// tenant's webhook at once, then, after `delivered_after`, the delivered
/// status, in the wire format of the API the send came through.
#[derive(Debug, Clone)]
pub struct StatusReports {
    /// Switchboard's base URL.
    pub url: String,
    /// The server's `public_url`, which signatures cover.
    pub public_url: String,
    /// Who is reported to.
    pub tenants: Vec<ReportTo>,
    /// How long after `sms.sent` the delivered status follows.
    pub delivered_after: std::time::Duration,
}

impl StatusReports {
    /// Reports a sent SMS (message `id`, sent through the v2.1 API if
    /// `v21`) to the tenant that owns `from`, in the background.
    pub fn sent(&self, id: &str, from: &str, to: &str, body: &str, v21: bool) {
        let same = |a: &str, b: &str| a.trim_start_matches('+') == b.trim_start_matches('+');
        let Some(owner) = self.tenants.iter().find(|t| t.numbers.iter().any(|n| same(n, from))) else {
            return;
        };
        let req = |kind| SendRequest {
            url: self.url.clone(),
            tenant: owner.tenant.clone(),
            kind,
            from: from.to_string(),
            to: to.to_string(),
            body: body.to_string(),
            format: if v21 { WireFormat::V21 } else { WireFormat::Seed },
            sign: owner.sign.clone(),
            webhook_url: Some(format!("{}/webhooks/{}", self.public_url.trim_end_matches('/'), owner.tenant)),
            message_id: Some(id.to_string()),
        };
        let (sent, delivered, wait) = (req(EventKind::Sent), req(EventKind::Delivered), self.delivered_after);
        tokio::spawn(async move {
            for (req, delay) in [(sent, std::time::Duration::ZERO), (delivered, wait)] {
                tokio::time::sleep(delay).await;
                match send(&req).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        tracing::info!(target: "justcall_simulator", kind = req.kind.as_str(), id = ?req.message_id, "status webhook posted")
                    }
                    Ok(r) => {
                        tracing::warn!(target: "justcall_simulator", kind = req.kind.as_str(), status = r.status, body = %r.body, "status webhook refused")
                    }
                    Err(e) => {
                        tracing::warn!(target: "justcall_simulator", kind = req.kind.as_str(), error = %e, "status webhook not posted")
                    }
                }
            }
        });
    }
}
