//! Storage stays bounded: 1,000,000 events (each with a delivery, finished)
//! spread evenly over 60 simulated days, then pruned to a 30-day retention
//! in batches while ingest goes on. Reports the database size before and
//! after (file + WAL, and the pages in use, since freed pages stay in the
//! file for reuse), and the insert latency (p50/p99) with and without
//! pruning running beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard::config::DbOptions;
use switchboard::domain::{Direction, Event, EventKind};
use switchboard::storage::{Db, NewDelivery};
use tokio::sync::Semaphore;

use crate::common::percentile;

const EVENTS: usize = 1_000_000;
const DAYS: u32 = 60;
const RETENTION_DAYS: u64 = 30;
/// Inserts in flight while filling (the writer group-commits them).
const FILL_CONCURRENCY: usize = 512;
/// Writers measured for latency, and for how long without pruning.
const PROBE_WRITERS: usize = 8;
const BASELINE: Duration = Duration::from_secs(5);

fn event(i: usize) -> Event {
    Event {
        tenant: "bench".into(),
        kind: EventKind::Received,
        event_id: format!("{i:016x}-bench"),
        occurred_at: "2026-03-12T14:30:00Z".into(),
        message_id: format!("{}", 880_000_000 + i),
        direction: Direction::Inbound,
        from: "+15125551234".into(),
        to: "+15125550100".into(),
        body: "Hi, I'd like to move my appointment to Thursday afternoon if that works. Thanks!".into(),
        media_urls: vec![],
        justcall_number: "+15125550100".into(),
        contact_name: Some("Sarah Chen".into()),
        agent_id: None,
        timer: None,
    }
}

fn one_delivery() -> Vec<NewDelivery> {
    vec![NewDelivery {
        plugin: "crm-logger".into(),
        plugin_hash: "0".repeat(64),
    }]
}

async fn insert(db: &Db, i: usize) {
    db.insert_event(event(i), format!("bench:{i}"), "v2.1", one_delivery(), false)
        .await
        .expect("insert");
}

fn size_mb(db: &Db) -> f64 {
    let file = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let path = db.path().to_path_buf();
    (file(path.clone()) + file(path.with_extension("db-wal"))) as f64 / (1 << 20) as f64
}

/// Insert latencies (ms) from [`PROBE_WRITERS`] writers until `done` says stop.
async fn probe(db: &Db, first_id: usize, done: impl Fn() -> bool + Send + Sync + 'static) -> Vec<f64> {
    let done = Arc::new(done);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..PROBE_WRITERS {
        let (db, done) = (db.clone(), done.clone());
        writers.spawn(async move {
            let mut out = Vec::new();
            let mut i = first_id + w * 10_000_000;
            while !done() {
                let started = Instant::now();
                insert(&db, i).await;
                out.push(started.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = writers.join_next().await {
        all.extend(r.expect("probe writer"));
    }
    all.sort_by(f64::total_cmp);
    all
}

pub async fn run() -> Map<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let options = DbOptions {
        retention: Duration::from_secs(RETENTION_DAYS * 24 * 3600),
        ..DbOptions::default()
    };
    let db = Db::open(dir.path(), options).expect("open database");

    // Fill, as fast as group commit allows.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(FILL_CONCURRENCY));
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..EVENTS {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let db = db.clone();
        fills.spawn(async move {
            insert(&db, i).await;
            drop(permit);
        });
        while fills.try_join_next().is_some() {}
    }
    while fills.join_next().await.is_some() {}
    let fill_eps = EVENTS as f64 / started.elapsed().as_secs_f64();

    // What 60 days of steady traffic would have left: every delivery
    // finished, arrivals spread evenly over the days in insertion order
    // (oldest first), dedupe keys as old as their events.
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.busy_timeout(Duration::from_secs(60)).unwrap();
        conn.execute("UPDATE deliveries SET status = 'done'", []).unwrap();
        let span_ms = i64::from(DAYS) * 24 * 3600 * 1000;
        conn.execute(
            &format!(
                "UPDATE events SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', (unixepoch('now', 'subsec') * 1000 - {span_ms} + rowid * {span_ms} / {EVENTS}) / 1000.0, 'unixepoch')"
            ),
            [],
        )
        .unwrap();
        conn.execute(
            &format!("UPDATE dedupe SET received_ms = CAST(unixepoch('now', 'subsec') * 1000 AS INTEGER) - {span_ms} + CAST(substr(key, 7) AS INTEGER) * {span_ms} / {EVENTS}"),
            [],
        )
        .unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    let before_mb = size_mb(&db);

    // Insert latency with nothing else going on.
    let until = Instant::now() + BASELINE;
    let quiet = probe(&db, EVENTS, move || Instant::now() >= until).await;

    // And while the expired half is pruned beside it.
    let pruning = {
        let db = db.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let n = db.prune_expired().await.expect("prune");
            db.prune_dedupe().await.expect("prune dedupe keys");
            (n, started.elapsed())
        })
    };
    let watched = pruning.abort_handle();
    let busy = probe(&db, 2 * EVENTS, move || watched.is_finished()).await;
    let (pruned, prune_time) = pruning.await.unwrap();
    let after_mb = size_mb(&db);
    // SQLite keeps freed pages in the file for reuse rather than shrinking
    // it: what the live data takes is the pages not on the free list.
    let live_mb = {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0)).unwrap();
        ((pragma("page_count") - pragma("freelist_count")) * pragma("page_size")) as f64 / (1 << 20) as f64
    };

    let figures = json!({
        "storage_events": EVENTS,
        "storage_fill_eps": fill_eps,
        "storage_mb_60_days": before_mb,
        "storage_mb_after_30_day_retention": after_mb,
        "storage_live_mb_after_30_day_retention": live_mb,
        "storage_pruned_events": pruned,
        "storage_prune_s": prune_time.as_secs_f64(),
        "storage_insert_ms_p50_quiet": percentile(&quiet, 0.50),
        "storage_insert_ms_p99_quiet": percentile(&quiet, 0.99),
        "storage_insert_ms_p50_pruning": percentile(&busy, 0.50),
        "storage_insert_ms_p99_pruning": percentile(&busy, 0.99),
    });
    figures.as_object().cloned().unwrap_or_default()
}
