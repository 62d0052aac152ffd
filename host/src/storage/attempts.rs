//! Delivery attempts: what each run of a plugin on an event did (outcome,
//! timings, wasm time, peak memory, the plugin version, its log lines and
//! host calls as JSON written by the engine's tracer), and one delivery with
//! all its attempts for the admin API. Attempts go with their delivery when
//! retention prunes it.

use rusqlite::params;

use super::{Db, DbError, DeliveryRecord};

/// One attempt, as the dispatcher records it when the attempt ends.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    /// The delivery.
    pub delivery_id: i64,
    /// The plugin version's content hash.
    pub plugin_hash: Option<String>,
    /// Start and end, unix ms.
    pub started_ms: i64,
    /// End, unix ms.
    pub ended_ms: i64,
    /// `None` when it succeeded, else the failure reason (already capped).
    pub error: Option<String>,
    /// Wasm execution time, µs.
    pub wasm_us: u64,
    /// Largest linear memory asked for, bytes.
    pub peak_memory_bytes: u64,
    /// The plugin's log lines, a JSON array.
    pub logs_json: String,
    /// The host calls, a JSON array.
    pub calls_json: String,
}

/// One stored attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    /// 1 for the first run, then 2, ….
    pub attempt: i64,
    /// The plugin version that ran.
    pub plugin_hash: Option<String>,
    /// Start, RFC 3339.
    pub started_at: String,
    /// Wall time, ms.
    pub duration_ms: f64,
    /// `done` or `failed`.
    pub outcome: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// Wasm execution time, µs.
    pub wasm_us: i64,
    /// Largest linear memory asked for, bytes.
    pub peak_memory_bytes: i64,
    /// Log lines: `{level, message, at_ms}`.
    pub logs: serde_json::Value,
    /// Host calls: `{call, args, result, ok, at_ms, ms}`.
    pub calls: serde_json::Value,
}

/// A delivery, its event and every attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryDetail {
    /// The delivery's state.
    pub delivery: DeliveryRecord,
    /// The event as plugins saw it.
    pub event: serde_json::Value,
    /// Its attempts, first first.
    pub attempts: Vec<Attempt>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl Db {
    /// Records an attempt. Not awaited by the dispatcher: it is queued behind
    /// the delivery's start, off the critical path; if the process dies first,
    /// the attempt runs again and is recorded then.
    pub fn record_attempt(&self, a: NewAttempt) {
        self.write_detached("attempt record", move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO attempts (delivery_id, attempt, plugin_hash, started_ms, ended_ms, error,
                 wasm_us, peak_memory_bytes, logs, calls)
                 VALUES (?1, (SELECT attempts FROM deliveries WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    a.delivery_id,
                    a.plugin_hash,
                    a.started_ms,
                    a.ended_ms,
                    a.error,
                    a.wasm_us as i64,
                    a.peak_memory_bytes as i64,
                    a.logs_json,
                    a.calls_json
                ],
            )?;
            Ok(())
        });
    }

    /// One of the tenant's deliveries with its event and attempts, if it exists.
    pub async fn delivery_detail(&self, tenant: &str, id: i64) -> Result<Option<DeliveryDetail>, DbError> {
        let t = tenant.to_string();
        self.browse(move |conn| {
            let found = conn.query_row(
                &format!("{} WHERE id = ?1 AND tenant = ?2", super::deliveries::DELIVERY_COLUMNS),
                params![id, t],
                super::deliveries::delivery_record,
            );
            let delivery = match found {
                Ok(d) => d,
                Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let event_json: String = conn.query_row("SELECT event_json FROM events WHERE id = ?1", [&delivery.event_id], |r| r.get(0))?;
            let mut stmt = conn.prepare(
                "SELECT attempt, plugin_hash, started_ms, ended_ms, error, wasm_us, peak_memory_bytes, logs, calls
                 FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
            )?;
            let attempts = stmt
                .query_map([id], |r| {
                    let (started, ended): (i64, i64) = (r.get(2)?, r.get(3)?);
                    let error: Option<String> = r.get(4)?;
                    let json = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
                    Ok(Attempt {
                        attempt: r.get(0)?,
                        plugin_hash: r.get(1)?,
                        started_at: rfc3339(started),
                        duration_ms: (ended - started) as f64,
                        outcome: if error.is_some() { "failed" } else { "done" },
                        error,
                        wasm_us: r.get(5)?,
                        peak_memory_bytes: r.get(6)?,
                        logs: json(r.get(7)?),
                        calls: json(r.get(8)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(DeliveryDetail {
                delivery,
                event: serde_json::from_str(&event_json).unwrap_or(serde_json::Value::Null),
                attempts,
            }))
        })
        .await
    }
}
