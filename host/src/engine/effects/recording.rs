//! [`Recording`]: the effects of `plugin test`. Every call is recorded in a
//! [`CallLog`] and answered locally; nothing reaches JustCall or the network.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Effects, OutgoingSms, parse};
use crate::config::AllowedHost;
use crate::engine::bindings::http;
use crate::engine::justcall::{ApiMessage, JustCallError};
use crate::sync::lock;

/// A host call a plugin made under `plugin test`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum HostCall {
    /// `sms.send`, not sent.
    SmsSend {
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
        /// Text.
        body: String,
    },
    /// `sms.get-message` or `sms.list-messages`, answered as not found / empty.
    SmsRead {
        /// What was asked.
        what: String,
    },
    /// `http.send`, not sent: answered 200 with an empty body, or refused
    /// as the live path would refuse it.
    Http {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Body as text (lossy).
        body: String,
        /// Why it was refused, if it was.
        #[serde(skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// `kv.set` (applied to a scratch store).
    KvSet {
        /// Key.
        key: String,
        /// Value as text (lossy).
        value: String,
    },
    /// `kv.delete`.
    KvDelete {
        /// Key.
        key: String,
    },
    /// `log.log`.
    Log {
        /// Level.
        level: String,
        /// Message.
        message: String,
    },
}

impl std::fmt::Display for HostCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostCall::SmsSend { from, to, body } => write!(f, "sms.send     from {from} to {to}: {body:?}"),
            HostCall::SmsRead { what } => write!(f, "sms.read     {what} (answered: nothing)"),
            HostCall::Http {
                method,
                url,
                body,
                refused: None,
            } => write!(f, "http.send    {method} {url} {body:?} (answered: 200, empty)"),
            HostCall::Http {
                method,
                url,
                refused: Some(reason),
                ..
            } => write!(f, "http.send    {method} {url} refused: {reason}"),
            HostCall::KvSet { key, value } => write!(f, "kv.set       {key} = {value:?}"),
            HostCall::KvDelete { key } => write!(f, "kv.delete    {key}"),
            HostCall::Log { level, message } => write!(f, "log.{level:<8}{message}"),
        }
    }
}

/// Where a dry run records host calls.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<HostCall>>>);

impl CallLog {
    /// Records a call.
    pub fn push(&self, call: HostCall) {
        lock(&self.0).push(call);
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<HostCall> {
        lock(&self.0).clone()
    }
}

/// Records every call in its log and answers locally: an SMS is "sent" with
/// id `dry-run-N`, reads find nothing, and HTTP to an allowed host answers
/// 200 with an empty body (to any other, the live path's refusal).
#[derive(Debug, Clone, Default)]
pub struct Recording {
    log: CallLog,
    allowed: Vec<AllowedHost>,
    sent: Arc<AtomicU32>,
}

impl Recording {
    /// Records into `log`; HTTP may reach the `allowed` hosts.
    pub fn new(log: CallLog, allowed: Vec<AllowedHost>) -> Recording {
        Recording {
            log,
            allowed,
            sent: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Effects for Recording {
    async fn sms_send(&self, sms: OutgoingSms<'_>, _deadline: Instant) -> Result<String, JustCallError> {
        self.log.push(HostCall::SmsSend {
            from: sms.from.to_string(),
            to: sms.to.to_string(),
            body: sms.body.to_string(),
        });
        Ok(format!("dry-run-{}", self.sent.fetch_add(1, Ordering::Relaxed)))
    }

    async fn sms_get(&self, id: &str, _deadline: Instant) -> Result<ApiMessage, JustCallError> {
        self.log.push(HostCall::SmsRead {
            what: format!("get-message {id}"),
        });
        Err(JustCallError::NotFound)
    }

    async fn sms_list(&self, page: u32, per_page: u32, _deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.log.push(HostCall::SmsRead {
            what: format!("list-messages page {page}, {per_page} per page"),
        });
        Ok(vec![])
    }

    async fn http_send(&self, req: http::Request, _deadline: Instant, _max_body: usize) -> Result<http::Response, http::HttpError> {
        let verdict = parse(&req)
            .and_then(|p| crate::engine::egress::listed(&p.url, &self.allowed).map_err(|r| http::HttpError::NotAllowed(r.to_string())));
        let refused = verdict.as_ref().err().map(|e| match e {
            http::HttpError::NotAllowed(r) | http::HttpError::InvalidRequest(r) => r.clone(),
            other => format!("{other:?}"),
        });
        self.log.push(HostCall::Http {
            method: req.method.to_ascii_uppercase(),
            url: req.url,
            body: String::from_utf8_lossy(&req.body).into_owned(),
            refused,
        });
        verdict.map(|_| http::Response {
            status: 200,
            headers: vec![],
            body: vec![],
        })
    }

    fn kv_written(&self, key: &str, value: Option<&[u8]>) {
        self.log.push(match value {
            Some(v) => HostCall::KvSet {
                key: key.to_string(),
                value: String::from_utf8_lossy(v).into_owned(),
            },
            None => HostCall::KvDelete { key: key.to_string() },
        });
    }

    fn logged(&self, level: &'static str, message: &str) {
        self.log.push(HostCall::Log {
            level: level.to_string(),
            message: message.to_string(),
        });
    }
}
