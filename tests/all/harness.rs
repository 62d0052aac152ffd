//! The shared test harness: guest plugins built once, a real Switchboard on an
//! ephemeral loopback port over a temp data dir, and a recording HTTP server
//! that plays JustCall, a CRM or a booking system.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use switchboard::config::{ApiDialect, Config, Secret, TenantConfig, WebhookAuth};
use switchboard::tools::guest_build::{BuiltPlugin, GuestWorkspace};
use switchboard::tools::simulator::Simulator;
use tokio::sync::oneshot;

/// The guest plugins, built from `plugins/` once per test process.
pub fn guests() -> &'static [BuiltPlugin] {
    static GUESTS: OnceLock<Vec<BuiltPlugin>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let ws = GuestWorkspace::from_source_checkout().expect("plugins/ workspace");
        ws.build(true).expect("building guest plugins")
    })
}

/// The built component of a guest package.
pub fn guest(name: &str) -> PathBuf {
    guests()
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no guest package `{name}`"))
        .wasm
        .clone()
}

/// The repository's webhook payloads, one folder per wire format.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Facts of `seed-format/sms.received.json` that tests rewrite or check.
pub const RECEIVED_ID: &str = "sb_m001";
pub const RECEIVED_BODY: &str = "Hello! Could I get a cleaning slot next Tuesday?";
pub const RECEIVED_AT: &str = "2026-05-04T16:20:00Z";
/// Facts of `seed-format/sms.received-confirm.json`.
pub const CONFIRM_ID: &str = "sb_m002";
pub const CONFIRM_AT: &str = "2026-05-04T16:25:00Z";
/// Every seed fixture's message id starts with this.
pub const ID_PREFIX: &str = "sb_m00";
pub const CONTACT_NAME: &str = "Dana Ortiz";

/// Reads a fixture (`seed-format/sms.received.json`, …).
pub fn fixture(rel: &str) -> String {
    let path = fixtures_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every fixture in a folder, by file name.
pub fn fixtures(dir: &str) -> Vec<(String, String)> {
    let path = fixtures_dir().join(dir);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A plugin to deploy: the guest package it is built from, the name it is
/// deployed under, and its manifest text.
pub struct PluginSpec {
    pub package: &'static str,
    pub name: &'static str,
    pub manifest: String,
}

impl PluginSpec {
    pub fn new(package: &'static str, name: &'static str, manifest: impl Into<String>) -> Self {
        PluginSpec {
            package,
            name,
            manifest: manifest.into(),
        }
    }
}

/// A tenant to configure.
pub struct TenantSpec {
    pub id: &'static str,
    pub auth: WebhookAuth,
    pub secret: Option<&'static str>,
    pub dialect: ApiDialect,
    pub justcall: String,
    pub plugins: Vec<PluginSpec>,
    pub limits: switchboard::config::LimitOverrides,
    pub kv_total: switchboard::config::KvTotal,
    pub max_concurrent: Option<u32>,
    pub number: &'static str,
    pub rate_per_minute: u32,
    pub default_country: Option<switchboard::domain::Country>,
    /// Off by default here: most tests post events JustCall never saw.
    pub verify_events: bool,
}

impl TenantSpec {
    /// A tenant with number +15125550100, no webhook auth (dev mode), the
    /// seed API dialect, and JustCall at `justcall`.
    pub fn new(id: &'static str, justcall: &str) -> Self {
        TenantSpec {
            id,
            auth: WebhookAuth::None,
            secret: None,
            dialect: ApiDialect::Seed,
            justcall: justcall.to_string(),
            plugins: Vec::new(),
            limits: Default::default(),
            kv_total: Default::default(),
            max_concurrent: None,
            number: NUMBER,
            rate_per_minute: 100_000,
            default_country: None,
            verify_events: false,
        }
    }

    pub fn auth(mut self, auth: WebhookAuth, secret: &'static str) -> Self {
        self.auth = auth;
        self.secret = Some(secret);
        self
    }

    pub fn number(mut self, n: &'static str) -> Self {
        self.number = n;
        self
    }

    pub fn dialect(mut self, d: ApiDialect) -> Self {
        self.dialect = d;
        self
    }

    pub fn plugin(mut self, p: PluginSpec) -> Self {
        self.plugins.push(p);
        self
    }
}

/// The `flaky` test plugin on received events: it fails while the body says
/// `fail N` (N attempts), posts each body to `{sink}/sink`, and with `reply`
/// texts the sender `re: {body}`.
pub fn flaky(sink: &str, reply: bool, timeout_ms: u64) -> PluginSpec {
    PluginSpec::new(
        "flaky",
        "flaky",
        format!(
            "events = [\"received\"]\nallowed_hosts = [\"{sink}\"]\n[config]\nsink = \"{sink}/sink\"\nreply = \"{}\"\n[limits]\ntimeout_ms = {timeout_ms}\n",
            if reply { "yes" } else { "no" }
        ),
    )
}

/// Tenant `acme` whose `flaky` plugin failed an event's every retry (20 ms
/// apart) and is now paused, with JustCall at `justcall`; and that event's id.
pub async fn paused_flaky(justcall: &str) -> (TestHost, String) {
    let tenant = TenantSpec::new("acme", justcall).plugin(PluginSpec::new("flaky", "flaky", "events = [\"received\"]\n"));
    let host = TestHost::builder(vec![tenant])
        .retries(vec![Duration::from_millis(20)])
        .start()
        .await;
    let (_, resp) = host
        .post("acme", fixture("seed-format/sms.received.json").replace(RECEIVED_BODY, "FAIL"), &[])
        .await;
    let event = resp["event_id"].as_str().unwrap().to_string();
    wait_for("the plugin to pause", Duration::from_secs(10), || {
        host.deliveries(&event).first().is_some_and(|d| d.1 == "failed")
    })
    .await;
    (host, event)
}

pub const NUMBER: &str = "+15125550100";
pub const API_KEY: &str = "test-key";
pub const API_SECRET: &str = "test-secret";
pub const ADMIN_TOKEN: &str = "test-admin";

/// A running Switchboard.
pub struct TestHost {
    pub url: String,
    /// The admin API's own listener.
    pub admin_url: String,
    pub dir: tempfile::TempDir,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A [`TestHost`] being configured: the data dir (to restart over an
/// existing one) and the delivery options (retry schedule, lock wait).
pub struct TestHostBuilder {
    tenants: Vec<TenantSpec>,
    dir: Option<tempfile::TempDir>,
    delivery: switchboard::config::DbOptions,
    front_door: switchboard::config::FrontDoor,
    operator: Option<switchboard::config::OperatorWebhook>,
    secrets: switchboard::config::SecretsKeys,
    clock: switchboard::domain::Clock,
}

/// The key test servers seal plugin secrets with.
pub const SECRETS_KEY: &str = "5b9c3f0e1a2d4c6b8e7f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6";

impl TestHostBuilder {
    /// Sends operational notices to `url`, signed with `secret`.
    pub fn operator_webhook(mut self, url: &str, secret: &str) -> Self {
        self.operator = Some(switchboard::config::OperatorWebhook {
            url: url.to_string(),
            secret: Secret::new(secret),
        });
        self
    }

    /// Starts over this data dir (a restart) instead of a fresh one.
    pub fn in_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Runs timers on this clock.
    pub fn clock(mut self, clock: switchboard::domain::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Retries after these delays.
    pub fn retries(mut self, delays: Vec<Duration>) -> Self {
        self.delivery.retry_delays = delays;
        self
    }

    /// These delivery options, whole.
    pub fn delivery(mut self, options: switchboard::config::DbOptions) -> Self {
        self.delivery = options;
        self
    }

    /// These connection and request limits.
    pub fn front_door(mut self, limits: switchboard::config::FrontDoor) -> Self {
        self.front_door = limits;
        self
    }

    pub async fn start(self) -> TestHost {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        TestHost::start_with(
            dir,
            self.tenants,
            self.delivery,
            self.front_door,
            self.operator,
            (self.secrets, self.clock),
        )
        .await
    }
}

impl TestHost {
    /// Deploys the tenants' plugins into a fresh data dir and starts the
    /// server. Retries are an hour apart, as in production: a failed delivery
    /// stays `retrying` for the length of a test.
    pub async fn start(tenants: Vec<TenantSpec>) -> TestHost {
        Self::builder(tenants).start().await
    }

    /// A host to configure further before it starts.
    pub fn builder(tenants: Vec<TenantSpec>) -> TestHostBuilder {
        TestHostBuilder {
            tenants,
            dir: None,
            delivery: switchboard::config::DbOptions {
                retry_delays: vec![Duration::from_secs(3600); 3],
                ..Default::default()
            },
            front_door: Default::default(),
            operator: None,
            secrets: switchboard::config::SecretsKeys {
                current: Some(switchboard::config::SecretsKey::parse(SECRETS_KEY).unwrap()),
                previous: Vec::new(),
            },
            clock: Default::default(),
        }
    }

    async fn start_with(
        dir: tempfile::TempDir,
        tenants: Vec<TenantSpec>,
        delivery: switchboard::config::DbOptions,
        front_door: switchboard::config::FrontDoor,
        operator_webhook: Option<switchboard::config::OperatorWebhook>,
        (secrets, clock): (switchboard::config::SecretsKeys, switchboard::domain::Clock),
    ) -> TestHost {
        init_tracing();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let plugins_dir = dir.path().join("plugins.d");
        let mut configs = BTreeMap::new();
        let mut dev = false;
        for t in &tenants {
            let tdir = plugins_dir.join(t.id);
            std::fs::create_dir_all(&tdir).unwrap();
            for p in &t.plugins {
                // A package, or a kept binary under tests/fixtures (`….wasm`).
                let wasm = match p.package.ends_with(".wasm") {
                    true => fixtures_dir().join(p.package),
                    false => guest(p.package),
                };
                std::fs::copy(wasm, tdir.join(format!("{}.wasm", p.name))).unwrap();
                std::fs::write(tdir.join(format!("{}.toml", p.name)), &p.manifest).unwrap();
            }
            dev |= t.auth == WebhookAuth::None;
            configs.insert(
                t.id.to_string(),
                TenantConfig {
                    id: t.id.to_string(),
                    numbers: vec![t.number.to_string()],
                    default_country: t.default_country,
                    verify_events: t.verify_events,
                    webhook_auth: t.auth,
                    webhook_secret: t.secret.map(Secret::new),
                    justcall_api: t.dialect,
                    justcall_base_url: reqwest::Url::parse(&t.justcall).unwrap(),
                    justcall_api_key: Secret::new(API_KEY),
                    justcall_api_secret: Secret::new(API_SECRET),
                    limits: t.limits,
                    kv_total: t.kv_total,
                    max_concurrent: t.max_concurrent,
                    weight: 1,
                    justcall_rate_per_minute: t.rate_per_minute,
                },
            );
        }
        let config = Config {
            listen: addr,
            data_dir: dir.path().join("data"),
            cache_dir: None,
            compile_limit: None,
            plugins_dir,
            public_url: url.clone(),
            tenants: configs,
            dev,
            clock,
            signature_tolerance: Duration::from_secs(300),
            max_concurrent_invocations: 16,
            metrics_max_label_sets: 1000,
            otlp_endpoint: None,
            operator_webhook,
            max_wasm_memory_mb: 4096,
            long_run_cpu_percent: switchboard::config::DEFAULT_LONG_RUN_CPU_PERCENT,
            admin_token: Some(Secret::new(ADMIN_TOKEN)),
            admin_listen: switchboard::config::AdminListen::Separate(admin_addr),
            delivery,
            front_door,
            tls: None,
            secrets,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = switchboard::server::Listeners {
            public: listener,
            admin: Some(admin_listener),
        };
        let task = tokio::spawn(switchboard::server::run(config.clone(), listeners, async {
            let _ = rx.await;
        }));
        let host = TestHost {
            url,
            admin_url: format!("http://{admin_addr}"),
            dir,
            config,
            shutdown: Some(tx),
            task: Some(task),
        };
        // The listener is bound already; /healthz answers once plugins are
        // loaded and the server is serving.
        let started = std::time::Instant::now();
        while !host.healthy().await {
            assert!(started.elapsed() < Duration::from_secs(30), "server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        host
    }

    /// POSTs a webhook body with extra headers; returns status and JSON body.
    pub async fn post(&self, tenant: &str, body: impl Into<reqwest::Body>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/webhooks/{tenant}", self.url))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Calls the admin API (`path` under `/admin`) with this bearer token.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let url = format!("{}/admin{path}", self.admin_url);
        let mut req = match method {
            "POST" => client.post(url),
            "DELETE" => client.delete(url),
            _ => client.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Whether the tenant's contact has opted out, as stored.
    pub fn opted_out(&self, tenant: &str, number: &str) -> bool {
        use rusqlite::OptionalExtension;
        self.db()
            .query_row(
                "SELECT opted_out FROM optouts WHERE tenant = ?1 AND number = ?2",
                [tenant, number],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
            .unwrap_or(false)
    }

    /// GET /admin/tenants/{tenant}/plugins.
    pub async fn admin_plugins(&self, tenant: &str) -> Value {
        let (status, plugins) = self.admin("GET", &format!("/tenants/{tenant}/plugins"), Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
        plugins
    }

    /// The admin API's entry for one plugin, if listed.
    pub async fn admin_plugin(&self, tenant: &str, name: &str) -> Option<Value> {
        let all = self.admin_plugins(tenant).await;
        all["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
    }

    /// The compile counters from /healthz.
    pub async fn compile_stats(&self) -> Value {
        let v: Value = reqwest::get(format!("{}/healthz", self.url)).await.unwrap().json().await.unwrap();
        v["compile"].clone()
    }

    /// The tenant's plugin folder.
    pub fn plugin_dir(&self, tenant: &str) -> PathBuf {
        self.config.plugins_dir.join(tenant)
    }

    /// GET /healthz succeeds.
    pub async fn healthy(&self) -> bool {
        match reqwest::get(format!("{}/healthz", self.url)).await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.config.data_dir.join("switchboard.db")).unwrap()
    }

    /// Waits until no delivery is running or due within a minute (a retry
    /// scheduled later than that counts as idle).
    pub async fn idle(&self) {
        wait_for("all deliveries to finish", Duration::from_secs(20), || {
            let soon = chrono::Utc::now().timestamp_millis() + 60_000;
            let n: i64 = self
                .db()
                .query_row(
                    "SELECT count(*) FROM deliveries WHERE status = 'running'
                     OR (status = 'pending' AND (next_attempt_ms IS NULL OR next_attempt_ms < ?1))",
                    [soon],
                    |r| r.get(0),
                )
                .unwrap();
            n == 0
        })
        .await;
    }

    /// (plugin, status, last_error) of every delivery of an event; a pending
    /// delivery waiting for a scheduled retry shows as `retrying`.
    pub fn deliveries(&self, event_id: &str) -> Vec<(String, String, Option<String>)> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT plugin, CASE WHEN status = 'pending' AND next_attempt_ms IS NOT NULL THEN 'retrying' ELSE status END,
                 last_error FROM deliveries WHERE event_id = ?1 ORDER BY plugin",
            )
            .unwrap();
        stmt.query_map([event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The stored (normalised) event, as plugins see it.
    pub fn stored_event(&self, event_id: &str) -> Value {
        let json: String = self
            .db()
            .query_row("SELECT event_json FROM events WHERE id = ?1", [event_id], |r| r.get(0))
            .unwrap();
        serde_json::from_str(&json).unwrap()
    }

    /// How many events the tenant has stored.
    pub fn event_count(&self, tenant: &str) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM events WHERE tenant = ?1", [tenant], |r| r.get(0))
            .unwrap()
    }

    /// Stops the server gracefully and returns its data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Keeps tests that load the machine (compiling JavaScript and Python
/// components, running `dev` cold) apart from tests whose plugins race
/// deadlines of a second or less: heavy tests run alone ([`heavy`]);
/// deadline-bound ones may run together ([`deadline_bound`]); the rest run
/// freely.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test that loads every core for a while.
pub async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().await
}

/// Held by a test whose assertions depend on sub-second plugin deadlines.
pub async fn deadline_bound() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().await
}

/// Runs the `switchboard` binary with `args`, extra `env` and, if given,
/// `stdin`: (success, stdout, stderr).
pub async fn switchboard(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a file the way deploy tools should: to a temp name, then renamed.
pub fn write_then_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` every 20 ms until it holds, or panics after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request the recorder received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct RecorderState {
    requests: Vec<Recorded>,
    status: Option<u16>,
    delay: Option<Duration>,
    redirect: Option<String>,
}

/// A real HTTP server on loopback that records every request and answers
/// 200 with a JustCall-like `{"id": …}` (or a chosen status).
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    state: Arc<Mutex<RecorderState>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state: Arc<Mutex<RecorderState>> = Arc::default();
        let app = Router::new().fallback(record).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { url, state }
    }

    /// Answer every later request with this status.
    pub fn respond_with(&self, status: u16) {
        self.state.lock().unwrap().status = Some(status);
    }

    /// Answer every later request with a 302 to `location`.
    pub fn redirect_to(&self, location: &str) {
        self.state.lock().unwrap().redirect = Some(location.to_string());
    }

    /// Wait this long before answering.
    pub fn delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = Some(d);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests whose path ends with `suffix`.
    pub fn to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    pub async fn wait_for_count(&self, suffix: &str, n: usize) -> Vec<Recorded> {
        wait_for(&format!("{n} request(s) to {suffix}"), Duration::from_secs(10), || {
            self.to(suffix).len() >= n
        })
        .await;
        self.to(suffix)
    }
}

async fn record(
    State(state): State<Arc<Mutex<RecorderState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let (status, delay, n, redirect) = {
        let mut st = state.lock().unwrap();
        st.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
        });
        (st.status.unwrap_or(200), st.delay, st.requests.len(), st.redirect.clone())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(location) = redirect {
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "status": "success", "id": format!("sim_{n}") })),
    )
        .into_response()
}

pub use switchboard::tools::simulator::{Fault, SentSms};

/// The tests' JustCall: `switchboard dev`'s simulator (seed dialect at its
/// root, both dialects served) on its own loopback port, accepting
/// [`API_KEY`]/[`API_SECRET`], with faults that can be queued.
#[derive(Clone)]
pub struct FakeJustCall {
    pub url: String,
    sim: Simulator,
}

/// The simulator's controls (faults, latency, outage, received messages)
/// and records (sent SMS, request counts).
impl std::ops::Deref for FakeJustCall {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl FakeJustCall {
    pub async fn start() -> FakeJustCall {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sim = Simulator::new(vec![(Secret::new(API_KEY), Secret::new(API_SECRET))]);
        let app = sim.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeJustCall { url, sim }
    }

    pub async fn wait_for_sent(&self, n: usize) -> Vec<SentSms> {
        wait_for(&format!("{n} SMS at the fake JustCall"), Duration::from_secs(10), || {
            self.sent().len() >= n
        })
        .await;
        self.sent()
    }
}
