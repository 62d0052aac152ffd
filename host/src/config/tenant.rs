//! Tenants in the config file: webhook auth, the JustCall account and its
//! API dialect and plan, numbers, and per-tenant limit overrides.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::limits::{LimitOverrides, RawLimits};
use super::{ConfigError, MIN_WEBHOOK_SECRET_LEN, Secret, resolve_secret, resolve_strong_secret};
use crate::domain::{Country, normalize_e164, parse_country};

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
    /// Where numbers written without `+` or a country code are national
    /// numbers; without it such numbers are refused, never guessed.
    pub default_country: Option<Country>,
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
    /// Limits for this tenant's plugins: each manifest's `[limits]` may lower
    /// them, never raise them.
    pub limits: LimitOverrides,
    /// The tenant's KV across all its plugins.
    pub kv_total: KvTotal,
    /// Deliveries of this tenant running at once (default: a quarter of
    /// `max_concurrent_invocations`, at least 1).
    pub max_concurrent: Option<u32>,
    /// Turns this tenant takes each time the dispatcher goes round the
    /// tenants with queued deliveries (default 1).
    pub weight: u32,
    /// JustCall API requests per minute Switchboard allows itself for this
    /// tenant (default: the plan's limit, Team's 30 if no plan is named).
    pub justcall_rate_per_minute: u32,
    /// Check each SMS event against the tenant's JustCall API before it runs
    /// plugins or changes opt-out state (default: on for `justcall-v1`,
    /// whose signature does not cover the payload).
    pub verify_events: bool,
}

/// A tenant's KV total across its plugins (each plugin also has its own
/// `kv_keys`/`kv_kb`). KV of a plugin no longer loaded counts until it is
/// removed, so new plugin names do not get fresh room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvTotal {
    /// Keys (`kv_total_keys`, default 50,000).
    pub keys: u64,
    /// Bytes of keys and values (`kv_total_kb`, default 65,536 KiB).
    pub bytes: u64,
}

impl Default for KvTotal {
    fn default() -> Self {
        KvTotal {
            keys: 50_000,
            bytes: 64 << 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    numbers: Spanned<Vec<String>>,
    default_country: Option<Spanned<String>>,
    pub(super) webhook_auth: Option<Spanned<WebhookAuth>>,
    webhook_secret: Option<Spanned<String>>,
    justcall_api: Option<ApiDialect>,
    justcall_base_url: Option<Spanned<String>>,
    justcall_api_key: Spanned<String>,
    justcall_api_secret: Spanned<String>,
    justcall_plan: Option<JustCallPlan>,
    justcall_rate_per_minute: Option<Spanned<u32>>,
    verify_events: Option<bool>,
    limits: Option<RawLimits>,
    kv_total_keys: Option<Spanned<u64>>,
    kv_total_kb: Option<Spanned<u64>>,
    max_concurrent: Option<Spanned<u32>>,
    weight: Option<Spanned<u32>>,
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

/// Whether `id` may name a tenant: it is a URL path segment and a directory.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn resolve_tenant(
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
    let default_country = match &t.default_country {
        None => None,
        Some(c) => Some(parse_country(c.get_ref()).ok_or_else(|| {
            ConfigError::new(
                path,
                src,
                Some(c.span()),
                k("default_country"),
                format!("`{}` is not an ISO 3166 country code such as \"US\" or \"GB\"", c.get_ref()),
            )
        })?),
    };
    let mut numbers = Vec::new();
    for n in t.numbers.get_ref() {
        let e164 = normalize_e164(n, default_country)
            .map_err(|e| ConfigError::new(path, src, Some(t.numbers.span()), k("numbers"), format!("`{n}` {e}")))?;
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
        (Some(s), _) => Some(resolve_strong_secret(
            path,
            src,
            &k("webhook_secret"),
            s,
            env,
            MIN_WEBHOOK_SECRET_LEN,
        )?),
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
    if !matches!(justcall_base_url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            path,
            src,
            t.justcall_base_url.as_ref().map(|s| s.span()),
            k("justcall_base_url"),
            "must be an http(s) URL",
        ));
    }
    Ok(TenantConfig {
        id: id.to_string(),
        numbers,
        default_country,
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
        kv_total: {
            let at_least_one = |v: &Option<Spanned<u64>>, key: &str| match v {
                Some(n) if *n.get_ref() == 0 => Err(ConfigError::new(path, src, Some(n.span()), k(key), "must be at least 1")),
                Some(n) => Ok(Some(*n.get_ref())),
                None => Ok(None),
            };
            let d = KvTotal::default();
            KvTotal {
                keys: at_least_one(&t.kv_total_keys, "kv_total_keys")?.unwrap_or(d.keys),
                bytes: at_least_one(&t.kv_total_kb, "kv_total_kb")?.map_or(d.bytes, |kb| kb.saturating_mul(1 << 10)),
            }
        },
        max_concurrent: match &t.max_concurrent {
            Some(n) if *n.get_ref() == 0 => {
                return Err(ConfigError::new(
                    path,
                    src,
                    Some(n.span()),
                    k("max_concurrent"),
                    "must be at least 1",
                ));
            }
            n => n.as_ref().map(|n| *n.get_ref()),
        },
        weight: match &t.weight {
            Some(w) if !(1..=100).contains(w.get_ref()) => {
                return Err(ConfigError::new(path, src, Some(w.span()), k("weight"), "must be 1..=100"));
            }
            w => w.as_ref().map_or(1, |w| *w.get_ref()),
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
        verify_events: t.verify_events.unwrap_or(webhook_auth == WebhookAuth::JustCallV1),
    })
}
