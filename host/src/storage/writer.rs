//! The writer thread: every write goes through it, batched into one
//! transaction (one fsync) per batch, each write in its own savepoint; between
//! batches it prunes expired dedupe keys and journal entries, and events past
//! retention a few small transactions at a time (soon again while a backlog
//! remains).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::DbError;
use super::schema::now_ms;

/// A write's result, type-erased for the writer thread.
pub(super) type Erased = Result<Box<dyn std::any::Any + Send>, DbError>;
pub(super) type Op = Box<dyn FnOnce(&Connection) -> Erased + Send>;

pub(super) struct Write {
    pub(super) op: Op,
    pub(super) reply: Box<dyn FnOnce(Erased) + Send>,
}

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ages {
    /// Dedupe keys and journal entries.
    pub(super) dedupe_window: Duration,
    /// Finished events.
    pub(super) retention: Duration,
    /// KV of plugins no longer deployed.
    pub(super) kv_grace: Duration,
}

/// Forgets dedupe keys, and journal entries, older than the window.
pub(super) fn prune(conn: &Connection, window: Duration) -> Result<usize, DbError> {
    let cutoff = now_ms() - window.as_millis() as i64;
    conn.execute("DELETE FROM journal WHERE started_ms < ?1", [cutoff])?;
    Ok(conn.execute("DELETE FROM dedupe WHERE received_ms < ?1", [cutoff])?)
}

/// Deletes the KV of plugins undeployed for longer than `grace`; the number
/// of (tenant, plugin) namespaces removed.
pub(super) fn prune_kv(conn: &Connection, grace: Duration) -> Result<usize, DbError> {
    let cutoff = now_ms() - grace.as_millis() as i64;
    conn.execute(
        "DELETE FROM kv WHERE (tenant, plugin) IN (SELECT tenant, plugin FROM kv_orphans WHERE since_ms <= ?1)",
        [cutoff],
    )?;
    Ok(conn.execute("DELETE FROM kv_orphans WHERE since_ms <= ?1", [cutoff])?)
}

/// Applies queued writes in batches: one transaction (one fsync) per batch,
/// each write in its own savepoint so one failure does not undo the others.
/// Between batches, at most every tenth of the dedupe window (and at least
/// hourly), prunes expired dedupe keys and journal entries, and events past
/// the retention period.
pub(super) fn writer_loop(
    conn: &mut Connection,
    rx: mpsc::Receiver<Write>,
    ages: Ages,
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
) {
    let Ages {
        dedupe_window,
        retention,
        kv_grace,
    } = ages;
    const MAX_BATCH: usize = 512;
    // Retention batches per pass: few, so queued writes wait at most a few
    // small transactions; while a backlog remains, passes come every
    // `BACKLOG_EVERY` between write batches instead of hourly.
    const RETENTION_BATCHES: usize = 4;
    const BACKLOG_EVERY: Duration = Duration::from_millis(50);
    let prune_every = (dedupe_window / 10).clamp(Duration::from_millis(10), Duration::from_secs(3600));
    let mut next_prune = prune_every;
    let mut last_prune: Option<Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= next_prune) {
            match prune(conn, dedupe_window) {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "pruned expired dedupe keys"),
                Err(e) => tracing::warn!(error = %e, "cannot prune dedupe keys"),
            }
            match prune_kv(conn, kv_grace) {
                Ok(0) => {}
                Ok(n) => tracing::info!(plugins = n, "deleted the KV of plugins undeployed past the grace period"),
                Err(e) => tracing::warn!(error = %e, "cannot prune KV of undeployed plugins"),
            }
            next_prune = prune_every;
            match super::retention::prune(conn, retention, RETENTION_BATCHES) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(events = n, "pruned events past the retention period");
                    if n == RETENTION_BATCHES * super::retention::BATCH {
                        next_prune = BACKLOG_EVERY;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot prune expired events"),
            }
            last_prune = Some(Instant::now());
        }
        let first = match rx.recv_timeout(next_prune) {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|w| (w.op, w.reply)).unzip();
        let mut results = Vec::with_capacity(ops.len());
        let committed = (|| -> Result<(), DbError> {
            let mut tx = conn.transaction()?;
            for op in ops {
                let mut sp = tx.savepoint()?;
                let r = op(&sp);
                if r.is_ok() {
                    sp.commit()?;
                } else {
                    sp.rollback()?;
                }
                results.push(r);
            }
            let started = Instant::now();
            tx.commit()?;
            commit_seconds.observe(started.elapsed().as_secs_f64());
            Ok(())
        })();
        match committed {
            Ok(()) => replies.into_iter().zip(results).for_each(|(reply, r)| reply(r)),
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, writes = replies.len(), "database commit failed");
                replies.into_iter().for_each(|reply| reply(Err(DbError::Commit(message.clone()))));
            }
        }
    }
}
