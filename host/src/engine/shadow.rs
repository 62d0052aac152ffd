//! Shadow runs: after the serving version has handled an event, the shadow
//! version on trial runs on it too — one at a time, within its own limits
//! (past `LONG_RUN_AFTER` of wasm it moves to the low-priority long-run
//! lane like any invocation), with [`Shadow`] effects
//! (SMS and writes noted, not made) and an overlay KV (reads see the live
//! KV, writes stay apart) — and the two footprints are compared. A run that
//! finds the queue full is skipped and counted; a shadow's failure is only a
//! difference, never a retry or a pause.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::domain::Event;
use crate::engine::capabilities::Invocation;
use crate::engine::effects::{Acts, Footprint, Live, Shadow};
use crate::engine::invoke::invoke;
use crate::engine::lanes::LongLane;
use crate::engine::notify::Notices;
use crate::engine::overlay::KvView;
use crate::engine::tenant::Tenant;
use crate::engine::trials::Trial;
use crate::storage::Db;

/// Shadow runs waiting or running at once, across tenants; more are skipped.
pub const QUEUED: usize = 64;
/// Shadow runs running at once: the instance pool has this many slots more
/// than the dispatcher's `max_concurrent_invocations`, and the wasm memory
/// they hold is on top of `max_wasm_memory_mb`.
pub const RUNNING: usize = 1;

/// Where shadow runs wait: at most [`QUEUED`], [`RUNNING`] at a time.
#[derive(Debug)]
pub struct ShadowQueue {
    slots: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Default for ShadowQueue {
    fn default() -> Self {
        ShadowQueue {
            slots: Arc::new(Semaphore::new(QUEUED)),
            running: Arc::new(Semaphore::new(RUNNING)),
        }
    }
}

/// One shadow run to make.
#[derive(Debug)]
pub struct ShadowRun {
    /// The trial (its version, its tally).
    pub trial: Arc<Trial>,
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// The event the serving version handled.
    pub event: Arc<Event>,
    /// What the serving version did with it.
    pub serving: Footprint,
    /// For KV reads.
    pub db: Db,
    /// For GET/HEAD requests (the plugins' client).
    pub http: reqwest::Client,
    /// Where it runs.
    pub lane: Arc<LongLane>,
    /// Where `shadow.diverged` goes.
    pub notices: Notices,
    /// The plugin's secrets.
    pub secrets: crate::engine::secrets::PluginSecrets,
}

impl ShadowQueue {
    /// Queues `run` (or counts it skipped when the queue is full); never waits.
    pub fn submit(&self, run: ShadowRun) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            run.trial.skipped();
            return;
        };
        let running = self.running.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(_running) = running.acquire_owned().await else { return };
            let ShadowRun {
                trial,
                tenant,
                event,
                serving,
                db,
                http,
                lane,
                notices,
                secrets,
            } = run;
            let plugin = trial.plugin.clone();
            let acts = Acts::hiding(secrets.clone());
            let live = Live::new(tenant.clone(), http, plugin.manifest.clone(), None);
            let inv = Invocation {
                // A shadow's timer changes are never committed.
                timers: crate::engine::timer_stage::TimerStage::new(crate::domain::Clock::wall()),
                tenant: tenant.clone(),
                plugin: Arc::from(plugin.name.as_str()),
                manifest: plugin.manifest.clone(),
                db,
                event_id: Arc::from(event.event_id.as_str()),
                effects: Arc::new(Shadow::new(live, acts.clone(), plugin.manifest.allowed_hosts.clone())),
                trace: Default::default(),
                kv: KvView::overlay(),
                secrets,
            };
            // Like any invocation: past `LONG_RUN_AFTER` of wasm it moves to
            // the low-priority lane, paced with its tenant's long runners.
            let outcome = match invoke(&plugin, inv, &event, Some(&lane)).await {
                Ok(()) => "done".to_string(),
                Err(e) => crate::domain::cap(&e.to_string(), crate::domain::MAX_RECORD).into_owned(),
            };
            let shadow = acts.footprint(outcome);
            let tenant_id = &tenant.config.id;
            if trial.compare(&event.event_id, serving, shadow) {
                tracing::warn!(tenant = %tenant_id, plugin = %trial.plugin.name, version = %trial.plugin.version, event = %event.event_id, "shadow version diverged from the serving version");
                notices.file(
                    "shadow.diverged",
                    serde_json::json!({ "tenant": tenant_id, "plugin": trial.plugin.name, "version": trial.plugin.version,
                                        "serving": trial.against, "event_id": event.event_id }),
                );
            }
        });
    }
}
