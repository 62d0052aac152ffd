//! What every HTTP handler shares ([`AppState`]): the config, the database,
//! the plugin registry, the dispatcher, the served tenants, and the edges'
//! defences ([`Guards`]: the in-flight body budget, log throttles, the count
//! of failed admin authentications).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::dispatch::Dispatcher;
use crate::engine::plugins::Registry;
use crate::engine::tenant::Tenant;
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
    /// Tenants by id.
    pub tenants: Arc<HashMap<String, Arc<Tenant>>>,
    /// What guards the HTTP edges against abuse.
    pub guards: Arc<Guards>,
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
