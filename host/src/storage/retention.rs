//! Retention: an event older than the retention period whose deliveries have
//! all finished (`done`, or `refused` by verification) is deleted, with its deliveries and their journal
//! entries, attempts and search index rows, in small batches so ingest never waits long behind it. Events
//! with a pending, running, held or failed delivery are kept until that is
//! resolved. After pruning, the WAL is checkpointed and truncated.

use std::time::Duration;

use rusqlite::{Connection, params};

use super::DbError;
use super::schema::now_ms;

/// Events deleted per batch (per transaction).
pub(super) const BATCH: usize = 500;

/// The `received_at` before which events are expired.
pub(super) fn cutoff(retention: Duration) -> String {
    let ms = now_ms() - retention.as_millis() as i64;
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Deletes one batch of expired events older than `cutoff`, with their
/// deliveries and journal entries; returns how many events.
pub(super) fn prune_batch(conn: &Connection, cutoff: &str) -> Result<usize, DbError> {
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_batch (id TEXT PRIMARY KEY)", [])?;
    conn.execute("DELETE FROM prune_batch", [])?;
    let picked = conn.execute(
        "INSERT INTO prune_batch SELECT e.id FROM events e WHERE e.received_at < ?1
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status NOT IN ('done', 'refused'))
         AND NOT EXISTS (SELECT 1 FROM verifications v WHERE v.event_id = e.id AND v.state = 'pending')
         LIMIT ?2",
        params![cutoff, BATCH as i64],
    )?;
    if picked == 0 {
        return Ok(0);
    }
    conn.execute(
        "DELETE FROM journal WHERE delivery_id IN
         (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM prune_batch))",
        [],
    )?;
    conn.execute(
        "DELETE FROM attempts WHERE delivery_id IN
         (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM prune_batch))",
        [],
    )?;
    conn.execute(
        "DELETE FROM delivery_text WHERE rowid IN
         (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM prune_batch))",
        [],
    )?;
    conn.execute("DELETE FROM deliveries WHERE event_id IN (SELECT id FROM prune_batch)", [])?;
    conn.execute("DELETE FROM verifications WHERE event_id IN (SELECT id FROM prune_batch)", [])?;
    Ok(conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM prune_batch)", [])?)
}

/// Prunes expired events in batches, each its own transaction, at most
/// `max_batches` of them; then checkpoints the WAL. Returns how many events.
pub(super) fn prune(conn: &mut Connection, retention: Duration, max_batches: usize) -> Result<usize, DbError> {
    let cutoff = cutoff(retention);
    let mut total = 0;
    for _ in 0..max_batches {
        let tx = conn.transaction()?;
        let n = prune_batch(&tx, &cutoff)?;
        tx.commit()?;
        total += n;
        if n < BATCH {
            break;
        }
    }
    // Readers may keep part of the WAL; what they do not is truncated.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(total)
}
