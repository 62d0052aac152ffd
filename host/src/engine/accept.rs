//! The one way events enter the engine. A parsed event for a tenant is stored
//! with one delivery per subscribed plugin in one transaction (dedupe and
//! opt-out change included), and only then are the deliveries that are not
//! held handed to the dispatcher. Webhooks use [`accept`], admin replays
//! [`replay`]; timers and cluster ingest will enter here too.

use std::sync::Arc;
use tracing::Instrument as _;

use crate::domain::Event;
use crate::engine::dispatch::Job;
use crate::engine::plugins::LoadedPlugin;
use crate::engine::state::AppState;
use crate::engine::verify::{Check, check_for};
use crate::storage::{Created, DbError, InsertOutcome, NewDelivery, VerificationState};

/// One delivery created for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Delivery id.
    pub id: i64,
    /// The plugin it runs.
    pub plugin: String,
    /// Its plugin is paused for the tenant: it waits for a resume.
    pub held: bool,
}

/// An event stored with its deliveries, which are on their way.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event, with its id.
    pub event: Arc<Event>,
    /// One per subscribed plugin, in the registry's order.
    pub deliveries: Vec<Delivery>,
    /// The event waits for verification with JustCall before it runs.
    pub verifying: bool,
}

impl Accepted {
    /// How many deliveries wait for a resume.
    pub fn held(&self) -> usize {
        self.deliveries.iter().filter(|d| d.held).count()
    }
}

/// What accepting an event did.
#[derive(Debug, Clone)]
pub enum Acceptance {
    /// Stored and dispatched, or stored to be verified with JustCall first
    /// ([`Accepted::verifying`]).
    Accepted(Accepted),
    /// The tenant verifies events and this one cannot be verified: nothing
    /// stored.
    Unverifiable {
        /// Why.
        reason: String,
    },
    /// The tenant already has an event with this dedupe key: nothing stored.
    Duplicate {
        /// The event stored first.
        event_id: String,
    },
}

/// Where a parsed event came from, as stored beside it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The key that makes a resent webhook a duplicate.
    pub dedupe_key: String,
    /// The wire format's name (`seed`, `v2.1`).
    pub format: &'static str,
}

/// Accepts a parsed event for `tenant`: gives it an id, stores it with its
/// deliveries (unless it is a duplicate), then dispatches them. Returns only
/// after the event is durable.
pub async fn accept(state: &AppState, tenant: &str, mut event: Event, source: Source) -> Result<Acceptance, DbError> {
    event.tenant = tenant.to_string();
    event.event_id = uuid::Uuid::now_v7().to_string();
    let verifies = state.tenants.get(tenant).is_some_and(|t| t.config.verify_events);
    let verify = match verifies.then(|| check_for(&event)) {
        None | Some(Check::NotNeeded) => false,
        Some(Check::Message) => true,
        Some(Check::Impossible(reason)) => return Ok(Acceptance::Unverifiable { reason }),
    };
    let plugins = state.registry.subscribers(tenant, event.kind);
    let commit = crate::telemetry::span(|| tracing::info_span!("commit", deliveries = plugins.len()));
    let outcome = state
        .db
        .insert_event(event.clone(), source.dedupe_key, source.format, new_deliveries(&plugins), verify)
        .instrument(commit)
        .await?;
    let created = match outcome {
        InsertOutcome::Duplicate { event_id } => return Ok(Acceptance::Duplicate { event_id }),
        InsertOutcome::Inserted(created) => created,
    };
    let event = Arc::new(event);
    if !verify {
        return Ok(Acceptance::Accepted(dispatch(state, event, &plugins, created)));
    }
    state.verifier.submit(event.clone(), 0);
    Ok(Acceptance::Accepted(Accepted {
        event,
        deliveries: deliveries(&created, &plugins),
        verifying: true,
    }))
}

/// What replaying an event did.
#[derive(Debug, Clone)]
pub enum Replay {
    /// New deliveries, on their way.
    Replayed(Accepted),
    /// The tenant has no such event.
    NotFound,
    /// The event is still being verified, or was refused: it never runs.
    NotVerified(String),
}

/// Runs a stored event again: new deliveries, one per plugin subscribed now.
/// An event waiting for verification, or refused by it, is not replayed.
pub async fn replay(state: &AppState, tenant: &str, event_id: &str) -> Result<Replay, DbError> {
    let Some(event) = state.db.event(tenant, event_id).await? else {
        return Ok(Replay::NotFound);
    };
    match state.db.verification(event_id).await? {
        Some(v) if v.state == VerificationState::Pending => {
            return Ok(Replay::NotVerified("it is still being verified with JustCall".into()));
        }
        Some(v) if v.state == VerificationState::Refused => {
            let reason = v.reason.unwrap_or_default();
            return Ok(Replay::NotVerified(format!("it was refused by verification: {reason}")));
        }
        _ => {}
    }
    let plugins = state.registry.subscribers(tenant, event.kind);
    let created = state.db.add_deliveries(tenant, event_id, new_deliveries(&plugins)).await?;
    Ok(Replay::Replayed(dispatch(state, Arc::new(event), &plugins, created)))
}

fn new_deliveries(plugins: &[Arc<LoadedPlugin>]) -> Vec<NewDelivery> {
    plugins
        .iter()
        .map(|p| NewDelivery {
            plugin: p.name.clone(),
            plugin_hash: p.hash.clone(),
        })
        .collect()
}

/// The created deliveries, with their plugins' names.
fn deliveries(created: &[Created], plugins: &[Arc<LoadedPlugin>]) -> Vec<Delivery> {
    created
        .iter()
        .zip(plugins)
        .map(|(c, p)| Delivery {
            id: c.id,
            plugin: p.name.clone(),
            held: c.held,
        })
        .collect()
}

/// Hands the deliveries that are not held to the dispatcher.
fn dispatch(state: &AppState, event: Arc<Event>, plugins: &[Arc<LoadedPlugin>], created: Vec<Created>) -> Accepted {
    let deliveries = deliveries(&created, plugins);
    // Each delivery belongs to the trace of the webhook (or replay) that made it.
    let parent = crate::telemetry::Parent::current();
    for d in deliveries.iter().filter(|d| !d.held) {
        state.dispatcher.submit(Job {
            delivery_id: d.id,
            plugin: d.plugin.clone(),
            event: event.clone(),
            parent: parent.clone(),
        });
    }
    Accepted {
        event,
        deliveries,
        verifying: false,
    }
}
