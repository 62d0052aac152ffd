//! What every HTTP handler shares ([`AppState`]): the config, the database,
//! the plugin registry, the dispatcher and the served tenants.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::dispatch::Dispatcher;
use crate::engine::plugins::Registry;
use crate::engine::tenant::Tenant;
use crate::storage::Db;

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
    /// Webhook body bytes that may be read at once, across all requests
    /// (`front_door.max_inflight_body_bytes` permits, one per byte).
    pub body_budget: Arc<tokio::sync::Semaphore>,
}
