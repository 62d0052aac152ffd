//! Noisy-neighbour isolation against the real release binary: a well-behaved
//! tenant's ack-to-done latency (webhook acknowledged → its plugin's SMS
//! reaches a local fake JustCall), alone and beside a tenant whose plugin
//! loops to its deadline on every event. Rounds alternate between the two so
//! disk and machine noise (fsync stalls) fall on both alike; the percentiles
//! are over all rounds of a condition.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use crate::common::{BIN, Guests, SECRET};
use crate::process::{Process, free_port, serve_command};

const ROUNDS: usize = 3;
const GOOD_EVENTS: usize = 500;
const GOOD_RATE_HZ: u64 = 50;
const EVIL_RATE_HZ: u64 = 2;

/// When each reply SMS reached the fake JustCall, by the event id in its body.
pub type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Starts [`fake_justcall`] on loopback: its URL and its arrivals.
pub async fn start_fake_justcall() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/api/v2/texts/new", axum::routing::post(fake_justcall))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals)
}

/// A fake JustCall that notes when each reply (`…:id`) arrives.
pub async fn fake_justcall(State(arrivals): State<Arrivals>, Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
    if let Some(text) = body["body"].as_str()
        && let Some((_, id)) = text.split_once(':')
    {
        arrivals.lock().unwrap().insert(id.to_string(), Instant::now());
    }
    Json(serde_json::json!({ "id": "1" }))
}

fn event(tenant_number: &str, id: &str) -> String {
    serde_json::json!({
        "event": "sms.received", "timestamp": chrono::Utc::now().to_rfc3339(),
        "data": { "message_id": id, "direction": "inbound", "from": "+15125551234", "to": tenant_number,
                  "body": "hello", "media_urls": [], "justcall_number": tenant_number, "contact_name": null, "agent_id": null }
    })
    .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One round on a fresh server: the good tenant's latencies in ms.
async fn run_once(with_neighbour: bool, jc_url: &str, arrivals: &Arrivals, wasm: &HashMap<String, std::path::PathBuf>) -> Vec<f64> {
    arrivals.lock().unwrap().clear();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = format!("listen = \"127.0.0.1:{port}\"\n");
    for (t, n) in [("good", "+15125550100"), ("evil", "+15125550199")] {
        cfg.push_str(&format!(
            "[tenants.{t}]\nnumbers = [\"{n}\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SECRET}\"\njustcall_base_url = \"{jc_url}\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\njustcall_rate_per_minute = 100000000\n"
        ));
    }
    std::fs::write(dir.path().join("sb.toml"), cfg).unwrap();
    for (t, p, manifest) in [
        ("good", "answer-a", ""),
        ("evil", "hostile", "[config]\nmode = \"loop\"\n[limits]\ntimeout_ms = 1000\n"),
    ] {
        let d = dir.path().join("plugins.d").join(t);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&wasm[p], d.join(format!("{p}.wasm"))).unwrap();
        std::fs::write(d.join(format!("{p}.toml")), manifest).unwrap();
    }
    let _server = Process::spawn(serve_command(BIN, &dir.path().join("sb.toml"), port, None), port);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (post_client, base) = (client.clone(), url.clone());
    let post = move |tenant: &'static str, body: String| {
        let client = post_client.clone();
        let url = format!("{base}/webhooks/{tenant}");
        async move {
            let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = switchboard::intake::auth::standard_webhooks_signature(SECRET, &id, &ts, body.as_bytes());
            let resp = client
                .post(url)
                .header("webhook-id", id)
                .header("webhook-timestamp", ts)
                .header("webhook-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            Instant::now()
        }
    };
    let evil = if with_neighbour {
        let post = post.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / EVIL_RATE_HZ));
            for i in 0.. {
                tick.tick().await;
                post("evil", event("+15125550199", &format!("evil{i}"))).await;
            }
        }))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acks = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / GOOD_RATE_HZ));
    for i in 0..GOOD_EVENTS {
        tick.tick().await;
        let id = format!("good{i}");
        acks.insert(id.clone(), post("good", event("+15125550100", &id)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < acks.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(e) = evil {
        e.abort();
    }
    let arrived = arrivals.lock().unwrap().clone();
    let lat: Vec<f64> = acks
        .iter()
        .filter_map(|(id, ack)| arrived.get(id).map(|t| t.saturating_duration_since(*ack).as_secs_f64() * 1e3))
        .collect();
    assert_eq!(lat.len(), acks.len(), "every good event answered");
    lat
}

fn summary(lat: &mut [f64]) -> String {
    lat.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
        percentile(lat, 0.5),
        percentile(lat, 0.9),
        percentile(lat, 0.99),
        lat[lat.len() - 1]
    )
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let wasm: HashMap<String, std::path::PathBuf> = guests.clone();
    let (jc_url, arrivals) = start_fake_justcall().await;

    let (mut alone, mut noisy) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        alone.extend(run_once(false, &jc_url, &arrivals, &wasm).await);
        noisy.extend(run_once(true, &jc_url, &arrivals, &wasm).await);
    }
    println!(
        "neighbour isolation ({ROUNDS} × 2 rounds of {GOOD_EVENTS} events at {GOOD_RATE_HZ}/s; neighbour loops 1 s on each of {EVIL_RATE_HZ} events/s):\n  alone          {}\n  with neighbour {}",
        summary(&mut alone),
        summary(&mut noisy)
    );
    let (alone99, noisy99) = (percentile(&alone, 0.99), percentile(&noisy, 0.99));
    let mut m = Map::new();
    m.insert("neighbour_alone_ms_p99".into(), json!(alone99));
    m.insert("neighbour_noisy_ms_p99".into(), json!(noisy99));
    m.insert("neighbour_p99_ratio".into(), json!(noisy99 / alone99));
    m
}
