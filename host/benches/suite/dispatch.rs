//! Per-event dispatch cost: a fresh instance per event through Switchboard's
//! real dispatch path (`dispatch::invoke`: store, limits, epoch deadline, host
//! context), beside a bare-wasmtime loop over the same component (InstancePre
//! + new Store + call) in the same process, and per language.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard::config::{ApiDialect, Manifest, Secret, TenantConfig, WebhookAuth};
use switchboard::domain::{Direction, Event, EventKind};
use switchboard::engine::bindings::v2::PluginPre;
use switchboard::engine::capabilities::Invocation;
use switchboard::engine::contract::to_v2;
use switchboard::engine::effects::Live;
use switchboard::engine::justcall::JustCallClient;
use switchboard::engine::plugins::{LoadedPlugin, Registry};
use switchboard::engine::runtime::{Runtime, RuntimeOptions};
use switchboard::engine::tenant::Tenant;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::common::{Guests, percentile, sorted};

const EVENTS: usize = 10_000;

fn event() -> Event {
    Event {
        tenant: "bench".into(),
        kind: EventKind::Received,
        event_id: "e".into(),
        occurred_at: "2026-03-12T14:30:00Z".into(),
        message_id: "m".into(),
        direction: Direction::Inbound,
        from: "+15125551234".into(),
        to: "+15125550100".into(),
        body: "hello".into(),
        media_urls: vec![],
        justcall_number: "+15125550100".into(),
        contact_name: Some("Sarah Chen".into()),
        agent_id: None,
        timer: None,
    }
}

/// Builds each event's invocation the way the server does: the tenant,
/// manifest and database shared, fresh live effects (no journal).
struct Invoker {
    tenant: Arc<Tenant>,
    manifest: Arc<Manifest>,
    db: switchboard::storage::Db,
    http: reqwest::Client,
    plugin: Arc<str>,
    event_id: Arc<str>,
    _dir: tempfile::TempDir,
}

impl Invoker {
    async fn new(plugin: &LoadedPlugin) -> Invoker {
        let dir = tempfile::tempdir().unwrap();
        let db = switchboard::storage::Db::open(dir.path(), Default::default()).unwrap();
        let tenant = TenantConfig {
            id: "bench".into(),
            numbers: vec!["+15125550100".into()],
            default_country: None,
            verify_events: false,
            kv_total: Default::default(),
            max_concurrent: None,
            weight: 1,
            webhook_auth: WebhookAuth::None,
            webhook_secret: None,
            justcall_api: ApiDialect::Seed,
            justcall_base_url: reqwest::Url::parse("http://127.0.0.1:9").unwrap(),
            justcall_api_key: Secret::new("k"),
            justcall_api_secret: Secret::new("s"),
            limits: Default::default(),
            justcall_rate_per_minute: 60,
        };
        let http = reqwest::Client::new();
        Invoker {
            tenant: Arc::new(Tenant {
                justcall: JustCallClient::new(&tenant, http.clone()),
                config: tenant,
            }),
            // Room for the Python and JavaScript runtimes.
            manifest: Arc::new(Manifest::parse(std::path::Path::new("bench.toml"), "[limits]\nmemory_mb = 128\n").unwrap()),
            db,
            http,
            plugin: Arc::from(plugin.name.as_str()),
            event_id: Arc::from("e"),
            _dir: dir,
        }
    }

    fn invocation(&self) -> Invocation {
        Invocation {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            manifest: self.manifest.clone(),
            db: self.db.clone(),
            event_id: self.event_id.clone(),
            effects: std::sync::Arc::new(Live::new(self.tenant.clone(), self.http.clone(), self.manifest.clone(), None)),
            trace: Default::default(),
            kv: Default::default(),
            secrets: Default::default(),
            timers: switchboard::engine::timer_stage::TimerStage::new(Default::default()),
        }
    }
}

/// Microseconds per event through the real dispatch path.
async fn through_switchboard(plugin: &LoadedPlugin, events: usize) -> Vec<f64> {
    through_switchboard_expecting(plugin, events, Ok(())).await
}

/// Like [`through_switchboard`], for a plugin whose every run must end with
/// `expected` (the C example, without its config, returns a config error).
async fn through_switchboard_expecting(plugin: &LoadedPlugin, events: usize, expected: Result<(), &str>) -> Vec<f64> {
    through_switchboard_with(plugin, events, expected, event()).await
}

async fn through_switchboard_with(plugin: &LoadedPlugin, events: usize, expected: Result<(), &str>, ev: Event) -> Vec<f64> {
    let invoker = Invoker::new(plugin).await;
    let check = |r: Result<(), switchboard::engine::dispatch::InvokeError>| {
        let r = r.map_err(|e| e.to_string());
        assert_eq!(r.as_ref().map(|_| ()).map_err(String::as_str), expected, "{}", plugin.name);
    };
    for _ in 0..(events / 20).max(10) {
        check(switchboard::engine::dispatch::invoke(plugin, invoker.invocation(), &ev, None).await);
    }
    let mut samples = Vec::with_capacity(events);
    for _ in 0..events {
        let t = Instant::now();
        let r = switchboard::engine::dispatch::invoke(plugin, invoker.invocation(), &ev, None).await;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        check(r);
    }
    sorted(samples)
}

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Microseconds per event for the minimal wasmtime loop.
async fn bare(engine: &wasmtime::Engine, wasm: &std::path::Path) -> Vec<f64> {
    let component = Component::from_file(engine, wasm).unwrap();
    let mut linker: Linker<Bare> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = PluginPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let ev = to_v2(&event());
    let mut samples = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS + 500 {
        let t = Instant::now();
        let mut store = wasmtime::Store::new(
            engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(1 << 40);
        let plugin = pre.instantiate_async(&mut store).await.unwrap();
        plugin.call_handle_event(&mut store, &ev).await.unwrap().unwrap();
        drop(store);
        if i >= 500 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    sorted(samples)
}

/// What tracing adds to a typical attempt (one log line, one `sms.send`) on
/// the dispatch path: collecting it, finishing it and serialising it for the
/// writer, µs per attempt, sorted. (Handing it to the writer is one channel
/// send; the write itself is off the path.)
fn trace_cost(n: usize) -> Vec<f64> {
    use switchboard::engine::trace::Tracer;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let t = Tracer::new();
        t.log("info", "confirmed appointment for +15125551234; reply 42");
        let call = t.begin("sms.send", "from +15125550100 to +15125551234 \"Your appointment is confirmed.\"");
        t.end(call, Ok("id 42".into()));
        t.wasm_time(Duration::from_micros(20));
        let trace = t.finish();
        let json = (
            serde_json::to_string(&trace.logs).unwrap(),
            serde_json::to_string(&trace.calls).unwrap(),
        );
        std::hint::black_box((json, i));
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    sorted(samples)
}

pub async fn run(guests: &Guests) -> Map<String, Value> {
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            max_instances: 16,
            cache_dir: None,
            compile_limit: switchboard::engine::runtime::MAX_COMPILE_TIME,
        })
        .unwrap(),
    );
    let registry = Registry::new(runtime.clone(), Default::default());
    let noop = registry.load_file(&guests["noop"]).unwrap();
    let ours = through_switchboard(&noop, EVENTS).await;
    let base = bare(runtime.engine(), &guests["noop"]).await;
    // Each language's example on an event it does not act on: a fresh
    // instance, the call, and its early return.
    let js = registry.load_file(&guests["appointment-confirm-js"]).unwrap();
    let js_samples = through_switchboard(&js, 2_000).await;
    let py = registry.load_file(&guests["lead-router"]).unwrap();
    let py_samples = through_switchboard(&py, 1_000).await;
    let sent = Event {
        kind: EventKind::Sent,
        ..event()
    };
    let py_ignored = through_switchboard_with(&py, 1_000, Ok(()), sent).await;
    println!(
        "python: received (reads KV, no rule matches) p50 {:.1} µs; sent (ignored by kind) p50 {:.1} µs",
        percentile(&py_samples, 0.5),
        percentile(&py_ignored, 0.5)
    );
    let c = registry.load_file(&guests["analytics-pipeline"]).unwrap();
    let c_samples = through_switchboard_expecting(&c, EVENTS, Err("plugin error: config has no `warehouse_url`")).await;
    let (p50, p99, b50) = (percentile(&ours, 0.5), percentile(&ours, 0.99), percentile(&base, 0.5));
    println!(
        "dispatch: p50 {p50:.1} µs, p99 {p99:.1} µs; bare wasmtime p50 {b50:.1} µs; JS p50 {:.1} µs; Python p50 {:.1} µs; C p50 {:.1} µs",
        percentile(&js_samples, 0.5),
        percentile(&py_samples, 0.5),
        percentile(&c_samples, 0.5)
    );
    let trace = trace_cost(EVENTS);
    println!(
        "trace of one attempt (a log line, an sms.send): p50 {:.2} µs",
        percentile(&trace, 0.5)
    );
    let mut m = Map::new();
    m.insert("trace_cost_us_p50".into(), json!(percentile(&trace, 0.5)));
    m.insert("dispatch_us_p50".into(), json!(p50));
    m.insert("dispatch_us_p99".into(), json!(p99));
    m.insert("baseline_us_p50".into(), json!(b50));
    m.insert("dispatch_ratio".into(), json!(p50 / b50));
    m.insert(
        "dispatch_us_p50_by_lang".into(),
        json!({ "rust": p50, "js": percentile(&js_samples, 0.5), "python": percentile(&py_samples, 0.5), "c": percentile(&c_samples, 0.5) }),
    );
    m
}
