//! Configuration: the server's TOML file, per-plugin manifests, secret
//! references (`env:NAME`), and errors that name the file, line and key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::event::{EventKind, normalize_e164};

/// Host-wide ceilings that no manifest may exceed.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// The largest linear memory a plugin may ask for.
pub const MAX_MEMORY_MB: u64 = 512;
/// Deadline per event when the manifest sets none.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Memory cap when the manifest sets none.
pub const DEFAULT_MEMORY_MB: u64 = 64;

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path (`tenants.acme.webhook_secret`), or `(file)` for
    /// problems with the file as a whole.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, src: &str, span: Option<std::ops::Range<usize>>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: span.map(|s| line_of(src, s.start)),
            key: key.into(),
            message: message.into(),
        }
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How a tenant's webhooks prove they come from JustCall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WebhookAuth {
    /// JustCall's `x-justcall-signature` v1 scheme.
    #[serde(rename = "justcall-v1")]
    JustCallV1,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    /// No authentication: dev mode only.
    #[serde(rename = "none")]
    None,
}

/// Which JustCall REST API dialect a tenant's account speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiDialect {
    /// The integration guide's `/api/v2/texts/*` with `Bearer key:secret`.
    #[serde(rename = "seed")]
    Seed,
    /// JustCall's v2.1 `/texts*` with a plain `key:secret` header.
    #[serde(rename = "v2.1")]
    V21,
}

/// One tenant, with every secret resolved.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// The tenant id (the `{tenant}` in `/webhooks/{tenant}`).
    pub id: String,
    /// The tenant's JustCall numbers, E.164.
    pub numbers: Vec<String>,
    /// How webhooks are authenticated.
    pub webhook_auth: WebhookAuth,
    /// The signing secret, absent only with [`WebhookAuth::None`].
    pub webhook_secret: Option<Secret>,
    /// The JustCall API dialect.
    pub justcall_api: ApiDialect,
    /// Base URL of the JustCall API.
    pub justcall_base_url: reqwest::Url,
    /// JustCall API key.
    pub justcall_api_key: Secret,
    /// JustCall API secret.
    pub justcall_api_secret: Secret,
    /// Limits for this tenant's plugins, beneath each manifest's `[limits]`.
    pub limits: LimitOverrides,
    /// JustCall API requests per minute Switchboard allows itself for this
    /// tenant (default: the plan's limit, Team's 30 if no plan is named).
    pub justcall_rate_per_minute: u32,
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// `<plugins_dir>/<tenant>/<name>.wasm` (+ `<name>.toml`).
    pub plugins_dir: PathBuf,
    /// How JustCall reaches us, without a trailing slash; the `webhook_url` in
    /// JustCall v1 signatures is `{public_url}/webhooks/{tenant}`.
    pub public_url: String,
    /// Tenants by id.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Dev mode: allows `webhook_auth = "none"` and mounts the JustCall simulator.
    pub dev: bool,
    /// How far a signed webhook's timestamp may be from now.
    pub signature_tolerance: Duration,
    /// How many plugin invocations may run at once.
    pub max_concurrent_invocations: u32,
    /// The share of one core (percent) that each tenant's long-running
    /// invocations get between them; see [`crate::lanes`].
    pub long_run_cpu_percent: u32,
    /// Bearer token for `/admin/*`; without one the admin API is off.
    pub admin_token: Option<Secret>,
    /// Retry schedule, dedupe window and database lock wait.
    pub delivery: crate::db::DbOptions,
}

impl Config {
    /// The URL JustCall signs for this tenant's webhooks.
    pub fn webhook_url(&self, tenant: &str) -> String {
        format!("{}/webhooks/{tenant}", self.public_url)
    }

    /// Reads and validates a config file; `env:NAME` values are read from the
    /// process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, "", None, "(file)", format!("cannot read: {e}")))?;
        Self::parse(path, &src, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `env` resolves `env:NAME` references.
    pub fn parse(path: &Path, src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| toml_error(path, src, &e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let listen_str = raw.listen.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_str.parse().map_err(|e| {
            ConfigError::new(
                path,
                src,
                raw.listen.as_ref().map(|s| s.span()),
                "listen",
                format!("`{listen_str}` is not an address: {e}"),
            )
        })?;
        let public_url = match &raw.public_url {
            Some(u) => {
                reqwest::Url::parse(u.get_ref())
                    .map_err(|e| ConfigError::new(path, src, Some(u.span()), "public_url", format!("not a URL: {e}")))?;
                u.get_ref().trim_end_matches('/').to_string()
            }
            None => format!("http://{listen}"),
        };
        let mut tenants = BTreeMap::new();
        for (id, t) in &raw.tenants {
            let tenant = resolve_tenant(path, src, id, t, env)?;
            tenants.insert(id.clone(), tenant);
        }
        let delivery = delivery_options(path, src, &raw)?;
        let long_run_cpu_percent = long_run_cpu_percent(path, src, &raw)?;
        let cfg = Config {
            listen,
            data_dir: base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from("data"))),
            plugins_dir: base.join(raw.plugins_dir.unwrap_or_else(|| PathBuf::from("plugins.d"))),
            public_url,
            tenants,
            dev: false,
            signature_tolerance: Duration::from_secs(raw.signature_tolerance_secs.unwrap_or(300)),
            max_concurrent_invocations: raw.max_concurrent_invocations.unwrap_or(64),
            long_run_cpu_percent,
            admin_token: match &raw.admin_token {
                Some(t) => Some(resolve_secret(path, src, "admin_token", t, env)?),
                None => None,
            },
            delivery,
        };
        for t in cfg.tenants.values() {
            if t.webhook_auth == WebhookAuth::None {
                return Err(ConfigError::new(
                    path,
                    src,
                    raw.tenants[&t.id].webhook_auth.as_ref().map(|s| s.span()),
                    format!("tenants.{}.webhook_auth", t.id),
                    "\"none\" is allowed only in dev mode (`switchboard dev`); use \"justcall-v1\" or \"standard-webhooks\"",
                ));
            }
        }
        Ok(cfg)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    public_url: Option<Spanned<String>>,
    signature_tolerance_secs: Option<u64>,
    max_concurrent_invocations: Option<u32>,
    long_run_cpu_percent: Option<Spanned<u32>>,
    admin_token: Option<Spanned<String>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
    dedupe_window_secs: Option<Spanned<u64>>,
    db_busy_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
}

/// Default share of one core for long-running invocations, in percent: low
/// enough that a tenant spinning on every event leaves the others' latency
/// as it was (see the neighbour benchmark).
pub const DEFAULT_LONG_RUN_CPU_PERCENT: u32 = 10;

fn long_run_cpu_percent(path: &Path, src: &str, raw: &RawConfig) -> Result<u32, ConfigError> {
    match &raw.long_run_cpu_percent {
        None => Ok(DEFAULT_LONG_RUN_CPU_PERCENT),
        Some(p) if (1..=100).contains(p.get_ref()) => Ok(*p.get_ref()),
        Some(p) => Err(ConfigError::new(
            path,
            src,
            Some(p.span()),
            "long_run_cpu_percent",
            "must be from 1 to 100 (percent of one core)",
        )),
    }
}

/// Most retries a schedule may list.
pub const MAX_RETRIES: usize = 20;

fn delivery_options(path: &Path, src: &str, raw: &RawConfig) -> Result<crate::db::DbOptions, ConfigError> {
    let mut o = crate::db::DbOptions::default();
    if let Some(d) = &raw.retry_delays_ms {
        if d.get_ref().len() > MAX_RETRIES {
            return Err(ConfigError::new(
                path,
                src,
                Some(d.span()),
                "retry_delays_ms",
                format!("at most {MAX_RETRIES} retries"),
            ));
        }
        o.retry_delays = d.get_ref().iter().map(|ms| Duration::from_millis(*ms)).collect();
    }
    if let Some(w) = &raw.dedupe_window_secs {
        if *w.get_ref() == 0 {
            return Err(ConfigError::new(
                path,
                src,
                Some(w.span()),
                "dedupe_window_secs",
                "must be at least 1",
            ));
        }
        o.dedupe_window = Duration::from_secs(*w.get_ref());
    }
    if let Some(b) = &raw.db_busy_timeout_ms {
        o.busy_timeout = Duration::from_millis(*b.get_ref());
    }
    Ok(o)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    numbers: Spanned<Vec<String>>,
    webhook_auth: Option<Spanned<WebhookAuth>>,
    webhook_secret: Option<Spanned<String>>,
    justcall_api: Option<ApiDialect>,
    justcall_base_url: Option<Spanned<String>>,
    justcall_api_key: Spanned<String>,
    justcall_api_secret: Spanned<String>,
    justcall_plan: Option<JustCallPlan>,
    justcall_rate_per_minute: Option<Spanned<u32>>,
    limits: Option<RawLimits>,
}

/// A JustCall plan, for its API rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JustCallPlan {
    /// 30 requests a minute.
    Team,
    /// 60 requests a minute.
    Pro,
    /// 90 requests a minute.
    Business,
}

impl JustCallPlan {
    /// The plan's documented API requests per minute.
    pub fn per_minute(self) -> u32 {
        match self {
            JustCallPlan::Team => 30,
            JustCallPlan::Pro => 60,
            JustCallPlan::Business => 90,
        }
    }
}

fn toml_error(path: &Path, src: &str, e: &toml::de::Error) -> ConfigError {
    // toml's message names the offending field (`unknown field `x``,
    // `missing field `y``); its span points at the key or value.
    let key = e
        .span()
        .map(|s| src.get(s.clone()).unwrap_or("").trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.contains('\n') && k.len() < 80)
        .unwrap_or_else(|| "(file)".to_string());
    ConfigError::new(path, src, e.span(), key, e.message().trim().replace('\n', " "))
}

fn resolve_secret(
    path: &Path,
    src: &str,
    key: &str,
    value: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let v = value.get_ref();
    if let Some(name) = v.strip_prefix("env:") {
        match env(name) {
            Some(s) if !s.is_empty() => Ok(Secret::new(s)),
            Some(_) => Err(ConfigError::new(
                path,
                src,
                Some(value.span()),
                key,
                format!("environment variable {name} is empty"),
            )),
            None => Err(ConfigError::new(
                path,
                src,
                Some(value.span()),
                key,
                format!("environment variable {name} is not set"),
            )),
        }
    } else if v.is_empty() {
        Err(ConfigError::new(path, src, Some(value.span()), key, "must not be empty"))
    } else {
        Ok(Secret::new(v.clone()))
    }
}

/// Whether `id` may name a tenant: it is a URL path segment and a directory.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn resolve_tenant(
    path: &Path,
    src: &str,
    id: &str,
    t: &RawTenant,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TenantConfig, ConfigError> {
    let k = |field: &str| format!("tenants.{id}.{field}");
    if !valid_tenant_id(id) {
        return Err(ConfigError::new(
            path,
            src,
            None,
            format!("tenants.{id}"),
            "tenant ids use only a-z, 0-9, '-' and '_' (at most 64)",
        ));
    }
    let mut numbers = Vec::new();
    for n in t.numbers.get_ref() {
        let e164 = normalize_e164(n).ok_or_else(|| {
            ConfigError::new(
                path,
                src,
                Some(t.numbers.span()),
                k("numbers"),
                format!("`{n}` is not an E.164 phone number"),
            )
        })?;
        numbers.push(e164);
    }
    if numbers.is_empty() {
        return Err(ConfigError::new(
            path,
            src,
            Some(t.numbers.span()),
            k("numbers"),
            "list at least one JustCall number",
        ));
    }
    let webhook_auth = t.webhook_auth.as_ref().map(|a| *a.get_ref()).unwrap_or(WebhookAuth::JustCallV1);
    let webhook_secret = match (&t.webhook_secret, webhook_auth) {
        (Some(s), _) => Some(resolve_secret(path, src, &k("webhook_secret"), s, env)?),
        (None, WebhookAuth::None) => None,
        (None, _) => {
            return Err(ConfigError::new(
                path,
                src,
                None,
                k("webhook_secret"),
                "required unless webhook_auth = \"none\"",
            ));
        }
    };
    let base = t
        .justcall_base_url
        .as_ref()
        .map(|s| s.get_ref().as_str())
        .unwrap_or("https://api.justcall.io");
    let justcall_base_url = reqwest::Url::parse(base).map_err(|e| {
        ConfigError::new(
            path,
            src,
            t.justcall_base_url.as_ref().map(|s| s.span()),
            k("justcall_base_url"),
            format!("not a URL: {e}"),
        )
    })?;
    Ok(TenantConfig {
        id: id.to_string(),
        numbers,
        webhook_auth,
        webhook_secret,
        justcall_api: t.justcall_api.unwrap_or(ApiDialect::Seed),
        justcall_base_url,
        justcall_api_key: resolve_secret(path, src, &k("justcall_api_key"), &t.justcall_api_key, env)?,
        justcall_api_secret: resolve_secret(path, src, &k("justcall_api_secret"), &t.justcall_api_secret, env)?,
        limits: match &t.limits {
            Some(l) => l.validate(path, src, &format!("tenants.{id}.limits"))?,
            None => LimitOverrides::default(),
        },
        justcall_rate_per_minute: match &t.justcall_rate_per_minute {
            Some(r) if *r.get_ref() == 0 => {
                return Err(ConfigError::new(
                    path,
                    src,
                    Some(r.span()),
                    k("justcall_rate_per_minute"),
                    "must be at least 1",
                ));
            }
            Some(r) => *r.get_ref(),
            None => t.justcall_plan.unwrap_or(JustCallPlan::Team).per_minute(),
        },
    })
}

/// Host ceilings for the per-event quotas.
pub const MAX_SMS_PER_EVENT: u64 = 100;
/// Ceiling for outbound HTTP requests per event.
pub const MAX_HTTP_PER_EVENT: u64 = 100;
/// Ceiling for log bytes per event, KiB.
pub const MAX_LOG_KB: u64 = 1024;
/// Ceiling for the event handed to a plugin, KiB (the webhook body cap).
pub const MAX_EVENT_KB: u64 = 256;
/// Ceiling for elements per table; also the pooling allocator's table size.
pub const MAX_TABLE_ELEMENTS: u64 = 100_000;
/// Ceiling for KV keys per (tenant, plugin).
pub const MAX_KV_KEYS: u64 = 100_000;
/// Ceiling for KV bytes per (tenant, plugin), KiB.
pub const MAX_KV_KB: u64 = 64 << 10;
/// Default wasm stack, KiB.
pub const DEFAULT_STACK_KB: u64 = 512;
/// Ceiling for the wasm stack, KiB.
pub const MAX_STACK_KB: u64 = 1024;
/// Floor for the wasm stack, KiB.
pub const MIN_STACK_KB: u64 = 64;
/// Ceiling for the HTTP response bytes a plugin may read, in KiB.
pub const MAX_HTTP_RESPONSE_KB: u64 = 16 << 10;

/// Limits as written in a tenant's `[tenants.x.limits]` or a manifest's
/// `[limits]`: each one optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Deadline per event, ms.
    pub timeout_ms: Option<u64>,
    /// Linear memory, MiB.
    pub memory_mb: Option<u64>,
    /// `sms.send` calls per event.
    pub sms_per_event: Option<u64>,
    /// `http.send` calls per event.
    pub http_per_event: Option<u64>,
    /// HTTP response bytes read, KiB.
    pub http_response_kb: Option<u64>,
    /// KV keys stored per (tenant, plugin).
    pub kv_keys: Option<u64>,
    /// KV bytes (keys + values) stored per (tenant, plugin), KiB.
    pub kv_kb: Option<u64>,
    /// Log bytes per event before the rest is dropped, KiB.
    pub log_kb: Option<u64>,
    /// Size of the event handed to the plugin, KiB.
    pub event_kb: Option<u64>,
    /// Elements per table.
    pub table_elements: Option<u64>,
    /// Wasm stack, KiB.
    pub stack_kb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout_ms: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    sms_per_event: Option<Spanned<u64>>,
    http_per_event: Option<Spanned<u64>>,
    http_response_kb: Option<Spanned<u64>>,
    kv_keys: Option<Spanned<u64>>,
    kv_kb: Option<Spanned<u64>>,
    log_kb: Option<Spanned<u64>>,
    event_kb: Option<Spanned<u64>>,
    table_elements: Option<Spanned<u64>>,
    stack_kb: Option<Spanned<u64>>,
}

impl RawLimits {
    /// Checks every value against its host ceiling; `prefix` is the key path of the table.
    fn validate(&self, path: &Path, src: &str, prefix: &str) -> Result<LimitOverrides, ConfigError> {
        let check = |v: &Option<Spanned<u64>>, key: &str, max: u64| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(x) if *x.get_ref() == 0 || *x.get_ref() > max => Err(ConfigError::new(
                    path,
                    src,
                    Some(x.span()),
                    format!("{prefix}.{key}"),
                    format!("must be 1..={max}"),
                )),
                Some(x) => Ok(Some(*x.get_ref())),
                None => Ok(None),
            }
        };
        Ok(LimitOverrides {
            timeout_ms: check(&self.timeout_ms, "timeout_ms", MAX_TIMEOUT_MS)?,
            memory_mb: check(&self.memory_mb, "memory_mb", MAX_MEMORY_MB)?,
            sms_per_event: check(&self.sms_per_event, "sms_per_event", MAX_SMS_PER_EVENT)?,
            http_per_event: check(&self.http_per_event, "http_per_event", MAX_HTTP_PER_EVENT)?,
            http_response_kb: check(&self.http_response_kb, "http_response_kb", MAX_HTTP_RESPONSE_KB)?,
            kv_keys: check(&self.kv_keys, "kv_keys", MAX_KV_KEYS)?,
            kv_kb: check(&self.kv_kb, "kv_kb", MAX_KV_KB)?,
            log_kb: check(&self.log_kb, "log_kb", MAX_LOG_KB)?,
            event_kb: check(&self.event_kb, "event_kb", MAX_EVENT_KB)?,
            table_elements: check(&self.table_elements, "table_elements", MAX_TABLE_ELEMENTS)?,
            stack_kb: match &self.stack_kb {
                Some(x) if !(MIN_STACK_KB..=MAX_STACK_KB).contains(x.get_ref()) => {
                    return Err(ConfigError::new(
                        path,
                        src,
                        Some(x.span()),
                        format!("{prefix}.stack_kb"),
                        format!("must be {MIN_STACK_KB}..={MAX_STACK_KB}"),
                    ));
                }
                Some(x) => Some(*x.get_ref()),
                None => None,
            },
        })
    }
}

impl Limits {
    /// The effective limits: the manifest's value, else the tenant's, else
    /// the host default (all already within the host ceilings).
    pub fn resolve(tenant: &LimitOverrides, manifest: &LimitOverrides) -> Limits {
        let d = Limits::default();
        let pick = |m: Option<u64>, t: Option<u64>| m.or(t);
        Limits {
            timeout: pick(manifest.timeout_ms, tenant.timeout_ms).map_or(d.timeout, Duration::from_millis),
            memory_bytes: pick(manifest.memory_mb, tenant.memory_mb).map_or(d.memory_bytes, |mb| (mb as usize) << 20),
            sms_per_event: pick(manifest.sms_per_event, tenant.sms_per_event).map_or(d.sms_per_event, |n| n as u32),
            http_per_event: pick(manifest.http_per_event, tenant.http_per_event).map_or(d.http_per_event, |n| n as u32),
            http_response_bytes: pick(manifest.http_response_kb, tenant.http_response_kb)
                .map_or(d.http_response_bytes, |kb| (kb as usize) << 10),
            kv_keys: pick(manifest.kv_keys, tenant.kv_keys).unwrap_or(d.kv_keys),
            kv_bytes: pick(manifest.kv_kb, tenant.kv_kb).map_or(d.kv_bytes, |kb| kb << 10),
            log_bytes: pick(manifest.log_kb, tenant.log_kb).map_or(d.log_bytes, |kb| (kb as usize) << 10),
            event_bytes: pick(manifest.event_kb, tenant.event_kb).map_or(d.event_bytes, |kb| (kb as usize) << 10),
            table_elements: pick(manifest.table_elements, tenant.table_elements).map_or(d.table_elements, |n| n as usize),
            // Rounded up to a power of two: each distinct size is an engine.
            wasm_stack_bytes: pick(manifest.stack_kb, tenant.stack_kb).map_or(d.wasm_stack_bytes, |kb| {
                ((kb as usize) << 10).next_power_of_two().min((MAX_STACK_KB as usize) << 10)
            }),
        }
    }
}

/// Per-plugin limits after applying defaults and host ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline for one event.
    pub timeout: Duration,
    /// Linear memory cap, bytes.
    pub memory_bytes: usize,
    /// SMS sends allowed per event.
    pub sms_per_event: u32,
    /// Outbound HTTP requests allowed per event.
    pub http_per_event: u32,
    /// Largest HTTP response body a plugin may read.
    pub http_response_bytes: usize,
    /// KV keys per (tenant, plugin).
    pub kv_keys: u64,
    /// KV bytes (keys + values) per (tenant, plugin).
    pub kv_bytes: u64,
    /// Log bytes per event; the rest is dropped after a marker.
    pub log_bytes: usize,
    /// Largest event handed to the plugin.
    pub event_bytes: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// Wasm stack, bytes (a power of two).
    pub wasm_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            memory_bytes: (DEFAULT_MEMORY_MB as usize) << 20,
            sms_per_event: 5,
            http_per_event: 10,
            http_response_bytes: 1 << 20,
            kv_keys: 1_000,
            kv_bytes: 1 << 20,
            log_bytes: 64 << 10,
            event_bytes: 256 << 10,
            table_elements: 100_000,
            wasm_stack_bytes: (DEFAULT_STACK_KB as usize) << 10,
        }
    }
}

/// An `allowed_hosts` entry: scheme, host (exact or `*.domain`) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: String,
    host: String,
    port: u16,
}

impl AllowedHost {
    /// Parses `https://crm.example.com`, `http://127.0.0.1:9000` or `https://*.example.com`.
    pub fn parse(s: &str) -> Result<AllowedHost, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("`{s}` needs a scheme (https://host)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            other => return Err(format!("`{s}`: scheme `{other}` is not http or https")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.is_empty() {
            return Err(format!("`{s}`: give scheme, host and port only, no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().map_err(|_| format!("`{s}`: `{p}` is not a port"))?)
            }
            _ => (rest.to_string(), default_port),
        };
        Ok(AllowedHost {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a request URL falls under this entry.
    pub fn matches(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else { return false };
        let host = host.to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1 && host.ends_with(domain) && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
            None => host == self.host,
        };
        url.scheme() == self.scheme && port == self.port && host_ok
    }
}

/// A plugin's `<name>.toml`, validated.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// The kinds the plugin subscribes to; `None` means all.
    pub events: Option<Vec<EventKind>>,
    /// Where the plugin may send HTTP.
    pub allowed_hosts: Vec<AllowedHost>,
    /// The `[config]` values, as strings.
    pub config: BTreeMap<String, String>,
    /// Effective limits (see [`Manifest::with_tenant_limits`]).
    pub limits: Limits,
    /// The `[limits]` table as written.
    pub limit_overrides: LimitOverrides,
}

impl Manifest {
    /// Recomputes the effective limits with the tenant's overrides beneath
    /// the manifest's.
    pub fn with_tenant_limits(mut self, tenant: &LimitOverrides) -> Manifest {
        self.limits = Limits::resolve(tenant, &self.limit_overrides);
        self
    }

    /// Whether the plugin wants events of this kind.
    pub fn subscribes(&self, kind: EventKind) -> bool {
        self.events.as_ref().is_none_or(|k| k.contains(&kind))
    }

    /// Reads a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, "", None, "(file)", format!("cannot read: {e}")))?;
        Self::parse(path, &src)
    }

    /// Parses manifest text.
    pub fn parse(path: &Path, src: &str) -> Result<Manifest, ConfigError> {
        let raw: RawManifest = toml::from_str(src).map_err(|e| toml_error(path, src, &e))?;
        let mut allowed_hosts = Vec::new();
        for h in &raw.allowed_hosts {
            allowed_hosts
                .push(AllowedHost::parse(h.get_ref()).map_err(|m| ConfigError::new(path, src, Some(h.span()), "allowed_hosts", m))?);
        }
        let mut config = BTreeMap::new();
        for (k, v) in &raw.config {
            let s = match v.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(ConfigError::new(
                        path,
                        src,
                        Some(v.span()),
                        format!("config.{k}"),
                        "values must be strings, numbers or booleans",
                    ));
                }
            };
            config.insert(k.clone(), s);
        }
        let limit_overrides = match &raw.limits {
            Some(l) => l.validate(path, src, "limits")?,
            None => LimitOverrides::default(),
        };
        Ok(Manifest {
            events: raw.events,
            allowed_hosts,
            config,
            limits: Limits::resolve(&LimitOverrides::default(), &limit_overrides),
            limit_overrides,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    events: Option<Vec<EventKind>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    config: BTreeMap<String, Spanned<toml::Value>>,
    limits: Option<RawLimits>,
    /// How `switchboard plugin build` builds the plugin; not used at run time.
    #[allow(dead_code)]
    build: Option<toml::Table>,
    /// Overrides `switchboard dev` applies when deploying an example; not used at run time.
    #[allow(dead_code)]
    dev: Option<toml::Table>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cret".to_string())
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"
public_url = "https://hooks.example.com/"

[tenants.acme]
numbers = ["+15125550100"]
webhook_auth = "justcall-v1"
webhook_secret = "env:SECRET"
justcall_api = "v2.1"
justcall_base_url = "https://api.justcall.io/v2.1"
justcall_api_key = "key"
justcall_api_secret = "env:SECRET"
"#;

    #[test]
    fn parses_a_full_config() {
        let cfg = Config::parse(Path::new("/etc/sb.toml"), GOOD, &env).unwrap();
        let acme = &cfg.tenants["acme"];
        assert_eq!(acme.webhook_secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(acme.justcall_api, ApiDialect::V21);
        assert_eq!(cfg.webhook_url("acme"), "https://hooks.example.com/webhooks/acme");
        assert_eq!(cfg.data_dir, Path::new("/etc/data"));
        assert!(!format!("{acme:?}").contains("s3cret"), "secrets must not appear in Debug output");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let src = GOOD.replace("webhook_auth = ", "webhok_auth = ");
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(err.line, Some(7));
        assert_eq!(err.key, "webhok_auth");
        assert!(err.to_string().starts_with("sb.toml:7: webhok_auth: unknown field"), "{err}");
    }

    #[test]
    fn missing_env_var_names_the_key() {
        let src = GOOD.replace("webhook_secret = \"env:SECRET\"", "webhook_secret = \"env:NOPE\"");
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sb.toml:8: tenants.acme.webhook_secret: environment variable NOPE is not set"
        );
    }

    #[test]
    fn bad_values_are_located() {
        let src = GOOD.replace("\"+15125550100\"", "\"call me\"");
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(err.key, "tenants.acme.numbers");
        assert_eq!(err.line, Some(6));

        let src = GOOD.replace("\"justcall-v1\"", "\"hmac\"");
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(err.line, Some(7), "{err}");
        assert!(err.message.contains("unknown variant `hmac`"), "{err}");
    }

    #[test]
    fn long_run_cpu_share_is_a_percentage() {
        let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
        assert_eq!(cfg.long_run_cpu_percent, DEFAULT_LONG_RUN_CPU_PERCENT);
        let src = GOOD.replace("public_url", "long_run_cpu_percent = 40\npublic_url");
        assert_eq!(Config::parse(Path::new("sb.toml"), &src, &env).unwrap().long_run_cpu_percent, 40);
        for bad in ["0", "150"] {
            let src = GOOD.replace("public_url", &format!("long_run_cpu_percent = {bad}\npublic_url"));
            let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
            assert_eq!(
                err.to_string(),
                "sb.toml:3: long_run_cpu_percent: must be from 1 to 100 (percent of one core)"
            );
        }
    }

    #[test]
    fn auth_none_is_refused_outside_dev() {
        let src = GOOD.replace("\"justcall-v1\"", "\"none\"");
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(err.key, "tenants.acme.webhook_auth");
        assert!(err.message.contains("dev mode"));
    }

    #[test]
    fn manifest_limits_and_hosts() {
        let m = Manifest::parse(
            Path::new("p.toml"),
            "events = [\"received\"]\nallowed_hosts = [\"https://*.example.com\", \"http://127.0.0.1:9000\"]\n[config]\nurl = \"x\"\nn = 3\n[limits]\ntimeout_ms = 500\n",
        )
        .unwrap();
        assert!(m.subscribes(EventKind::Received) && !m.subscribes(EventKind::Sent));
        assert_eq!(m.config["n"], "3");
        assert_eq!(m.limits.timeout, Duration::from_millis(500));
        let ok = |u: &str| m.allowed_hosts.iter().any(|h| h.matches(&reqwest::Url::parse(u).unwrap()));
        assert!(ok("https://crm.example.com/x"));
        assert!(!ok("https://example.com/x"));
        assert!(!ok("https://evil-example.com/x"));
        assert!(!ok("http://crm.example.com/x"));
        assert!(ok("http://127.0.0.1:9000/hook"));
        assert!(!ok("http://127.0.0.1:9001/hook"));

        let err = Manifest::parse(Path::new("p.toml"), "[limits]\ntimeout_ms = 99999999\n").unwrap_err();
        assert_eq!((err.key.as_str(), err.line), ("limits.timeout_ms", Some(2)));
        let err = Manifest::parse(Path::new("p.toml"), "events = [\"recieved\"]\n").unwrap_err();
        assert!(err.message.contains("unknown variant `recieved`"), "{err}");
    }
}
