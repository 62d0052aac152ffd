//! The schema, as a list of migrations applied in order, and how a
//! connection is opened (WAL, `synchronous=FULL`). The schema changes only by
//! appending a migration.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use super::DbError;

/// SQL for "now" as stored in text timestamps.
pub(super) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(super) fn migrations() -> Migrations<'static> {
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
        // 3: retention. Finished events are pruned by age.
        M::up("CREATE INDEX events_by_age ON events (received_at);"),
        // 4: each body is stored once. The normalised event is what plugins,
        // replays and the admin API read; the raw copy doubled every body.
        M::up("ALTER TABLE events DROP COLUMN raw;"),
        // 5: events checked with the tenant's JustCall API before they run
        // (deliveries wait as `verifying`; a refused event's end `refused`).
        M::up(
            "CREATE TABLE verifications (
                event_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                reason TEXT,
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            ) WITHOUT ROWID;
            CREATE INDEX verifications_by_state ON verifications (state, tenant);",
        ),
        // 6: KV of plugins no longer deployed: since when, so it is deleted
        // after the grace period (and counted in the tenant's total until then).
        M::up(
            "CREATE TABLE kv_orphans (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                since_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, plugin)
            ) WITHOUT ROWID;",
        ),
        // 7: what each delivery attempt did (engine traces).
        M::up(
            "CREATE TABLE attempts (
                delivery_id INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                plugin_hash TEXT,
                started_ms INTEGER NOT NULL,
                ended_ms INTEGER NOT NULL,
                error TEXT,
                wasm_us INTEGER NOT NULL,
                peak_memory_bytes INTEGER NOT NULL,
                logs TEXT NOT NULL,
                calls TEXT NOT NULL,
                PRIMARY KEY (delivery_id, attempt)
            ) WITHOUT ROWID;",
        ),
        // 8: search and activity. Deliveries by tenant (alone, with plugin,
        // status or their event's kind, copied onto them) and by creation time
        // (a time range becomes an id range); events by sender, recipient and
        // tenant + arrival; failed attempts by end; each delivery's body in a
        // full-text index (rowid = delivery id).
        M::up(
            "CREATE INDEX deliveries_by_tenant ON deliveries (tenant, id);
            CREATE INDEX deliveries_by_tenant_plugin ON deliveries (tenant, plugin, id);
            CREATE INDEX deliveries_by_tenant_status ON deliveries (tenant, status, id);
            ALTER TABLE deliveries ADD COLUMN kind TEXT;
            UPDATE deliveries SET kind = (SELECT e.kind FROM events e WHERE e.id = deliveries.event_id);
            CREATE INDEX deliveries_by_tenant_kind ON deliveries (tenant, kind, id);
            CREATE INDEX deliveries_by_created ON deliveries (created_at);
            CREATE INDEX events_by_from ON events (tenant, json_extract(event_json, '$.from'));
            CREATE INDEX events_by_to ON events (tenant, json_extract(event_json, '$.to'));
            CREATE INDEX events_by_tenant_age ON events (tenant, received_at);
            CREATE INDEX attempts_failed_by_end ON attempts (ended_ms) WHERE error IS NOT NULL;
            CREATE VIRTUAL TABLE delivery_text USING fts5 (body, content = '', contentless_delete = 1);
            INSERT INTO delivery_text (rowid, body)
                SELECT d.id, json_extract(e.event_json, '$.body') FROM deliveries d JOIN events e ON e.id = d.event_id;",
        ),
        // 9: tenants' API tokens (the secret only as its hash) and the audit log.
        M::up(
            "CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                scopes TEXT NOT NULL,
                label TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                revoked_at TEXT
            ) WITHOUT ROWID;
            CREATE INDEX tokens_by_tenant ON tokens (tenant);
            CREATE TABLE audit (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                result TEXT NOT NULL
            );
            CREATE INDEX audit_by_tenant ON audit (tenant, id);",
        ),
        // 10: each plugin's kept versions (the code itself is a file under
        // `versions/`, named by its SHA-256).
        M::up(
            "CREATE TABLE versions (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                id TEXT NOT NULL,
                hash TEXT NOT NULL,
                manifest TEXT,
                source TEXT NOT NULL,
                actor TEXT NOT NULL,
                created_at TEXT NOT NULL,
                served_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, plugin, id)
            ) WITHOUT ROWID;
            CREATE INDEX versions_by_served ON versions (tenant, plugin, served_ms);
            CREATE INDEX versions_by_hash ON versions (hash);",
        ),
        // 11: plugin secrets, sealed (the key's id beside each value).
        M::up(
            "CREATE TABLE secrets (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                key TEXT NOT NULL,
                key_id TEXT NOT NULL,
                nonce BLOB NOT NULL,
                sealed BLOB NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (tenant, plugin, key)
            ) WITHOUT ROWID;",
        ),
        // 12: versions on trial (canaries, shadows), resumed at start.
        M::up(
            "CREATE TABLE trials (
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                version TEXT NOT NULL,
                kind TEXT NOT NULL,
                policy TEXT,
                against TEXT,
                actor TEXT NOT NULL,
                started_at TEXT NOT NULL,
                PRIMARY KEY (tenant, plugin)
            ) WITHOUT ROWID;",
        ),
        // 13: timers plugins schedule, and manifest schedules' next firing.
        // `schedule` is the schedule's pattern and zone (NULL for a plugin's
        // own timer), so the two never share a key. `set_by`/`seq`: the
        // delivery and host call that scheduled it.
        M::up(
            "CREATE TABLE timers (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                plugin TEXT NOT NULL,
                key TEXT NOT NULL,
                scheduled INTEGER NOT NULL DEFAULT 0,
                schedule TEXT,
                due_ms INTEGER NOT NULL,
                payload BLOB NOT NULL,
                set_by INTEGER,
                seq INTEGER,
                created_ms INTEGER NOT NULL,
                UNIQUE (tenant, plugin, scheduled, key)
            );
            CREATE INDEX timers_by_due ON timers (due_ms);",
        ),
    ])
}

pub(super) fn open_conn(path: &Path, busy: Duration) -> Result<Connection, DbError> {
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
