//! How deliveries and the database behave ([`DbOptions`]: the retry
//! schedule, the dedupe window, the lock wait, retention and the KV grace
//! period), and how the config's keys for them are checked.

use std::path::Path;
use std::time::Duration;

use super::{ConfigError, RawConfig};

/// How deliveries and the database behave: the retry schedule, the dedupe
/// window and how long a write waits for a lock.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Delays between a failed attempt and the next; a delivery that fails
    /// once more than there are delays is `failed` and pauses its plugin.
    pub retry_delays: Vec<Duration>,
    /// How long a dedupe key is remembered.
    pub dedupe_window: Duration,
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// How long a finished event (every delivery `done`) is kept, with its
    /// deliveries and journal entries.
    pub retention: Duration,
    /// How long the KV of a plugin that is no longer deployed is kept.
    pub kv_grace: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            retry_delays: vec![Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(1800)],
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            busy_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(30 * 24 * 3600),
            kv_grace: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Most retries a schedule may list.
pub const MAX_RETRIES: usize = 20;

/// The retry schedule, dedupe window and lock wait. The window must cover
/// the signature window (a replayed webhook is still a duplicate) and the
/// whole retry schedule (the side-effect journal, pruned with the dedupe
/// keys, must outlive every retry that could read it).
pub(super) fn delivery_options(path: &Path, src: &str, raw: &RawConfig, tolerance: Duration) -> Result<DbOptions, ConfigError> {
    let mut o = DbOptions::default();
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
    if let Some(r) = &raw.retention_days {
        if !(1..=3650).contains(r.get_ref()) {
            return Err(ConfigError::new(path, src, Some(r.span()), "retention_days", "must be 1..=3650"));
        }
        o.retention = Duration::from_secs(*r.get_ref() * 24 * 3600);
    }
    if let Some(g) = &raw.kv_grace_days {
        if *g.get_ref() > 3650 {
            return Err(ConfigError::new(path, src, Some(g.span()), "kv_grace_days", "must be 0..=3650"));
        }
        o.kv_grace = Duration::from_secs(*g.get_ref() * 24 * 3600);
    }
    let schedule: Duration = o.retry_delays.iter().sum();
    let (span, key) = match (&raw.dedupe_window_secs, &raw.retry_delays_ms) {
        (Some(w), _) => (Some(w.span()), "dedupe_window_secs"),
        (None, Some(d)) => (Some(d.span()), "retry_delays_ms"),
        (None, None) => (None, "dedupe_window_secs"),
    };
    if o.dedupe_window < tolerance {
        return Err(ConfigError::new(
            path,
            src,
            span,
            key,
            format!(
                "the dedupe window ({} s) must be at least signature_tolerance_secs ({} s), so a replayed webhook is still a duplicate",
                o.dedupe_window.as_secs(),
                tolerance.as_secs()
            ),
        ));
    }
    if o.dedupe_window <= schedule {
        return Err(ConfigError::new(
            path,
            src,
            span,
            key,
            format!(
                "the dedupe window ({} s) must be longer than the whole retry schedule ({} s): the side-effect journal is kept as long as the dedupe keys, and every retry needs it",
                o.dedupe_window.as_secs(),
                schedule.as_secs()
            ),
        ));
    }
    Ok(o)
}
