//! Events: storing one with its dedupe key, its opt-out change and its
//! deliveries in one transaction; reading one back; opt-out state; expiring
//! dedupe keys.

use rusqlite::{OptionalExtension, params};

use super::deliveries::insert_deliveries;
use super::schema::{NOW, now_ms};
use super::{Db, DbError};
use crate::domain::Event;

/// A delivery to create with its event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Plugin name.
    pub plugin: String,
    /// Content hash of the plugin version chosen at acceptance.
    pub plugin_hash: String,
}

/// A delivery just created: its id and whether it is held (plugin paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// Delivery id.
    pub id: i64,
    /// The plugin is paused for the tenant, so the delivery waits for a resume.
    pub held: bool,
}

/// What inserting an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored; one entry per delivery, in the order given.
    Inserted(Vec<Created>),
    /// The tenant already has an event with this dedupe key.
    Duplicate {
        /// The id of the event stored earlier.
        event_id: String,
    },
}

impl Db {
    /// Stores an event and its deliveries in one transaction, unless the
    /// tenant has seen its dedupe key within the dedupe window. A delivery to
    /// a paused plugin is stored `held`.
    ///
    /// With `verify`, the event waits for verification with JustCall: its
    /// deliveries are `verifying` and its opt-out change is not applied
    /// until [`Db::verified`].
    pub async fn insert_event(
        &self,
        event: Event,
        dedupe_key: String,
        format: &'static str,
        deliveries: Vec<NewDelivery>,
        verify: bool,
    ) -> Result<InsertOutcome, DbError> {
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT INTO dedupe (tenant, key, event_id, received_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, key) DO NOTHING",
                params![event.tenant, dedupe_key, event.event_id, now_ms()],
            )?;
            if n == 0 {
                let event_id = conn.query_row(
                    "SELECT event_id FROM dedupe WHERE tenant = ?1 AND key = ?2",
                    params![event.tenant, dedupe_key],
                    |r| r.get(0),
                )?;
                return Ok(InsertOutcome::Duplicate { event_id });
            }
            let json = serde_json::to_string(&event)?;
            conn.execute(
                "INSERT INTO events (id, tenant, dedupe_key, kind, format, event_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![event.event_id, event.tenant, dedupe_key, event.kind.as_str(), format, json],
            )?;
            // Opt-out state changes in the same transaction as the event, so
            // no plugin runs on an event before its opt-out is in force.
            if verify {
                super::verification::start(conn, &event)?;
            } else {
                apply_opt_change(conn, &event)?;
            }
            Ok(InsertOutcome::Inserted(insert_deliveries(
                conn,
                &event.event_id,
                &event.tenant,
                &deliveries,
                verify,
            )?))
        })
        .await
    }

    /// Adds deliveries of a stored event (a replay).
    pub async fn add_deliveries(&self, tenant: &str, event_id: &str, deliveries: Vec<NewDelivery>) -> Result<Vec<Created>, DbError> {
        let (t, e) = (tenant.to_string(), event_id.to_string());
        self.write(move |conn| insert_deliveries(conn, &e, &t, &deliveries, false)).await
    }

    /// One of the tenant's stored events.
    pub async fn event(&self, tenant: &str, event_id: &str) -> Result<Option<Event>, DbError> {
        let (t, e) = (tenant.to_string(), event_id.to_string());
        self.read(move |conn| {
            let json: Option<String> = conn
                .query_row("SELECT event_json FROM events WHERE id = ?1 AND tenant = ?2", params![e, t], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
        })
        .await
    }

    /// Whether the contact has opted out of the tenant's messages.
    pub async fn is_opted_out(&self, tenant: &str, number: &str) -> Result<bool, DbError> {
        let (t, n) = (tenant.to_string(), number.to_string());
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT opted_out FROM optouts WHERE tenant = ?1 AND number = ?2",
                    params![t, n],
                    |r| r.get::<_, bool>(0),
                )
                .optional()?
                .unwrap_or(false))
        })
        .await
    }

    /// Deletes, now, finished events past the retention period (with their
    /// deliveries and journal entries), in batches; returns how many events.
    /// Each batch is its own write, so ingest goes on between batches. The
    /// writer also prunes on its own (hourly, or every 50 ms while a backlog
    /// remains), checkpointing the WAL after each pass.
    pub async fn prune_expired(&self) -> Result<usize, DbError> {
        let cutoff = super::retention::cutoff(self.options.retention);
        let mut total = 0;
        loop {
            let c = cutoff.clone();
            let n = self.write(move |conn| super::retention::prune_batch(conn, &c)).await?;
            total += n;
            if n < super::retention::BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// Forgets dedupe keys (and journal entries) older than the window;
    /// returns how many keys.
    pub async fn prune_dedupe(&self) -> Result<usize, DbError> {
        let window = self.options.dedupe_window;
        self.write(move |conn| super::writer::prune(conn, window)).await
    }
}

/// Applies the event's opt-out change, if it has one.
pub(super) fn apply_opt_change(conn: &rusqlite::Connection, event: &Event) -> Result<(), DbError> {
    if let Some((number, opted_out)) = event.opt_change() {
        conn.execute(
            &format!(
                "INSERT INTO optouts (tenant, number, opted_out) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, number) DO UPDATE SET opted_out = excluded.opted_out, updated_at = {NOW}"
            ),
            params![event.tenant, number, opted_out],
        )?;
    }
    Ok(())
}
