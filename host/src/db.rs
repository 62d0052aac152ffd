//! Durable state in one SQLite file: events, their dedupe keys, deliveries and
//! their retry/pause state, the side-effect journal, opt-outs and plugin KV.
//! All writes go through one writer thread that group-commits, so many
//! webhooks share one fsync; a reply is sent only after its transaction is
//! durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use tokio::sync::oneshot;

use crate::event::Event;

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

/// How the database behaves; see [`crate::config::DeliveryPolicy`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Delays between a failed attempt and the next; a delivery that fails
    /// once more than there are delays is `failed` and pauses its plugin.
    pub retry_delays: Vec<Duration>,
    /// How long a dedupe key is remembered.
    pub dedupe_window: Duration,
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            retry_delays: vec![Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(1800)],
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

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

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The plugin returned `ok`.
    Done,
    /// The plugin returned an error, trapped or hit a limit.
    Failed(String),
}

/// What the retry policy made of a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The delivery is done.
    Done,
    /// It failed and runs again after this delay.
    Retry(Duration),
    /// It failed its last retry: it is `failed`, and its plugin is now paused
    /// for the tenant.
    Paused,
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
    /// `pending`, `running`, `done`, `failed` or `held`.
    pub status: String,
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

/// A journaled side effect, as found on a later attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Hash of the request.
    pub request_hash: String,
    /// `started` (outcome unknown), `done` or `failed`.
    pub state: String,
    /// The recorded result (JSON), for `done`.
    pub result: Option<String>,
    /// When the call started (unix ms).
    pub started_ms: i64,
}

/// A write's result, type-erased for the writer thread.
type Erased = Result<Box<dyn std::any::Any + Send>, DbError>;
type Op = Box<dyn FnOnce(&Connection) -> Erased + Send>;

struct Write {
    op: Op,
    reply: Box<dyn FnOnce(Erased) + Send>,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    writer: mpsc::Sender<Write>,
    reader: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    options: Arc<DbOptions>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        // 1: the first schema.
        M::up(
            "CREATE TABLE IF NOT EXISTS events (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                dedupe_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                format TEXT NOT NULL,
                event_json TEXT NOT NULL,
                raw TEXT NOT NULL,
                received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                UNIQUE (tenant, dedupe_key)
            );
            CREATE TABLE IF NOT EXISTS deliveries (
                id INTEGER PRIMARY KEY,
                event_id TEXT NOT NULL REFERENCES events(id),
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                plugin_hash TEXT,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                duration_us INTEGER,
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            );
            CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, id);
            CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);
            CREATE TABLE IF NOT EXISTS optouts (
                tenant TEXT NOT NULL,
                number TEXT NOT NULL,
                opted_out INTEGER NOT NULL,
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                PRIMARY KEY (tenant, number)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS kv (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                key TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (tenant, plugin, key)
            ) WITHOUT ROWID;",
        ),
        // 2: durable delivery. Dedupe keys move to their own table so they can
        // expire while events stay replayable; deliveries get a retry clock and
        // a failure count; plugins get a pause state; side effects a journal.
        M::up(
            "CREATE TABLE dedupe (
                tenant TEXT NOT NULL,
                key TEXT NOT NULL,
                event_id TEXT NOT NULL,
                received_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, key)
            ) WITHOUT ROWID;
            INSERT INTO dedupe SELECT tenant, dedupe_key, id, CAST(unixepoch(received_at, 'subsec') * 1000 AS INTEGER) FROM events;
            CREATE INDEX dedupe_by_age ON dedupe (received_ms);
            CREATE TABLE events_v2 (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                dedupe_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                format TEXT NOT NULL,
                event_json TEXT NOT NULL,
                raw TEXT NOT NULL,
                received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            );
            INSERT INTO events_v2 SELECT id, tenant, dedupe_key, kind, format, event_json, raw, received_at FROM events;
            DROP TABLE events;
            ALTER TABLE events_v2 RENAME TO events;
            ALTER TABLE deliveries ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE deliveries ADD COLUMN next_attempt_ms INTEGER;
            ALTER TABLE deliveries ADD COLUMN created_at TEXT;
            CREATE INDEX deliveries_by_plugin ON deliveries (tenant, plugin, status, id);
            CREATE TABLE plugin_state (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                paused INTEGER NOT NULL DEFAULT 0,
                paused_at TEXT,
                failed_attempts INTEGER NOT NULL DEFAULT 0,
                failed_deliveries INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                last_error_at TEXT,
                PRIMARY KEY (tenant, plugin)
            ) WITHOUT ROWID;
            CREATE TABLE journal (
                delivery_id INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                request_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                result TEXT,
                result_id TEXT,
                started_ms INTEGER NOT NULL,
                PRIMARY KEY (delivery_id, seq)
            ) WITHOUT ROWID;
            CREATE INDEX journal_by_result ON journal (result_id) WHERE result_id IS NOT NULL;
            CREATE INDEX journal_by_age ON journal (started_ms);",
        ),
    ])
}

fn open_conn(path: &Path, busy: Duration) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer. synchronous=FULL fsyncs the WAL
    // on every commit, so an acknowledged event survives a power cut, not just
    // a kill -9; group commit in the writer keeps that affordable.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(busy)?;
    Ok(conn)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Db {
    /// Opens (creating and migrating if needed) `switchboard.db` in
    /// `data_dir` and starts the writer.
    pub fn open(data_dir: &Path, options: DbOptions) -> Result<Db, DbError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("switchboard.db");
        let mut conn = open_conn(&path, options.busy_timeout)?;
        // Migration 2 rebuilds `events`, which deliveries reference.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        migrations().to_latest(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deliveries that were running when the process stopped never finished:
        // they run again.
        conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'running'", [])?;
        let reader = open_conn(&path, options.busy_timeout)?;
        let (tx, rx) = mpsc::channel();
        let window = options.dedupe_window;
        thread::Builder::new()
            .name("switchboard-db-writer".into())
            .spawn(move || writer_loop(&mut conn, rx, window))
            .expect("spawn db writer thread");
        Ok(Db {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            path: Arc::new(path),
            options: Arc::new(options),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` in the writer's next transaction and waits until it is durable.
    async fn write<T: Send + 'static>(&self, op: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues `op` without waiting; writes apply in order, so a later awaited
    /// write being durable means this one is too.
    fn write_detached(&self, what: &'static str, op: impl FnOnce(&Connection) -> Result<(), DbError> + Send + 'static) {
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

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
        let reader = self.reader.clone();
        // On the I/O runtime's blocking pool even for a long-running plugin:
        // the shared reader must never be held by a low-priority thread.
        crate::lanes::io_handle()
            .spawn_blocking(move || {
                let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&conn)
            })
            .await
            .map_err(|_| DbError::Closed)?
    }

    /// Stores an event and its deliveries in one transaction, unless the
    /// tenant has seen its dedupe key within the dedupe window. A delivery to
    /// a paused plugin is stored `held`.
    pub async fn insert_event(
        &self,
        event: Event,
        dedupe_key: String,
        format: &'static str,
        raw: String,
        deliveries: Vec<NewDelivery>,
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
                "INSERT INTO events (id, tenant, dedupe_key, kind, format, event_json, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![event.event_id, event.tenant, dedupe_key, event.kind.as_str(), format, json, raw],
            )?;
            // Opt-out state changes in the same transaction as the event, so
            // no plugin runs on an event before its opt-out is in force.
            if let Some((number, opted_out)) = event.opt_change() {
                conn.execute(
                    &format!(
                        "INSERT INTO optouts (tenant, number, opted_out) VALUES (?1, ?2, ?3)
                         ON CONFLICT (tenant, number) DO UPDATE SET opted_out = excluded.opted_out, updated_at = {NOW}"
                    ),
                    params![event.tenant, number, opted_out],
                )?;
            }
            Ok(InsertOutcome::Inserted(insert_deliveries(
                conn,
                &event.event_id,
                &event.tenant,
                &deliveries,
            )?))
        })
        .await
    }

    /// Adds deliveries of a stored event (a replay).
    pub async fn add_deliveries(&self, tenant: &str, event_id: &str, deliveries: Vec<NewDelivery>) -> Result<Vec<Created>, DbError> {
        let (t, e) = (tenant.to_string(), event_id.to_string());
        self.write(move |conn| insert_deliveries(conn, &e, &t, &deliveries)).await
    }

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
        let delays = self.options.retry_delays.clone();
        self.write(move |conn| {
            let (tenant, plugin, failures): (String, String, i64) = conn.query_row(
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
            match delays.get(failures as usize) {
                Some(delay) => {
                    conn.execute(
                        &format!(
                            "UPDATE deliveries SET status = 'pending', failures = failures + 1, last_error = ?2, duration_us = ?3,
                             next_attempt_ms = ?4, updated_at = {NOW} WHERE id = ?1"
                        ),
                        params![id, error, duration_us, now_ms() + delay.as_millis() as i64],
                    )?;
                    Ok(Finished::Retry(*delay))
                }
                None => {
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
    pub async fn plugin_health(&self, tenant: &str) -> Result<std::collections::BTreeMap<String, PluginHealth>, DbError> {
        let t = tenant.to_string();
        self.read(move |conn| {
            let mut out = std::collections::BTreeMap::new();
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

    /// A tenant's deliveries, newest first, optionally only those in `status`.
    pub async fn deliveries(&self, tenant: &str, status: Option<&str>, limit: u32) -> Result<Vec<DeliveryRecord>, DbError> {
        let (t, s) = (tenant.to_string(), status.map(str::to_string));
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "{DELIVERY_COLUMNS} WHERE tenant = ?1 AND (?2 IS NULL OR status = ?2) ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![t, s, limit], delivery_record)?;
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
                "INSERT OR REPLACE INTO journal (delivery_id, seq, request_hash, state, started_ms) VALUES (?1, ?2, ?3, 'started', ?4)",
                params![delivery_id, seq, request_hash, started],
            )?;
            Ok(started)
        })
        .await
    }

    /// Records a side effect's outcome (`done` with its result, or `failed`).
    /// `result_id` names what it created (a JustCall message id), so
    /// reconciliation never claims the same message for two deliveries.
    pub fn journal_end(&self, delivery_id: i64, seq: u32, done: bool, result: Option<String>, result_id: Option<String>) {
        self.write_detached("journal outcome", move |conn| {
            conn.execute(
                "UPDATE journal SET state = ?3, result = ?4, result_id = ?5 WHERE delivery_id = ?1 AND seq = ?2",
                params![delivery_id, seq, if done { "done" } else { "failed" }, result, result_id],
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

    /// How many keys, and how many bytes of keys and values, a (tenant,
    /// plugin) namespace holds, not counting `except_key`.
    pub async fn kv_usage(&self, tenant: &str, plugin: &str, except_key: &str) -> Result<(u64, u64), DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), except_key.to_string());
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key != ?3",
                params![t, p, k],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
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

    /// Reads one KV value.
    pub async fn kv_get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                    params![t, p, k],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Keys with a prefix, in order.
    pub async fn kv_keys(&self, tenant: &str, plugin: &str, prefix: &str) -> Result<Vec<String>, DbError> {
        let (t, p, pre) = (tenant.to_string(), plugin.to_string(), prefix.to_string());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare("SELECT key FROM kv WHERE tenant = ?1 AND plugin = ?2 AND substr(key, 1, length(?3)) = ?3 ORDER BY key")?;
            let rows = stmt.query_map(params![t, p, pre], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Writes (`Some`) or deletes (`None`) one KV value.
    pub async fn kv_put(&self, tenant: &str, plugin: &str, key: &str, value: Option<Vec<u8>>) -> Result<(), DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.write(move |conn| {
            match value {
                Some(v) => conn.execute(
                    "INSERT INTO kv (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
                    params![t, p, k, v],
                )?,
                None => conn.execute("DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3", params![t, p, k])?,
            };
            Ok(())
        })
        .await
    }

    /// Forgets dedupe keys (and journal entries) older than the window;
    /// returns how many keys.
    pub async fn prune_dedupe(&self) -> Result<usize, DbError> {
        let window = self.options.dedupe_window;
        self.write(move |conn| prune(conn, window)).await
    }
}

const DELIVERY_COLUMNS: &str = "SELECT id, event_id, plugin, plugin_hash, status, attempts, failures, last_error, duration_us,
    next_attempt_ms, coalesce(created_at, updated_at) FROM deliveries";

fn delivery_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
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
fn pending_where(conn: &Connection, filter: &str, args: impl rusqlite::Params) -> Result<Vec<PendingDelivery>, DbError> {
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

fn insert_deliveries(conn: &Connection, event_id: &str, tenant: &str, deliveries: &[NewDelivery]) -> Result<Vec<Created>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO deliveries (event_id, tenant, plugin, plugin_hash, status, created_at)
         VALUES (?1, ?2, ?3, ?4,
                 CASE WHEN EXISTS (SELECT 1 FROM plugin_state WHERE tenant = ?2 AND plugin = ?3 AND paused = 1) THEN 'held' ELSE 'pending' END,
                 {NOW})
         RETURNING id, status"
    ))?;
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let (id, status): (i64, String) =
            stmt.query_row(params![event_id, tenant, d.plugin, d.plugin_hash], |r| Ok((r.get(0)?, r.get(1)?)))?;
        out.push(Created {
            id,
            held: status == "held",
        });
    }
    Ok(out)
}

/// Forgets dedupe keys, and journal entries, older than the window.
fn prune(conn: &Connection, window: Duration) -> Result<usize, DbError> {
    let cutoff = now_ms() - window.as_millis() as i64;
    conn.execute("DELETE FROM journal WHERE started_ms < ?1", [cutoff])?;
    Ok(conn.execute("DELETE FROM dedupe WHERE received_ms < ?1", [cutoff])?)
}

/// Applies queued writes in batches: one transaction (one fsync) per batch,
/// each write in its own savepoint so one failure does not undo the others.
/// Between batches, at most every tenth of the window, prunes expired dedupe
/// keys.
fn writer_loop(conn: &mut Connection, rx: mpsc::Receiver<Write>, dedupe_window: Duration) {
    const MAX_BATCH: usize = 512;
    let prune_every = (dedupe_window / 10).clamp(Duration::from_millis(10), Duration::from_secs(3600));
    let mut last_prune: Option<Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
            match prune(conn, dedupe_window) {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "pruned expired dedupe keys"),
                Err(e) => tracing::warn!(error = %e, "cannot prune dedupe keys"),
            }
            last_prune = Some(Instant::now());
        }
        let first = match rx.recv_timeout(prune_every) {
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
            tx.commit()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, EventKind};

    fn event(id: &str) -> Event {
        Event {
            tenant: "acme".into(),
            kind: EventKind::Received,
            event_id: id.into(),
            occurred_at: "2026-03-12T14:30:00Z".into(),
            message_id: "m1".into(),
            direction: Direction::Inbound,
            from: "+15125551234".into(),
            to: "+15125550100".into(),
            body: "hi".into(),
            media_urls: vec![],
            justcall_number: "+15125550100".into(),
            contact_name: None,
            agent_id: None,
        }
    }

    fn one(plugin: &str) -> Vec<NewDelivery> {
        vec![NewDelivery {
            plugin: plugin.into(),
            plugin_hash: "h".into(),
        }]
    }

    fn ids(o: InsertOutcome) -> Vec<Created> {
        match o {
            InsertOutcome::Inserted(c) => c,
            other => panic!("expected an insert, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn insert_dedupes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        let first = ids(db
            .insert_event(event("e1"), "k".into(), "seed", "{}".into(), one("p"))
            .await
            .unwrap());
        assert_eq!(first.len(), 1);
        assert!(!first[0].held);
        let again = db
            .insert_event(event("e2"), "k".into(), "seed", "{}".into(), one("p"))
            .await
            .unwrap();
        assert_eq!(again, InsertOutcome::Duplicate { event_id: "e1".into() });

        db.start_delivery(first[0].id, "h".into());
        // Writes apply in order: once this one is durable, so is the start.
        db.kv_put("acme", "p", "sync", Some(vec![])).await.unwrap();
        drop(db);
        // A delivery left running by a crash is pending again after reopening.
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        let pending = db.pending_deliveries().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].event, event("e1"));
        let f = db
            .finish_delivery(first[0].id, DeliveryOutcome::Failed("boom".into()), 5)
            .await
            .unwrap();
        assert_eq!(f, Finished::Retry(Duration::from_secs(30)));
        let recs = db.deliveries_for_event("e1").await.unwrap();
        assert_eq!(
            (
                recs[0].status.as_str(),
                recs[0].attempts,
                recs[0].failures,
                recs[0].last_error.as_deref()
            ),
            ("pending", 1, 1, Some("boom"))
        );
        assert!(recs[0].next_attempt_at.is_some());
        assert!(db.pending_deliveries().await.unwrap()[0].due_ms.is_some_and(|d| d > now_ms()));
    }

    #[tokio::test]
    async fn last_failure_pauses_and_resume_releases_held_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let options = DbOptions {
            retry_delays: vec![Duration::from_millis(1); 2],
            ..DbOptions::default()
        };
        let db = Db::open(dir.path(), options).unwrap();
        let d = ids(db
            .insert_event(event("e1"), "k1".into(), "seed", "{}".into(), one("p"))
            .await
            .unwrap())[0];
        let fail = || DeliveryOutcome::Failed("nope".into());
        assert!(matches!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Retry(_)));
        assert!(matches!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Retry(_)));
        assert_eq!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Paused);
        assert_eq!(db.paused_plugins().await.unwrap(), vec![("acme".to_string(), "p".to_string())]);

        // New events for the paused plugin are held; other plugins are not.
        let mut both = one("p");
        both.extend(one("q"));
        let a = ids(db.insert_event(event("e2"), "k2".into(), "seed", "{}".into(), both).await.unwrap());
        assert_eq!((a[0].held, a[1].held), (true, false));
        let b = ids(db
            .insert_event(event("e3"), "k3".into(), "seed", "{}".into(), one("p"))
            .await
            .unwrap())[0];
        let health = db.plugin_health("acme").await.unwrap();
        assert_eq!((health["p"].paused, health["p"].failed_attempts, health["p"].held), (true, 3, 2));
        assert_eq!(db.deliveries("acme", Some("held"), 10).await.unwrap().len(), 2);

        let released = db.resume_plugin("acme", "p").await.unwrap().unwrap();
        assert_eq!(released.iter().map(|p| p.id).collect::<Vec<_>>(), vec![a[0].id, b.id]);
        assert_eq!(db.resume_plugin("acme", "p").await.unwrap().map(|v| v.len()), None);
        assert!(db.paused_plugins().await.unwrap().is_empty());
        assert_eq!(db.deliveries("acme", Some("failed"), 10).await.unwrap()[0].id, d.id);
    }

    #[tokio::test]
    async fn dedupe_keys_expire_but_events_stay() {
        let dir = tempfile::tempdir().unwrap();
        let options = DbOptions {
            dedupe_window: Duration::from_millis(50),
            ..DbOptions::default()
        };
        let db = Db::open(dir.path(), options).unwrap();
        ids(db.insert_event(event("e1"), "k".into(), "seed", "{}".into(), vec![]).await.unwrap());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(db.prune_dedupe().await.unwrap() <= 1);
        // The key is forgotten, so the same key is a new event; the old one is kept.
        ids(db.insert_event(event("e2"), "k".into(), "seed", "{}".into(), vec![]).await.unwrap());
        assert!(db.event("acme", "e1").await.unwrap().is_some());
        assert!(db.event("other", "e1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn journal_records_and_claims() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        assert_eq!(db.journal_get(7, 0).await.unwrap(), None);
        db.journal_begin(7, 0, "h0".into()).await.unwrap();
        assert_eq!(db.journal_get(7, 0).await.unwrap().unwrap().state, "started");
        db.journal_end(7, 0, true, Some("{\"id\":\"m9\"}".into()), Some("m9".into()));
        // Writes apply in order: once an awaited one is durable, so is the end.
        db.prune_dedupe().await.unwrap();
        assert!(db.journal_claimed("m9").await.unwrap());
        let e = db.journal_get(7, 0).await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.result.as_deref()), ("done", Some("{\"id\":\"m9\"}")));
        assert!(!db.journal_claimed("m10").await.unwrap());
    }

    #[tokio::test]
    async fn kv_is_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        db.kv_put("a", "p", "k1", Some(b"v".to_vec())).await.unwrap();
        db.kv_put("a", "p", "k2", Some(b"w".to_vec())).await.unwrap();
        assert_eq!(db.kv_get("a", "p", "k1").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(db.kv_get("b", "p", "k1").await.unwrap(), None);
        assert_eq!(db.kv_get("a", "q", "k1").await.unwrap(), None);
        assert_eq!(db.kv_keys("a", "p", "k").await.unwrap(), vec!["k1", "k2"]);
        db.kv_put("a", "p", "k1", None).await.unwrap();
        assert_eq!(db.kv_keys("a", "p", "").await.unwrap(), vec!["k2"]);
    }
}
