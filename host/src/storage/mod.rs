//! Durable state in one SQLite file, behind [`Db`]: the handle, its error
//! type and the read/write plumbing. Each concern has its own file: `schema`
//! (migrations), `writer` (the group-committing writer thread), `events`
//! (events, dedupe, opt-outs), `retention` (pruning finished events by age),
//! `deliveries` (the delivery state machine),
//! `policy` (the pure retry verdict), `journal` (side effects), `verification`
//! (events checked with JustCall before they run), `attempts` (what each
//! delivery attempt did), `search` (finding deliveries), `activity` (recent
//! activity for the console), `tokens` (tenants' API tokens, the audit log),
//! `versions` (each plugin's kept versions and their code), `secrets`
//! (plugin secrets, sealed), `trials` (versions on trial, resumed at start),
//! `timers` (pending timers and schedules, fired once) and `kv`.
//!
//! The boundary: callers see only `Db`'s async methods and the types below,
//! never SQL or rusqlite. A second backend (PostgreSQL) implements the same
//! methods behind `Db` without dispatch, intake or capabilities changing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::config::DbOptions;

mod activity;
mod attempts;
mod deliveries;
mod events;
mod journal;
mod kv;
mod policy;
mod retention;
mod schema;
mod search;
mod secrets;
mod timers;
mod tokens;
mod trials;
mod verification;
mod versions;
mod writer;

pub use activity::{Minute, TenantActivity};
pub use attempts::{Attempt, DeliveryDetail, NewAttempt};
pub use deliveries::{DeliveryRecord, DeliveryStatus, PendingDelivery, PluginHealth};
pub use events::{Created, InsertOutcome, NewDelivery};
pub use journal::{JournalEntry, JournalState};
pub use kv::{KvQuota, KvRefusal};
pub use policy::{DeliveryOutcome, DeliveryPolicy, Finished, Verdict};
pub use schema::now_ms;
pub use search::{Found, MAX_PAGE, Page, Search, SearchError, normalise_number};
pub use secrets::SealedSecret;
pub use timers::{Firing, ScheduleRow, StoredTimer, TimerChange};
pub use tokens::{AuditEntry, StoredToken};
pub use trials::StoredTrial;
pub use verification::{Released, Verification, VerificationState};
pub use versions::{BlobError, KeptVersion, NewVersion};

use writer::Write;

/// Storage failures. Callers answer webhooks with 503 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored event could not be decoded.
    #[error("stored event is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The batch this write was part of could not be committed.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The data directory could not be created.
    #[error("cannot create data dir: {0}")]
    Io(#[from] std::io::Error),
    /// The writer thread is gone (shutting down).
    #[error("database writer has stopped")]
    Closed,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    writer: mpsc::Sender<Write>,
    reader: Arc<Mutex<Connection>>,
    /// Reads for people (admin API, console: searches, charts), apart from
    /// the engine's so a slow search never delays a plugin's read.
    browser: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    options: Arc<DbOptions>,
    policy: Arc<DeliveryPolicy>,
    /// Commit times, observed by the writer.
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Whose blocking pool runs reads: the runtime that opened the database
    /// (the server's), whatever thread a read is awaited on.
    blocking: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating and migrating if needed) `switchboard.db` in
    /// `data_dir` and starts the writer.
    pub fn open(data_dir: &Path, options: DbOptions) -> Result<Db, DbError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("switchboard.db");
        let mut conn = schema::open_conn(&path, options.busy_timeout)?;
        // Migration 2 rebuilds `events`, which deliveries reference.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        schema::migrations().to_latest(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deliveries that were running when the process stopped never finished:
        // they run again.
        conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'running'", [])?;
        let reader = schema::open_conn(&path, options.busy_timeout)?;
        let browser = schema::open_conn(&path, options.busy_timeout)?;
        let (tx, rx) = mpsc::channel();
        let commit_seconds = crate::metrics::db_commit_histogram();
        let commits = commit_seconds.clone();
        let ages = writer::Ages {
            dedupe_window: options.dedupe_window,
            retention: options.retention,
            kv_grace: options.kv_grace,
        };
        thread::Builder::new()
            .name("switchboard-db-writer".into())
            .spawn(move || writer::writer_loop(&mut conn, rx, ages, commits))
            .expect("spawn db writer thread");
        Ok(Db {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            browser: Arc::new(Mutex::new(browser)),
            path: Arc::new(path),
            policy: Arc::new(DeliveryPolicy::new(options.retry_delays.clone())),
            options: Arc::new(options),
            commit_seconds,
            blocking: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Commit times of the writer's batches, for `/metrics`.
    pub fn commit_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commit_seconds.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` in the writer's next transaction and waits until it is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues `op` without waiting; writes apply in order, so a later awaited
    /// write being durable means this one is too.
    pub(super) fn write_detached(&self, what: &'static str, op: impl FnOnce(&Connection) -> Result<(), DbError> + Send + 'static) {
        let queued = self.submit(op, move |r| {
            if let Err(e) = r {
                tracing::error!(error = %e, "database write failed: {what}");
            }
        });
        if queued.is_err() {
            tracing::warn!("database writer stopped; not written: {what}");
        }
    }

    fn submit<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
        done: impl FnOnce(Result<T, DbError>) + Send + 'static,
    ) -> Result<(), DbError> {
        let write = Write {
            op: Box::new(move |c| op(c).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>)),
            reply: Box::new(move |r| done(r.map(|b| *b.downcast::<T>().expect("write result has the type its op returned")))),
        };
        self.writer.send(write).map_err(|_| DbError::Closed)
    }

    /// Runs `f` on the engine's reader.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.read_on(self.reader.clone(), f).await
    }

    /// Runs `f` on the connection that answers people (admin API, console).
    pub(super) async fn browse<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.read_on(self.browser.clone(), f).await
    }

    async fn read_on<T: Send + 'static>(
        &self,
        reader: Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        // On the opening runtime's blocking pool even when awaited from a
        // long-running plugin's low-priority thread: the shared reader must
        // never be held by one.
        let blocking = self.blocking.clone().unwrap_or_else(tokio::runtime::Handle::current);
        blocking
            .spawn_blocking(move || {
                let conn = crate::sync::lock(&reader);
                f(&conn)
            })
            .await
            .map_err(|_| DbError::Closed)?
    }
}

#[cfg(test)]
mod tests;
