//! Configuration: the server's TOML file, per-plugin manifests, secret
//! references (`env:NAME`), and errors that name the file, line and key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod delivery;
mod front_door;
mod keys;
mod limits;
mod manifest;
mod schedule;
mod tenant;

pub use front_door::FrontDoor;
pub use keys::{SecretsKey, SecretsKeys};

pub use delivery::{DbOptions, MAX_RETRIES};
pub use limits::*;
pub use manifest::{AllowedHost, Manifest};
pub use schedule::{MAX_SCHEDULE_NAME, Schedule};
pub use tenant::{ApiDialect, JustCallPlan, KvTotal, TenantConfig, WebhookAuth, valid_tenant_id};

use delivery::delivery_options;
use tenant::{RawTenant, resolve_tenant};

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

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// Where compiled plugin code is cached (default: `data_dir/cache`);
    /// `dev` shares the author tools' cache across data directories.
    pub cache_dir: Option<PathBuf>,
    /// The longest a component may take to compile (default: the server's
    /// 60 s; `dev` allows an author's busy machine more).
    pub compile_limit: Option<Duration>,
    /// `<plugins_dir>/<tenant>/<name>.wasm` (+ `<name>.toml`).
    pub plugins_dir: PathBuf,
    /// How JustCall reaches us, without a trailing slash; the `webhook_url` in
    /// JustCall v1 signatures is `{public_url}/webhooks/{tenant}`.
    pub public_url: String,
    /// Tenants by id.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Dev mode: allows `webhook_auth = "none"` and mounts the JustCall simulator.
    pub dev: bool,
    /// The clock timers and schedules run on (`--time-scale`; not in the file).
    pub clock: crate::domain::Clock,
    /// How far a signed webhook's timestamp may be from now.
    pub signature_tolerance: Duration,
    /// How many plugin invocations may run at once.
    pub max_concurrent_invocations: u32,
    /// Distinct (tenant, plugin) label pairs `/metrics` keeps; past it, new
    /// pairs count under `_other`.
    pub metrics_max_label_sets: usize,
    /// Where to send OpenTelemetry traces (an OTLP/HTTP collector's base
    /// URL); none are made without it.
    pub otlp_endpoint: Option<String>,
    /// Where operational notices go (`operator_webhook_url`), signed with
    /// Standard Webhooks by `operator_webhook_secret`.
    pub operator_webhook: Option<OperatorWebhook>,
    /// Wasm linear memory, MiB, that running invocations may hold between
    /// them (by their memory limits); default half the machine's memory.
    pub max_wasm_memory_mb: u64,
    /// The share of one core (percent) that each tenant's long-running
    /// invocations get between them; see the engine's long-run lane.
    pub long_run_cpu_percent: u32,
    /// Bearer token for `/admin/*`; without one the admin API is off.
    pub admin_token: Option<Secret>,
    /// Where the admin API listens.
    pub admin_listen: AdminListen,
    /// Retry schedule, dedupe window and database lock wait.
    pub delivery: DbOptions,
    /// Connection and request limits of the webhook listener.
    pub front_door: FrontDoor,
    /// HTTPS for the webhook listener (`tls_cert` + `tls_key`); without it,
    /// plain HTTP (behind a terminating proxy).
    pub tls: Option<TlsFiles>,
    /// What plugin secrets are sealed with (`secrets_key`,
    /// `secrets_previous_keys`).
    pub secrets: SecretsKeys,
}

/// The PEM files the webhook listener serves HTTPS with; reloaded when they
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Where the admin API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// Its own address; by default loopback, on the webhook port + 1.
    Separate(SocketAddr),
    /// On the public webhook listener (`admin_listen = "public"`), for a
    /// deployment whose proxy guards `/admin`.
    Public,
}

impl AdminListen {
    /// The default for a webhook listener on `listen`: loopback, next port
    /// (an ephemeral port for an ephemeral listener).
    pub fn default_for(listen: SocketAddr) -> AdminListen {
        let port = match listen.port() {
            0 => 0,
            p => p.checked_add(1).unwrap_or(0),
        };
        AdminListen::Separate(SocketAddr::from(([127, 0, 0, 1], port)))
    }
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
        let http_url = |field: &str, u: &Spanned<String>| -> Result<String, ConfigError> {
            let url = reqwest::Url::parse(u.get_ref())
                .map_err(|e| ConfigError::new(path, src, Some(u.span()), field, format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(path, src, Some(u.span()), field, "must be an http(s) URL"));
            }
            Ok(u.get_ref().trim_end_matches('/').to_string())
        };
        let public_url = match &raw.public_url {
            Some(u) => http_url("public_url", u)?,
            None => format!("http://{listen}"),
        };
        let otlp_endpoint = raw.otlp_endpoint.as_ref().map(|u| http_url("otlp_endpoint", u)).transpose()?;
        let operator_webhook = match (&raw.operator_webhook_url, &raw.operator_webhook_secret) {
            (None, None) => None,
            (Some(u), Some(s)) => Some(OperatorWebhook {
                url: http_url("operator_webhook_url", u)?,
                secret: resolve_strong_secret(path, src, "operator_webhook_secret", s, env, MIN_WEBHOOK_SECRET_LEN)?,
            }),
            (Some(u), None) => {
                let why = "needs operator_webhook_secret to sign the notices";
                return Err(ConfigError::new(path, src, Some(u.span()), "operator_webhook_url", why));
            }
            (None, Some(s)) => {
                let why = "is set without operator_webhook_url";
                return Err(ConfigError::new(path, src, Some(s.span()), "operator_webhook_secret", why));
            }
        };
        let mut tenants = BTreeMap::new();
        for (id, t) in &raw.tenants {
            let tenant = resolve_tenant(path, src, id, t, env)?;
            tenants.insert(id.clone(), tenant);
        }
        let signature_tolerance = match &raw.signature_tolerance_secs {
            None => Duration::from_secs(300),
            Some(t) if (1..=MAX_SIGNATURE_TOLERANCE_SECS).contains(t.get_ref()) => Duration::from_secs(*t.get_ref()),
            Some(t) => {
                return Err(ConfigError::new(
                    path,
                    src,
                    Some(t.span()),
                    "signature_tolerance_secs",
                    format!("must be 1..={MAX_SIGNATURE_TOLERANCE_SECS}"),
                ));
            }
        };
        let delivery = delivery_options(path, src, &raw, signature_tolerance)?;
        let long_run_cpu_percent = long_run_cpu_percent(path, src, &raw)?;
        let front_door = front_door::RawFrontDoor {
            header_timeout_secs: raw.header_timeout_secs.clone(),
            body_timeout_secs: raw.body_timeout_secs.clone(),
            idle_timeout_secs: raw.idle_timeout_secs.clone(),
            max_connections: raw.max_connections.clone(),
            max_inflight_body_kb: raw.max_inflight_body_kb.clone(),
        }
        .validate(path, src)?;
        let admin_listen = match &raw.admin_listen {
            None => AdminListen::default_for(listen),
            Some(a) if a.get_ref() == "public" => AdminListen::Public,
            Some(a) => AdminListen::Separate(a.get_ref().parse().map_err(|e| {
                ConfigError::new(
                    path,
                    src,
                    Some(a.span()),
                    "admin_listen",
                    format!("`{}` is neither an address nor \"public\": {e}", a.get_ref()),
                )
            })?),
        };
        let tls = tls_files(path, src, base, &raw)?;
        let secrets = secrets_keys(path, src, &raw, env)?;
        let cfg = Config {
            listen,
            admin_listen,
            data_dir: base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from("data"))),
            cache_dir: None,
            compile_limit: None,
            plugins_dir: base.join(raw.plugins_dir.unwrap_or_else(|| PathBuf::from("plugins.d"))),
            public_url,
            tenants,
            dev: false,
            clock: Default::default(),
            signature_tolerance,
            max_concurrent_invocations: raw.max_concurrent_invocations.unwrap_or(64),
            metrics_max_label_sets: raw.metrics_max_label_sets.unwrap_or(1000),
            otlp_endpoint,
            operator_webhook,
            max_wasm_memory_mb: match &raw.max_wasm_memory_mb {
                Some(mb) if *mb.get_ref() < 64 => {
                    return Err(ConfigError::new(
                        path,
                        src,
                        Some(mb.span()),
                        "max_wasm_memory_mb",
                        "must be at least 64",
                    ));
                }
                Some(mb) => *mb.get_ref(),
                None => default_wasm_memory_mb(),
            },
            long_run_cpu_percent,
            admin_token: match &raw.admin_token {
                Some(t) => Some(resolve_strong_secret(path, src, "admin_token", t, env, MIN_ADMIN_TOKEN_LEN)?),
                None => None,
            },
            delivery,
            front_door,
            tls,
            secrets,
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
    signature_tolerance_secs: Option<Spanned<u64>>,
    max_concurrent_invocations: Option<u32>,
    max_wasm_memory_mb: Option<Spanned<u64>>,
    metrics_max_label_sets: Option<usize>,
    otlp_endpoint: Option<Spanned<String>>,
    operator_webhook_url: Option<Spanned<String>>,
    operator_webhook_secret: Option<Spanned<String>>,
    long_run_cpu_percent: Option<Spanned<u32>>,
    admin_token: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    secrets_key: Option<Spanned<String>>,
    secrets_previous_keys: Option<Vec<Spanned<String>>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
    dedupe_window_secs: Option<Spanned<u64>>,
    db_busy_timeout_ms: Option<Spanned<u64>>,
    retention_days: Option<Spanned<u64>>,
    kv_grace_days: Option<Spanned<u64>>,
    header_timeout_secs: Option<Spanned<u64>>,
    body_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_inflight_body_kb: Option<Spanned<u64>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
}

/// Both TLS files, or neither; each must be a file.
fn tls_files(path: &Path, src: &str, base: &Path, raw: &RawConfig) -> Result<Option<TlsFiles>, ConfigError> {
    let file = |key: &str, p: &Spanned<PathBuf>| {
        let full = base.join(p.get_ref());
        if full.is_file() {
            Ok(full)
        } else {
            Err(ConfigError::new(
                path,
                src,
                Some(p.span()),
                key,
                format!("`{}` is not a readable file", full.display()),
            ))
        }
    };
    match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some(TlsFiles {
            cert: file("tls_cert", c)?,
            key: file("tls_key", k)?,
        })),
        (Some(c), None) => Err(ConfigError::new(
            path,
            src,
            Some(c.span()),
            "tls_key",
            "tls_cert is set: set tls_key too",
        )),
        (None, Some(k)) => Err(ConfigError::new(
            path,
            src,
            Some(k.span()),
            "tls_cert",
            "tls_key is set: set tls_cert too",
        )),
    }
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

fn toml_error(path: &Path, src: &str, e: &toml::de::Error) -> ConfigError {
    // toml's message names the offending field (`unknown field `x``,
    // `missing field `y``); its span points at the key, or at the value. A
    // value may be a mistyped secret: the error names its key instead, and
    // drops the quoted value from the message.
    let key = e
        .span()
        .map(|span| {
            let line_start = src[..span.start.min(src.len())].rfind('\n').map_or(0, |i| i + 1);
            let before = &src[line_start..span.start.min(src.len())];
            match before.split_once('=') {
                Some((key, _)) => key.trim().trim_matches('"').to_string(),
                None => src.get(span).unwrap_or("").trim().trim_matches('"').to_string(),
            }
        })
        .filter(|k| !k.is_empty() && !k.contains('\n') && k.len() < 80)
        .map(|k| match (e.span().and_then(|s| table_at(src, s.start)), k.contains('.')) {
            (Some(table), false) => format!("{table}.{k}"),
            _ => k,
        })
        .unwrap_or_else(|| "(file)".to_string());
    let mut message = e.message().trim().replace('\n', " ");
    if message.starts_with("invalid type") || message.starts_with("invalid value") || message.starts_with("invalid length") {
        message = without_quoted(&message);
    }
    ConfigError::new(path, src, e.span(), key, message)
}

/// The `[table]` header a byte offset of `src` falls under, if any.
fn table_at(src: &str, offset: usize) -> Option<String> {
    let before = src.get(..offset)?;
    let header = before.lines().rev().map(str::trim).find(|l| l.starts_with('['))?;
    let name = header.trim_start_matches('[').split(']').next()?.trim();
    (!name.is_empty()).then(|| name.replace(['"', ' '], ""))
}

/// `message` without its backquoted parts (the offending value).
fn without_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        if c == '`' {
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ").replace(" ,", ",")
}

/// Shortest `webhook_secret` accepted: a guessable secret signs anything.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;
/// Where the operator's notices go, and the key they are signed with.
#[derive(Debug, Clone)]
pub struct OperatorWebhook {
    /// An http(s) URL.
    pub url: String,
    /// The Standard Webhooks secret (`whsec_…` or any string of 16+ characters).
    pub secret: Secret,
}

/// Shortest `admin_token` accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;
/// Longest signature window accepted, seconds: a captured signature can be
/// replayed for as long as its timestamp is inside the window.
pub const MAX_SIGNATURE_TOLERANCE_SECS: u64 = 900;

/// [`resolve_secret`] for a secret that must be at least `min` characters;
/// the error names the key and the length, never the value.
fn resolve_strong_secret(
    path: &Path,
    src: &str,
    key: &str,
    value: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
    min: usize,
) -> Result<Secret, ConfigError> {
    let secret = resolve_secret(path, src, key, value, env)?;
    let len = secret.expose().chars().count();
    if len < min {
        return Err(ConfigError::new(
            path,
            src,
            Some(value.span()),
            key,
            format!("is {len} characters; use at least {min} (a random string)"),
        ));
    }
    Ok(secret)
}

/// `secrets_key` and `secrets_previous_keys`, each resolved (`env:NAME`)
/// and read as a 32-byte key; an error names the key, never the value.
fn secrets_keys(path: &Path, src: &str, raw: &RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<SecretsKeys, ConfigError> {
    let read = |name: &str, v: &Spanned<String>| -> Result<SecretsKey, ConfigError> {
        let text = resolve_secret(path, src, name, v, env)?;
        SecretsKey::parse(text.expose()).map_err(|why| ConfigError::new(path, src, Some(v.span()), name, why))
    };
    let current = raw.secrets_key.as_ref().map(|v| read("secrets_key", v)).transpose()?;
    let previous = match &raw.secrets_previous_keys {
        Some(keys) if current.is_none() => {
            let span = keys.first().map(|k| k.span());
            return Err(ConfigError::new(
                path,
                src,
                span,
                "secrets_previous_keys",
                "needs a secrets_key to re-seal what they open",
            ));
        }
        Some(keys) => keys
            .iter()
            .map(|k| read("secrets_previous_keys", k))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(SecretsKeys { current, previous })
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

#[cfg(test)]
mod tests;
