//! Plugin author tools behind `switchboard plugin check` and `plugin test`:
//! validating a component against our world without running it, and running
//! it once on one event with its side effects recorded instead of made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::config::{ApiDialect, Manifest, Secret, TenantConfig, WebhookAuth};
use crate::engine::capabilities::Invocation;
use crate::engine::dispatch::InvokeError;
use crate::engine::effects::{CallLog, HostCall, Recording};
use crate::engine::runtime::{LoadError, Runtime, RuntimeOptions};
use crate::engine::tenant::Tenant;

/// What Switchboard makes of one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportVerdict {
    /// Linked and usable.
    Provided,
    /// Linked, but of no use to a plugin (said why).
    Warning(String),
    /// Not provided or refused: the component will not load (said why).
    Error(String),
}

/// The result of checking a component.
#[derive(Debug)]
pub struct CheckReport {
    /// The contract version the component targets, if it follows one.
    pub contract: Option<crate::engine::contract::Contract>,
    /// File size, bytes.
    pub size: usize,
    /// Compile time, ms.
    pub compile_ms: f64,
    /// Each import and its verdict.
    pub imports: Vec<(String, ImportVerdict)>,
    /// Each export.
    pub exports: Vec<String>,
    /// Why it would be refused at load, if it would.
    pub refusal: Option<String>,
    /// The manifest's `[limits]` above a default tenant's, which would run
    /// cut to it unless the operator raises the tenant's limits.
    pub limits_clamped: Vec<String>,
}

/// How Switchboard treats an import, by interface name.
pub fn classify_import(name: &str) -> ImportVerdict {
    let interface = name.split('@').next().unwrap_or(name);
    if interface.starts_with("switchboard:plugin/") {
        return ImportVerdict::Provided;
    }
    match interface {
        i if i.starts_with("wasi:filesystem/") => {
            ImportVerdict::Warning("linked, but no directory is preopened: file access fails at run time".into())
        }
        "wasi:cli/environment" => ImportVerdict::Warning("linked, but the environment and arguments are empty".into()),
        "wasi:cli/stdin" => ImportVerdict::Warning("linked; stdin is empty".into()),
        "wasi:cli/stdout" | "wasi:cli/stderr" => ImportVerdict::Provided,
        i if i.starts_with("wasi:sockets/") => ImportVerdict::Warning(
            "linked, but every socket call is refused at run time: plugins get no network (use switchboard:plugin/http)".into(),
        ),
        i if i.starts_with("wasi:cli/") || i.starts_with("wasi:io/") || i.starts_with("wasi:clocks/") || i.starts_with("wasi:random/") => {
            ImportVerdict::Provided
        }
        // fetch(): the same allow-list, quota and journal as switchboard:plugin/http.
        "wasi:http/outgoing-handler" | "wasi:http/types" => ImportVerdict::Provided,
        i if i.starts_with("wasi:http/") => ImportVerdict::Error(
            "not provided: plugins make requests (wasi:http/outgoing-handler) but serve none (componentize-js: `-d fetch-event`)".into(),
        ),
        _ => ImportVerdict::Error("unknown interface: Switchboard does not provide it".into()),
    }
}

/// Where author tools keep compiled code between runs, so a second `plugin
/// test` of an unchanged component skips compilation: `SWITCHBOARD_CACHE`,
/// else the user's cache folder (`~/.cache/switchboard/compiled` on Linux).
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SWITCHBOARD_CACHE") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => dirs::cache_dir().map(|d| d.join("switchboard").join("compiled")),
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    // Room for one instance of a large component (componentize-py's hold
    // dozens of core instances) with the same pool shape as the server's.
    let opts = |cache_dir| RuntimeOptions {
        max_instances: 16,
        cache_dir,
        compile_limit: crate::engine::runtime::AUTHOR_COMPILE_TIME,
    };
    Runtime::new(opts(cache_dir())).or_else(|e| {
        tracing::warn!(error = %e, "compiled-code cache unavailable; compiling without it");
        Runtime::new(opts(None))
    })
}

/// Validates a component against the world without running it.
pub fn check(path: &Path) -> anyhow::Result<CheckReport> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rt = runtime()?;
    let hash = Runtime::content_hash(&bytes);
    let started = Instant::now();
    let component = rt.compile(&bytes, &hash).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let ty = component.component_type();
    let imports = ty
        .imports(rt.engine())
        .map(|(name, _)| (name.to_string(), classify_import(name)))
        .collect();
    let exports = ty.exports(rt.engine()).map(|(name, _)| name.to_string()).collect();
    // Reuses the compiled component from above.
    let (contract, mut refusal) = match rt.load(&bytes, &hash) {
        Ok(pre) => (Some(pre.contract()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    // The manifest beside the component, as the server would read it.
    let manifest_path = path.with_extension("toml");
    let mut limits_clamped = Vec::new();
    if let Ok(src) = std::fs::read_to_string(&manifest_path) {
        match Manifest::parse(&manifest_path, &src) {
            Ok(m) if !m.schedules.is_empty() && contract.is_some_and(|c| !c.has_timers()) => {
                refusal = Some(format!(
                    "{}: [[schedule]] needs a plugin built against a contract with timers",
                    manifest_path.display()
                ));
            }
            Ok(m) => limits_clamped = m.limits_clamped,
            Err(e) => refusal = refusal.or(Some(e.to_string())),
        }
    }
    Ok(CheckReport {
        contract,
        size: bytes.len(),
        compile_ms,
        imports,
        exports,
        refusal,
        limits_clamped,
    })
}

/// The event a test runs on: a timer's firing (`timer:KEY`), else a
/// webhook payload (a file, or a kind's sample) parsed as the server would.
fn test_event(input: &TestInput) -> anyhow::Result<crate::domain::Event> {
    if let Some(key) = input.event.strip_prefix("timer:") {
        let now = crate::domain::clock::ms_to_rfc3339(crate::domain::Clock::wall().now_ms());
        let firing = crate::domain::TimerFiring {
            key: key.to_string(),
            payload: input.timer_payload.clone().unwrap_or_default().into_bytes(),
            due_at: now.clone(),
            scheduled: false,
        };
        return Ok(crate::domain::Event::timer("plugin-test", firing, now));
    }
    let (payload, source) = event_payload(&input.event)?;
    let wire_error = |e: crate::intake::wire::PayloadError| anyhow::anyhow!("{source}: {e}");
    let decoded = match crate::intake::wire::decode(payload.as_bytes()).map_err(wire_error)? {
        crate::intake::wire::Body::Ping => bail!("{source}: a setup ping, not an event"),
        crate::intake::wire::Body::Payload(p) => p,
    };
    match crate::intake::wire::parse(&decoded, None).map_err(wire_error)? {
        crate::intake::wire::Parsed::Event(i) => Ok(i.event),
        crate::intake::wire::Parsed::Ignored { type_name, reason } => {
            bail!("{source}: `{type_name}` is not dispatched: {reason}")
        }
    }
}

/// What one dry run did.
#[derive(Debug)]
pub struct TestRun {
    /// The host calls, in order.
    pub calls: Vec<HostCall>,
    /// `Ok`, or the reason the invocation failed.
    pub result: Result<(), InvokeError>,
    /// Wall time, ms.
    pub elapsed_ms: f64,
    /// The plugin's KV after the run (at most [`KV_SHOWN`] entries).
    pub kv: Vec<(String, Vec<u8>)>,
    /// The timer changes a live delivery would have committed.
    pub timers: Vec<crate::storage::TimerChange>,
}

/// The most KV entries a test run shows.
pub const KV_SHOWN: u32 = 100;

/// What `plugin test` runs.
#[derive(Debug, Clone, Default)]
pub struct TestInput {
    /// The component.
    pub wasm: PathBuf,
    /// A webhook payload file (seed or v2.1 JSON), or an event kind
    /// (`received`, `sent`, …) for the built-in sample of that kind.
    pub event: String,
    /// The manifest (default: beside the `.wasm`, if there is one).
    pub manifest: Option<PathBuf>,
    /// `[config]` overrides.
    pub config: Vec<(String, String)>,
    /// KV the plugin finds when it starts.
    pub kv: Vec<(String, String)>,
    /// With `event` = `timer:KEY`: the firing timer's payload.
    pub timer_payload: Option<String>,
}

/// Reads `--kv-file`: a JSON object of string values (anything else is
/// stored as its JSON text).
pub fn read_kv_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("{}: expected a JSON object of keys and values", path.display()))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

/// The payload an `--event` names and what to call it in errors.
fn event_payload(event: &str) -> anyhow::Result<(String, String)> {
    let path = Path::new(event);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok((text, path.display().to_string()));
    }
    match crate::domain::EventKind::from_name(event) {
        Some(kind) => Ok((crate::tools::send::Sample::payload(kind), format!("the `{event}` sample"))),
        None => bail!(
            "reading {event}: no such file, and not an event kind ({})",
            crate::domain::EventKind::ALL.map(|k| k.as_str()).join(", ")
        ),
    }
}

/// Runs a plugin once on one event, with its manifest, `config` overrides
/// and pre-filled KV, its side effects checked as live and recorded instead
/// of made.
pub async fn test_run(input: &TestInput) -> anyhow::Result<TestRun> {
    let (wasm, manifest, config) = (input.wasm.as_path(), input.manifest.as_deref(), &input.config);
    let mut event = test_event(input)?;
    event.tenant = "plugin-test".into();
    event.event_id = uuid::Uuid::now_v7().to_string();

    let manifest_path: Option<PathBuf> = manifest
        .map(Path::to_path_buf)
        .or_else(|| Some(wasm.with_extension("toml")).filter(|p| p.is_file()));
    let mut manifest = match &manifest_path {
        Some(p) => Manifest::parse(p, &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => Manifest::default(),
    };
    for (k, v) in config {
        manifest.config.insert(k.clone(), v.clone());
    }
    for cut in &manifest.limits_clamped {
        tracing::warn!("manifest limit above a default tenant's: {cut}");
    }

    let rt = runtime()?;
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let crate::engine::runtime::Prepared { pre, ticker } = rt
        .load_with_stack(&bytes, &Runtime::content_hash(&bytes), manifest.limits.wasm_stack_bytes)
        .map_err(|e: LoadError| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let name = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let hash = Runtime::content_hash(&bytes);
    let plugin = crate::engine::plugins::LoadedPlugin {
        name: name.clone(),
        version: crate::engine::plugins::version_id(&hash, None),
        hash,
        manifest: Arc::new(manifest),
        pre,
        ticker,
        manifest_src: None,
        loaded_at: chrono::Utc::now(),
    };

    let scratch = std::env::temp_dir().join(format!("switchboard-plugin-test-{}", uuid::Uuid::now_v7()));
    let db = crate::storage::Db::open(&scratch, Default::default())?;
    let tenant = TenantConfig {
        id: "plugin-test".into(),
        // A timer's firing names no line: the samples' line is the tenant's.
        numbers: vec![match event.justcall_number.as_str() {
            "" => crate::tools::send::SAMPLE_LINE.to_string(),
            n => n.to_string(),
        }],
        default_country: None,
        verify_events: false,
        kv_total: Default::default(),
        max_concurrent: None,
        weight: 1,
        webhook_auth: WebhookAuth::None,
        webhook_secret: None,
        justcall_api: ApiDialect::Seed,
        justcall_base_url: reqwest::Url::parse("http://127.0.0.1:9/").expect("static URL"),
        justcall_api_key: Secret::new("unused"),
        justcall_api_secret: Secret::new("unused"),
        limits: Default::default(),
        justcall_rate_per_minute: u32::MAX,
    };
    for (key, value) in &input.kv {
        db.kv_put(&tenant.id, &name, key, Some(value.clone().into_bytes())).await?;
    }
    let log = CallLog::default();
    // Shown after the run, never stored.
    let timers = crate::engine::timer_stage::TimerStage::new(crate::domain::Clock::wall());
    let inv = Invocation {
        timers: timers.clone(),
        trace: Default::default(),
        kv: Default::default(),
        secrets: Default::default(),
        tenant: Arc::new(Tenant {
            justcall: crate::engine::justcall::JustCallClient::new(&tenant, reqwest::Client::new()),
            config: tenant,
        }),
        plugin: Arc::from(name.as_str()),
        manifest: plugin.manifest.clone(),
        db: db.clone(),
        event_id: Arc::from(event.event_id.as_str()),
        effects: std::sync::Arc::new(Recording::new(log.clone(), plugin.manifest.allowed_hosts.clone())),
    };
    let started = Instant::now();
    let result = crate::engine::dispatch::invoke(&plugin, inv, &event, None).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let kv = db.kv_entries("plugin-test", &name, "", None, KV_SHOWN).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(TestRun {
        calls: log.calls(),
        timers: if result.is_ok() { timers.take() } else { Vec::new() },
        result,
        elapsed_ms,
        kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_classified() {
        assert_eq!(classify_import("switchboard:plugin/sms@0.1.0"), ImportVerdict::Provided);
        assert_eq!(classify_import("wasi:io/streams@0.2.6"), ImportVerdict::Provided);
        assert!(matches!(
            classify_import("wasi:filesystem/preopens@0.2.6"),
            ImportVerdict::Warning(_)
        ));
        assert!(matches!(classify_import("wasi:sockets/tcp@0.2.6"), ImportVerdict::Warning(_)));
        assert_eq!(classify_import("wasi:cli/stderr@0.2.6"), ImportVerdict::Provided);
        assert_eq!(classify_import("wasi:http/outgoing-handler@0.2.6"), ImportVerdict::Provided);
        assert!(matches!(
            classify_import("wasi:http/incoming-handler@0.2.6"),
            ImportVerdict::Error(_)
        ));
        assert!(matches!(classify_import("acme:evil/thing"), ImportVerdict::Error(_)));
    }
}
