//! The front door's limits: how long a client may take to send its headers
//! and its body, how long a connection may sit idle, how many connections
//! may be open, and how many body bytes may be in flight across them.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::ConfigError;

/// Connection and request limits of the webhook listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontDoor {
    /// Time to receive a request's headers, from the first byte (or, on a
    /// kept-alive connection, from the end of the previous response).
    pub header_timeout: Duration,
    /// Time to receive a webhook body once its headers are in.
    pub body_timeout: Duration,
    /// Time a connection may go without a byte read or written.
    pub idle_timeout: Duration,
    /// Open connections at most; past it, the longest-idle connection is
    /// closed to make room, or the newcomer is answered 503.
    pub max_connections: usize,
    /// Webhook body bytes being read at once, across all requests; past it,
    /// 503 with `Retry-After`.
    pub max_inflight_body_bytes: usize,
}

impl Default for FrontDoor {
    fn default() -> Self {
        FrontDoor {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_inflight_body_bytes: 64 << 20,
        }
    }
}

/// The front-door keys as written.
#[derive(Debug, Default, Clone)]
pub(super) struct RawFrontDoor {
    pub(super) header_timeout_secs: Option<Spanned<u64>>,
    pub(super) body_timeout_secs: Option<Spanned<u64>>,
    pub(super) idle_timeout_secs: Option<Spanned<u64>>,
    pub(super) max_connections: Option<Spanned<u64>>,
    pub(super) max_inflight_body_kb: Option<Spanned<u64>>,
}

impl RawFrontDoor {
    /// Checks each key against its range.
    pub(super) fn validate(&self, path: &Path, src: &str) -> Result<FrontDoor, ConfigError> {
        let value = |v: &Option<Spanned<u64>>, key: &str, min: u64, max: u64| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(x) if !(min..=max).contains(x.get_ref()) => {
                    Err(ConfigError::new(path, src, Some(x.span()), key, format!("must be {min}..={max}")))
                }
                Some(x) => Ok(Some(*x.get_ref())),
                None => Ok(None),
            }
        };
        let d = FrontDoor::default();
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        Ok(FrontDoor {
            header_timeout: secs(value(&self.header_timeout_secs, "header_timeout_secs", 1, 300)?, d.header_timeout),
            body_timeout: secs(value(&self.body_timeout_secs, "body_timeout_secs", 1, 600)?, d.body_timeout),
            idle_timeout: secs(value(&self.idle_timeout_secs, "idle_timeout_secs", 1, 3600)?, d.idle_timeout),
            max_connections: value(&self.max_connections, "max_connections", 16, 1_000_000)?.map_or(d.max_connections, |n| n as usize),
            // At least one largest body (256 KiB) must fit.
            max_inflight_body_bytes: value(&self.max_inflight_body_kb, "max_inflight_body_kb", 256, 4 << 20)?
                .map_or(d.max_inflight_body_bytes, |kb| (kb as usize) << 10),
        })
    }
}
