//! Durable state in one SQLite file: events, deliveries and plugin KV. All
//! writes go through one writer thread that group-commits, so many webhooks
//! share one fsync; a reply is sent only after its transaction is durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::event::Event;

/// Storage failures. Callers answer webhooks with 503 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// A delivery to create with its event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Plugin name.
    pub plugin: String,
    /// Content hash of the plugin version chosen at acceptance.
    pub plugin_hash: String,
}

/// What inserting an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored; one id per delivery, in the order given.
    Inserted(Vec<i64>),
    /// The tenant already has an event with this dedupe key.
    Duplicate {
        /// The id of the event stored earlier.
        event_id: String,
    },
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The plugin returned `ok`.
    Done,
    /// The plugin returned an error, trapped or hit a limit.
    Failed(String),
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
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// How many times it ran.
    pub attempts: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// How long the last run took, in microseconds.
    pub duration_us: Option<i64>,
}

enum Write {
    InsertEvent {
        event: Box<Event>,
        dedupe_key: String,
        format: &'static str,
        raw: String,
        deliveries: Vec<NewDelivery>,
        reply: oneshot::Sender<Result<InsertOutcome, DbError>>,
    },
    StartDelivery {
        id: i64,
        plugin_hash: String,
        reply: oneshot::Sender<Result<(), DbError>>,
    },
    FinishDelivery {
        id: i64,
        outcome: DeliveryOutcome,
        duration_us: i64,
        reply: oneshot::Sender<Result<(), DbError>>,
    },
    KvSet {
        scope: (String, String),
        key: String,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<(), DbError>>,
    },
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    writer: mpsc::Sender<Write>,
    reader: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
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
) WITHOUT ROWID;
";

fn open_conn(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer. synchronous=FULL fsyncs the WAL
    // on every commit, so an acknowledged event survives a power cut, not just
    // a kill -9; group commit in the writer keeps that affordable.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) `switchboard.db` in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<Db, DbError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("switchboard.db");
        let mut conn = open_conn(&path)?;
        conn.execute_batch(SCHEMA)?;
        // Deliveries that were running when the process stopped never finished:
        // they run again.
        conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'running'", [])?;
        let reader = open_conn(&path)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("switchboard-db-writer".into())
            .spawn(move || writer_loop(&mut conn, rx))
            .expect("spawn db writer thread");
        Ok(Db {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, DbError>>) -> Write) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| DbError::Closed)?
    }

    /// Stores an event and its deliveries in one transaction, unless the
    /// tenant already has an event with the same dedupe key.
    pub async fn insert_event(
        &self,
        event: Event,
        dedupe_key: String,
        format: &'static str,
        raw: String,
        deliveries: Vec<NewDelivery>,
    ) -> Result<InsertOutcome, DbError> {
        self.write(|reply| Write::InsertEvent {
            event: Box::new(event),
            dedupe_key,
            format,
            raw,
            deliveries,
            reply,
        })
        .await
    }

    /// Marks a delivery as running and counts the attempt, without waiting
    /// for the commit. Writes are applied in order, so a later
    /// [`Db::finish_delivery`] still lands after it; if the process dies
    /// first, the delivery is simply pending again.
    pub fn start_delivery(&self, id: i64, plugin_hash: String) {
        let (reply, _) = oneshot::channel();
        if self.writer.send(Write::StartDelivery { id, plugin_hash, reply }).is_err() {
            tracing::warn!(delivery = id, "database writer stopped; delivery not marked running");
        }
    }

    /// Records how a delivery ended.
    pub async fn finish_delivery(&self, id: i64, outcome: DeliveryOutcome, duration_us: i64) -> Result<(), DbError> {
        self.write(|reply| Write::FinishDelivery {
            id,
            outcome,
            duration_us,
            reply,
        })
        .await
    }

    /// Every delivery that has not run to an end, oldest first.
    pub async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT d.id, d.plugin, e.event_json FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.status IN ('pending', 'running') ORDER BY d.id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, plugin, json) = row?;
                out.push(PendingDelivery {
                    id,
                    plugin,
                    event: serde_json::from_str(&json)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The deliveries of one event.
    pub async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRecord>, DbError> {
        let event_id = event_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, event_id, plugin, plugin_hash, status, attempts, last_error, duration_us
                 FROM deliveries WHERE event_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([event_id], |r| {
                Ok(DeliveryRecord {
                    id: r.get(0)?,
                    event_id: r.get(1)?,
                    plugin: r.get(2)?,
                    plugin_hash: r.get(3)?,
                    status: r.get(4)?,
                    attempts: r.get(5)?,
                    last_error: r.get(6)?,
                    duration_us: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
        let scope = (tenant.to_string(), plugin.to_string());
        let key = key.to_string();
        self.write(|reply| Write::KvSet { scope, key, value, reply }).await
    }
}

/// Applies queued writes in batches: one transaction (one fsync) per batch,
/// each write in its own savepoint so one failure does not undo the others.
fn writer_loop(conn: &mut Connection, rx: mpsc::Receiver<Write>) {
    const MAX_BATCH: usize = 512;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<Reply, DbError>> = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), DbError> {
            let mut tx = conn.transaction()?;
            for w in &batch {
                let mut sp = tx.savepoint()?;
                let r = apply(&sp, w);
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
        if let Err(e) = &committed {
            tracing::error!(error = %e, writes = batch.len(), "database commit failed");
        }
        match committed {
            Ok(()) => batch.into_iter().zip(results).for_each(|(w, r)| reply(w, r)),
            Err(e) => {
                let message = e.to_string();
                batch.into_iter().for_each(|w| reply(w, Err(DbError::Commit(message.clone()))));
            }
        }
    }
}

enum Reply {
    Insert(InsertOutcome),
    Unit,
}

fn apply(conn: &Connection, w: &Write) -> Result<Reply, DbError> {
    match w {
        Write::InsertEvent {
            event,
            dedupe_key,
            format,
            raw,
            deliveries,
            ..
        } => {
            let json = serde_json::to_string(event)?;
            let n = conn.execute(
                "INSERT INTO events (id, tenant, dedupe_key, kind, format, event_json, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant, dedupe_key) DO NOTHING",
                params![event.event_id, event.tenant, dedupe_key, event.kind.as_str(), format, json, raw],
            )?;
            if n == 0 {
                let event_id = conn.query_row(
                    "SELECT id FROM events WHERE tenant = ?1 AND dedupe_key = ?2",
                    params![event.tenant, dedupe_key],
                    |r| r.get(0),
                )?;
                return Ok(Reply::Insert(InsertOutcome::Duplicate { event_id }));
            }
            // Opt-out state changes in the same transaction as the event, so
            // no plugin runs on an event before its opt-out is in force.
            if let Some((number, opted_out)) = event.opt_change() {
                conn.execute(
                    "INSERT INTO optouts (tenant, number, opted_out) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, number) DO UPDATE SET opted_out = excluded.opted_out,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    params![event.tenant, number, opted_out],
                )?;
            }
            let mut stmt = conn.prepare_cached(
                "INSERT INTO deliveries (event_id, tenant, plugin, plugin_hash, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
            )?;
            let mut ids = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                stmt.execute(params![event.event_id, event.tenant, d.plugin, d.plugin_hash])?;
                ids.push(conn.last_insert_rowid());
            }
            Ok(Reply::Insert(InsertOutcome::Inserted(ids)))
        }
        Write::StartDelivery { id, plugin_hash, .. } => {
            conn.execute(
                "UPDATE deliveries SET status = 'running', attempts = attempts + 1, plugin_hash = ?2,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![id, plugin_hash],
            )?;
            Ok(Reply::Unit)
        }
        Write::FinishDelivery {
            id, outcome, duration_us, ..
        } => {
            let (status, error) = match outcome {
                DeliveryOutcome::Done => ("done", None),
                DeliveryOutcome::Failed(e) => ("failed", Some(e.as_str())),
            };
            conn.execute(
                "UPDATE deliveries SET status = ?2, last_error = ?3, duration_us = ?4,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![id, status, error, duration_us],
            )?;
            Ok(Reply::Unit)
        }
        Write::KvSet { scope, key, value, .. } => {
            match value {
                Some(v) => conn.execute(
                    "INSERT INTO kv (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
                    params![scope.0, scope.1, key, v],
                )?,
                None => conn.execute(
                    "DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                    params![scope.0, scope.1, key],
                )?,
            };
            Ok(Reply::Unit)
        }
    }
}

fn reply(w: Write, r: Result<Reply, DbError>) {
    match w {
        Write::InsertEvent { reply, .. } => {
            let _ = reply.send(r.map(|x| match x {
                Reply::Insert(o) => o,
                Reply::Unit => unreachable!("insert always answers with an outcome"),
            }));
        }
        Write::StartDelivery { reply, .. } | Write::FinishDelivery { reply, .. } | Write::KvSet { reply, .. } => {
            let _ = reply.send(r.map(|_| ()));
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

    #[tokio::test]
    async fn insert_dedupes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let d = vec![NewDelivery {
            plugin: "p".into(),
            plugin_hash: "h".into(),
        }];
        let first = db
            .insert_event(event("e1"), "k".into(), "seed", "{}".into(), d.clone())
            .await
            .unwrap();
        assert!(matches!(first, InsertOutcome::Inserted(ref ids) if ids.len() == 1));
        let again = db
            .insert_event(event("e2"), "k".into(), "seed", "{}".into(), d.clone())
            .await
            .unwrap();
        assert_eq!(again, InsertOutcome::Duplicate { event_id: "e1".into() });

        let InsertOutcome::Inserted(ids) = first else { unreachable!() };
        db.start_delivery(ids[0], "h".into());
        // Writes apply in order: once this one is durable, so is the start.
        db.kv_put("acme", "p", "sync", Some(vec![])).await.unwrap();
        drop(db);
        // A delivery left running by a crash is pending again after reopening.
        let db = Db::open(dir.path()).unwrap();
        let pending = db.pending_deliveries().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].event, event("e1"));
        db.finish_delivery(ids[0], DeliveryOutcome::Failed("boom".into()), 5).await.unwrap();
        let recs = db.deliveries_for_event("e1").await.unwrap();
        assert_eq!(
            (recs[0].status.as_str(), recs[0].attempts, recs[0].last_error.as_deref()),
            ("failed", 1, Some("boom"))
        );
        assert!(db.pending_deliveries().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn kv_is_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
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
