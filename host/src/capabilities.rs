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
    /// The delivery being run, whose side effects are journaled so a retry
    /// does not repeat them; `None` runs without a journal.
    pub delivery_id: Option<i64>,
    /// `plugin test`: record side effects here instead of making them.
    pub dry_run: Option<crate::author::CallLog>,
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
    sms_sent: u32,
    http_calls: u32,
    /// Side-effecting calls so far: the next one's journal sequence number.
    effects: u32,
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
            inv,
            limits,
            sms_sent: 0,
            http_calls: 0,
            effects: 0,
            log_bytes: 0,
            log_truncated: false,
        }
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

/// A hash of a side-effecting request, over length-prefixed parts.
fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn journal_unavailable(e: crate::db::DbError) -> JustCallError {
    JustCallError::Unavailable(format!("cannot journal the send: {e}"))
}

/// Sends per SMS call while JustCall answers 5xx and the message is not found.
const SMS_SEND_TRIES: u32 = 3;

impl PluginCtx {
    fn next_effect(&mut self) -> u32 {
        self.effects += 1;
        self.effects - 1
    }

    /// Sends an SMS at most once per delivery: the send is journaled before
    /// it is made; a later attempt gets a journaled success back, and looks
    /// up a send whose outcome was never learnt before sending again.
    async fn send_journaled(&mut self, from: &str, to: &str, body: &str, media: &[String]) -> Result<String, JustCallError> {
        let seq = self.next_effect();
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::SmsSend {
                from: from.to_string(),
                to: to.to_string(),
                body: body.to_string(),
            });
            return Ok(format!("dry-run-{seq}"));
        }
        let justcall = &self.inv.tenant.justcall;
        let Some(delivery) = self.inv.delivery_id else {
            return justcall.send(from, to, body, media, self.deadline).await;
        };
        let db = self.inv.db.clone();
        let hash = request_hash(&[b"sms", from.as_bytes(), to.as_bytes(), body.as_bytes(), media.join("\n").as_bytes()]);
        match db.journal_get(delivery, seq).await.map_err(journal_unavailable)? {
            Some(e) if e.request_hash == hash && e.state == "done" => {
                let id = e
                    .result
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                tracing::info!(delivery, seq, %id, "sms sent by an earlier attempt; returning its journaled result");
                return Ok(id);
            }
            Some(e) if e.request_hash == hash => {
                // An earlier attempt started this send and never learnt how it
                // ended: look for it before sending again.
                if let Some(id) = self.reconcile(delivery, seq, from, to, body, e.started_ms).await? {
                    return Ok(id);
                }
            }
            _ => {}
        }
        let mut started_ms = db.journal_begin(delivery, seq, hash.clone()).await.map_err(journal_unavailable)?;
        let mut tries = 1;
        loop {
            match self.inv.tenant.justcall.send(from, to, body, media, self.deadline).await {
                Ok(id) => {
                    let result = serde_json::json!({ "id": id }).to_string();
                    self.inv
                        .db
                        .journal_end(delivery, seq, true, Some(result), (!id.is_empty()).then_some(id.clone()));
                    return Ok(id);
                }
                Err(JustCallError::Status { status, message }) if status >= 500 => {
                    // JustCall answered 5xx: it may have sent anyway.
                    if let Some(id) = self.reconcile(delivery, seq, from, to, body, started_ms).await? {
                        return Ok(id);
                    }
                    if tries >= SMS_SEND_TRIES || Instant::now() >= self.deadline {
                        self.inv.db.journal_end(delivery, seq, false, None, None);
                        return Err(JustCallError::Status { status, message });
                    }
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
                    started_ms = self
                        .inv
                        .db
                        .journal_begin(delivery, seq, hash.clone())
                        .await
                        .map_err(journal_unavailable)?;
                }
                // Timed out: the entry stays `started`, so the next attempt
                // reconciles before it sends.
                Err(e @ JustCallError::Unknown(_)) => return Err(e),
                Err(e) => {
                    self.inv.db.journal_end(delivery, seq, false, None, None);
                    return Err(e);
                }
            }
        }
    }

    async fn reconcile(
        &mut self,
        delivery: i64,
        seq: u32,
        from: &str,
        to: &str,
        body: &str,
        started_ms: i64,
    ) -> Result<Option<String>, JustCallError> {
        reconcile(
            &self.inv.db,
            &self.inv.tenant.justcall,
            self.deadline,
            (delivery, seq),
            (from, to, body),
            started_ms,
        )
        .await
    }

    /// Journals a non-GET/HEAD request around `perform`: a request that
    /// succeeded (2xx) on an earlier attempt is answered from the journal.
    async fn http_journaled(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let method = req.method.to_ascii_uppercase();
        let (Some(delivery), false) = (self.inv.delivery_id, matches!(method.as_str(), "GET" | "HEAD")) else {
            return self.http_perform(req).await;
        };
        let seq = self.next_effect();
        let mut headers: Vec<String> = req.headers.iter().map(|(k, v)| format!("{}:{v}", k.to_ascii_lowercase())).collect();
        headers.sort();
        let hash = request_hash(&[
            b"http",
            method.as_bytes(),
            req.url.as_bytes(),
            headers.join("\n").as_bytes(),
            &req.body,
        ]);
        let db = self.inv.db.clone();
        match db.journal_get(delivery, seq).await {
            Ok(Some(e)) if e.request_hash == hash && e.state == "done" => {
                if let Some(resp) = e.result.as_deref().and_then(decode_response) {
                    tracing::info!(
                        delivery,
                        seq,
                        "request made by an earlier attempt; returning its journaled response"
                    );
                    return Ok(Ok(resp));
                }
            }
            Ok(_) => {}
            Err(e) => return Ok(Err(http::HttpError::Transport(format!("cannot journal the request: {e}")))),
        }
        if let Err(e) = db.journal_begin(delivery, seq, hash).await {
            return Ok(Err(http::HttpError::Transport(format!("cannot journal the request: {e}"))));
        }
        let result = self.http_perform(req).await;
        match &result {
            Ok(Ok(resp)) if (200..300).contains(&resp.status) => db.journal_end(delivery, seq, true, Some(encode_response(resp)), None),
            _ => db.journal_end(delivery, seq, false, None, None),
        }
        result
    }
}

/// Finds a message JustCall sent for journal entry `(delivery, seq)` since
/// `started_ms` and not already claimed by another entry; records it.
async fn reconcile(
    db: &Db,
    justcall: &JustCallClient,
    deadline: Instant,
    (delivery, seq): (i64, u32),
    (from, to, body): (&str, &str, &str),
    started_ms: i64,
) -> Result<Option<String>, JustCallError> {
    let since = chrono::DateTime::from_timestamp_millis(started_ms).unwrap_or_else(chrono::Utc::now);
    let candidates = justcall.find_sent(from, to, body, since, deadline).await?;
    for m in candidates {
        if !db.journal_claimed(&m.id).await.map_err(journal_unavailable)? {
            tracing::info!(delivery, seq, id = %m.id, "sms with an unknown outcome was sent; reconciled, not sent again");
            let result = serde_json::json!({ "id": m.id }).to_string();
            db.journal_end(delivery, seq, true, Some(result), Some(m.id.clone()));
            return Ok(Some(m.id));
        }
    }
    tracing::info!(delivery, seq, "sms with an unknown outcome was not sent; sending it");
    Ok(None)
}

fn encode_response(r: &http::Response) -> String {
    use base64::Engine as _;
    serde_json::json!({
        "status": r.status,
        "headers": r.headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
    })
    .to_string()
}

fn decode_response(s: &str) -> Option<http::Response> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(s).ok()?;
    Some(http::Response {
        status: u16::try_from(v["status"].as_u64()?).ok()?,
        headers: serde_json::from_value(v["headers"].clone()).ok()?,
        body: base64::engine::general_purpose::STANDARD.decode(v["body"].as_str()?).ok()?,
    })
}

fn sms_error(e: JustCallError) -> sms::SmsError {
    match e {
        JustCallError::Status { status, message } => sms::SmsError::Provider(sms::ProviderError { status, message }),
        JustCallError::NotFound => sms::SmsError::NotFound,
        JustCallError::Unavailable(m) | JustCallError::Decode(m) => sms::SmsError::Unavailable(m),
        JustCallError::Unknown(m) => sms::SmsError::Unavailable(format!("outcome unknown ({m}); it is reconciled before any resend")),
        JustCallError::RateLimited(d) => sms::SmsError::RateLimited(d.as_millis().max(1) as u64),
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
        let result = self.send_journaled(&from, &to, &message.body, &message.media_urls).await;
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
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::SmsRead {
                what: format!("get-message {id}"),
            });
            return Ok(Err(sms::SmsError::NotFound));
        }
        let deadline = self.deadline;
        Ok(self
            .inv
            .tenant
            .justcall
            .get(&id, deadline)
            .await
            .map(wit_message)
            .map_err(sms_error))
    }

    async fn list_messages(&mut self, page: u32, per_page: u32) -> wasmtime::Result<Result<Vec<sms::Message>, sms::SmsError>> {
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::SmsRead {
                what: format!("list-messages page {page}, {per_page} per page"),
            });
            return Ok(Ok(vec![]));
        }
        Ok(self
            .inv
            .tenant
            .justcall
            .list(page, per_page, self.deadline)
            .await
            .map(|v| v.into_iter().map(wit_message).collect())
            .map_err(sms_error))
    }
}

impl http::Host for PluginCtx {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        if let Some(log) = self.inv.dry_run.clone() {
            if self.http_calls >= self.limits.http_per_event {
                return Err(wasmtime::Error::new(LimitBreach::HttpPerEvent(self.limits.http_per_event)));
            }
            self.http_calls += 1;
            log.push(crate::author::HostCall::Http {
                method: req.method.to_ascii_uppercase(),
                url: req.url,
                body: String::from_utf8_lossy(&req.body).into_owned(),
            });
            return Ok(Ok(http::Response {
                status: 200,
                headers: vec![],
                body: vec![],
            }));
        }
        self.http_journaled(req).await
    }
}

impl PluginCtx {
    async fn http_perform(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
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
            let sent = match crate::lanes::on_io(builder.send()).await {
                Ok(sent) => sent,
                Err(closed) => return Ok(Err(http::HttpError::Transport(closed.to_string()))),
            };
            let resp = match sent {
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
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::KvSet {
                key: key.clone(),
                value: String::from_utf8_lossy(&value).into_owned(),
            });
        }
        Ok(self.inv.db.kv_put(t, &self.inv.plugin, &key, Some(value)).await.map_err(kv_storage))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), kv::KvError>> {
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::KvDelete { key: key.clone() });
        }
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
        if let Some(log) = &self.inv.dry_run {
            log.push(crate::author::HostCall::Log {
                level: match level {
                    log::Level::Trace => "trace",
                    log::Level::Debug => "debug",
                    log::Level::Info => "info",
                    log::Level::Warn => "warn",
                    log::Level::Error => "error",
                }
                .to_string(),
                message: message.clone(),
            });
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
