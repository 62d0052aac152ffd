//! The side-effect journal: one entry per (delivery, seq) side effect, durable
//! before the call is made, with its outcome after. A later attempt finds the
//! entry and replays, reconciles or acts; a created message id is claimed by
//! at most one entry.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, params};

use super::schema::now_ms;
use super::{Db, DbError};

/// Where a journaled side effect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    /// About to be made, or made with an outcome never learnt (crash,
    /// timeout): reconcile before acting again.
    Started,
    /// Made, with its result recorded: replay it, never act again.
    Done,
    /// Known not to have taken effect: acting again is safe.
    Failed,
}

impl JournalState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Started => "started",
            JournalState::Done => "done",
            JournalState::Failed => "failed",
        }
    }
}

impl ToSql for JournalState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for JournalState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "started" => Ok(JournalState::Started),
            "done" => Ok(JournalState::Done),
            "failed" => Ok(JournalState::Failed),
            other => Err(FromSqlError::Other(format!("unknown journal state `{other}`").into())),
        }
    }
}

/// A journaled side effect, as found on a later attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Hash of the request.
    pub request_hash: String,
    /// Where the side effect is.
    pub state: JournalState,
    /// The recorded result (JSON), for `done`.
    pub result: Option<String>,
    /// When the call started (unix ms).
    pub started_ms: i64,
}

impl Db {
    /// The journal entry of a delivery's `seq`-th side effect, if any.
    pub async fn journal_get(&self, delivery_id: i64, seq: u32) -> Result<Option<JournalEntry>, DbError> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT request_hash, state, result, started_ms FROM journal WHERE delivery_id = ?1 AND seq = ?2",
                    params![delivery_id, seq],
                    |r| {
                        Ok(JournalEntry {
                            request_hash: r.get(0)?,
                            state: r.get(1)?,
                            result: r.get(2)?,
                            started_ms: r.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Durably records that a side effect is about to happen, replacing any
    /// earlier entry for the same (delivery, seq).
    pub async fn journal_begin(&self, delivery_id: i64, seq: u32, request_hash: String) -> Result<i64, DbError> {
        let started = now_ms();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO journal (delivery_id, seq, request_hash, state, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![delivery_id, seq, request_hash, JournalState::Started, started],
            )?;
            Ok(started)
        })
        .await
    }

    /// Records a side effect's outcome: [`JournalState::Done`] with its result,
    /// or [`JournalState::Failed`].
    /// `result_id` names what it created (a JustCall message id), so
    /// reconciliation never claims the same message for two deliveries.
    pub fn journal_end(&self, delivery_id: i64, seq: u32, state: JournalState, result: Option<String>, result_id: Option<String>) {
        self.write_detached("journal outcome", move |conn| {
            conn.execute(
                "UPDATE journal SET state = ?3, result = ?4, result_id = ?5 WHERE delivery_id = ?1 AND seq = ?2",
                params![delivery_id, seq, state, result, result_id],
            )?;
            Ok(())
        });
    }

    /// Whether some journaled side effect already produced `result_id`.
    pub async fn journal_claimed(&self, result_id: &str) -> Result<bool, DbError> {
        let id = result_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row("SELECT 1 FROM journal WHERE result_id = ?1", [id], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }
}
