//! Timers: a delivery's schedules and cancels, applied in the transaction
//! that marks it done; firing a due timer (claiming its row, storing its
//! event and delivery in one transaction, so it fires once even across a
//! crash or several nodes); manifest schedules' rows; listing pending timers.

use rusqlite::{Connection, OptionalExtension, params};

use super::deliveries::insert_deliveries;
use super::events::{Created, NewDelivery};
use super::{Db, DbError};
use crate::domain::Event;

/// A change a delivery makes to its plugin's timers, applied if it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    /// Schedule (or replace) `key`.
    Schedule {
        /// The key.
        key: String,
        /// When it is due, unix ms.
        due_ms: i64,
        /// What it carries.
        payload: Vec<u8>,
        /// The host call's position in the delivery.
        seq: u32,
    },
    /// Cancel `key`.
    Cancel {
        /// The key.
        key: String,
    },
}

/// A pending timer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredTimer {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Plugin.
    pub plugin: String,
    /// Key (a schedule's name for a schedule).
    pub key: String,
    /// A manifest schedule's next firing, not a plugin's timer.
    pub scheduled: bool,
    /// For a schedule: its pattern and zone.
    pub schedule: Option<String>,
    /// When it is due, unix ms.
    pub due_ms: i64,
    /// Its payload.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The delivery that scheduled it.
    pub set_by: Option<i64>,
}

/// A due timer to fire: its row as read, and what firing stores.
#[derive(Debug, Clone)]
pub struct Firing {
    /// The row, as read: it fires only if still due at that time.
    pub timer: StoredTimer,
    /// The `timer` event (with its id).
    pub event: Event,
    /// The delivery to its plugin.
    pub delivery: NewDelivery,
    /// For a schedule: when it is next due (the row stays, moved there).
    pub next_due_ms: Option<i64>,
}

/// A manifest schedule as a plugin serves it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    /// Tenant.
    pub tenant: String,
    /// Plugin.
    pub plugin: String,
    /// The schedule's name.
    pub name: String,
    /// Its pattern and zone.
    pub spec: String,
    /// Its next time due from now, unix ms.
    pub next_due_ms: i64,
}

const COLUMNS: &str = "id, tenant, plugin, key, scheduled, schedule, due_ms, payload, set_by";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredTimer> {
    Ok(StoredTimer {
        id: r.get(0)?,
        tenant: r.get(1)?,
        plugin: r.get(2)?,
        key: r.get(3)?,
        scheduled: r.get(4)?,
        schedule: r.get(5)?,
        due_ms: r.get(6)?,
        payload: r.get(7)?,
        set_by: r.get(8)?,
    })
}

/// Applies a successful delivery's timer changes, in its transaction.
pub(super) fn apply(conn: &Connection, delivery_id: i64, tenant: &str, plugin: &str, changes: &[TimerChange]) -> Result<(), DbError> {
    for change in changes {
        match change {
            TimerChange::Schedule { key, due_ms, payload, seq } => {
                conn.prepare_cached(
                    "INSERT INTO timers (tenant, plugin, key, scheduled, due_ms, payload, set_by, seq, created_ms)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (tenant, plugin, scheduled, key) DO UPDATE SET due_ms = excluded.due_ms,
                     payload = excluded.payload, set_by = excluded.set_by, seq = excluded.seq, created_ms = excluded.created_ms",
                )?
                .execute(params![tenant, plugin, key, due_ms, payload, delivery_id, seq, super::now_ms()])?;
            }
            TimerChange::Cancel { key } => {
                conn.prepare_cached("DELETE FROM timers WHERE tenant = ?1 AND plugin = ?2 AND scheduled = 0 AND key = ?3")?
                    .execute(params![tenant, plugin, key])?;
            }
        }
    }
    Ok(())
}

impl Db {
    /// A plugin's pending timer (not a schedule) by key.
    pub async fn timer(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<StoredTimer>, DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM timers WHERE tenant = ?1 AND plugin = ?2 AND scheduled = 0 AND key = ?3"
                ))?
                .query_row(params![t, p, k], row)
                .optional()?)
        })
        .await
    }

    /// How many timers (not schedules) a plugin has pending.
    pub async fn timer_count(&self, tenant: &str, plugin: &str) -> Result<u64, DbError> {
        let (t, p) = (tenant.to_string(), plugin.to_string());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT count(*) FROM timers WHERE tenant = ?1 AND plugin = ?2 AND scheduled = 0")?
                .query_row(params![t, p], |r| r.get(0))?)
        })
        .await
    }

    /// A tenant's pending timers and schedules (optionally one plugin's), soonest first.
    pub async fn timers(&self, tenant: &str, plugin: Option<&str>, limit: usize) -> Result<Vec<StoredTimer>, DbError> {
        let (t, p) = (tenant.to_string(), plugin.map(str::to_string));
        self.browse(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM timers WHERE tenant = ?1 AND (?2 IS NULL OR plugin = ?2) ORDER BY due_ms, id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![t, p, limit as i64], row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many timers and schedules are pending, all tenants.
    pub async fn timers_pending(&self) -> Result<u64, DbError> {
        self.browse(|conn| Ok(conn.prepare_cached("SELECT count(*) FROM timers")?.query_row([], |r| r.get(0))?))
            .await
    }

    /// When the soonest timer is due, unix ms.
    pub async fn next_timer_due(&self) -> Result<Option<i64>, DbError> {
        self.read(|conn| Ok(conn.prepare_cached("SELECT min(due_ms) FROM timers")?.query_row([], |r| r.get(0))?))
            .await
    }

    /// Up to `limit` timers due at `now_ms`, soonest first.
    pub async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<StoredTimer>, DbError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM timers WHERE due_ms <= ?1 ORDER BY due_ms, id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now_ms, limit as i64], row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Fires due timers, each in the same transaction as its event and
    /// delivery: a timer's row is claimed (deleted, or for a schedule moved
    /// to its next time) only if it is still as read, so a timer replaced or
    /// cancelled meanwhile, or fired by another node, is skipped (`None`).
    pub async fn fire_timers(&self, firings: Vec<Firing>) -> Result<Vec<Option<Created>>, DbError> {
        self.write(move |conn| {
            let mut out = Vec::with_capacity(firings.len());
            for f in &firings {
                let t = &f.timer;
                let claimed = match f.next_due_ms {
                    Some(next) => conn
                        .prepare_cached("UPDATE timers SET due_ms = ?3 WHERE id = ?1 AND due_ms = ?2")?
                        .execute(params![t.id, t.due_ms, next])?,
                    None => conn
                        .prepare_cached("DELETE FROM timers WHERE id = ?1 AND due_ms = ?2 AND set_by IS ?3")?
                        .execute(params![t.id, t.due_ms, t.set_by])?,
                };
                if claimed == 0 {
                    out.push(None);
                    continue;
                }
                let json = serde_json::to_string(&f.event)?;
                conn.prepare_cached(
                    "INSERT INTO events (id, tenant, dedupe_key, kind, format, event_json) VALUES (?1, ?2, ?3, 'timer', 'timer', ?4)",
                )?
                .execute(params![
                    f.event.event_id,
                    f.event.tenant,
                    format!("timer:{}:{}", t.id, t.due_ms),
                    json
                ])?;
                let created = insert_deliveries(conn, &f.event.event_id, &f.event.tenant, std::slice::from_ref(&f.delivery), false)?;
                out.push(created.into_iter().next());
            }
            Ok(out)
        })
        .await
    }

    /// Brings the schedules' rows in line with what the plugins serve now:
    /// a new or changed schedule is due at its next time; an unchanged one
    /// keeps its due time (so one missed during downtime fires once, now);
    /// a schedule no plugin serves any more is removed.
    pub async fn sync_schedules(&self, schedules: Vec<ScheduleRow>) -> Result<(), DbError> {
        self.write(move |conn| {
            let mut keep = std::collections::HashSet::new();
            for s in &schedules {
                conn.prepare_cached(
                    "INSERT INTO timers (tenant, plugin, key, scheduled, schedule, due_ms, payload, created_ms)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, x'', ?6)
                     ON CONFLICT (tenant, plugin, scheduled, key) DO UPDATE SET schedule = excluded.schedule,
                     due_ms = excluded.due_ms WHERE schedule IS NOT excluded.schedule",
                )?
                .execute(params![s.tenant, s.plugin, s.name, s.spec, s.next_due_ms, super::now_ms()])?;
                keep.insert((s.tenant.as_str(), s.plugin.as_str(), s.name.as_str()));
            }
            let mut stmt = conn.prepare_cached("SELECT id, tenant, plugin, key FROM timers WHERE scheduled = 1")?;
            let stale: Vec<i64> = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .filter_map(Result::ok)
                .filter(|(_, t, p, k)| !keep.contains(&(t.as_str(), p.as_str(), k.as_str())))
                .map(|(id, ..)| id)
                .collect();
            for id in stale {
                conn.execute("DELETE FROM timers WHERE id = ?1", [id])?;
            }
            Ok(())
        })
        .await
    }
}
