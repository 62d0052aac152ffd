//! Storage tests against a real SQLite file: dedupe, reopen after a crash,
//! the retry schedule and pause, expiry, the journal's states, KV scoping,
//! searching deliveries.

use std::time::Duration;

use super::*;
use crate::config::DbOptions;
use crate::domain::{Direction, Event, EventKind};

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
        timer: None,
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

async fn with_status(db: &Db, status: DeliveryStatus) -> Vec<Found> {
    let search = Search {
        status: Some(status),
        limit: 10,
        ..Search::default()
    };
    db.search("acme", search).await.unwrap().deliveries
}

#[tokio::test]
async fn insert_dedupes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let first = ids(db.insert_event(event("e1"), "k".into(), "seed", one("p"), false).await.unwrap());
    assert_eq!(first.len(), 1);
    assert!(!first[0].held);
    let again = db.insert_event(event("e2"), "k".into(), "seed", one("p"), false).await.unwrap();
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
    let d = ids(db.insert_event(event("e1"), "k1".into(), "seed", one("p"), false).await.unwrap())[0];
    let fail = || DeliveryOutcome::Failed("nope".into());
    assert!(matches!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Retry(_)));
    assert!(matches!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Retry(_)));
    assert_eq!(db.finish_delivery(d.id, fail(), 1).await.unwrap(), Finished::Paused);
    assert_eq!(db.paused_plugins().await.unwrap(), vec![("acme".to_string(), "p".to_string())]);

    // New events for the paused plugin are held; other plugins are not.
    let mut both = one("p");
    both.extend(one("q"));
    let a = ids(db.insert_event(event("e2"), "k2".into(), "seed", both, false).await.unwrap());
    assert_eq!((a[0].held, a[1].held), (true, false));
    let b = ids(db.insert_event(event("e3"), "k3".into(), "seed", one("p"), false).await.unwrap())[0];
    let health = db.plugin_health("acme").await.unwrap();
    assert_eq!((health["p"].paused, health["p"].failed_attempts, health["p"].held), (true, 3, 2));
    assert_eq!(with_status(&db, DeliveryStatus::Held).await.len(), 2);

    let released = db.resume_plugin("acme", "p").await.unwrap().unwrap();
    assert_eq!(released.iter().map(|p| p.id).collect::<Vec<_>>(), vec![a[0].id, b.id]);
    assert_eq!(db.resume_plugin("acme", "p").await.unwrap().map(|v| v.len()), None);
    assert!(db.paused_plugins().await.unwrap().is_empty());
    assert_eq!(with_status(&db, DeliveryStatus::Failed).await[0].delivery.id, d.id);
}

#[tokio::test]
async fn dedupe_keys_expire_but_events_stay() {
    let dir = tempfile::tempdir().unwrap();
    let options = DbOptions {
        dedupe_window: Duration::from_millis(50),
        ..DbOptions::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    ids(db.insert_event(event("e1"), "k".into(), "seed", vec![], false).await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(db.prune_dedupe().await.unwrap() <= 1);
    // The key is forgotten, so the same key is a new event; the old one is kept.
    ids(db.insert_event(event("e2"), "k".into(), "seed", vec![], false).await.unwrap());
    assert!(db.event("acme", "e1").await.unwrap().is_some());
    assert!(db.event("other", "e1").await.unwrap().is_none());
}

#[tokio::test]
async fn journal_records_and_claims() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(db.journal_get(7, 0).await.unwrap(), None);
    db.journal_begin(7, 0, "h0".into()).await.unwrap();
    assert_eq!(db.journal_get(7, 0).await.unwrap().unwrap().state, JournalState::Started);
    db.journal_end(7, 0, JournalState::Done, Some("{\"id\":\"m9\"}".into()), Some("m9".into()));
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

#[tokio::test]
async fn journal_states_move_started_to_done_or_failed_and_a_retry_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let state = |e: Option<JournalEntry>| e.map(|e| (e.state, e.request_hash));
    // Failed: known not to have happened.
    db.journal_begin(1, 0, "a".into()).await.unwrap();
    db.journal_end(1, 0, JournalState::Failed, None, None);
    db.prune_dedupe().await.unwrap();
    assert_eq!(state(db.journal_get(1, 0).await.unwrap()), Some((JournalState::Failed, "a".into())));
    // A later attempt begins the same seq again: started, with its own hash.
    db.journal_begin(1, 0, "b".into()).await.unwrap();
    assert_eq!(
        state(db.journal_get(1, 0).await.unwrap()),
        Some((JournalState::Started, "b".into()))
    );
    // Entries are per (delivery, seq).
    assert_eq!(db.journal_get(1, 1).await.unwrap(), None);
    assert_eq!(db.journal_get(2, 0).await.unwrap(), None);
    // A done entry without a created id claims nothing.
    db.journal_end(1, 0, JournalState::Done, Some("{}".into()), None);
    db.prune_dedupe().await.unwrap();
    assert_eq!(state(db.journal_get(1, 0).await.unwrap()), Some((JournalState::Done, "b".into())));
    assert!(!db.journal_claimed("").await.unwrap());
}

#[test]
fn delivery_statuses_round_trip_by_name() {
    for s in DeliveryStatus::ALL {
        assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
    assert_eq!(DeliveryStatus::parse("retrying"), None);
}

#[tokio::test]
async fn retention_prunes_old_finished_events_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let options = DbOptions {
        retention: Duration::from_secs(24 * 3600),
        ..DbOptions::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    let delivery = |id: &'static str| {
        let db = db.clone();
        async move {
            ids(db
                .insert_event(event(id), format!("k-{id}"), "seed", one("p"), false)
                .await
                .unwrap())[0]
                .id
        }
    };
    let (old_done, old_failed, old_held, new_done) = (
        delivery("old-done").await,
        delivery("old-failed").await,
        delivery("old-held").await,
        delivery("new-done").await,
    );
    for d in [old_done, new_done] {
        db.finish_delivery(d, DeliveryOutcome::Done, 1).await.unwrap();
    }
    db.journal_begin(old_done, 0, "h".into()).await.unwrap();
    db.hold_delivery(old_held).await.unwrap();
    // Failed once, waiting for its retry: unresolved.
    db.finish_delivery(old_failed, DeliveryOutcome::Failed("x".into()), 1)
        .await
        .unwrap();
    // Two days ago, by the clock the events were stored with.
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "UPDATE events SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days') WHERE id LIKE 'old-%'",
        [],
    )
    .unwrap();
    assert_eq!(db.prune_expired().await.unwrap(), 1);
    assert!(db.event("acme", "old-done").await.unwrap().is_none(), "old and finished: pruned");
    assert!(db.deliveries_for_event("old-done").await.unwrap().is_empty());
    assert_eq!(db.journal_get(old_done, 0).await.unwrap(), None, "with its journal");
    // And its body's search index row: only the three kept are indexed.
    let indexed: Vec<i64> = conn
        .prepare("SELECT rowid FROM delivery_text ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!indexed.contains(&old_done) && indexed.len() == 3, "{indexed:?}");
    for kept in ["old-failed", "old-held", "new-done"] {
        assert!(db.event("acme", kept).await.unwrap().is_some(), "{kept} is kept");
        assert_eq!(db.deliveries_for_event(kept).await.unwrap().len(), 1, "{kept}");
    }
    assert_eq!(db.prune_expired().await.unwrap(), 0, "nothing more to prune");
}

#[tokio::test]
async fn each_body_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    // A large body spills into overflow pages; a marker in its middle shows
    // up once per stored copy in the database file and its WAL together.
    let marker = format!("marker-{}", uuid::Uuid::now_v7());
    let mut e = event("e1");
    e.body = format!("{}{marker}{}", "a".repeat(30_000), "b".repeat(30_000));
    ids(db.insert_event(e, "k".into(), "seed", one("p"), false).await.unwrap());
    let path = db.path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
    let copies = bytes.windows(marker.len()).filter(|w| *w == marker.as_bytes()).count();
    assert_eq!(copies, 1, "the body is stored once");
}

#[tokio::test]
async fn kv_of_undeployed_plugins_is_deleted_after_the_grace_period() {
    let kv = |db: &Db, plugin: &'static str| {
        let db = db.clone();
        async move { db.kv_entries("acme", plugin, "", None, 10).await.unwrap().len() }
    };
    for (grace, kept) in [(Duration::ZERO, 0), (Duration::from_secs(3600), 1)] {
        let dir = tempfile::tempdir().unwrap();
        let options = DbOptions {
            // Prune passes every 10 ms.
            dedupe_window: Duration::from_millis(50),
            kv_grace: grace,
            ..DbOptions::default()
        };
        let db = Db::open(dir.path(), options).unwrap();
        db.kv_put("acme", "kept", "k", Some(b"v".to_vec())).await.unwrap();
        db.kv_put("acme", "gone", "k", Some(b"v".to_vec())).await.unwrap();
        db.kv_track_deployed("acme", vec!["kept".into()]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A write lets the writer run a prune pass first.
        db.kv_put("acme", "kept", "k2", Some(b"v".to_vec())).await.unwrap();
        assert_eq!(kv(&db, "kept").await, 2, "a deployed plugin's KV stays");
        assert_eq!(kv(&db, "gone").await, kept, "grace {grace:?}");
        // Deployed again before the grace ends: no longer orphaned.
        db.kv_track_deployed("acme", vec!["kept".into(), "gone".into()]).await.unwrap();
    }
}

#[tokio::test]
async fn search_filters_combine_and_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let bodies = ["Please CONFIRM my slot", "running late", "confirmed, thanks", "STOP"];
    for (i, body) in bodies.iter().enumerate() {
        let mut e = event(&format!("e{i}"));
        e.body = body.to_string();
        e.from = format!("+1512555000{i}");
        if *body == "STOP" {
            e.kind = EventKind::OptOut;
        }
        let mut both = one("crm");
        both.extend(one("router"));
        db.insert_event(e, format!("k{i}"), "seed", both, false).await.unwrap();
    }
    let mut other = event("x1");
    other.tenant = "globex".into();
    other.body = "confirm".into();
    db.insert_event(other, "kx".into(), "seed", one("crm"), false).await.unwrap();

    let find = |s: Search| {
        let db = db.clone();
        async move {
            let page = db.search("acme", Search { limit: 50, ..s }).await.unwrap();
            page.deliveries
                .iter()
                .map(|f| (f.delivery.event_id.clone(), f.delivery.plugin.clone()))
                .collect::<Vec<_>>()
        }
    };
    let pair = |e: &str, p: &str| (e.to_string(), p.to_string());
    // Word prefixes, any case, never another tenant's.
    let text = |t: &str| Search {
        text: Some(t.into()),
        ..Search::default()
    };
    assert_eq!(
        find(text("confirm")).await,
        vec![pair("e2", "router"), pair("e2", "crm"), pair("e0", "router"), pair("e0", "crm")]
    );
    assert_eq!(find(text("late running")).await, vec![pair("e1", "router"), pair("e1", "crm")]);
    assert!(find(text("nothing")).await.is_empty());
    let no_words = db.search("acme", text("?!")).await;
    assert!(matches!(no_words, Err(SearchError::NoWords(_))), "{no_words:?}");
    // A number as sender or recipient, however it is written.
    let number = |n: &str| Search {
        number: Some(n.into()),
        plugin: Some("crm".into()),
        ..Search::default()
    };
    assert_eq!(find(number("+1 512 555 0001")).await, vec![pair("e1", "crm")]);
    assert_eq!(find(number("15125550100")).await.len(), 4);
    // Kind and status.
    let kind = Search {
        kind: Some(EventKind::OptOut),
        ..Search::default()
    };
    assert_eq!(find(kind).await, vec![pair("e3", "router"), pair("e3", "crm")]);
    let pending = Search {
        status: Some(DeliveryStatus::Pending),
        text: Some("thanks".into()),
        ..Search::default()
    };
    assert_eq!(find(pending).await.len(), 2);
    assert!(
        find(Search {
            status: Some(DeliveryStatus::Done),
            ..Search::default()
        })
        .await
        .is_empty()
    );
    // Time: all of it was created just now.
    let now = now_ms();
    assert_eq!(
        find(Search {
            since_ms: Some(now - 60_000),
            ..Search::default()
        })
        .await
        .len(),
        8
    );
    assert!(
        find(Search {
            since_ms: Some(now + 60_000),
            ..Search::default()
        })
        .await
        .is_empty()
    );
    assert!(
        find(Search {
            until_ms: Some(now - 60_000),
            ..Search::default()
        })
        .await
        .is_empty()
    );

    // Pages of three, each continuing before the last, cover all eight once.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = db
            .search(
                "acme",
                Search {
                    limit: 3,
                    before,
                    ..Search::default()
                },
            )
            .await
            .unwrap();
        seen.extend(page.deliveries.iter().map(|f| f.delivery.id));
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    let mut expected = seen.clone();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    expected.dedup();
    assert_eq!((seen.len(), &seen), (8, &expected));
}
