//! The side-effects seam: everything a plugin's calls do to the world (send
//! an SMS, make an HTTP request, read JustCall) goes through one [`Effects`]
//! implementation. `capabilities` validates each call the same way whatever
//! the implementation; only the act differs:
//! - [`Live`]: journaled, egress-checked, reconciled; the server's.
//! - [`Recording`]: records the call and answers locally; `plugin test`'s.
//!
//! Shadow runs will be a third implementation.

use std::time::Instant;

use crate::engine::bindings::switchboard::plugin::http;
use crate::engine::justcall::{ApiMessage, JustCallError};

pub mod journal;
mod live;
mod recording;

pub use live::Live;
pub use recording::{CallLog, HostCall, Recording};

/// An SMS a plugin asked to send, already checked: `from` is the tenant's,
/// `to` is E.164 and not opted out, the body is within bounds.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingSms<'a> {
    /// The tenant's number it is sent from.
    pub from: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// The text.
    pub body: &'a str,
    /// MMS media URLs.
    pub media: &'a [String],
}

/// What a plugin's calls do to the world. One value serves one invocation, so
/// an implementation may number its side effects.
#[async_trait::async_trait]
pub trait Effects: Send + Sync + std::fmt::Debug {
    /// Sends an SMS; the JustCall message id.
    async fn sms_send(&mut self, sms: OutgoingSms<'_>, deadline: Instant) -> Result<String, JustCallError>;

    /// Reads one message from JustCall.
    async fn sms_get(&mut self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError>;

    /// Lists messages from JustCall, newest first.
    async fn sms_list(&mut self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError>;

    /// Makes an HTTP request; a response body over `max_body` bytes is an error.
    async fn http_send(&mut self, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError>;

    /// Observes a KV write (`None`: a delete), which `capabilities` applies.
    fn kv_written(&mut self, _key: &str, _value: Option<&[u8]>) {}

    /// Observes a log line the plugin wrote (within its cap).
    fn logged(&mut self, _level: &'static str, _message: &str) {}
}
