//! Timers against the real release binary, with 100,000 pending:
//! - `timer_rss_mb_100k`: the server's RSS once 100,000 timers are pending
//!   (scheduled by the `ticker` plugin, 1,000 per event, due hours ahead);
//!   `timer_rss_idle_mb` before any.
//! - `timer_fire_lag_ms_p99`: for probe timers due every 20 ms over 6 s
//!   among them, from when each was due to its firing reaching the plugin's
//!   HTTP sink (stored, dispatched, run); `timer_fire_lag_ms_p50` too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use crate::common::{Guests, Server, TOKEN, Tenant, event, percentile, rss_mb, signed, sorted, start_with};

const PENDING: u64 = 100_000;
const PER_EVENT: u64 = 1_000;
const PROBES: u64 = 300;
const PROBE_STEP_MS: u64 = 20;

/// Lags (ms) of the probe firings that reached the sink.
type Lags = Arc<Mutex<Vec<f64>>>;

async fn sink(State(lags): State<Lags>, Json(body): Json<Value>) -> Json<Value> {
    let now = chrono::Utc::now();
    if let Some(due) = body["due_at"].as_str().and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        && body["key"].as_str().is_some_and(|k| k.starts_with("probe-"))
    {
        lags.lock()
            .unwrap()
            .push((now - due.to_utc()).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }
    Json(json!({}))
}

async fn command(client: &reqwest::Client, url: &str, id: &str, text: &str) {
    let body = event("+15125550100", id, text);
    let mut req = client.post(format!("{url}/webhooks/acme")).body(body.clone());
    for (k, v) in signed(&body) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

async fn pending(client: &reqwest::Client, admin: &str) -> usize {
    let v: Value = client
        .get(format!("{admin}/admin/tenants/acme/timers?limit=1000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["timers"].as_array().map_or(0, Vec::len)
}

fn stored(server: &Server) -> i64 {
    let db = rusqlite::Connection::open(server.dir.path().join("data/switchboard.db")).unwrap();
    db.query_row("SELECT count(*) FROM timers", [], |r| r.get(0)).unwrap()
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let lags: Lags = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(axum::routing::post(sink)).with_state(lags.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let manifest = format!(
        "events = [\"received\"]\nallowed_hosts = [\"{sink_url}\"]\n[config]\nsink = \"{sink_url}/fired\"\n\
         [limits]\ntimeout_ms = 30000\ntimers = {}\n",
        PENDING + PROBES
    );
    let tenant = Tenant {
        id: "acme".into(),
        number: "+15125550100".into(),
        plugins: vec![("ticker", "ticker", &manifest)],
    };
    let extra = format!("[tenants.acme.limits]\ntimeout_ms = 30000\ntimers = {}\n", PENDING + PROBES);
    let server = tokio::task::block_in_place(|| start_with(guests, &[tenant], &sink_url, &extra));
    let (url, admin) = (server.url(), server.admin_url());
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_mb(&server);

    // 100,000 timers due 2–30 hours ahead.
    let ahead = chrono::Utc::now().timestamp_millis() as u64 + 2 * 3_600_000;
    for batch in 0..PENDING / PER_EVENT {
        let at = ahead + batch * PER_EVENT * 1000;
        command(
            &client,
            &url,
            &format!("fill-{batch}"),
            &format!("many far{batch} {PER_EVENT} {at} 1000"),
        )
        .await;
    }
    let started = std::time::Instant::now();
    while stored(&server) < PENDING as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} timers stored",
            stored(&server)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("timers: {PENDING} pending after {:.1} s", started.elapsed().as_secs_f64());
    assert!(pending(&client, &admin).await > 0);
    let with_pending = rss_mb(&server);

    // Probes due every 20 ms from 2 s on, among the 100,000.
    let first = chrono::Utc::now().timestamp_millis() as u64 + 2_000;
    command(&client, &url, "probes", &format!("many probe {PROBES} {first} {PROBE_STEP_MS}")).await;
    let last_due = Duration::from_millis(2_000 + PROBES * PROBE_STEP_MS);
    let started = std::time::Instant::now();
    while lags.lock().unwrap().len() < PROBES as usize {
        assert!(
            started.elapsed() < last_due + Duration::from_secs(60),
            "only {} of {PROBES} probes fired",
            lags.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lag = sorted(lags.lock().unwrap().clone());
    let (p50, p99) = (percentile(&lag, 0.5), percentile(&lag, 0.99));
    println!(
        "timers: fire lag p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms over {PROBES} probes; RSS {idle:.1} MiB idle, {with_pending:.1} MiB with {PENDING} pending",
        lag[lag.len() - 1]
    );
    let mut out = Map::new();
    out.insert("timer_fire_lag_ms_p50".into(), json!(p50));
    out.insert("timer_fire_lag_ms_p99".into(), json!(p99));
    out.insert("timer_rss_idle_mb".into(), json!(idle));
    out.insert("timer_rss_mb_100k".into(), json!(with_pending));
    out
}
