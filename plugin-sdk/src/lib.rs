//! The Rust SDK for Switchboard plugins: ergonomic wrappers over the bindings
//! generated from the repository's `wit/` folder.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`]:
//!
//! ```ignore
//! use switchboard_plugin_sdk::{export_plugin, sms, EventKind, Plugin, PluginError, SmsEvent};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn handle_event(event: SmsEvent) -> Result<(), PluginError> {
//!         if event.kind == EventKind::Received {
//!             sms::send(&event.justcall_number, &event.from, &event.body)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! Every event runs on a fresh instance: keep state in [`kv`], not in statics.
#![deny(missing_docs)]

/// Generated bindings. Use the re-exports and wrappers instead.
#[doc(hidden)]
pub mod wit {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "switchboard:plugin/plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "switchboard_plugin_sdk::wit",
        generate_all,
    });
}

pub use wit::Guest as Plugin;
pub use wit::export_plugin;
pub use wit::switchboard::plugin0_2_0::types::{Direction, EventKind, PluginError, SmsEvent, TimerFiring};

impl EventKind {
    /// The kind's name as the WIT `event-kind` spells it (`received`,
    /// `opt-out`, …): the form logs, sinks and the host's admin API use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Sent => "sent",
            EventKind::Delivered => "delivered",
            EventKind::Failed => "failed",
            EventKind::OptOut => "opt-out",
            EventKind::OptIn => "opt-in",
            EventKind::Timer => "timer",
        }
    }
}

impl PluginError {
    /// A plugin error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError { message: message.into() }
    }
}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        PluginError::new(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        PluginError::new(message)
    }
}

/// Sending and reading SMS through the tenant's JustCall account.
pub mod sms {
    use crate::wit::switchboard::plugin0_1_0::sms as raw;
    pub use raw::{Message, OutgoingSms, ProviderError, SmsError};

    /// Sends `body` from one of the tenant's numbers to `to`; returns
    /// JustCall's message id.
    pub fn send(from: &str, to: &str, body: &str) -> Result<String, SmsError> {
        send_message(&OutgoingSms {
            from: from.to_string(),
            to: to.to_string(),
            body: body.to_string(),
            media_urls: Vec::new(),
        })
    }

    /// Sends a message with every field under the caller's control.
    pub fn send_message(message: &OutgoingSms) -> Result<String, SmsError> {
        raw::send(message)
    }

    /// Fetches one message by JustCall id.
    pub fn get(id: &str) -> Result<Message, SmsError> {
        raw::get_message(id)
    }

    /// Lists the tenant's messages, newest first; `page` starts at 1.
    pub fn list(page: u32, per_page: u32) -> Result<Vec<Message>, SmsError> {
        raw::list_messages(page, per_page)
    }

    /// A one-line description of an SMS error.
    pub fn describe(e: &SmsError) -> String {
        match e {
            SmsError::NotTenantNumber(n) => format!("{n} is not one of the tenant's numbers"),
            SmsError::OptedOut(n) => format!("{n} has opted out"),
            SmsError::InvalidRequest(m) => format!("invalid request: {m}"),
            SmsError::NotFound => "no such message".to_string(),
            SmsError::Provider(p) => format!("JustCall answered {}: {}", p.status, p.message),
            SmsError::Unavailable(m) => format!("JustCall unavailable: {m}"),
            SmsError::RateLimited(ms) => format!("JustCall rate limit reached; retry in {ms} ms"),
        }
    }

    impl From<SmsError> for crate::PluginError {
        fn from(e: SmsError) -> Self {
            crate::PluginError::new(format!("sms: {}", describe(&e)))
        }
    }
}

/// Outbound HTTP to the hosts listed in the plugin's `allowed_hosts`.
pub mod http {
    use crate::wit::switchboard::plugin0_1_0::http as raw;
    pub use raw::{HttpError, Request, Response};

    /// Sends a request and returns the whole response. A non-2xx status is a
    /// response, not an error; see [`Response::is_success`].
    pub fn send(request: &Request) -> Result<Response, HttpError> {
        raw::send(request)
    }

    /// POSTs `body` with the given content type.
    pub fn post(url: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
        send(&Request {
            method: "POST".to_string(),
            url: url.to_string(),
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body: body.into(),
        })
    }

    /// GETs `url`.
    pub fn get(url: &str) -> Result<Response, HttpError> {
        send(&Request {
            method: "GET".to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    impl Response {
        /// Whether the status is 2xx.
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }

        /// The body as text (lossy UTF-8).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// A one-line description of an HTTP error.
    pub fn describe(e: &HttpError) -> String {
        match e {
            HttpError::NotAllowed(m) => m.clone(),
            HttpError::InvalidRequest(m) => format!("invalid request: {m}"),
            HttpError::ResponseTooLarge => "response too large".to_string(),
            HttpError::Timeout => "timed out".to_string(),
            HttpError::Transport(m) => format!("transport error: {m}"),
        }
    }

    impl From<HttpError> for crate::PluginError {
        fn from(e: HttpError) -> Self {
            crate::PluginError::new(format!("http: {}", describe(&e)))
        }
    }
}

/// Acting later: timers private to this plugin within its tenant. A timer
/// fires as an event of kind [`EventKind::Timer`](crate::EventKind::Timer)
/// whose [`timer`](crate::SmsEvent::timer) holds its key and payload.
///
/// Changes take effect only if this event's handling succeeds, so a retried
/// event never schedules twice.
pub mod timers {
    use crate::wit::switchboard::plugin0_2_0::timers as raw;
    pub use raw::{Due, Timer, TimerError};

    /// Schedules `key` to fire `after` from now, replacing a pending timer
    /// with that key.
    pub fn after(key: &str, after: std::time::Duration, payload: impl AsRef<[u8]>) -> Result<(), TimerError> {
        raw::schedule(key, &Due::AfterMs(after.as_millis() as u64), payload.as_ref())
    }

    /// Schedules `key` to fire at an RFC 3339 instant (a past one fires at
    /// once), replacing a pending timer with that key.
    pub fn at(key: &str, at: &str, payload: impl AsRef<[u8]>) -> Result<(), TimerError> {
        raw::schedule(key, &Due::At(at.to_string()), payload.as_ref())
    }

    /// Cancels the pending timer with this key; says whether there was one.
    pub fn cancel(key: &str) -> Result<bool, TimerError> {
        raw::cancel(key)
    }

    /// The pending timer with this key, if any.
    pub fn get(key: &str) -> Result<Option<Timer>, TimerError> {
        raw::get(key)
    }

    /// A one-line description of a timer error.
    pub fn describe(e: &TimerError) -> String {
        match e {
            TimerError::QuotaExceeded(m) => format!("quota exceeded: {m}"),
            TimerError::Invalid(m) => format!("invalid: {m}"),
            TimerError::Storage(m) => format!("storage error: {m}"),
        }
    }

    impl From<TimerError> for crate::PluginError {
        fn from(e: TimerError) -> Self {
            crate::PluginError::new(format!("timers: {}", describe(&e)))
        }
    }
}

/// A key-value store private to this plugin within its tenant.
pub mod kv {
    use crate::wit::switchboard::plugin0_1_0::kv as raw;
    pub use raw::KvError;

    /// The value stored under `key`, if any.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        raw::get(key)
    }

    /// The value under `key` as text (lossy UTF-8), if any.
    pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
        Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), KvError> {
        raw::set(key, value.as_ref())
    }

    /// Removes `key`; removing a missing key is not an error.
    pub fn delete(key: &str) -> Result<(), KvError> {
        raw::delete(key)
    }

    /// Keys starting with `prefix`, in order.
    pub fn list_keys(prefix: &str) -> Result<Vec<String>, KvError> {
        raw::list_keys(prefix)
    }

    /// A one-line description of a KV error.
    pub fn describe(e: &KvError) -> String {
        match e {
            KvError::QuotaExceeded(m) => format!("quota exceeded: {m}"),
            KvError::Storage(m) => format!("storage error: {m}"),
        }
    }

    impl From<KvError> for crate::PluginError {
        fn from(e: KvError) -> Self {
            crate::PluginError::new(format!("kv: {}", describe(&e)))
        }
    }
}

/// The `[config]` table of the plugin's manifest.
pub mod config {
    use crate::wit::switchboard::plugin0_1_0::config as raw;

    /// One value, if set.
    pub fn get(key: &str) -> Option<String> {
        raw::get(key)
    }

    /// One value, or a [`PluginError`](crate::PluginError) naming the missing key.
    pub fn require(key: &str) -> Result<String, crate::PluginError> {
        get(key).ok_or_else(|| crate::PluginError::new(format!("config key `{key}` is not set")))
    }

    /// Every key and value.
    pub fn all() -> Vec<(String, String)> {
        raw::get_all()
    }
}

/// Logs recorded by the host with the tenant, plugin and event attached.
pub mod log {
    use crate::wit::switchboard::plugin0_1_0::log as raw;
    pub use raw::Level;

    /// Logs `message` at `level`.
    pub fn log(level: Level, message: &str) {
        raw::log(level, message)
    }

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}
