//! Fair tenancy against the real release binary:
//! - `fair_victim_p99_ms`: a tenant's ack-to-reply latency (webhook
//!   acknowledged → its plugin's SMS reaches a local fake JustCall) while a
//!   neighbour has hundreds of deliveries queued whose plugin waits 3 s on a
//!   slow host, beside the same tenant alone;
//! - `burst_rss_mb`: the server's RSS at idle, at the peak of a burst of
//!   memory-hungry invocations under a 512 MiB wasm memory budget, and 2 s
//!   after the burst.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::common::{Guests, Server, Tenant, event, percentile, rss_mb, signed, sorted, start_with};
use crate::neighbour::{Arrivals, start_fake_justcall};

const VICTIM: &str = "+15125550100";
const NEIGHBOUR: &str = "+15125550199";
const VICTIM_EVENTS: usize = 300;
const VICTIM_RATE_HZ: u64 = 50;
const NEIGHBOUR_EVENTS: usize = 400;
const BUDGET_MB: u64 = 512;
const HOGS: usize = 64;

/// A local host that answers after `delay`.
async fn slow_host(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "ok"
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn post(client: &reqwest::Client, server: &Server, tenant: &str, body: String) -> Instant {
    let mut req = client.post(format!("{}/webhooks/{tenant}", server.url()));
    for (k, v) in signed(&body) {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    Instant::now()
}

/// The victim's ack-to-reply latencies (ms), with or without the neighbour's backlog.
async fn victim_round(guests: &Guests, jc: &str, arrivals: &Arrivals, slow: &str, neighbour: bool) -> Vec<f64> {
    arrivals.lock().unwrap().clear();
    let sleeper = format!("allowed_hosts = [\"{slow}\"]\n[config]\nmode = \"hog\"\nurl = \"{slow}/sleep\"\n[limits]\ntimeout_ms = 10000\n");
    let tenants = [
        Tenant {
            id: "victim".into(),
            number: VICTIM.into(),
            plugins: vec![("answer", "answer-a", "")],
        },
        Tenant {
            id: "neighbour".into(),
            number: NEIGHBOUR.into(),
            plugins: vec![("sleeper", "hostile", &sleeper)],
        },
    ];
    let server = start_with(guests, &tenants, jc, "");
    let client = reqwest::Client::new();
    if neighbour {
        for i in 0..NEIGHBOUR_EVENTS {
            post(&client, &server, "neighbour", event(NEIGHBOUR, &format!("n{i}"), "hello")).await;
        }
    }
    let mut acks = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / VICTIM_RATE_HZ));
    for i in 0..VICTIM_EVENTS {
        tick.tick().await;
        let id = format!("v{i}");
        acks.insert(id.clone(), post(&client, &server, "victim", event(VICTIM, &id, "hello")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < acks.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    let lat: Vec<f64> = acks
        .iter()
        .filter_map(|(id, ack)| arrived.get(id).map(|t| t.saturating_duration_since(*ack).as_secs_f64() * 1e3))
        .collect();
    assert_eq!(lat.len(), acks.len(), "every victim event answered");
    sorted(lat)
}

/// RSS (MiB) at idle, at the burst's peak, and 2 s after it.
async fn burst(guests: &Guests, slow: &str) -> (f64, f64, f64) {
    let hog = format!(
        "allowed_hosts = [\"{slow}\"]\n[config]\nmode = \"hog\"\nmb = \"48\"\nurl = \"{slow}/hold\"\n[limits]\nmemory_mb = 64\ntimeout_ms = 10000\n"
    );
    let tenants = [Tenant {
        id: "hungry".into(),
        number: VICTIM.into(),
        plugins: vec![("hog", "hostile", &hog)],
    }];
    let server = start_with(
        guests,
        &tenants,
        "http://127.0.0.1:9",
        &format!("max_wasm_memory_mb = {BUDGET_MB}\n"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mb(&server);
    let client = reqwest::Client::new();
    for i in 0..HOGS {
        post(&client, &server, "hungry", event(VICTIM, &format!("h{i}"), "hello")).await;
    }
    let db = rusqlite::Connection::open(server.dir.path().join("data/switchboard.db")).unwrap();
    let (mut peak, started) = (0.0f64, Instant::now());
    loop {
        peak = peak.max(rss_mb(&server));
        let done: i64 = db
            .query_row("SELECT count(*) FROM deliveries WHERE status = 'done'", [], |r| r.get(0))
            .unwrap();
        if done == HOGS as i64 || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (idle, peak, rss_mb(&server))
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let (jc, arrivals) = start_fake_justcall().await;
    let slow = slow_host(Duration::from_secs(3)).await;

    let alone = victim_round(guests, &jc, &arrivals, &slow, false).await;
    let beside = victim_round(guests, &jc, &arrivals, &slow, true).await;
    println!(
        "fair tenancy ({VICTIM_EVENTS} victim events at {VICTIM_RATE_HZ}/s; neighbour: {NEIGHBOUR_EVENTS} queued deliveries waiting 3 s each):\n  alone          p50 {:.2} p99 {:.2} ms\n  with neighbour p50 {:.2} p99 {:.2} ms",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        percentile(&beside, 0.5),
        percentile(&beside, 0.99)
    );
    let hold = slow_host(Duration::from_millis(500)).await;
    let (idle, peak, after) = burst(guests, &hold).await;
    println!(
        "memory burst ({HOGS} invocations holding 48 MiB for 0.5 s, 64 MiB limit, budget {BUDGET_MB} MiB): RSS idle {idle:.0}, peak {peak:.0}, after {after:.0} MiB"
    );
    let mut m = Map::new();
    m.insert("fair_alone_p99_ms".into(), json!(percentile(&alone, 0.99)));
    m.insert("fair_victim_p99_ms".into(), json!(percentile(&beside, 0.99)));
    m.insert("burst_rss_mb_idle".into(), json!(idle));
    m.insert("burst_rss_mb".into(), json!(peak));
    m.insert("burst_rss_mb_after".into(), json!(after));
    m
}
