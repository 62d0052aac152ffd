//! Ingest and full-path throughput against the real binary, driven by this
//! benchmark re-run as a separate load-client process: signed webhooks →
//! persisted → 2xx (closed loop, 32 connections, then open loop at half that
//! rate for ack latency), and webhook → plugin → SMS at a local fake JustCall.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::common::{Guests, Tenant, event, percentile, signed, sorted, start};

/// First argument that turns this binary into the load client.
pub const CLIENT_ARG: &str = "__load-client";
const CONNECTIONS: usize = 32;
const NUMBER: &str = "+15125550100";

/// The load client: `__load-client URL TENANT SECONDS RATE MAX_EVENTS`. RATE 0
/// means closed loop; MAX_EVENTS 0 means no cap. Prints one JSON line.
pub async fn client_main(args: &[String]) {
    let url = format!("{}/webhooks/{}", args[0], args[1]);
    let seconds: f64 = args[2].parse().unwrap();
    let rate: f64 = args[3].parse().unwrap();
    let max_events: usize = args[4].parse().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().unwrap();
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONNECTIONS {
        let (client, url, issued) = (client.clone(), url.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if (max_events > 0 && n >= max_events) || Instant::now() >= deadline {
                    break;
                }
                // Open loop: request n is due at start + n / rate.
                let due = if rate > 0.0 {
                    start + Duration::from_secs_f64(n as f64 / rate)
                } else {
                    Instant::now()
                };
                if rate > 0.0 {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                }
                let body = event(NUMBER, &format!("w{worker}-{n}"), "hello");
                let mut req = client.post(&url).header("content-type", "application/json");
                for (k, v) in signed(&body) {
                    req = req.header(k, v);
                }
                match req.body(body).send().await {
                    Ok(r) if r.status().is_success() => lat.push(due.elapsed().as_secs_f64() * 1e3),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = sorted(lat);
    println!(
        "{}",
        json!({ "ok": lat.len(), "errors": errors, "elapsed_s": elapsed, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99) })
    );
}

fn run_client(url: &str, seconds: f64, rate: f64, max_events: usize) -> Value {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            CLIENT_ARG,
            url,
            "t0",
            &seconds.to_string(),
            &rate.to_string(),
            &max_events.to_string(),
        ])
        .output()
        .expect("run load client");
    assert!(out.status.success(), "load client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("load client output")
}

pub async fn run_ingest(guests: &Guests) -> Map<String, Value> {
    let server = start(
        guests,
        &[Tenant {
            id: "t0".into(),
            number: NUMBER.into(),
            plugins: vec![],
        }],
        "http://127.0.0.1:9",
    );
    let url = server.url();
    let closed = tokio::task::spawn_blocking(move || run_client(&url, 5.0, 0.0, 0)).await.unwrap();
    let eps = closed["ok"].as_f64().unwrap() / closed["elapsed_s"].as_f64().unwrap();
    let url = server.url();
    let open = tokio::task::spawn_blocking(move || run_client(&url, 5.0, eps / 2.0, 0))
        .await
        .unwrap();
    println!(
        "ingest: {eps:.0} events/s closed loop ({} errors); at {:.0}/s ack p50 {:.2} ms p99 {:.2} ms",
        closed["errors"],
        eps / 2.0,
        open["p50_ms"],
        open["p99_ms"]
    );
    let mut m = Map::new();
    m.insert("ingest_eps".into(), json!(eps));
    m.insert("ack_ms_p50".into(), open["p50_ms"].clone());
    m.insert("ack_ms_p99".into(), open["p99_ms"].clone());
    m
}

pub async fn run_full_path(guests: &Guests) -> Map<String, Value> {
    const EVENTS: usize = 5_000;
    let arrivals = Arc::new(AtomicUsize::new(0));
    let counter = arrivals.clone();
    let app = axum::Router::new().route(
        "/api/v2/texts/new",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({ "id": "1" }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jc = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = start(
        guests,
        &[Tenant {
            id: "t0".into(),
            number: NUMBER.into(),
            plugins: vec![("answer", "answer-a", "")],
        }],
        &jc,
    );
    let url = server.url();
    let t = Instant::now();
    let result = tokio::task::spawn_blocking(move || run_client(&url, 120.0, 0.0, EVENTS))
        .await
        .unwrap();
    let accepted = result["ok"].as_u64().unwrap() as usize;
    while arrivals.load(Ordering::Relaxed) < accepted && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let done = arrivals.load(Ordering::Relaxed);
    let eps = done as f64 / elapsed;
    println!("full path: {done} of {accepted} accepted events answered at the fake JustCall in {elapsed:.2} s: {eps:.0} events/s");
    let mut m = Map::new();
    m.insert("full_path_eps".into(), json!(eps));
    m
}
