//! The WIT surface: the per-invocation store data ([`PluginCtx`]) and the host
//! side of every import (sms, http, kv, config, log). Each call is checked
//! here against the tenant's numbers, opt-outs, quotas and limits, the same
//! way for every run; what it then does to the world is the [`Effects`]'.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::{Limits, Manifest};
use crate::domain::normalize_e164;
use crate::engine::bindings::{config, http, kv, log, sms};
use crate::engine::effects::{Effects, OutgoingSms};
use crate::engine::justcall::{ApiMessage, JustCallError};
use crate::engine::stdio::Capture;
use crate::engine::tenant::Tenant;
use crate::engine::trace::Tracer;
use crate::engine::wasi_http::{HttpGate, OverQuota};
use crate::storage::{Db, KvQuota};

/// Largest KV key, bytes.
pub const MAX_KV_KEY: usize = 512;
/// Largest KV value, bytes.
pub const MAX_KV_VALUE: usize = 64 << 10;
/// Longest SMS body JustCall accepts.
pub const MAX_SMS_BODY: usize = 1600;
/// Most media URLs on one MMS.
pub const MAX_MEDIA_URLS: usize = 10;

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

/// Everything one invocation needs besides the wasm instance.
#[derive(Debug)]
pub struct Invocation {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Database for KV and opt-out state.
    pub db: Db,
    /// The event being handled.
    pub event_id: Arc<str>,
    /// What the plugin's calls do: [`crate::engine::effects::Live`] or
    /// [`crate::engine::effects::Recording`].
    pub effects: Arc<dyn Effects>,
    /// Where the attempt's logs and host calls are traced.
    pub trace: Arc<Tracer>,
    /// Where its KV reads and writes go (a shadow run's writes stay apart).
    pub kv: crate::engine::overlay::KvView,
    /// Its secrets: `config.get` answers them (over the manifest's values),
    /// and they are scrubbed from its log lines.
    pub secrets: crate::engine::secrets::PluginSecrets,
    /// Its timer changes, applied only if the delivery succeeds.
    pub timers: Arc<crate::engine::timer_stage::TimerStage>,
}

/// Tracks linear-memory growth against the plugin's cap and remembers a refusal.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Set when a growth request was refused.
    pub memory_denied: bool,
    trace: Arc<Tracer>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        if ok {
            self.trace.memory(desired);
        } else {
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
    wasi_http: WasiHttpCtx,
    table: ResourceTable,
    /// Outbound HTTP, for both HTTP interfaces.
    http: HttpGate,
    /// Memory accounting.
    pub limiter: Limiter,
    inv: Invocation,
    limits: Limits,
    /// When the invocation must end.
    pub deadline: Instant,
    sms_sent: u32,
    log_bytes: usize,
    log_truncated: bool,
    stdout: Capture,
    stderr: Capture,
    /// The last lines of stderr, for a failure's reason.
    stderr_tail: Vec<String>,
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
    /// arguments or network (every socket call is refused): only clocks,
    /// random, an empty stdin, and stdout/stderr captured for the plugin's log.
    pub fn new(inv: Invocation) -> PluginCtx {
        let limits = inv.manifest.limits;
        let (stdout, stderr) = (Capture::new(limits.log_bytes), Capture::new(limits.log_bytes));
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let deadline = Instant::now() + limits.timeout;
        let http = HttpGate::new(
            inv.effects.clone(),
            &limits,
            deadline,
            (&inv.tenant.config.id, &inv.plugin, &inv.event_id),
        )
        .traced(inv.trace.clone());
        PluginCtx {
            wasi,
            wasi_http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            http,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
                memory_denied: false,
                trace: inv.trace.clone(),
            },
            deadline,
            inv,
            limits,
            sms_sent: 0,
            log_bytes: 0,
            log_truncated: false,
            stdout,
            stderr,
            stderr_tail: Vec::new(),
        }
    }

    /// Writes what the guest printed since the last host call to the
    /// plugin's log (stdout at info, stderr at error, within the log cap),
    /// so printed lines keep their place among its other calls.
    fn flush_stdio(&mut self) {
        let (out, out_dropped) = self.stdout.take();
        let (err, err_dropped) = self.stderr.take();
        for line in &out {
            self.write_log(log::Level::Info, line);
        }
        for line in &err {
            self.write_log(log::Level::Error, line);
        }
        if out_dropped + err_dropped > 0 {
            let cap = self.limits.log_bytes;
            let dropped = out_dropped + err_dropped;
            self.write_log(
                log::Level::Warn,
                &format!("[{dropped} bytes of output dropped: over {cap} bytes for this event]"),
            );
        }
        self.stderr_tail.extend(err);
        let mut kept: usize = self.stderr_tail.iter().map(String::len).sum();
        while kept > crate::engine::stdio::FAILURE_TAIL && self.stderr_tail.len() > 1 {
            kept -= self.stderr_tail.remove(0).len();
        }
    }

    /// Flushes the guest's output at the end of the invocation and returns
    /// the end of its stderr, which explains a trap.
    pub fn drain_output(&mut self) -> Option<String> {
        self.flush_stdio();
        crate::engine::stdio::tail(&std::mem::take(&mut self.stderr_tail), crate::engine::stdio::FAILURE_TAIL)
    }

    /// Logs (warn) a host call the host refused, with who made it and why.
    fn refused(&self, call: &'static str, reason: &str) {
        let who = (self.inv.tenant.config.id.as_str(), &*self.inv.plugin, &*self.inv.event_id);
        crate::engine::wasi_http::log_refused(who, call, reason);
    }

    /// [`Self::refused`] for `sms.send`, giving back the plugin's error.
    fn sms_refused(&self, reason: &str, error: sms::SmsError) -> sms::SmsError {
        self.refused("sms.send", reason);
        error
    }

    /// One line of the plugin's log: counted against its cap, shown to the
    /// effects, and written with control characters escaped so plugin text
    /// cannot forge log lines.
    fn write_log(&mut self, level: log::Level, message: &str) {
        if self.log_truncated {
            return;
        }
        self.log_bytes += message.len();
        let (tenant, plugin, event) = (&self.inv.tenant.config.id, &self.inv.plugin, &self.inv.event_id);
        if self.log_bytes > self.limits.log_bytes {
            self.log_truncated = true;
            let cap = self.limits.log_bytes;
            tracing::warn!(target: "plugin", %tenant, %plugin, %event, "[log truncated: over {cap} bytes for this event]");
            return;
        }
        let name = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        let message = crate::engine::secrets::scrub(&self.inv.secrets, message);
        let message = crate::domain::cap(&message, crate::domain::MAX_RECORD);
        self.inv.effects.logged(name, &message);
        self.inv.trace.log(name, &message);
        let message = crate::domain::escape_controls(&message);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", %tenant, %plugin, %event, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", %tenant, %plugin, %event, "{message}"),
        }
    }

    /// The memory cap, in MiB.
    pub fn limiter_cap_mib(&self) -> usize {
        self.limiter.memory_bytes >> 20
    }
}

impl WasiHttpView for PluginCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http,
            table: &mut self.table,
            ctx: &mut self.wasi_http,
        }
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

fn sms_error(e: JustCallError) -> sms::SmsError {
    match e {
        JustCallError::Status { status, message } => sms::SmsError::Provider(sms::ProviderError { status, message }),
        JustCallError::NotFound => sms::SmsError::NotFound,
        JustCallError::Unavailable(m) | JustCallError::Decode(m) => sms::SmsError::Unavailable(m),
        JustCallError::Unknown(m) => sms::SmsError::Unavailable(format!("outcome unknown ({m}); it is reconciled before any resend")),
        JustCallError::RateLimited(d) => sms::SmsError::RateLimited(d.as_millis().max(1) as u64),
        JustCallError::Invalid(m) => sms::SmsError::InvalidRequest(m),
    }
}

/// A failed read as the plugin sees it: a read changes nothing, so an
/// unanswered one is just unavailable (never "outcome unknown").
fn read_error(e: JustCallError) -> sms::SmsError {
    match e {
        JustCallError::Unknown(m) => sms::SmsError::Unavailable(format!("JustCall did not answer: {m}")),
        e => sms_error(e),
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

/// An SMS error as a trace's result.
fn sms_result(r: &Result<String, sms::SmsError>) -> Result<String, String> {
    match r {
        Ok(id) => Ok(format!("id {id}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

impl sms::Host for PluginCtx {
    async fn send(&mut self, message: sms::OutgoingSms) -> wasmtime::Result<Result<String, sms::SmsError>> {
        self.flush_stdio();
        let args = format!("from {} to {} {:?}", message.from, message.to, message.body);
        let traced = self.inv.trace.begin("sms.send", &args);
        let result = self.send_sms(message).await;
        let summary = match &result {
            Ok(r) => sms_result(r),
            Err(breach) => Err(breach.to_string()),
        };
        self.inv.trace.end(traced, summary);
        result
    }

    async fn get_message(&mut self, id: String) -> wasmtime::Result<Result<sms::Message, sms::SmsError>> {
        let traced = self.inv.trace.begin("sms.get-message", &id);
        let result = self.get_sms(id).await;
        let summary = result.as_ref().map(|m| format!("message {}", m.id)).map_err(|e| format!("{e:?}"));
        self.inv.trace.end(traced, summary);
        Ok(result)
    }

    async fn list_messages(&mut self, page: u32, per_page: u32) -> wasmtime::Result<Result<Vec<sms::Message>, sms::SmsError>> {
        let traced = self.inv.trace.begin("sms.list-messages", &format!("page {page} of {per_page}"));
        let deadline = self.deadline;
        let result = self
            .inv
            .effects
            .sms_list(page, per_page, deadline)
            .await
            .map(|v| v.into_iter().map(wit_message).collect::<Vec<_>>())
            .map_err(read_error);
        let summary = result
            .as_ref()
            .map(|v| format!("{} messages", v.len()))
            .map_err(|e| format!("{e:?}"));
        self.inv.trace.end(traced, summary);
        Ok(result)
    }
}

impl PluginCtx {
    async fn send_sms(&mut self, message: sms::OutgoingSms) -> wasmtime::Result<Result<String, sms::SmsError>> {
        // Every attempt counts, refused or not, so a loop of refused sends
        // still ends at the quota.
        if self.sms_sent >= self.limits.sms_per_event {
            return Err(wasmtime::Error::new(LimitBreach::SmsPerEvent(self.limits.sms_per_event)));
        }
        self.sms_sent += 1;
        let tenant = self.inv.tenant.clone();
        let country = tenant.config.default_country;
        let Some(from) = normalize_e164(&message.from, country)
            .ok()
            .filter(|f| tenant.config.numbers.contains(f))
        else {
            let reason = format!("`{}` is not one of the tenant's numbers", message.from);
            return Ok(Err(self.sms_refused(&reason, sms::SmsError::NotTenantNumber(message.from))));
        };
        let to = match normalize_e164(&message.to, country) {
            Ok(to) => to,
            Err(e) => {
                let reason = format!("`{}` {e}", message.to);
                return Ok(Err(self.sms_refused(&reason, sms::SmsError::InvalidRequest(reason.clone()))));
            }
        };
        match self.inv.db.is_opted_out(&tenant.config.id, &to).await {
            Ok(false) => {}
            Ok(true) => {
                let reason = format!("{to} has opted out");
                return Ok(Err(self.sms_refused(&reason, sms::SmsError::OptedOut(to))));
            }
            Err(e) => return Ok(Err(sms::SmsError::Unavailable(format!("cannot check opt-out state: {e}")))),
        }
        let invalid = if message.body.trim().is_empty() && message.media_urls.is_empty() {
            Some("empty body".to_string())
        } else if message.body.chars().count() > MAX_SMS_BODY {
            Some(format!("body is over {MAX_SMS_BODY} characters"))
        } else if message.media_urls.len() > MAX_MEDIA_URLS {
            Some(format!("{} media URLs; at most {MAX_MEDIA_URLS}", message.media_urls.len()))
        } else {
            // JustCall fetches media: only public https URLs are passed on.
            message.media_urls.iter().enumerate().find_map(|(i, url)| {
                crate::engine::egress::public_https(url)
                    .err()
                    .map(|why| format!("media_urls[{i}]: {why}"))
            })
        };
        if let Some(reason) = invalid {
            return Ok(Err(self.sms_refused(&reason, sms::SmsError::InvalidRequest(reason.clone()))));
        }
        let sms = OutgoingSms {
            from: &from,
            to: &to,
            body: &message.body,
            media: &message.media_urls,
        };
        let result = self.inv.effects.sms_send(sms, self.deadline).await;
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

    async fn get_sms(&mut self, id: String) -> Result<sms::Message, sms::SmsError> {
        // Checked here too, so `plugin test` refuses what the server would.
        crate::engine::justcall::check_message_id(&id).map_err(read_error)?;
        let deadline = self.deadline;
        self.inv.effects.sms_get(&id, deadline).await.map(wit_message).map_err(read_error)
    }
}

impl http::Host for PluginCtx {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        self.flush_stdio();
        if let Err(OverQuota(n)) = self.http.count() {
            return Err(wasmtime::Error::new(LimitBreach::HttpPerEvent(n)));
        }
        Ok(self.http.send("http.send", req).await)
    }
}

fn kv_storage(e: crate::storage::DbError) -> kv::KvError {
    kv::KvError::Storage(e.to_string())
}

/// A KV result as a trace's result.
fn kv_result<T>(r: &Result<T, kv::KvError>, ok: impl FnOnce(&T) -> String) -> Result<String, String> {
    r.as_ref().map(ok).map_err(|e| format!("{e:?}"))
}

impl kv::Host for PluginCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let traced = self.inv.trace.begin("kv.get", &key);
        let t = &self.inv.tenant.config.id;
        let result = self.inv.kv.get(&self.inv.db, t, &self.inv.plugin, &key).await.map_err(kv_storage);
        let summary = kv_result(&result, |v| v.as_ref().map_or("absent".into(), |v| format!("{} bytes", v.len())));
        self.inv.trace.end(traced, summary);
        Ok(result)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), kv::KvError>> {
        self.flush_stdio();
        let traced = self.inv.trace.begin("kv.set", &format!("{key} ({} bytes)", value.len()));
        let result = self.kv_set(key, value).await;
        let summary = kv_result(&result, |_| String::new());
        self.inv.trace.end(traced, summary);
        Ok(result)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), kv::KvError>> {
        self.flush_stdio();
        let traced = self.inv.trace.begin("kv.delete", &key);
        self.inv.effects.kv_written(&key, None);
        let t = &self.inv.tenant.config.id;
        let result = self
            .inv
            .kv
            .delete(&self.inv.db, t, &self.inv.plugin, &key)
            .await
            .map_err(kv_storage);
        let summary = kv_result(&result, |_| String::new());
        self.inv.trace.end(traced, summary);
        Ok(result)
    }

    async fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, kv::KvError>> {
        let traced = self.inv.trace.begin("kv.list-keys", &prefix);
        let t = &self.inv.tenant.config.id;
        let result = self
            .inv
            .kv
            .keys(&self.inv.db, t, &self.inv.plugin, &prefix)
            .await
            .map_err(kv_storage);
        let summary = kv_result(&result, |k| format!("{} keys", k.len()));
        self.inv.trace.end(traced, summary);
        Ok(result)
    }
}

impl PluginCtx {
    /// The invocation this store runs.
    pub(crate) fn invocation(&self) -> &Invocation {
        &self.inv
    }

    /// The plugin's effective limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `kv.set` within the key and value bounds and the quotas.
    async fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        if key.len() > MAX_KV_KEY {
            return Err(kv::KvError::QuotaExceeded(format!("key is over {MAX_KV_KEY} bytes")));
        }
        if key.contains('\0') {
            return Err(kv::KvError::QuotaExceeded("key contains NUL".into()));
        }
        if value.len() > MAX_KV_VALUE {
            return Err(kv::KvError::QuotaExceeded(format!("value is over {MAX_KV_VALUE} bytes")));
        }
        let config = &self.inv.tenant.config;
        let quota = KvQuota {
            plugin_keys: self.limits.kv_keys,
            plugin_bytes: self.limits.kv_bytes,
            tenant_keys: config.kv_total.keys,
            tenant_bytes: config.kv_total.bytes,
        };
        match self
            .inv
            .kv
            .set(&self.inv.db, &config.id, &self.inv.plugin, &key, value.clone(), quota)
            .await
        {
            Ok(Ok(())) => {
                self.inv.effects.kv_written(&key, Some(&value));
                Ok(())
            }
            Ok(Err(refused)) => Err(kv::KvError::QuotaExceeded(refused.to_string())),
            Err(e) => Err(kv_storage(e)),
        }
    }
}

impl config::Host for PluginCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let secret = self.inv.secrets.get(&key).map(|s| s.expose().to_string());
        Ok(secret.or_else(|| self.inv.manifest.config.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let mut all = self.inv.manifest.config.clone();
        all.extend(self.inv.secrets.iter().map(|(k, s)| (k.clone(), s.expose().to_string())));
        Ok(all.into_iter().collect())
    }
}

impl log::Host for PluginCtx {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.flush_stdio();
        self.write_log(level, &message);
        Ok(())
    }
}
