//! A tenant as the engine serves it: its configuration and its JustCall client.

use crate::config::TenantConfig;
use crate::engine::justcall::JustCallClient;

/// A served tenant, shared by every invocation of its plugins.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant's configuration.
    pub config: TenantConfig,
    /// Its JustCall API client (with the tenant's request budget).
    pub justcall: JustCallClient,
}
