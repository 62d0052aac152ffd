//! Finding deliveries with 1,000,000 stored: the admin API's search over a
//! database filled through `Db` (two tenants, three plugins, 50,000
//! contacts, bodies drawn from a 2,000-word vocabulary, the usual mix of
//! kinds, 3 % failed, spread over 30 days), served by the real binary.
//! Reports the p50/p99 of a mix of searches (no filter, each filter alone,
//! combinations, deep pages, old and recent time ranges) over HTTP, and of
//! the console's deliveries page (100 rows) for a signed-in browser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard::config::DbOptions;
use switchboard::domain::{Direction, Event, EventKind};
use switchboard::storage::{Db, NewDelivery};
use tokio::sync::Semaphore;

use crate::common::{Guests, TOKEN, Tenant, percentile, sorted};

pub const DELIVERIES: usize = 1_000_000;
const CONTACTS: u64 = 50_000;
const VOCABULARY: u64 = 2_000;
const DAYS: i64 = 30;
const PLUGINS: [&str; 3] = ["crm-logger", "lead-router", "confirm"];
/// Searches of each shape.
const ROUNDS: usize = 20;

/// A deterministic mix of `i` (splitmix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `n` of the vocabulary: pronounceable, distinct.
fn word(n: u64) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "su", "ter", "van", "po", "ri", "den", "sha", "bu", "ne", "gal", "fo", "zi", "tam",
    ];
    let (a, b, c) = (n % 16, (n / 16) % 16, (n / 256) % 16);
    format!("{}{}{}", SYLLABLES[a as usize], SYLLABLES[b as usize], SYLLABLES[c as usize])
}

fn contact(n: u64) -> String {
    format!("+1512{:07}", 1_000_000 + n)
}

fn event(i: usize) -> (Event, &'static str) {
    let r = mix(i as u64);
    let tenant = if r.is_multiple_of(5) { "globex" } else { "acme" };
    let kind = match r % 1000 {
        0..500 => EventKind::Received,
        500..800 => EventKind::Sent,
        800..950 => EventKind::Delivered,
        950..990 => EventKind::Failed,
        990..995 => EventKind::OptOut,
        _ => EventKind::OptIn,
    };
    let words: Vec<String> = (0..8).map(|k| word(mix(r ^ k) % VOCABULARY)).collect();
    let event = Event {
        tenant: tenant.into(),
        kind,
        event_id: format!("{i:016x}-search"),
        occurred_at: "2026-03-12T14:30:00Z".into(),
        message_id: format!("{}", 880_000_000 + i),
        direction: Direction::Inbound,
        from: contact(mix(r) % CONTACTS),
        to: "+15125550100".into(),
        body: words.join(" "),
        media_urls: vec![],
        justcall_number: "+15125550100".into(),
        contact_name: None,
        agent_id: None,
        timer: None,
    };
    (event, PLUGINS[(r / 7 % 3) as usize])
}

/// Fills `data_dir` with [`DELIVERIES`] finished deliveries, one per event.
async fn fill(data_dir: &std::path::Path) -> f64 {
    let db = Db::open(data_dir, DbOptions::default()).expect("open database");
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(512));
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..DELIVERIES {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let db = db.clone();
        fills.spawn(async move {
            let (e, plugin) = event(i);
            let d = vec![NewDelivery {
                plugin: plugin.into(),
                plugin_hash: "0".repeat(64),
            }];
            db.insert_event(e, format!("search:{i}"), "v2.1", d, false).await.expect("insert");
            drop(permit);
        });
        while fills.try_join_next().is_some() {}
    }
    while fills.join_next().await.is_some() {}
    let fill_s = started.elapsed().as_secs_f64();
    let path = db.path().to_path_buf();
    drop(db);
    // What 30 days of traffic would have left: 3 % failed, the rest done,
    // creation and arrival spread evenly in id order.
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    let span_ms = DAYS * 24 * 3600 * 1000;
    let at = |col: &str| {
        format!(
            "strftime('%Y-%m-%dT%H:%M:%fZ', (unixepoch('now', 'subsec') * 1000 - {span_ms} + {col} * {span_ms} / {DELIVERIES}) / 1000.0, 'unixepoch')"
        )
    };
    conn.execute(
        &format!(
            "UPDATE deliveries SET status = CASE WHEN id % 33 = 0 THEN 'failed' ELSE 'done' END, attempts = 1, created_at = {}",
            at("id")
        ),
        [],
    )
    .unwrap();
    conn.execute(&format!("UPDATE events SET received_at = {}", at("rowid")), [])
        .unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    fill_s
}

/// The searches timed: a name and its query string, varied by round.
fn searches(round: usize) -> Vec<(&'static str, String)> {
    let r = mix(round as u64 + 7);
    let number = contact(mix(mix(r)) % CONTACTS);
    let w = word(r % VOCABULARY);
    let w2 = word(mix(r) % VOCABULARY);
    let plugin = PLUGINS[round % 3];
    let day = 1 + (r % 28) as i64;
    let t = |days_ago: i64| (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    vec![
        ("latest", "limit=50".into()),
        ("number", format!("number={number}")),
        ("text", format!("text={w}")),
        ("two_words", format!("text={w}+{w2}")),
        ("kind_rare", "kind=sms.optout".into()),
        ("kind_common", "kind=sms.received".into()),
        ("plugin", format!("plugin={plugin}")),
        ("failed", "status=failed".into()),
        ("plugin_failed", format!("plugin={plugin}&status=failed")),
        ("last_hour", "since=1h".into()),
        ("one_old_day", format!("since={}&until={}", t(day + 1), t(day))),
        (
            "old_day_failed_optin",
            format!("since={}&until={}&status=failed&kind=sms.optin", t(day + 1), t(day)),
        ),
        ("text_and_number", format!("text={w}&number={number}")),
        ("deep_page", format!("before={}", 1 + r % DELIVERIES as u64)),
    ]
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let fill_s = fill(&dir.path().join("data")).await;
    let tenants: Vec<Tenant<'_>> = ["acme", "globex"]
        .iter()
        .enumerate()
        .map(|(i, t)| Tenant {
            id: (*t).into(),
            number: format!("+1512555010{i}"),
            plugins: vec![],
        })
        .collect();
    let server = crate::common::start_in(dir, guests, &tenants, "http://127.0.0.1:9", "");
    let client = reqwest::Client::new();
    let base = format!("{}/admin/tenants/acme/deliveries", server.admin_url());

    let mut all = Vec::new();
    let mut slowest: Map<String, Value> = Map::new();
    let mut by_shape: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for round in 0..ROUNDS {
        for (name, query) in searches(round) {
            let started = Instant::now();
            let resp = client
                .get(format!("{base}?{query}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("search");
            let status = resp.status();
            let body: Value = resp.json().await.expect("search answer");
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert!(status.is_success(), "{name} ({query}): {status} {body}");
            if round == 0 && name != "text_and_number" && name != "old_day_failed_optin" {
                let found = body["deliveries"].as_array().map_or(0, Vec::len);
                assert!(found > 0, "{name} ({query}) found nothing: {body}");
            }
            all.push(ms);
            by_shape.entry(name).or_default().push(ms);
        }
    }
    for (name, times) in by_shape {
        slowest.insert(name.into(), json!(percentile(&sorted(times), 0.99)));
    }
    let all = sorted(all);

    // The console's deliveries page (first page, 100 rows), rendered for a
    // signed-in browser; and with a filter.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = crate::sign_in::sign_in(&browser, &server.admin_url(), TOKEN).await;
    let page = format!("{}/console/tenants/acme/deliveries", server.admin_url());
    let mut pages = Vec::new();
    for round in 0..100 {
        let url = if round % 2 == 0 {
            page.clone()
        } else {
            format!("{page}?status=failed&plugin={}", PLUGINS[round % 3])
        };
        let started = Instant::now();
        let resp = browser.get(&url).header("cookie", &cookie).send().await.expect("console page");
        let status = resp.status();
        let html = resp.text().await.expect("console page body");
        pages.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(status.is_success() && html.contains("<table id=\"deliveries\""), "{url}: {status}");
    }
    let pages = sorted(pages);
    let figures = json!({
        "search_deliveries": DELIVERIES,
        "search_fill_s": fill_s,
        "search_ms_p50_1m": percentile(&all, 0.50),
        "search_ms_p99_1m": percentile(&all, 0.99),
        "search_ms_p99_by_shape": slowest,
        "console_page_ms_p50": percentile(&pages, 0.50),
        "console_page_ms_p99": percentile(&pages, 0.99),
    });
    drop(server);
    figures.as_object().cloned().unwrap_or_default()
}
