//! Deploys against the real release binary: `deploy_to_serving_ms`, from
//! the start of an upload (`answer-b` over `answer-a`, then back, …) to the
//! first reply by the new version reaching a local fake JustCall (events
//! sent every 2 ms meanwhile), and `shadow_overhead_pct`, the serving
//! version's ack-to-reply p99 with a shadow deployed beside it against
//! without (rounds alternate on one server so noise falls on both).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use crate::common::{Guests, TOKEN, Tenant, event, percentile, signed, sorted, start};

const DEPLOYS: usize = 11;
const SHADOW_ROUNDS: usize = 4;
const EVENTS_PER_ROUND: usize = 300;
const RATE_HZ: u64 = 50;

/// Each reply's text and when it arrived.
type Replies = Arc<Mutex<Vec<(String, Instant)>>>;

async fn fake_justcall(State(replies): State<Replies>, Json(body): Json<Value>) -> Json<Value> {
    if let Some(text) = body["body"].as_str() {
        replies.lock().unwrap().push((text.to_string(), Instant::now()));
    }
    Json(json!({ "id": "1" }))
}

async fn start_fake_justcall() -> (String, Replies) {
    let replies: Replies = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/api/v2/texts/new", axum::routing::post(fake_justcall))
        .with_state(replies.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, replies)
}

async fn post(client: &reqwest::Client, url: &str, id: &str) -> Instant {
    let body = event("+15125550100", id, "hello");
    let mut req = client.post(format!("{url}/webhooks/acme")).body(body.clone());
    for (k, v) in signed(&body) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    Instant::now()
}

async fn upload(client: &reqwest::Client, admin: &str, wasm: &std::path::Path, query: &str) {
    let form = reqwest::multipart::Form::new().part(
        "wasm",
        reqwest::multipart::Part::bytes(std::fs::read(wasm).unwrap()).file_name("answer.wasm"),
    );
    let resp = client
        .post(format!("{admin}/admin/tenants/acme/plugins/answer/versions?{query}"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let (jc, replies) = start_fake_justcall().await;
    let tenant = Tenant {
        id: "acme".into(),
        number: "+15125550100".into(),
        plugins: vec![("answer", "answer-a", "")],
    };
    let server = tokio::task::block_in_place(|| start(guests, &[tenant], &jc));
    let (url, admin) = (server.url(), server.admin_url());
    let client = reqwest::Client::new();

    // Upload → first event served by the new version.
    let mut times = Vec::new();
    for round in 0..DEPLOYS {
        let to = if round % 2 == 0 { "answer-b" } else { "answer-a" };
        replies.lock().unwrap().clear();
        let started = Instant::now();
        upload(&client, &admin, &guests[to], "").await;
        let mut n = 0;
        let served = loop {
            if let Some((_, at)) = replies.lock().unwrap().iter().find(|(text, _)| text.starts_with(&format!("{to}:"))) {
                break *at;
            }
            post(&client, &url, &format!("d{round}-{n}")).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        times.push(served.duration_since(started).as_secs_f64() * 1e3);
    }
    let cold = times[0];
    let warm = sorted(times[1..].to_vec());
    println!(
        "deploy to serving: first upload (compiles) {cold:.1} ms; then p50 {:.1} ms, max {:.1} ms over {} uploads",
        percentile(&warm, 0.5),
        warm[warm.len() - 1],
        warm.len()
    );

    // The serving version's latency with a shadow beside it, and without.
    upload(&client, &admin, &guests["answer-a"], "").await;
    let (mut alone, mut shadowed) = (Vec::new(), Vec::new());
    for round in 0..SHADOW_ROUNDS * 2 {
        let with_shadow = round % 2 == 1;
        if with_shadow {
            upload(&client, &admin, &guests["answer-b"], "shadow=true").await;
        }
        replies.lock().unwrap().clear();
        let mut acks = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_HZ));
        for i in 0..EVENTS_PER_ROUND {
            tick.tick().await;
            let id = format!("s{round}-{i}");
            acks.insert(id.clone(), post(&client, &url, &id).await);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while replies.lock().unwrap().len() < acks.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let arrived: HashMap<String, Instant> = replies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(text, at)| text.strip_prefix("answer-a:").map(|id| (id.to_string(), *at)))
            .collect();
        let lat: Vec<f64> = acks
            .iter()
            .filter_map(|(id, ack)| arrived.get(id).map(|t| t.saturating_duration_since(*ack).as_secs_f64() * 1e3))
            .collect();
        assert_eq!(lat.len(), acks.len(), "every event answered by the serving version, and only by it");
        if with_shadow {
            let report: Value = client
                .get(format!("{admin}/admin/tenants/acme/plugins/answer/shadow"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            println!(
                "  shadow round: {} compared, {} skipped",
                report["trial"]["compared"], report["trial"]["skipped"]
            );
            client
                .post(format!("{admin}/admin/tenants/acme/plugins/answer/trial/stop"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            shadowed.extend(lat);
        } else {
            alone.extend(lat);
        }
    }
    let (alone, shadowed) = (sorted(alone), sorted(shadowed));
    let (a99, s99) = (percentile(&alone, 0.99), percentile(&shadowed, 0.99));
    let overhead = (s99 / a99 - 1.0) * 100.0;
    println!(
        "shadow overhead ({SHADOW_ROUNDS} × 2 rounds of {EVENTS_PER_ROUND} events at {RATE_HZ}/s): serving p99 alone {a99:.2} ms, beside a shadow {s99:.2} ms ({overhead:+.1}%); p50 {:.2} vs {:.2} ms",
        percentile(&alone, 0.5),
        percentile(&shadowed, 0.5)
    );
    let mut m = Map::new();
    m.insert("deploy_to_serving_cold_ms".into(), json!(cold));
    m.insert("deploy_to_serving_ms".into(), json!(percentile(&warm, 0.5)));
    m.insert("shadow_alone_ms_p99".into(), json!(a99));
    m.insert("shadow_beside_ms_p99".into(), json!(s99));
    m.insert("shadow_overhead_pct".into(), json!(overhead));
    m
}
