//! `switchboard dev`, the embedded default: a `demo` tenant, the example
//! plugins built from source and deployed to it, and the JustCall simulator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{ApiDialect, Config, Secret, TenantConfig, WebhookAuth};
use crate::tools::guest_build::{BuiltPlugin, GuestWorkspace};

/// The demo tenant's id.
pub const DEMO_TENANT: &str = "demo";
/// What signs operator notices in dev mode.
pub const DEV_OPERATOR_SECRET: &str = "dev-operator-notices";

/// The admin API's bearer token in dev mode.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin";
/// How long after `sms.sent` the simulator reports an SMS delivered.
pub const STATUS_DELAY: Duration = Duration::from_secs(1);
/// The demo tenant's JustCall number.
pub const DEMO_NUMBER: &str = "+15125550100";

/// The dev-mode config for a server reachable at `origin` (`http://host:port`).
pub fn dev_config(listen: SocketAddr, origin: &str, data_dir: &Path) -> anyhow::Result<Config> {
    let demo = TenantConfig {
        id: DEMO_TENANT.to_string(),
        numbers: vec![DEMO_NUMBER.to_string()],
        // The demo line is a US number; so are the demo's contacts.
        default_country: Some(crate::domain::Country::US),
        verify_events: false,
        kv_total: Default::default(),
        max_concurrent: None,
        weight: 1,
        webhook_auth: WebhookAuth::None,
        webhook_secret: None,
        justcall_api: ApiDialect::Seed,
        justcall_base_url: reqwest::Url::parse(&format!("{origin}/justcall"))?,
        justcall_api_key: Secret::new("demo-key"),
        justcall_api_secret: Secret::new("demo-secret"),
        limits: Default::default(),
        justcall_rate_per_minute: crate::config::JustCallPlan::Business.per_minute(),
    };
    Ok(Config {
        listen,
        data_dir: data_dir.to_path_buf(),
        // Shared with `plugin test`, so a fresh data dir compiles nothing
        // that was compiled before.
        cache_dir: crate::tools::author::cache_dir(),
        // Compiles share the machine with the author's builds.
        compile_limit: Some(crate::engine::runtime::AUTHOR_COMPILE_TIME),
        plugins_dir: data_dir.join("plugins.d"),
        public_url: origin.to_string(),
        tenants: BTreeMap::from([(DEMO_TENANT.to_string(), demo)]),
        dev: true,
        clock: Default::default(),
        signature_tolerance: Duration::from_secs(300),
        max_concurrent_invocations: 64,
        metrics_max_label_sets: 1000,
        otlp_endpoint: None,
        // Notices (a plugin paused, a version rejected) land in the dev sink.
        operator_webhook: Some(crate::config::OperatorWebhook {
            url: format!("{origin}/dev/sink/operator"),
            secret: Secret::new(DEV_OPERATOR_SECRET),
        }),
        max_wasm_memory_mb: crate::config::default_wasm_memory_mb(),
        long_run_cpu_percent: crate::config::DEFAULT_LONG_RUN_CPU_PERCENT,
        admin_token: Some(Secret::new(DEV_ADMIN_TOKEN)),
        admin_listen: crate::config::AdminListen::default_for(listen),
        delivery: Default::default(),
        front_door: Default::default(),
        tls: None,
        secrets: crate::config::SecretsKeys {
            current: Some(dev_secrets_key(data_dir)?),
            previous: Vec::new(),
        },
    })
}

/// `dev`'s secrets key: made at first start and kept in the data dir
/// (`secrets.key`, readable by its owner only), so secrets set in one dev
/// session open in the next.
fn dev_secrets_key(data_dir: &Path) -> anyhow::Result<crate::config::SecretsKey> {
    use anyhow::Context as _;
    let path = data_dir.join("secrets.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return crate::config::SecretsKey::parse(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let key = crate::config::SecretsKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options.open(&path).with_context(|| format!("creating {}", path.display()))?,
        key.to_hex().as_bytes(),
    )?;
    Ok(key)
}

/// Deploys a built plugin into a tenant folder as `<name>.wasm` + `<name>.toml`.
/// The manifest is the package's `plugin.toml` with its `[dev]` table applied:
/// `dev.config` values are merged into `[config]`, `{origin}` in any
/// `[config]` value becomes the dev server's origin, and `origin` is added to
/// `allowed_hosts`, so every plugin can talk to the dev services.
pub fn deploy_for_dev(plugin: &BuiltPlugin, tenant_dir: &Path, origin: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(tenant_dir)?;
    let mut manifest: toml::Table = match &plugin.manifest {
        Some(p) => toml::from_str(&std::fs::read_to_string(p)?).with_context(|| format!("parsing {}", p.display()))?,
        None => toml::Table::new(),
    };
    let dev = manifest.remove("dev");
    let config = manifest.entry("config").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(config) = config {
        if let Some(toml::Value::Table(extra)) = dev.as_ref().and_then(|d| d.get("config")) {
            config.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (_, v) in config.iter_mut() {
            if let toml::Value::String(s) = v {
                *s = s.replace("{origin}", origin);
            }
        }
    }
    let hosts = manifest.entry("allowed_hosts").or_insert_with(|| toml::Value::Array(Vec::new()));
    if let toml::Value::Array(hosts) = hosts {
        hosts.push(toml::Value::String(origin.to_string()));
    }
    manifest.remove("build");
    let wasm = tenant_dir.join(format!("{}.wasm", plugin.name));
    // Write then rename, so a reader never sees a half-written file.
    let tmp = tenant_dir.join(format!(".{}.wasm.tmp", plugin.name));
    std::fs::copy(&plugin.wasm, &tmp).with_context(|| format!("copying {}", plugin.wasm.display()))?;
    std::fs::write(tenant_dir.join(format!("{}.toml", plugin.name)), toml::to_string_pretty(&manifest)?)?;
    std::fs::rename(&tmp, &wasm)?;
    Ok(wasm)
}

/// Examples are the plugins outside `fixtures/`, unless their manifest says
/// `[dev] deploy = false`.
fn is_example(p: &BuiltPlugin) -> bool {
    let opted_out = p
        .manifest
        .as_ref()
        .and_then(|m| std::fs::read_to_string(m).ok())
        .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        .and_then(|doc| doc.get("dev")?.get("deploy")?.as_bool())
        == Some(false);
    !opted_out && !p.source_dir.components().any(|c| c.as_os_str() == "fixtures")
}

fn deploy_examples(built: &[BuiltPlugin], tenant_dir: &Path, origin: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for p in built.iter().filter(|p| is_example(p)) {
        deploy_for_dev(p, tenant_dir, origin)?;
        names.push(p.name.clone());
    }
    Ok(names)
}

/// Like `spin watch`: rebuilds the guest workspace when a source file changes
/// and redeploys the examples, which the plugin-folder watcher then hot-reloads.
fn watch_sources(ws: GuestWorkspace, tenant_dir: PathBuf, origin: String) -> Option<impl Drop> {
    use notify::{EventKind, RecursiveMode};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let target = ws.target_dir.clone();
    let handler = move |result: notify_debouncer_full::DebounceEventResult| {
        let Ok(events) = result else { return };
        let relevant = events.iter().any(|e| {
            matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_))
                && e.paths.iter().any(|p| {
                    !p.starts_with(&target)
                        && !p.components().any(|c| c.as_os_str() == "target")
                        && !p.components().any(|c| c.as_os_str() == "node_modules" || c.as_os_str() == ".venv")
                        && p.extension()
                            .is_some_and(|x| matches!(x.to_str(), Some("rs" | "toml" | "wit" | "js" | "py" | "c" | "h")))
                })
        });
        if relevant {
            let _ = tx.send(());
        }
    };
    let mut debouncer = match notify_debouncer_full::new_debouncer(Duration::from_millis(500), None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch plugin sources; edits need a restart");
            return None;
        }
    };
    for dir in [ws.root.clone(), ws.root.join("../wit"), ws.root.join("../plugin-sdk")] {
        if let Err(e) = debouncer.watch(&dir, RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch plugin sources");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            tracing::info!("plugin sources changed; rebuilding");
            let build_ws = ws.clone();
            match tokio::task::spawn_blocking(move || build_ws.build_lenient(false)).await {
                Ok(Ok((built, failed))) => {
                    for (name, e) in &failed {
                        tracing::error!("rebuilding {name} failed; its previous version keeps serving:\n{e:#}");
                    }
                    match deploy_examples(&built, &tenant_dir, &origin) {
                        Ok(names) => tracing::info!(plugins = %names.join(", "), "rebuilt and redeployed; hot reload picks them up"),
                        Err(e) => tracing::error!(error = %e, "cannot redeploy the rebuilt plugins"),
                    }
                }
                Ok(Err(e)) => tracing::error!("rebuild failed; the previous versions keep serving:\n{e:#}"),
                Err(e) => tracing::error!(error = %e, "rebuild panicked"),
            }
        }
    });
    Some(debouncer)
}

/// Builds an author's plugin folder (`dev --plugin DIR`) and deploys it to
/// the demo tenant; returns its name.
fn build_and_deploy(dir: &Path, ws: &GuestWorkspace, tenant_dir: &Path, origin: &str) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let wasm = crate::tools::guest_build::build_one(dir, Some(ws), true)?;
    let name = wasm
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .context("a built plugin has a file name")?;
    let built = BuiltPlugin {
        name: name.clone(),
        source_dir: dir.to_path_buf(),
        wasm,
        manifest: Some(dir.join("plugin.toml")),
        build_command: None,
        requires: Vec::new(),
    };
    deploy_for_dev(&built, tenant_dir, origin)?;
    tracing::info!(plugin = %name, ms = started.elapsed().as_millis() as u64, "built and deployed");
    Ok(name)
}

/// Like `spin watch`, for the author's own plugin folders: each saved change
/// rebuilds that plugin and redeploys it, which hot reload picks up. A
/// failed build is shown and the previous version keeps serving.
fn watch_author_plugins(dirs: Vec<PathBuf>, ws: GuestWorkspace, tenant_dir: PathBuf, origin: String) -> Option<impl Drop> {
    use notify::{EventKind, RecursiveMode};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let roots = dirs.clone();
    let handler = move |result: notify_debouncer_full::DebounceEventResult| {
        let Ok(events) = result else { return };
        for e in events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)))
        {
            for p in &e.paths {
                let generated = p
                    .components()
                    .any(|c| matches!(c.as_os_str().to_str(), Some("target" | "node_modules" | ".venv" | "__pycache__")));
                if let Some(root) = roots.iter().find(|r| p.starts_with(r)).filter(|_| !generated) {
                    let _ = tx.send(root.clone());
                }
            }
        }
    };
    let mut debouncer = match notify_debouncer_full::new_debouncer(Duration::from_millis(300), None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch your plugin folders; edits need a restart");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch your plugin folder");
        }
    }
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut changed = vec![first];
            while let Ok(more) = rx.try_recv() {
                if !changed.contains(&more) {
                    changed.push(more);
                }
            }
            for dir in changed {
                let (ws, tenant_dir, origin) = (ws.clone(), tenant_dir.clone(), origin.clone());
                let shown = dir.display().to_string();
                match tokio::task::spawn_blocking(move || build_and_deploy(&dir, &ws, &tenant_dir, &origin)).await {
                    Ok(Ok(name)) => println!("{} {name} rebuilt; reloading", chrono::Local::now().format("%H:%M:%S")),
                    Ok(Err(e)) => println!(
                        "{} {shown}: build failed; the previous version keeps serving:\n{e:#}",
                        chrono::Local::now().format("%H:%M:%S")
                    ),
                    Err(e) => tracing::error!(error = %e, "rebuild panicked"),
                }
            }
        }
    });
    Some(debouncer)
}

/// Builds the example plugins (and the author's, `plugins`), deploys them
/// to the demo tenant, prints how to try it, and serves until SIGINT/SIGTERM.
pub async fn run(
    listen: SocketAddr,
    data_dir: PathBuf,
    status_webhooks: bool,
    plugins: Vec<PathBuf>,
    clock: crate::domain::Clock,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let origin = format!("http://{addr}");
    let ws = GuestWorkspace::from_source_checkout()
        .context("dev mode builds the example plugins from this checkout's plugins/ folder, which is missing")?;
    tracing::info!("building the example plugins (first run takes a minute)");
    let build_ws = ws.clone();
    let (built, failed) = tokio::task::spawn_blocking(move || build_ws.build_lenient(false)).await??;
    for (name, e) in &failed {
        tracing::warn!("example plugin {name} was not built and is not deployed (see the README's prerequisites): {e:#}");
    }
    let mut config = dev_config(addr, &origin, &data_dir)?;
    config.clock = clock;
    if clock.scale() != 1.0 {
        tracing::info!(scale = clock.scale(), "timers run {}x faster than real time", clock.scale());
    }
    let admin_listener = crate::server::Listeners::bind_admin(config.admin_listen).await?;
    let admin = match &admin_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => addr.to_string(),
    };
    let tenant_dir = config.plugins_dir.join(DEMO_TENANT);
    let mut names = deploy_examples(&built, &tenant_dir, &origin)?;
    let mut authored = Vec::new();
    for dir in &plugins {
        let dir = dir.canonicalize().with_context(|| format!("--plugin {}", dir.display()))?;
        let (ws, tenant_dir, origin, shown) = (ws.clone(), tenant_dir.clone(), origin.clone(), dir.display().to_string());
        let build = tokio::task::spawn_blocking(move || build_and_deploy(&dir, &ws, &tenant_dir, &origin).map(|n| (n, dir)));
        let (name, dir) = build.await?.with_context(|| format!("building your plugin {shown}"))?;
        crate::tools::author_log::watch(&name);
        names.retain(|n| *n != name);
        names.push(name);
        authored.push(dir);
    }
    let _source_watch = watch_sources(ws.clone(), tenant_dir.clone(), origin.clone());
    let _author_watch = (!authored.is_empty()).then(|| watch_author_plugins(authored, ws, tenant_dir.clone(), origin.clone()));
    let banner = format!(
        "\nSwitchboard dev is listening on {origin}\n\
         tenant `{DEMO_TENANT}` (number {DEMO_NUMBER}, no webhook auth) runs: {}\n\
         JustCall simulator: {origin}/justcall   dev sink (CRM, booking): {origin}/dev/sink/NAME\n\
         operator notices (plugin paused, version rejected): GET {origin}/dev/sink/operator\n\
         admin API: http://{admin}/admin (token `{DEV_ADMIN_TOKEN}`; `switchboard admin --token {DEV_ADMIN_TOKEN} plugins {DEMO_TENANT}`)\n\
         console: http://{admin}/console (sign in with `{DEV_ADMIN_TOKEN}`)\n\n\
         Try it:\n  curl -s -X POST {origin}/webhooks/{DEMO_TENANT} -H 'content-type: application/json' \\\n    \
         -d '{{\"event\":\"sms.received\",\"timestamp\":\"2026-03-12T14:30:00Z\",\"data\":{{\"message_id\":\"msg_1\",\"direction\":\"inbound\",\"from\":\"+15125551234\",\"to\":\"{DEMO_NUMBER}\",\"body\":\"CONFIRM\",\"media_urls\":[],\"justcall_number\":\"{DEMO_NUMBER}\",\"contact_name\":\"Sarah Chen\",\"agent_id\":null}}}}'\n  \
         curl -s -H 'Authorization: Bearer demo-key:demo-secret' {origin}/justcall/api/v2/texts/list\n",
        names.join(", ")
    );
    let mut sim = crate::tools::simulator::Simulator::new(
        config
            .tenants
            .values()
            .map(|t| (t.justcall_api_key.clone(), t.justcall_api_secret.clone()))
            .collect(),
    );
    if status_webhooks {
        sim = sim.with_status_reports(crate::tools::send::StatusReports {
            url: origin.clone(),
            public_url: config.public_url.clone(),
            tenants: config
                .tenants
                .values()
                .map(|t| crate::tools::send::ReportTo {
                    tenant: t.id.clone(),
                    numbers: t.numbers.clone(),
                    sign: None,
                })
                .collect(),
            delivered_after: STATUS_DELAY,
        });
    }
    let routes = axum::Router::new().nest("/justcall", sim.router()).nest("/dev", sim.sink_router());
    let listeners = crate::server::Listeners {
        public: listener,
        admin: admin_listener,
    };
    // The banner appears once the port answers, not while plugins compile.
    let ready = move || {
        tracing::info!(ms = started.elapsed().as_millis() as u64, "dev ready");
        println!("{banner}");
    };
    crate::server::run_with_routes(config, listeners, routes, ready, crate::server::shutdown_signal()).await
}
