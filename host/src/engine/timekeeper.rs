//! The timekeeper: one task that keeps manifest schedules' rows in line with
//! the plugins serving, sleeps until the soonest timer is due (or a commit
//! wakes it), and fires what is due. A firing claims its timer's row and
//! stores a `timer` event with one delivery in one transaction, then hands
//! the delivery to the dispatcher: from there it is retried, held and traced
//! exactly like a webhook's.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::clock::ms_to_rfc3339;
use crate::domain::{Clock, Event, TimerFiring};
use crate::engine::dispatch::{Dispatcher, Job};
use crate::engine::plugins::Registry;
use crate::engine::timer_stage::Wake;
use crate::storage::{Db, Firing, NewDelivery, ScheduleRow, StoredTimer};

/// Timers fired per transaction.
const BATCH: usize = 512;
/// The longest the timekeeper sleeps: how soon it notices a changed schedule.
const IDLE: Duration = Duration::from_millis(500);

/// The schedules the plugins serve: (tenant, plugin, schedule).
type Served = Vec<(String, String, crate::config::Schedule)>;

/// What the timekeeper needs.
#[derive(Debug, Clone)]
pub struct Timekeeper {
    /// Where timers are kept.
    pub db: Db,
    /// Which plugins serve, with their schedules.
    pub registry: Arc<Registry>,
    /// The tenants whose plugins are looked at.
    pub tenants: Vec<String>,
    /// Where fired deliveries go.
    pub dispatcher: Dispatcher,
    /// Timer time.
    pub clock: Clock,
    /// Woken when a delivery commits timer changes.
    pub wake: Wake,
    /// Where firings and their lag are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Timekeeper {
    /// Runs until the task is aborted.
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let mut synced: Option<Served> = None;
        loop {
            if let Err(e) = self.sync(&mut synced).await {
                tracing::error!(error = %e, "cannot update schedules; trying again");
            }
            match self.fire_due().await {
                Ok(n) if n > 0 => tracing::debug!(fired = n, "timers fired"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot fire due timers; trying again"),
            }
            let next = self.db.next_timer_due().await.unwrap_or(None);
            let sleep = next.map_or(IDLE, |due| self.clock.real_until(due).min(IDLE));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Brings schedule rows in line with the serving manifests, when they
    /// changed since the last pass.
    async fn sync(&self, synced: &mut Option<Served>) -> Result<(), crate::storage::DbError> {
        let mut now: Served = Vec::new();
        for tenant in &self.tenants {
            for p in self.registry.plugins(tenant).iter() {
                now.extend(p.manifest.schedules.iter().map(|s| (tenant.clone(), p.name.clone(), s.clone())));
            }
        }
        if synced.as_ref() == Some(&now) {
            return Ok(());
        }
        let at = self.clock.now();
        let rows = now
            .iter()
            .filter_map(|(tenant, plugin, s)| {
                Some(ScheduleRow {
                    tenant: tenant.clone(),
                    plugin: plugin.clone(),
                    name: s.name.clone(),
                    spec: s.spec(),
                    next_due_ms: s.next_after(at)?.timestamp_millis(),
                })
            })
            .collect();
        self.db.sync_schedules(rows).await?;
        *synced = Some(now);
        Ok(())
    }

    /// Fires every timer due now; returns how many fired.
    async fn fire_due(&self) -> Result<usize, crate::storage::DbError> {
        let mut fired = 0;
        loop {
            let now = self.clock.now_ms();
            let due = self.db.due_timers(now, BATCH).await?;
            let more = due.len() == BATCH;
            if due.is_empty() {
                return Ok(fired);
            }
            let firings: Vec<Firing> = due.into_iter().map(|t| self.firing(t, now)).collect();
            let created = self.db.fire_timers(firings.clone()).await?;
            for (f, c) in firings.into_iter().zip(created) {
                let Some(c) = c else { continue };
                fired += 1;
                let lag_ms = (now - f.timer.due_ms).max(0);
                self.metrics.timer_fired(&f.event.tenant, &f.delivery.plugin, lag_ms as f64 / 1e3);
                tracing::info!(
                    tenant = %f.event.tenant,
                    plugin = %f.delivery.plugin,
                    key = %f.timer.key,
                    due = %ms_to_rfc3339(f.timer.due_ms),
                    late_ms = lag_ms,
                    delivery = c.id,
                    "timer fired"
                );
                if !c.held {
                    self.dispatcher.submit(Job {
                        delivery_id: c.id,
                        plugin: f.delivery.plugin,
                        event: Arc::new(f.event),
                        parent: Default::default(),
                    });
                }
            }
            if !more {
                return Ok(fired);
            }
        }
    }

    /// What firing `t` at `now` stores.
    fn firing(&self, t: StoredTimer, now: i64) -> Firing {
        let plugin = self.registry.get(&t.tenant, &t.plugin);
        // A schedule moves on to its next time after now: one firing for
        // however many were missed.
        let next_due_ms = match (&plugin, t.scheduled) {
            (Some(p), true) => p
                .manifest
                .schedules
                .iter()
                .find(|s| s.name == t.key)
                .and_then(|s| s.next_after(crate::domain::clock::ms_to_time(now.max(t.due_ms))))
                .map(|next| next.timestamp_millis()),
            _ => None,
        };
        let mut event = Event::timer(
            &t.tenant,
            TimerFiring {
                key: t.key.clone(),
                payload: t.payload.clone(),
                due_at: ms_to_rfc3339(t.due_ms),
                scheduled: t.scheduled,
            },
            ms_to_rfc3339(now),
        );
        event.event_id = uuid::Uuid::now_v7().to_string();
        Firing {
            delivery: NewDelivery {
                plugin: t.plugin.clone(),
                plugin_hash: plugin.map(|p| p.hash.clone()).unwrap_or_default(),
            },
            event,
            timer: t,
            next_due_ms,
        }
    }
}
