//! [`Recording`]: the effects of `plugin test`. Every call is recorded in a
//! [`CallLog`] and answered locally; nothing reaches JustCall or the network.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Effects, OutgoingSms};
use crate::engine::bindings::switchboard::plugin::http;
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
    /// `http.send`, not sent; answered 200 with an empty body.
    Http {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Body as text (lossy).
        body: String,
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
            HostCall::Http { method, url, body } => write!(f, "http.send    {method} {url} {body:?} (answered: 200, empty)"),
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
/// id `dry-run-N`, reads find nothing, and HTTP answers 200 with an empty body.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    log: CallLog,
    sent: u32,
}

impl Recording {
    /// Records into `log`.
    pub fn new(log: CallLog) -> Recording {
        Recording { log, sent: 0 }
    }
}

#[async_trait::async_trait]
impl Effects for Recording {
    async fn sms_send(&mut self, sms: OutgoingSms<'_>, _deadline: Instant) -> Result<String, JustCallError> {
        self.log.push(HostCall::SmsSend {
            from: sms.from.to_string(),
            to: sms.to.to_string(),
            body: sms.body.to_string(),
        });
        self.sent += 1;
        Ok(format!("dry-run-{}", self.sent - 1))
    }

    async fn sms_get(&mut self, id: &str, _deadline: Instant) -> Result<ApiMessage, JustCallError> {
        self.log.push(HostCall::SmsRead {
            what: format!("get-message {id}"),
        });
        Err(JustCallError::NotFound)
    }

    async fn sms_list(&mut self, page: u32, per_page: u32, _deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.log.push(HostCall::SmsRead {
            what: format!("list-messages page {page}, {per_page} per page"),
        });
        Ok(vec![])
    }

    async fn http_send(&mut self, req: http::Request, _deadline: Instant, _max_body: usize) -> Result<http::Response, http::HttpError> {
        self.log.push(HostCall::Http {
            method: req.method.to_ascii_uppercase(),
            url: req.url,
            body: String::from_utf8_lossy(&req.body).into_owned(),
        });
        Ok(http::Response {
            status: 200,
            headers: vec![],
            body: vec![],
        })
    }

    fn kv_written(&mut self, key: &str, value: Option<&[u8]>) {
        self.log.push(match value {
            Some(v) => HostCall::KvSet {
                key: key.to_string(),
                value: String::from_utf8_lossy(v).into_owned(),
            },
            None => HostCall::KvDelete { key: key.to_string() },
        });
    }

    fn logged(&mut self, level: &'static str, message: &str) {
        self.log.push(HostCall::Log {
            level: level.to_string(),
            message: message.to_string(),
        });
    }
}
