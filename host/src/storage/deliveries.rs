//! The delivery state machine: a delivery is `pending` (maybe with a due
//! time), `running`, `done`, `failed` (retries exhausted) or `held` (its
//! plugin is paused); the verdict on a failure comes from [`DeliveryPolicy`]
//! and is written in the same transaction as the failure.

use std::collections::BTreeMap;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};

use super::events::{Created, NewDelivery};
use super::policy::{DeliveryOutcome, Finished, Verdict};
use super::schema::{NOW, now_ms};
use super::{Db, DbError};
use crate::domain::Event;
use crate::domain::clock::rfc3339_ms;

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting to run (now, or at its due time if it is a retry).
    Pending,
    /// Running now (or was, when the process stopped).
    Running,
    /// Ran to `ok`.
    Done,
    /// Failed its last retry.
    Failed,
    /// Waiting for its paused plugin to be resumed.
    Held,
    /// Waiting for its event to be verified with the tenant's JustCall API.
    Verifying,
    /// Never runs: its event failed verification (the reason is its error).
    Refused,
}

impl DeliveryStatus {
    /// Every status, in life order.
    pub const ALL: [DeliveryStatus; 7] = [
        DeliveryStatus::Verifying,
        DeliveryStatus::Pending,
        DeliveryStatus::Running,
        DeliveryStatus::Done,
        DeliveryStatus::Failed,
        DeliveryStatus::Held,
        DeliveryStatus::Refused,
    ];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Running => "running",
            DeliveryStatus::Done => "done",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Held => "held",
            DeliveryStatus::Verifying => "verifying",
            DeliveryStatus::Refused => "refused",
        }
    }

    /// The status named `name`, if any.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for DeliveryStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for DeliveryStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        DeliveryStatus::parse(name).ok_or_else(|| FromSqlError::Other(format!("unknown delivery status `{name}`").into()))
    }
}

/// A delivery waiting to run, with its event.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// Delivery id.
    pub id: i64,
    /// Plugin name.
    pub plugin: String,
    /// The event.
    pub event: Event,
    /// When a scheduled retry is due (unix ms), if it is one.
    pub due_ms: Option<i64>,
}

/// A delivery's stored state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRecord {
    /// Delivery id.
    pub id: i64,
    /// Event id.
    pub event_id: String,
    /// Plugin name.
    pub plugin: String,
    /// Content hash of the plugin version that last ran it.
    pub plugin_hash: Option<String>,
    /// Where the delivery is in its life.
    pub status: DeliveryStatus,
    /// How many times it started.
    pub attempts: i64,
    /// How many of those failed.
    pub failures: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// How long the last run took, in microseconds.
    pub duration_us: Option<i64>,
    /// When a scheduled retry is due (RFC 3339), for pending retries.
    pub next_attempt_at: Option<String>,
    /// When the delivery was created.
    pub created_at: String,
}

/// One plugin's delivery health for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PluginHealth {
    /// Paused after a delivery failed its last retry.
    pub paused: bool,
    /// When it was paused.
    pub paused_at: Option<String>,
    /// Failed attempts, ever.
    pub failed_attempts: i64,
    /// Deliveries that failed every retry.
    pub failed_deliveries: i64,
    /// The last failure and when.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<String>,
    /// Deliveries held while paused.
    pub held: i64,
}

impl Db {
    /// Marks a delivery as running and counts the attempt, without waiting
    /// for the commit. Writes are applied in order, so a later
    /// [`Db::finish_delivery`] still lands after it; if the process dies
    /// first, the delivery is simply pending again.
    pub fn start_delivery(&self, id: i64, plugin_hash: String) {
        self.write_detached("delivery start", move |conn| {
            conn.execute(
                &format!(
                    "UPDATE deliveries SET status = 'running', attempts = attempts + 1, plugin_hash = ?2, next_attempt_ms = NULL,
                     updated_at = {NOW} WHERE id = ?1"
                ),
                params![id, plugin_hash],
            )?;
            Ok(())
        });
    }

    /// Records how an attempt ended and applies the retry policy: a failure
    /// is retried after the next delay in the schedule; a failure with no
    /// delay left marks the delivery `failed` and pauses its plugin for the
    /// tenant, in the same transaction.
    pub async fn finish_delivery(&self, id: i64, outcome: DeliveryOutcome, duration_us: i64) -> Result<Finished, DbError> {
        self.finish_delivery_with(id, outcome, duration_us, Vec::new()).await
    }

    /// [`Db::finish_delivery`], applying the timer changes the attempt made
    /// in the same transaction if it succeeded (and dropping them if not).
    pub async fn finish_delivery_with(
        &self,
        id: i64,
        outcome: DeliveryOutcome,
        duration_us: i64,
        timers: Vec<super::TimerChange>,
    ) -> Result<Finished, DbError> {
        let policy = self.policy.clone();
        self.write(move |conn| {
            let (tenant, plugin, failures): (String, String, u32) = conn.query_row(
                "SELECT tenant, plugin, failures FROM deliveries WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let error = match outcome {
                DeliveryOutcome::Done => {
                    conn.execute(
                        &format!(
                            "UPDATE deliveries SET status = 'done', duration_us = ?2, next_attempt_ms = NULL, updated_at = {NOW} WHERE id = ?1"
                        ),
                        params![id, duration_us],
                    )?;
                    super::timers::apply(conn, id, &tenant, &plugin, &timers)?;
                    // Its journal stays until pruned with the dedupe keys: the
                    // message ids it holds must stay claimed while other
                    // deliveries may still reconcile against JustCall's list.
                    return Ok(Finished::Done);
                }
                DeliveryOutcome::Failed(e) => e,
            };
            conn.execute(
                &format!(
                    "INSERT INTO plugin_state (tenant, plugin, failed_attempts, last_error, last_error_at) VALUES (?1, ?2, 1, ?3, {NOW})
                     ON CONFLICT (tenant, plugin) DO UPDATE SET failed_attempts = failed_attempts + 1,
                     last_error = excluded.last_error, last_error_at = excluded.last_error_at"
                ),
                params![tenant, plugin, error],
            )?;
            match policy.after_failure(failures) {
                Verdict::Retry(delay) => {
                    conn.execute(
                        &format!(
                            "UPDATE deliveries SET status = 'pending', failures = failures + 1, last_error = ?2, duration_us = ?3,
                             next_attempt_ms = ?4, updated_at = {NOW} WHERE id = ?1"
                        ),
                        params![id, error, duration_us, now_ms() + delay.as_millis() as i64],
                    )?;
                    Ok(Finished::Retry(delay))
                }
                Verdict::GiveUp => {
                    conn.execute(
                        &format!(
                            "UPDATE deliveries SET status = 'failed', failures = failures + 1, last_error = ?2, duration_us = ?3,
                             next_attempt_ms = NULL, updated_at = {NOW} WHERE id = ?1"
                        ),
                        params![id, error, duration_us],
                    )?;
                    conn.execute(
                        &format!(
                            "UPDATE plugin_state SET paused = 1, paused_at = coalesce(paused_at, {NOW}),
                             failed_deliveries = failed_deliveries + 1 WHERE tenant = ?1 AND plugin = ?2"
                        ),
                        params![tenant, plugin],
                    )?;
                    Ok(Finished::Paused)
                }
            }
        })
        .await
    }

    /// Holds a delivery whose plugin was paused after it was queued.
    pub async fn hold_delivery(&self, id: i64) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.execute(
                &format!("UPDATE deliveries SET status = 'held', next_attempt_ms = NULL, updated_at = {NOW} WHERE id = ?1"),
                [id],
            )?;
            Ok(())
        })
        .await
    }

    /// Unpauses a plugin for a tenant and releases its held deliveries, which
    /// are returned in arrival order. `None` if the plugin was not paused.
    pub async fn resume_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<Vec<PendingDelivery>>, DbError> {
        let (t, p) = (tenant.to_string(), plugin.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE plugin_state SET paused = 0, paused_at = NULL WHERE tenant = ?1 AND plugin = ?2 AND paused = 1",
                params![t, p],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let held = pending_where(conn, "d.tenant = ?1 AND d.plugin = ?2 AND d.status = 'held'", params![t, p])?;
            conn.execute(
                &format!(
                    "UPDATE deliveries SET status = 'pending', updated_at = {NOW} WHERE tenant = ?1 AND plugin = ?2 AND status = 'held'"
                ),
                params![t, p],
            )?;
            Ok(Some(held))
        })
        .await
    }

    /// Every (tenant, plugin) that is paused.
    pub async fn paused_plugins(&self) -> Result<Vec<(String, String)>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT tenant, plugin FROM plugin_state WHERE paused = 1")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Delivery health of every plugin of a tenant that has any.
    pub async fn plugin_health(&self, tenant: &str) -> Result<BTreeMap<String, PluginHealth>, DbError> {
        let t = tenant.to_string();
        self.read(move |conn| {
            let mut out = BTreeMap::new();
            let mut stmt = conn.prepare(
                "SELECT plugin, paused, paused_at, failed_attempts, failed_deliveries, last_error, last_error_at
                 FROM plugin_state WHERE tenant = ?1",
            )?;
            let rows = stmt.query_map([&t], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PluginHealth {
                        paused: r.get(1)?,
                        paused_at: r.get(2)?,
                        failed_attempts: r.get(3)?,
                        failed_deliveries: r.get(4)?,
                        last_error: r.get(5)?,
                        last_error_at: r.get(6)?,
                        held: 0,
                    },
                ))
            })?;
            for row in rows {
                let (plugin, h) = row?;
                out.insert(plugin, h);
            }
            let mut stmt = conn.prepare("SELECT plugin, count(*) FROM deliveries WHERE tenant = ?1 AND status = 'held' GROUP BY plugin")?;
            let rows = stmt.query_map([&t], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (plugin, n) = row?;
                out.entry(plugin).or_default().held = n;
            }
            Ok(out)
        })
        .await
    }

    /// Every delivery that has not run to an end and is not held, oldest first.
    pub async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, DbError> {
        self.read(|conn| pending_where(conn, "d.status IN ('pending', 'running')", []))
            .await
    }

    /// Held deliveries by (tenant, plugin).
    pub async fn held_counts(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare("SELECT tenant, plugin, count(*) FROM deliveries WHERE status = 'held' GROUP BY tenant, plugin")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The deliveries of one event.
    pub async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRecord>, DbError> {
        let event_id = event_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!("{DELIVERY_COLUMNS} WHERE event_id = ?1 ORDER BY id"))?;
            let rows = stmt.query_map([event_id], delivery_record)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

pub(super) const DELIVERY_COLUMNS: &str = "SELECT id, event_id, plugin, plugin_hash, status, attempts, failures, last_error, duration_us,
    next_attempt_ms, coalesce(created_at, updated_at) FROM deliveries";

pub(super) fn delivery_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        plugin: r.get(2)?,
        plugin_hash: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        failures: r.get(6)?,
        last_error: r.get(7)?,
        duration_us: r.get(8)?,
        next_attempt_at: r.get::<_, Option<i64>>(9)?.and_then(rfc3339_ms),
        created_at: r.get(10)?,
    })
}

/// Deliveries matching `filter` (over `deliveries d`), with their events, in id order.
pub(super) fn pending_where(conn: &Connection, filter: &str, args: impl rusqlite::Params) -> Result<Vec<PendingDelivery>, DbError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT d.id, d.plugin, e.event_json, d.next_attempt_ms FROM deliveries d JOIN events e ON e.id = d.event_id
         WHERE {filter} ORDER BY d.id"
    ))?;
    let rows = stmt.query_map(args, |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, plugin, json, due_ms) = row?;
        out.push(PendingDelivery {
            id,
            plugin,
            event: serde_json::from_str(&json)?,
            due_ms,
        });
    }
    Ok(out)
}

/// The status a delivery of `tenant`'s `plugin` (SQL expressions) takes
/// when it may run: `held` if the plugin is paused for the tenant, else
/// `pending`.
pub(super) fn runnable(tenant: &str, plugin: &str) -> String {
    format!(
        "CASE WHEN EXISTS (SELECT 1 FROM plugin_state p WHERE p.tenant = {tenant} AND p.plugin = {plugin} AND p.paused = 1) THEN 'held' ELSE 'pending' END"
    )
}

/// Creates deliveries of an event: [`runnable`], or `verifying` if the
/// event waits for verification.
pub(super) fn insert_deliveries(
    conn: &Connection,
    event_id: &str,
    tenant: &str,
    deliveries: &[NewDelivery],
    verifying: bool,
) -> Result<Vec<Created>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO deliveries (event_id, tenant, plugin, plugin_hash, status, created_at, kind)
         VALUES (?1, ?2, ?3, ?4,
                 CASE WHEN ?5 THEN 'verifying' ELSE {} END,
                 {NOW}, (SELECT kind FROM events WHERE id = ?1))
         RETURNING id, status",
        runnable("?2", "?3")
    ))?;
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let (id, status): (i64, DeliveryStatus) = stmt.query_row(params![event_id, tenant, d.plugin, d.plugin_hash, verifying], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        super::search::index_delivery(conn, id, event_id)?;
        out.push(Created {
            id,
            held: status == DeliveryStatus::Held,
        });
    }
    Ok(out)
}
