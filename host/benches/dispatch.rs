//! Per-event dispatch cost: a fresh instance of the no-op plugin per event
//! through Switchboard's real dispatch path (`dispatch::invoke`: store,
//! limits, epoch deadline, host context), 10,000 events, p50 and p99.
//!
//! Run with `cargo bench --bench dispatch`.

use std::sync::Arc;
use std::time::Instant;

use switchboard::capabilities::{Invocation, TenantRuntime};
use switchboard::config::{ApiDialect, Manifest, Secret, TenantConfig, WebhookAuth};
use switchboard::event::{Direction, Event, EventKind};
use switchboard::guest_build::GuestWorkspace;
use switchboard::justcall::JustCallClient;
use switchboard::plugins::Registry;
use switchboard::runtime::{Runtime, RuntimeOptions};

const EVENTS: usize = 10_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let ws = GuestWorkspace::from_source_checkout().expect("plugins/ workspace");
    let built = ws.build(true)?;
    let noop = built.iter().find(|p| p.name == "noop").expect("noop fixture");

    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        max_instances: 16,
        cache_dir: None,
    })?);
    let registry = Registry::new(runtime, Default::default());
    let plugin = registry.load_file(&noop.wasm)?;
    let dir = tempfile::tempdir()?;
    let db = switchboard::db::Db::open(dir.path())?;
    let tenant = TenantConfig {
        id: "bench".into(),
        numbers: vec!["+15125550100".into()],
        webhook_auth: WebhookAuth::None,
        webhook_secret: None,
        justcall_api: ApiDialect::Seed,
        justcall_base_url: reqwest::Url::parse("http://127.0.0.1:9")?,
        justcall_api_key: Secret::new("k"),
        justcall_api_secret: Secret::new("s"),
        limits: Default::default(),
    };
    let http = reqwest::Client::new();
    let tenant = Arc::new(TenantRuntime {
        justcall: JustCallClient::new(&tenant, http.clone()),
        config: tenant,
    });
    let event = Event {
        tenant: "bench".into(),
        kind: EventKind::Received,
        event_id: "e".into(),
        occurred_at: "2026-03-12T14:30:00Z".into(),
        message_id: "m".into(),
        direction: Direction::Inbound,
        from: "+15125551234".into(),
        to: "+15125550100".into(),
        body: "CONFIRM".into(),
        media_urls: vec![],
        justcall_number: "+15125550100".into(),
        contact_name: Some("Sarah Chen".into()),
        agent_id: None,
    };
    let inv = Invocation {
        tenant,
        plugin: Arc::from("noop"),
        manifest: Arc::new(Manifest::default()),
        db,
        http,
        event_id: Arc::from("e"),
        long_runners: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    for _ in 0..500 {
        switchboard::dispatch::invoke(&plugin, inv.clone(), &event).await?;
    }
    let mut samples = Vec::with_capacity(EVENTS);
    let start = Instant::now();
    for _ in 0..EVENTS {
        let t = Instant::now();
        switchboard::dispatch::invoke(&plugin, inv.clone(), &event).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed();
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "dispatch (fresh instance + call, no-op Rust plugin, {EVENTS} events): p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        total.as_secs_f64() * 1e6 / EVENTS as f64
    );
    Ok(())
}
