//! Verification of events with the tenant's JustCall API (for `justcall-v1`,
//! whose signature does not cover the payload): an event waiting for it has
//! a `pending` row here and `verifying` deliveries; verifying applies its
//! opt-out change and makes the deliveries runnable, refusing records the
//! reason and ends them `refused`. Each step is one transaction.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::deliveries::{DeliveryStatus, runnable};
use super::events::apply_opt_change;
use super::schema::NOW;
use super::{Db, DbError};
use crate::domain::Event;

/// Where an event's verification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationState {
    /// Not yet checked, or JustCall could not be asked yet.
    Pending,
    /// JustCall holds the same message: the event runs.
    Verified,
    /// The event does not match JustCall's message: it never runs.
    Refused,
}

impl VerificationState {
    /// Every state, the admin API's default (`refused`) first.
    pub const ALL: [VerificationState; 3] = [VerificationState::Refused, VerificationState::Pending, VerificationState::Verified];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationState::Pending => "pending",
            VerificationState::Verified => "verified",
            VerificationState::Refused => "refused",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<VerificationState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl ToSql for VerificationState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for VerificationState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        VerificationState::parse(name).ok_or_else(|| FromSqlError::Other(format!("unknown verification state `{name}`").into()))
    }
}

/// One event's verification record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The event.
    pub event_id: String,
    /// Its state.
    pub state: VerificationState,
    /// Requests to JustCall made for it.
    pub attempts: u32,
    /// Why it was refused, or the last error while pending.
    pub reason: Option<String>,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// A delivery made runnable by a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Delivery id.
    pub id: i64,
    /// Its plugin.
    pub plugin: String,
    /// Its plugin is paused: it waits for a resume.
    pub held: bool,
}

/// Records that `event` waits for verification (in the insert's transaction).
pub(super) fn start(conn: &Connection, event: &Event) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO verifications (event_id, tenant, state) VALUES (?1, ?2, 'pending')",
        params![event.event_id, event.tenant],
    )?;
    Ok(())
}

fn verification(r: &rusqlite::Row<'_>) -> rusqlite::Result<Verification> {
    Ok(Verification {
        event_id: r.get(0)?,
        state: r.get(1)?,
        attempts: r.get(2)?,
        reason: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

const COLUMNS: &str = "SELECT event_id, state, attempts, reason, updated_at FROM verifications";

impl Db {
    /// The event matched JustCall's message: marks it verified, applies its
    /// opt-out change and makes its deliveries runnable (held if their
    /// plugin is paused). Returns them; empty if it was not pending.
    pub async fn verified(&self, event_id: &str) -> Result<Vec<Released>, DbError> {
        let e = event_id.to_string();
        self.write(move |conn| {
            let n = conn.execute(
                &format!(
                    "UPDATE verifications SET state = 'verified', attempts = attempts + 1, reason = NULL, updated_at = {NOW}
                     WHERE event_id = ?1 AND state = 'pending'"
                ),
                [&e],
            )?;
            if n == 0 {
                return Ok(Vec::new());
            }
            let json: String = conn.query_row("SELECT event_json FROM events WHERE id = ?1", [&e], |r| r.get(0))?;
            apply_opt_change(conn, &serde_json::from_str(&json)?)?;
            let mut stmt = conn.prepare(&format!(
                "UPDATE deliveries SET status = {}, updated_at = {NOW}
                 WHERE event_id = ?1 AND status = 'verifying' RETURNING id, plugin, status",
                runnable("deliveries.tenant", "deliveries.plugin")
            ))?;
            let rows = stmt.query_map([&e], |r| {
                Ok(Released {
                    id: r.get(0)?,
                    plugin: r.get(1)?,
                    held: r.get::<_, DeliveryStatus>(2)? == DeliveryStatus::Held,
                })
            })?;
            let mut out = rows.collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
        .await
    }

    /// The event does not match JustCall's message: records why, and ends
    /// its deliveries `refused` with that reason. Its opt-out change is
    /// never applied.
    pub async fn refuse_event(&self, event_id: &str, reason: &str) -> Result<(), DbError> {
        let (e, reason) = (event_id.to_string(), reason.to_string());
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "UPDATE verifications SET state = 'refused', attempts = attempts + 1, reason = ?2, updated_at = {NOW}
                     WHERE event_id = ?1 AND state = 'pending'"
                ),
                params![e, reason],
            )?;
            conn.execute(
                &format!(
                    "UPDATE deliveries SET status = 'refused', last_error = ?2, updated_at = {NOW}
                     WHERE event_id = ?1 AND status = 'verifying'"
                ),
                params![e, format!("event refused: {reason}")],
            )?;
            Ok(())
        })
        .await
    }

    /// JustCall could not answer this time: counts the attempt and keeps
    /// the error; the event stays pending.
    pub async fn verification_attempt_failed(&self, event_id: &str, error: &str) -> Result<(), DbError> {
        let (e, error) = (event_id.to_string(), error.to_string());
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "UPDATE verifications SET attempts = attempts + 1, reason = ?2, updated_at = {NOW}
                     WHERE event_id = ?1 AND state = 'pending'"
                ),
                params![e, error],
            )?;
            Ok(())
        })
        .await
    }

    /// One event's verification, if it needed one.
    pub async fn verification(&self, event_id: &str) -> Result<Option<Verification>, DbError> {
        let e = event_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(&format!("{COLUMNS} WHERE event_id = ?1"), [e], verification)
                .optional()?)
        })
        .await
    }

    /// A tenant's verifications in `state`, newest first.
    pub async fn verifications(&self, tenant: &str, state: VerificationState, limit: u32) -> Result<Vec<Verification>, DbError> {
        let (t, s) = (tenant.to_string(), state);
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "{COLUMNS} WHERE tenant = ?1 AND state = ?2 ORDER BY updated_at DESC, event_id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![t, s, limit], verification)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Every event still waiting for verification, oldest first, with how
    /// many attempts it has had: what a restart resumes.
    pub async fn pending_verifications(&self) -> Result<Vec<(Event, u32)>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT e.event_json, v.attempts FROM verifications v JOIN events e ON e.id = v.event_id
                 WHERE v.state = 'pending' ORDER BY e.id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (json, attempts) = row?;
                out.push((serde_json::from_str(&json)?, attempts));
            }
            Ok(out)
        })
        .await
    }
}
