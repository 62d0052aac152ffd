//! What a plugin can do: the per-invocation store data ([`PluginCtx`]) and the
//! host side of every WIT import (sms, http, kv, config, log), each checked
//! against the tenant's numbers, the manifest's allow-list and the limits.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::switchboard::plugin::{config, http, kv, log, sms, types};
use crate::config::{Limits, Manifest, TenantConfig};
use crate::db::Db;
use crate::event::{self, Event, normalize_e164};
use crate::justcall::{ApiMessage, JustCallClient, JustCallError};

/// Largest KV key, bytes.
pub const MAX_KV_KEY: usize = 512;
/// Largest KV value, bytes.
pub const MAX_KV_VALUE: usize = 64 << 10;
/// Redirects a plugin's request may follow.
pub const MAX_REDIRECTS: u32 = 5;
/// Longest SMS body JustCall accepts.
pub const MAX_SMS_BODY: usize = 1600;

/// A limit a plugin went over; it ends the invocation (a trap) and is
/// recorded as the delivery's failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitBreach {
    /// Too many `sms.send` calls in one event.
    #[error("sms quota exceeded ({0} sends per event)")]
    SmsPerEvent(u32),
    /// Too many `http.send` calls in one event.
    #[error("http quota exceeded ({0} requests per event)")]
    HttpPerEvent(u32),
}

/// A tenant's shared runtime state: its config and JustCall client.
#[derive(Debug)]
pub struct TenantRuntime {
    /// The tenant's configuration.
    pub config: TenantConfig,
    /// Its JustCall API client.
    pub justcall: JustCallClient,
}

/// Everything one invocation needs besides the wasm instance.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The tenant.
    pub tenant: Arc<TenantRuntime>,
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Database for KV.
    pub db: Db,
    /// Shared HTTP client for outbound requests (redirects disabled).
    pub http: reqwest::Client,
    /// The event being handled.
    pub event_id: Arc<str>,
    /// Slots for long-running invocations (see [`crate::dispatch::LONG_RUN_TICKS`]).
    pub long_runners: Arc<tokio::sync::Semaphore>,
}

/// Tracks linear-memory growth against the plugin's cap and remembers a refusal.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Set when a growth request was refused.
    pub memory_denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        if !ok {
            self.memory_denied = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// The store data of one plugin instance, which lives for one event.
pub struct PluginCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory accounting.
    pub limiter: Limiter,
    inv: Invocation,
    limits: Limits,
    /// When the invocation must end.
    pub deadline: Instant,
    /// Epoch ticks seen while running wasm (≈ ms of CPU).
    pub ticks: u64,
    /// The long-runner slot, once this invocation has needed one.
    pub long_run_permit: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    sms_sent: u32,
    http_calls: u32,
    log_bytes: usize,
    log_truncated: bool,
}

impl std::fmt::Debug for PluginCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCtx")
            .field("plugin", &self.inv.plugin)
            .field("event", &self.inv.event_id)
            .finish()
    }
}

impl PluginCtx {
    /// Fresh state for one invocation. WASI gets no preopens, environment,
    /// arguments or network: only clocks, random and empty stdio.
    pub fn new(inv: Invocation) -> PluginCtx {
        let limits = inv.manifest.limits;
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginCtx {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
                memory_denied: false,
            },
            deadline: Instant::now() + limits.timeout,
            ticks: 0,
            long_run_permit: Arc::default(),
            inv,
            limits,
            sms_sent: 0,
            http_calls: 0,
            log_bytes: 0,
            log_truncated: false,
        }
    }

    /// The shared slots for long-running invocations.
    pub fn long_runners(&self) -> Arc<tokio::sync::Semaphore> {
        self.inv.long_runners.clone()
    }

    /// The memory cap, in MiB.
    pub fn limiter_cap_mib(&self) -> usize {
        self.limiter.memory_bytes >> 20
    }

    fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WIT record for an event.
pub fn to_wit(e: &Event) -> types::SmsEvent {
    types::SmsEvent {
        tenant: e.tenant.clone(),
        kind: match e.kind {
            event::EventKind::Received => types::EventKind::Received,
            event::EventKind::Sent => types::EventKind::Sent,
            event::EventKind::Delivered => types::EventKind::Delivered,
            event::EventKind::Failed => types::EventKind::Failed,
            event::EventKind::OptOut => types::EventKind::OptOut,
            event::EventKind::OptIn => types::EventKind::OptIn,
        },
        event_id: e.event_id.clone(),
        occurred_at: e.occurred_at.clone(),
        message_id: e.message_id.clone(),
        direction: match e.direction {
            event::Direction::Inbound => types::Direction::Inbound,
            event::Direction::Outbound => types::Direction::Outbound,
        },
        from: e.from.clone(),
        to: e.to.clone(),
        body: e.body.clone(),
        media_urls: e.media_urls.clone(),
        justcall_number: e.justcall_number.clone(),
        contact_name: e.contact_name.clone(),
        agent_id: e.agent_id.clone(),
    }
}

impl types::Host for PluginCtx {}

fn sms_error(e: JustCallError) -> sms::SmsError {
    match e {
        JustCallError::Status { status, message } => sms::SmsError::Provider(sms::ProviderError { status, message }),
        JustCallError::NotFound => sms::SmsError::NotFound,
        JustCallError::Unavailable(m) | JustCallError::Decode(m) => sms::SmsError::Unavailable(m),
    }
}

fn wit_message(m: ApiMessage) -> sms::Message {
    sms::Message {
        id: m.id,
        from: m.from,
        to: m.to,
        body: m.body,
        direction: m.direction,
        status: m.status,
        created_at: m.created_at,
    }
}

impl sms::Host for PluginCtx {
    async fn send(&mut self, message: sms::OutgoingSms) -> wasmtime::Result<Result<String, sms::SmsError>> {
        // Every attempt counts, refused or not, so a loop of refused sends
        // still ends at the quota.
        if self.sms_sent >= self.limits.sms_per_event {
            return Err(wasmtime::Error::new(LimitBreach::SmsPerEvent(self.limits.sms_per_event)));
        }
        self.sms_sent += 1;
        let tenant = self.inv.tenant.clone();
        let Some(from) = normalize_e164(&message.from).filter(|f| tenant.config.numbers.contains(f)) else {
            return Ok(Err(sms::SmsError::NotTenantNumber(message.from)));
        };
        let Some(to) = normalize_e164(&message.to) else {
            return Ok(Err(sms::SmsError::InvalidRequest(format!(
                "`{}` is not a phone number",
                message.to
            ))));
        };
        match self.inv.db.is_opted_out(&tenant.config.id, &to).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(tenant = %tenant.config.id, plugin = %self.inv.plugin, %to, "refused SMS to an opted-out number");
                return Ok(Err(sms::SmsError::OptedOut(to)));
            }
            Err(e) => return Ok(Err(sms::SmsError::Unavailable(format!("cannot check opt-out state: {e}")))),
        }
        if message.body.trim().is_empty() && message.media_urls.is_empty() {
            return Ok(Err(sms::SmsError::InvalidRequest("empty body".into())));
        }
        if message.body.chars().count() > MAX_SMS_BODY {
            return Ok(Err(sms::SmsError::InvalidRequest(format!(
                "body is over {MAX_SMS_BODY} characters"
            ))));
        }
        let result = tenant.justcall.send(&from, &to, &message.body, &message.media_urls).await;
        match &result {
            Ok(id) => {
                tracing::info!(tenant = %tenant.config.id, plugin = %self.inv.plugin, event = %self.inv.event_id, %to, id = %id, "sms sent")
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant.config.id, plugin = %self.inv.plugin, event = %self.inv.event_id, %to, error = %e, "sms send failed")
            }
        }
        Ok(result.map_err(sms_error))
    }

    async fn get_message(&mut self, id: String) -> wasmtime::Result<Result<sms::Message, sms::SmsError>> {
        Ok(self.inv.tenant.justcall.get(&id).await.map(wit_message).map_err(sms_error))
    }

    async fn list_messages(&mut self, page: u32, per_page: u32) -> wasmtime::Result<Result<Vec<sms::Message>, sms::SmsError>> {
        Ok(self
            .inv
            .tenant
            .justcall
            .list(page, per_page)
            .await
            .map(|v| v.into_iter().map(wit_message).collect())
            .map_err(sms_error))
    }
}

impl http::Host for PluginCtx {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        if self.http_calls >= self.limits.http_per_event {
            return Err(wasmtime::Error::new(LimitBreach::HttpPerEvent(self.limits.http_per_event)));
        }
        self.http_calls += 1;
        let mut url = match reqwest::Url::parse(&req.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => {
                return Ok(Err(http::HttpError::InvalidRequest(format!(
                    "scheme `{}` is not http or https",
                    u.scheme()
                ))));
            }
            Err(e) => return Ok(Err(http::HttpError::InvalidRequest(format!("bad URL: {e}")))),
        };
        let mut method = match reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => return Ok(Err(http::HttpError::InvalidRequest(format!("bad method `{}`", req.method)))),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &req.headers {
            let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) else {
                return Ok(Err(http::HttpError::InvalidRequest(format!("bad header `{k}`"))));
            };
            headers.append(name, value);
        }
        let mut body = Some(req.body);
        // Follow redirects by hand, so every hop passes the same checks.
        let mut hops = 0;
        let mut resp = loop {
            if let Err(reason) = crate::egress::check(&url, &self.inv.manifest.allowed_hosts).await {
                let reason = if hops > 0 { format!("redirect refused: {reason}") } else { reason };
                return Ok(Err(http::HttpError::NotAllowed(reason)));
            }
            let mut builder = self
                .inv
                .http
                .request(method.clone(), url.clone())
                .timeout(self.remaining())
                .headers(headers.clone());
            if let Some(b) = &body {
                builder = builder.body(b.clone());
            }
            let resp = match builder.send().await {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Ok(Err(http::HttpError::Timeout)),
                Err(e) => return Ok(Err(http::HttpError::Transport(e.without_url().to_string()))),
            };
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            match (resp.status().is_redirection(), location) {
                (true, Some(location)) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    url = match url.join(&location) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                        _ => {
                            return Ok(Err(http::HttpError::NotAllowed(format!(
                                "redirect refused: bad location `{location}`"
                            ))));
                        }
                    };
                    if matches!(resp.status().as_u16(), 301..=303) && method != reqwest::Method::HEAD {
                        method = reqwest::Method::GET;
                        body = None;
                    }
                }
                _ => break resp,
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let cap = self.limits.http_response_bytes;
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > cap {
                        return Ok(Err(http::HttpError::ResponseTooLarge));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Ok(Err(http::HttpError::Timeout)),
                Err(e) => return Ok(Err(http::HttpError::Transport(e.without_url().to_string()))),
            }
        }
        Ok(Ok(http::Response { status, headers, body }))
    }
}

fn kv_storage(e: crate::db::DbError) -> kv::KvError {
    kv::KvError::Storage(e.to_string())
}

impl kv::Host for PluginCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let t = &self.inv.tenant.config.id;
        Ok(self.inv.db.kv_get(t, &self.inv.plugin, &key).await.map_err(kv_storage))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), kv::KvError>> {
        if key.len() > MAX_KV_KEY {
            return Ok(Err(kv::KvError::QuotaExceeded(format!("key is over {MAX_KV_KEY} bytes"))));
        }
        if value.len() > MAX_KV_VALUE {
            return Ok(Err(kv::KvError::QuotaExceeded(format!("value is over {MAX_KV_VALUE} bytes"))));
        }
        let t = &self.inv.tenant.config.id;
        let (keys, bytes) = match self.inv.db.kv_usage(t, &self.inv.plugin, &key).await {
            Ok(u) => u,
            Err(e) => return Ok(Err(kv_storage(e))),
        };
        if keys + 1 > self.limits.kv_keys {
            return Ok(Err(kv::KvError::QuotaExceeded(format!(
                "the store holds its maximum of {} keys",
                self.limits.kv_keys
            ))));
        }
        if bytes + (key.len() + value.len()) as u64 > self.limits.kv_bytes {
            return Ok(Err(kv::KvError::QuotaExceeded(format!(
                "the store would exceed {} bytes",
                self.limits.kv_bytes
            ))));
        }
        Ok(self.inv.db.kv_put(t, &self.inv.plugin, &key, Some(value)).await.map_err(kv_storage))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), kv::KvError>> {
        let t = &self.inv.tenant.config.id;
        Ok(self.inv.db.kv_put(t, &self.inv.plugin, &key, None).await.map_err(kv_storage))
    }

    async fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, kv::KvError>> {
        let t = &self.inv.tenant.config.id;
        Ok(self.inv.db.kv_keys(t, &self.inv.plugin, &prefix).await.map_err(kv_storage))
    }
}

impl config::Host for PluginCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.inv.manifest.config.get(&key).cloned())
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.inv.manifest.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

impl log::Host for PluginCtx {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if self.log_truncated {
            return Ok(());
        }
        self.log_bytes += message.len();
        let (tenant, plugin, event) = (&self.inv.tenant.config.id, &self.inv.plugin, &self.inv.event_id);
        if self.log_bytes > self.limits.log_bytes {
            self.log_truncated = true;
            let cap = self.limits.log_bytes;
            tracing::warn!(target: "plugin", %tenant, %plugin, %event, "[log truncated: over {cap} bytes for this event]");
            return Ok(());
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", %tenant, %plugin, %event, "{message}"),
        }
        Ok(())
    }
}
