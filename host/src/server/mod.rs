//! Wiring and serving: builds the runtime, database, registry and dispatcher
//! from a [`Config`], exposes the routes in [`app`], and runs until shutdown
//! behind the connection limits of [`listener`], over HTTPS if configured
//! ([`tls`]), with operational notices sent to the operator by [`operator`].

mod listener;
mod operator;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminListen, Config};
use crate::engine::dispatch::{DispatchCtx, Dispatcher, Job};
use crate::engine::justcall::JustCallClient;
use crate::engine::lanes::LongLane;
use crate::engine::plugins::Registry;
use crate::engine::runtime::{Runtime, RuntimeOptions};
use crate::engine::state::{AppState, Guards};
use crate::engine::tenant::Tenant;
use crate::engine::verify::Verifier;
use crate::intake::webhook::{self, MAX_BODY_BYTES};
use crate::storage::Db;

/// The public listener's routes: webhooks and `/healthz` (and `/admin` when
/// `admin_listen = "public"`).
pub fn app(state: AppState) -> Router {
    let public = Router::new()
        .route("/webhooks/{tenant}", post(webhook::receive))
        .route("/healthz", get(healthz));
    let public = match state.config.admin_listen {
        AdminListen::Public => public
            .nest("/admin", crate::admin::router())
            .nest("/console", crate::console::router()),
        AdminListen::Separate(_) => public,
    };
    public.layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(state)
}

/// The admin listener's routes: `/admin`, `/console`, `/metrics` and `/healthz`.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::admin::metrics))
        .nest("/admin", crate::admin::router())
        .nest("/console", crate::console::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The sockets Switchboard serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Webhooks (and `/healthz`).
    pub public: TcpListener,
    /// The admin API, unless it is served on the public listener.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the config's `listen` and `admin_listen`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let public = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding listen = {}", config.listen))?;
        let admin = Self::bind_admin(config.admin_listen).await?;
        Ok(Listeners { public, admin })
    }

    /// Binds `admin_listen`: a socket of its own, or none when the admin API
    /// shares the public listener.
    pub async fn bind_admin(admin_listen: AdminListen) -> anyhow::Result<Option<TcpListener>> {
        match admin_listen {
            AdminListen::Public => Ok(None),
            AdminListen::Separate(addr) => Ok(Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin_listen = {addr}"))?,
            )),
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let plugins: usize = state.tenants.keys().map(|t| state.registry.plugins(t).len()).sum();
    Json(json!({
        "status": "ok",
        "tenants": state.tenants.len(),
        "plugins": plugins,
        "compile": state.registry.runtime().stats(),
        "long_runs": state.dispatcher.lane_stats(),
    }))
}

/// Runs Switchboard on `listeners` until `shutdown` resolves, then stops
/// accepting, lets running deliveries finish, and returns.
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    run_with_routes(config, listeners, Router::new(), || {}, shutdown).await
}

/// Tells the database, at start and then every minute, which plugins each
/// tenant has deployed, so the KV of a plugin that is gone is deleted after
/// the grace period (`kv_grace_days`).
fn track_deployed(registry: Arc<Registry>, db: Db, tenants: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            for tenant in &tenants {
                let deployed = registry.plugins(tenant).iter().map(|p| p.name.clone()).collect();
                if let Err(e) = db.kv_track_deployed(tenant, deployed).await {
                    tracing::warn!(%tenant, error = %e, "cannot record deployed plugins for KV cleanup");
                }
            }
        }
    })
}

/// The dispatcher's budget from the config: the instance pool, the wasm
/// memory budget, and each tenant's share.
fn budget(config: &Config) -> crate::engine::scheduler::Budget {
    use crate::engine::scheduler::{Budget, Share};
    let max_running = config.max_concurrent_invocations.max(1) as usize;
    let default_share = Share {
        max_concurrent: (max_running / 4).max(1),
        weight: 1,
    };
    Budget {
        max_running,
        memory_bytes: (config.max_wasm_memory_mb as usize).saturating_mul(1 << 20),
        default_share,
        shares: config
            .tenants
            .values()
            .map(|t| {
                let share = Share {
                    max_concurrent: t.max_concurrent.map_or(default_share.max_concurrent, |n| n as usize),
                    weight: t.weight,
                };
                (t.id.clone(), share)
            })
            .collect(),
    }
}

/// [`run`], also serving `extra_routes` on the public listener beside
/// Switchboard's own (how `dev` mounts its JustCall simulator without the
/// server knowing of it).
pub async fn run_with_routes(
    config: Config,
    listeners: Listeners,
    extra_routes: Router,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // A certificate that does not load stops the start, naming the file.
    let tls = config.tls.clone().map(tls::acceptor).transpose()?;
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        // Shadow runs have instance slots of their own, so one never takes a
        // slot the dispatcher counted on.
        max_instances: config.max_concurrent_invocations + crate::engine::shadow::RUNNING as u32,
        cache_dir: Some(config.cache_dir.clone().unwrap_or_else(|| config.data_dir.join("cache"))),
        compile_limit: config.compile_limit.unwrap_or(crate::engine::runtime::MAX_COMPILE_TIME),
    })?);
    let db = Db::open(&config.data_dir, config.delivery.clone())
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    // Secrets open before any plugin loads: a version may require some.
    let vault = Arc::new(
        crate::engine::secrets::Vault::open(db.clone(), config.secrets.clone())
            .await
            .context("opening plugin secrets")?,
    );
    // Operational notices go to the operator's webhook, when there is one.
    let notices = match &config.operator_webhook {
        Some(hook) => {
            let (notices, rx) = crate::engine::notify::Notices::channel();
            tokio::spawn(operator::send_notices(hook.clone(), rx));
            notices
        }
        None => Default::default(),
    };
    let registry = Arc::new(
        Registry::new(runtime, config.tenants.values().map(|t| (t.id.clone(), t.limits)).collect())
            .with_memory_budget((config.max_wasm_memory_mb as usize).saturating_mul(1 << 20))
            .with_notices(notices.clone())
            .with_history(db.clone())
            .with_vault(vault.clone()),
    );
    let (plugins_dir, tenant_ids) = (config.plugins_dir.clone(), config.tenants.clone());
    let loader = registry.clone();
    let rejected = tokio::task::spawn_blocking(move || loader.load_all(&plugins_dir, &tenant_ids)).await?;
    if rejected > 0 {
        tracing::warn!(count = rejected, "some plugins were rejected; see the errors above");
    }
    let _watcher = crate::engine::watch::start(
        registry.clone(),
        config.plugins_dir.clone(),
        config.tenants.keys().cloned().collect(),
    );
    let kv_sweeper = track_deployed(registry.clone(), db.clone(), config.tenants.keys().cloned().collect());

    let justcall_http = reqwest::Client::builder().build().context("building the JustCall HTTP client")?;
    let plugin_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(crate::engine::egress::PublicOnlyResolver))
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .context("building the plugin HTTP client")?;
    let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics_max_label_sets).with_db_commits(db.commit_seconds()));
    let tenants: HashMap<String, Arc<Tenant>> = config
        .tenants
        .values()
        .map(|t| {
            let rt = Tenant {
                config: t.clone(),
                justcall: JustCallClient::new(t, justcall_http.clone()).with_metrics(metrics.clone(), &t.id),
            };
            (t.id.clone(), Arc::new(rt))
        })
        .collect();
    let tenants = Arc::new(tenants);

    let tail = Arc::new(crate::engine::tail::Tail::default());
    // Versions on trial before the restart are on trial again.
    let trials = Arc::new(crate::engine::trials::Trials::persisted(db.clone()));
    trials.resume(&registry, &config.plugins_dir).await;
    let wake = crate::engine::timer_stage::Wake::default();
    let (dispatcher, dispatch_handle) = Dispatcher::start(
        DispatchCtx {
            registry: registry.clone(),
            tenants: tenants.clone(),
            db: db.clone(),
            http: plugin_http,
            lane: Arc::new(
                LongLane::start(
                    tokio::runtime::Handle::current(),
                    config.long_run_cpu_percent,
                    crate::engine::runtime::EPOCH_TICK,
                )
                .context("starting the long-run lane")?,
            ),
            paused: Arc::default(),
            metrics: metrics.clone(),
            tail: tail.clone(),
            notices: notices.clone(),
            trials: trials.clone(),
            shadows: Arc::default(),
            vault: vault.clone(),
            clock: config.clock,
            wake: wake.clone(),
        },
        budget(&config),
        db.paused_plugins().await.context("reading paused plugins")?,
    );
    // Resume whatever was accepted but not finished before the last stop;
    // scheduled retries keep their due times.
    let pending = db.pending_deliveries().await.context("reading pending deliveries")?;
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "resuming pending deliveries");
    }
    for p in pending {
        let job = Job {
            delivery_id: p.id,
            plugin: p.plugin,
            event: Arc::new(p.event),
            parent: Default::default(),
        };
        dispatcher.submit_at(job, p.due_ms);
    }

    // Timers and schedules fire from here on (late ones at once).
    let timekeeper = crate::engine::timekeeper::Timekeeper {
        db: db.clone(),
        registry: registry.clone(),
        tenants: config.tenants.keys().cloned().collect(),
        dispatcher: dispatcher.clone(),
        clock: config.clock,
        wake,
        metrics: metrics.clone(),
    }
    .start();

    // Events accepted but not yet verified with JustCall resume checking.
    let verifier = Verifier::new(
        db.clone(),
        dispatcher.clone(),
        tenants.clone(),
        config.delivery.retry_delays.clone(),
    );
    let unverified = db.pending_verifications().await.context("reading pending verifications")?;
    if !unverified.is_empty() {
        tracing::info!(count = unverified.len(), "resuming event verifications");
    }
    for (event, attempts) in unverified {
        verifier.submit(Arc::new(event), attempts);
    }

    let state = AppState {
        config: config.clone(),
        db,
        registry,
        dispatcher,
        verifier,
        tenants,
        guards: Arc::new(Guards::new(config.front_door.max_inflight_body_bytes)),
        metrics,
        trials,
        vault,
        tail: tail.clone(),
    };
    let router = app(state.clone()).merge(extra_routes);
    let admin_router = admin_app(state.clone());
    let addr = listeners.public.local_addr()?;
    let admin_addr = listeners.admin.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(%addr, admin = ?admin_addr, tenants = config.tenants.len(), dev = config.dev, "switchboard listening");
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
        // Tail streams end too, so their connections can drain.
        tail.close();
    });
    // Plugins are loaded and deliveries resumed: from here on, connections
    // are answered.
    on_ready();
    let public = listener::serve(listeners.public, router, config.front_door, tls, stop.clone().cancelled_owned());
    let admin = async {
        if let Some(l) = listeners.admin {
            listener::serve(l, admin_router, config.front_door, None, stop.clone().cancelled_owned()).await;
        }
    };
    tokio::join!(public, admin);
    tracing::info!("no longer accepting webhooks; finishing running deliveries");
    kv_sweeper.abort();
    timekeeper.abort();
    dispatch_handle.drain().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
