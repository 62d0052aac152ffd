//! Plugin manifests (`<name>.toml` beside the `.wasm`): subscribed events,
//! `allowed_hosts`, `[config]` (values, and keys declared `{ secret = true }`),
//! `[limits]`, `[[schedule]]`s and the `[dev]` section.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::limits::{LimitOverrides, Limits, RawLimits};
use super::schedule::{RawSchedule, Schedule};
use super::{ConfigError, toml_error};
use crate::domain::EventKind;

/// An `allowed_hosts` entry: scheme, host (exact or `*.domain`) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: String,
    host: String,
    port: u16,
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Why an `allowed_hosts` entry is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    /// No `scheme://`.
    #[error("`{0}` needs a scheme (https://host)")]
    NoScheme(String),
    /// A scheme other than http or https.
    #[error("`{0}`: scheme `{1}` is not http or https")]
    Scheme(String, String),
    /// A path, or no host.
    #[error("`{0}`: give scheme, host and port only, no path")]
    NotAnOrigin(String),
    /// A port that is not one.
    #[error("`{0}`: `{1}` is not a port")]
    Port(String, String),
}

impl AllowedHost {
    /// Parses `https://crm.example.com`, `http://127.0.0.1:9000` or `https://*.example.com`.
    pub fn parse(s: &str) -> Result<AllowedHost, AllowedHostError> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| AllowedHostError::NoScheme(s.to_string()))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            other => return Err(AllowedHostError::Scheme(s.to_string(), other.to_string())),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.is_empty() {
            return Err(AllowedHostError::NotAnOrigin(s.to_string()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| AllowedHostError::Port(s.to_string(), p.to_string()))?,
            ),
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
    /// `[config]` keys declared `{ secret = true }`: set as the plugin's
    /// secrets (never in the manifest), required before a version serves.
    pub secret_keys: Vec<String>,
    /// Effective limits (see [`Manifest::with_tenant_limits`]).
    pub limits: Limits,
    /// The `[limits]` table as written.
    pub limit_overrides: LimitOverrides,
    /// The values of `[limits]` that exceed the tenant's and were cut to it,
    /// one line each (see [`Limits::clamped`]).
    pub limits_clamped: Vec<String>,
    /// `[[schedule]]`s: cron patterns that fire `timer` events.
    pub schedules: Vec<Schedule>,
}

impl Manifest {
    /// Recomputes the effective limits under the tenant's: its values are
    /// ceilings the manifest may lower but not raise.
    pub fn with_tenant_limits(mut self, tenant: &LimitOverrides) -> Manifest {
        self.limits = Limits::resolve(tenant, &self.limit_overrides);
        self.limits_clamped = Limits::clamped(tenant, &self.limit_overrides);
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
            allowed_hosts.push(
                AllowedHost::parse(h.get_ref()).map_err(|e| ConfigError::new(path, src, Some(h.span()), "allowed_hosts", e.to_string()))?,
            );
        }
        let mut config = BTreeMap::new();
        let mut secret_keys = Vec::new();
        for (k, v) in &raw.config {
            let s = match v.get_ref() {
                toml::Value::Table(t) if t.len() == 1 && t.get("secret") == Some(&toml::Value::Boolean(true)) => {
                    secret_keys.push(k.clone());
                    continue;
                }
                toml::Value::Table(_) => {
                    return Err(ConfigError::new(
                        path,
                        src,
                        Some(v.span()),
                        format!("config.{k}"),
                        "a table here can only be { secret = true } (a value set with `switchboard secret set`)",
                    ));
                }
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
        let schedules = super::schedule::validate(path, src, &raw.schedule)?;
        Ok(Manifest {
            schedules,
            events: raw.events,
            allowed_hosts,
            config,
            secret_keys,
            limits: Limits::default(),
            limit_overrides,
            limits_clamped: Vec::new(),
        }
        .with_tenant_limits(&LimitOverrides::default()))
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
    #[serde(default)]
    schedule: Vec<RawSchedule>,
    /// How `switchboard plugin build` builds the plugin; not used at run time.
    #[allow(dead_code)]
    build: Option<RawBuild>,
    /// Overrides `switchboard dev` applies when deploying an example; not used at run time.
    #[allow(dead_code)]
    dev: Option<toml::Table>,
}

/// `[build]`: read by `switchboard plugin build`; declared here so a
/// misspelt key is refused with its file, line and name like any other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawBuild {
    /// The shell command that writes `$OUT_DIR/<name>.wasm`.
    command: String,
    /// Pinned tools (`crate@version`) installed before the command runs.
    #[serde(default)]
    requires: Vec<String>,
}
