//! The side-effects seam: everything a plugin's calls do to the world (send
//! an SMS, make an HTTP request, read JustCall) goes through one [`Effects`]
//! implementation. `capabilities` validates each call the same way whatever
//! the implementation; only the act differs:
//! - [`Live`]: journaled, egress-checked, reconciled; the server's.
//! - [`Recording`]: records the call and answers locally; `plugin test`'s.
//! - [`Shadow`]: a shadow version's: side effects noted, not made; reads
//!   made. [`Witness`] notes the serving version's beside it.

use std::time::Instant;

use crate::engine::bindings::http;
use crate::engine::justcall::{ApiMessage, JustCallError};

pub mod journal;
mod live;
mod recording;
mod shadow;

pub use live::Live;
pub use recording::{CallLog, HostCall, Recording};
pub use shadow::{Act, Acts, Footprint, Shadow, Witness};

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

/// A plugin's HTTP request, read: what every implementation checks the
/// same way before doing anything with it.
#[derive(Debug)]
pub struct Parsed {
    /// An http or https URL.
    pub url: reqwest::Url,
    /// A valid method.
    pub method: reqwest::Method,
    /// Valid headers.
    pub headers: reqwest::header::HeaderMap,
}

/// Headers the host sets itself: connection management and message framing
/// (hop-by-hop, RFC 9110 §7.6.1) and `Host`. A plugin that sets one gets an
/// `invalid-request`; wasi:http requests have them removed before this.
pub const HOST_SET_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Headers that carry credentials: dropped when a redirect leaves the
/// origin the plugin addressed.
pub const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "cookie", "proxy-authorization", "x-api-key"];

/// Reads a plugin's request: an http(s) URL, a method, headers (none of
/// [`HOST_SET_HEADERS`]); each mistake is an `invalid-request` naming the
/// part.
pub fn parse(req: &http::Request) -> Result<Parsed, http::HttpError> {
    let url = match reqwest::Url::parse(&req.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => {
            return Err(http::HttpError::InvalidRequest(format!(
                "scheme `{}` is not http or https",
                u.scheme()
            )));
        }
        Err(e) => return Err(http::HttpError::InvalidRequest(format!("bad URL: {e}"))),
    };
    let Ok(method) = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()) else {
        return Err(http::HttpError::InvalidRequest(format!("bad method `{}`", req.method)));
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &req.headers {
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(v),
        ) else {
            return Err(http::HttpError::InvalidRequest(format!("bad header `{k}`")));
        };
        if HOST_SET_HEADERS.contains(&name.as_str()) {
            return Err(http::HttpError::InvalidRequest(format!(
                "header `{name}` is set by the host, not the plugin"
            )));
        }
        headers.append(name, value);
    }
    Ok(Parsed { url, method, headers })
}

/// What a plugin's calls do to the world. One value serves one invocation, so
/// an implementation may number its side effects. Methods take `&self`: a
/// `wasi:http` request runs as a task beside the guest and shares the value.
#[async_trait::async_trait]
pub trait Effects: Send + Sync + std::fmt::Debug {
    /// Sends an SMS; the JustCall message id.
    async fn sms_send(&self, sms: OutgoingSms<'_>, deadline: Instant) -> Result<String, JustCallError>;

    /// Reads one message from JustCall.
    async fn sms_get(&self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError>;

    /// Lists messages from JustCall, newest first.
    async fn sms_list(&self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError>;

    /// Makes an HTTP request; a response body over `max_body` bytes is an error.
    async fn http_send(&self, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError>;

    /// Observes a KV write (`None`: a delete), which `capabilities` applies.
    fn kv_written(&self, _key: &str, _value: Option<&[u8]>) {}

    /// Observes a log line the plugin wrote (within its cap).
    fn logged(&self, _level: &'static str, _message: &str) {}
}
