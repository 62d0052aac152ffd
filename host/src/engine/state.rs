//! What every HTTP handler shares ([`AppState`]): the config, the database,
//! the plugin registry, the dispatcher, the served tenants, and the edges'
//! defences ([`Guards`]: the in-flight body budget, log throttles, the count
//! of failed admin authentications, the events each JustCall v1 signature
//! has authenticated).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::dispatch::Dispatcher;
use crate::engine::plugins::Registry;
use crate::engine::tenant::Tenant;
use crate::engine::verify::Verifier;
use crate::storage::Db;
use crate::throttle::Throttle;

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// Plugin sets.
    pub registry: Arc<Registry>,
    /// Where accepted deliveries go.
    pub dispatcher: Dispatcher,
    /// Where events that must be checked with JustCall first go.
    pub verifier: Verifier,
    /// Tenants by id.
    pub tenants: Arc<HashMap<String, Arc<Tenant>>>,
    /// What guards the HTTP edges against abuse.
    pub guards: Arc<Guards>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Attempt ends, for the live tail.
    pub tail: Arc<crate::engine::tail::Tail>,
    /// Versions on trial (canaries, shadows).
    pub trials: Arc<crate::engine::trials::Trials>,
    /// Plugins' secrets.
    pub vault: Arc<crate::engine::secrets::Vault>,
}

/// Shared state of the HTTP edges' defences.
#[derive(Debug)]
pub struct Guards {
    /// Webhook body bytes that may be read at once, across all requests
    /// (`front_door.max_inflight_body_bytes` permits, one per byte).
    pub body_budget: tokio::sync::Semaphore,
    /// Log budget of refused webhooks (401, 404).
    pub refusal_log: Throttle,
    /// Failed admin authentications in the current window.
    pub admin_failures: std::sync::Mutex<FailureWindow>,
    /// Log budget of failed admin authentications.
    pub admin_failure_log: Throttle,
    /// Which events each recent JustCall v1 signature has authenticated.
    pub signature_uses: SignatureUses,
}

/// How many distinct events (dedupe keys) one JustCall v1 header set may
/// authenticate. The signature covers only the type and the timestamp (to
/// the second), so genuine events of one type sent in the same second share
/// it; a captured header set replayed with other payloads runs out here.
pub const MAX_EVENTS_PER_SIGNATURE: usize = 20;

/// The events each recent JustCall v1 signature has authenticated.
#[derive(Debug, Default)]
pub struct SignatureUses {
    seen: std::sync::Mutex<SignatureMap>,
}

#[derive(Debug, Default)]
struct SignatureMap {
    by_signature: HashMap<(String, String), (Instant, Vec<String>)>,
    pruned: Option<Instant>,
}

impl SignatureUses {
    /// Whether `signature` of `tenant` may authenticate the event with
    /// `key`: yes if it already has, or if it has authenticated fewer than
    /// [`MAX_EVENTS_PER_SIGNATURE`]. A signature is remembered for `keep`
    /// (beyond it, its timestamp is outside the window anyway).
    pub fn admit(&self, tenant: &str, signature: &str, key: &str, keep: Duration) -> bool {
        let now = Instant::now();
        let mut map = crate::sync::lock(&self.seen);
        if map.pruned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            map.by_signature.retain(|_, (first, _)| now.duration_since(*first) < keep);
            map.pruned = Some(now);
        }
        let (_, keys) = map
            .by_signature
            .entry((tenant.to_string(), signature.to_string()))
            .or_insert_with(|| (now, Vec::new()));
        if keys.iter().any(|k| k == key) {
            return true;
        }
        if keys.len() >= MAX_EVENTS_PER_SIGNATURE {
            return false;
        }
        keys.push(key.to_string());
        true
    }
}

/// Failed admin authentications counted over a fixed window.
#[derive(Debug)]
pub struct FailureWindow {
    /// When the window started.
    pub started: Instant,
    /// Failures in it.
    pub failures: u32,
}

/// Failed admin authentications allowed per [`ADMIN_FAILURE_WINDOW`]; past
/// them, every admin request is refused with 429 until the window ends, so a
/// token cannot be guessed at speed.
pub const MAX_ADMIN_FAILURES: u32 = 20;
/// See [`MAX_ADMIN_FAILURES`].
pub const ADMIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl Guards {
    /// Guards for a listener that may read `max_inflight_body_bytes` of
    /// webhook bodies at once.
    pub fn new(max_inflight_body_bytes: usize) -> Guards {
        Guards {
            body_budget: tokio::sync::Semaphore::new(max_inflight_body_bytes),
            refusal_log: Throttle::new(Duration::from_secs(1)),
            admin_failures: std::sync::Mutex::new(FailureWindow {
                started: Instant::now(),
                failures: 0,
            }),
            admin_failure_log: Throttle::new(Duration::from_secs(1)),
            signature_uses: SignatureUses::default(),
        }
    }

    /// How long admin requests stay refused, if failures have used up the
    /// window's budget.
    pub fn admin_locked_for(&self) -> Option<Duration> {
        let w = crate::sync::lock(&self.admin_failures);
        let elapsed = w.started.elapsed();
        (elapsed < ADMIN_FAILURE_WINDOW && w.failures >= MAX_ADMIN_FAILURES).then(|| ADMIN_FAILURE_WINDOW - elapsed)
    }

    /// Counts a failed admin authentication.
    pub fn admin_failed(&self) {
        let mut w = crate::sync::lock(&self.admin_failures);
        if w.started.elapsed() >= ADMIN_FAILURE_WINDOW {
            *w = FailureWindow {
                started: Instant::now(),
                failures: 0,
            };
        }
        w.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_authenticates_a_bounded_number_of_distinct_events() {
        let uses = SignatureUses::default();
        let keep = Duration::from_secs(600);
        for i in 0..MAX_EVENTS_PER_SIGNATURE {
            assert!(uses.admit("t", "sig", &format!("k{i}"), keep));
        }
        assert!(!uses.admit("t", "sig", "one-more", keep));
        assert!(uses.admit("t", "sig", "k0", keep), "a resent event is not a new one");
        assert!(uses.admit("t", "other-sig", "one-more", keep));
        assert!(uses.admit("u", "sig", "one-more", keep), "per tenant");
        // Forgotten once its window has passed.
        let uses = SignatureUses::default();
        assert!(uses.admit("t", "sig", "a", Duration::ZERO));
        std::thread::sleep(Duration::from_millis(1100));
        for i in 0..MAX_EVENTS_PER_SIGNATURE {
            assert!(uses.admit("t", "sig", &format!("k{i}"), Duration::ZERO));
        }
    }
}
