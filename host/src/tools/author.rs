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
}

/// How Switchboard treats an import, by interface name.
pub fn classify_import(name: &str) -> ImportVerdict {
    let interface = name.split('@').next().unwrap_or(name);
    if interface.starts_with("switchboard:plugin/") {
        return ImportVerdict::Provided;
    }
    if crate::engine::runtime::REFUSED_IMPORTS.iter().any(|p| name.starts_with(p)) {
        return ImportVerdict::Error("refused: plugins get no sockets; use switchboard:plugin/http".into());
    }
    match interface {
        i if i.starts_with("wasi:filesystem/") => {
            ImportVerdict::Warning("linked, but no directory is preopened: file access fails at run time".into())
        }
        "wasi:cli/environment" => ImportVerdict::Warning("linked, but the environment and arguments are empty".into()),
        "wasi:cli/stdin" => ImportVerdict::Warning("linked; stdin is empty".into()),
        "wasi:cli/stdout" | "wasi:cli/stderr" => ImportVerdict::Warning("linked; output is discarded (use switchboard:plugin/log)".into()),
        i if i.starts_with("wasi:cli/") || i.starts_with("wasi:io/") || i.starts_with("wasi:clocks/") || i.starts_with("wasi:random/") => {
            ImportVerdict::Provided
        }
        i if i.starts_with("wasi:http/") => ImportVerdict::Error(
            "not provided: use switchboard:plugin/http (componentize-js: `-d http fetch-event`; componentize-py: `--stub-wasi`)".into(),
        ),
        _ => ImportVerdict::Error("unknown interface: Switchboard does not provide it".into()),
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeOptions {
        max_instances: 4,
        cache_dir: None,
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
    let refusal = match rt.load(&bytes, &hash) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    Ok(CheckReport {
        size: bytes.len(),
        compile_ms,
        imports,
        exports,
        refusal,
    })
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
}

/// Runs a plugin once on one webhook payload (seed or v2.1 JSON), with the
/// manifest beside it (or `manifest`), `config` overrides, and its side
/// effects recorded instead of made.
pub async fn test_run(wasm: &Path, event_file: &Path, manifest: Option<&Path>, config: &[(String, String)]) -> anyhow::Result<TestRun> {
    let payload = std::fs::read_to_string(event_file).with_context(|| format!("reading {}", event_file.display()))?;
    let wire_error = |e: crate::intake::wire::PayloadError| anyhow::anyhow!("{}: {e}", event_file.display());
    let decoded = match crate::intake::wire::decode(payload.as_bytes()).map_err(wire_error)? {
        crate::intake::wire::Body::Ping => bail!("{}: a setup ping, not an event", event_file.display()),
        crate::intake::wire::Body::Payload(p) => p,
    };
    let mut event = match crate::intake::wire::parse(&decoded, None).map_err(wire_error)? {
        crate::intake::wire::Parsed::Event(i) => i.event,
        crate::intake::wire::Parsed::Ignored { type_name, reason } => {
            bail!("{}: `{type_name}` is not dispatched: {reason}", event_file.display())
        }
    };
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

    let rt = runtime()?;
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let crate::engine::runtime::Prepared { pre, ticker } = rt
        .load_with_stack(&bytes, &Runtime::content_hash(&bytes), manifest.limits.wasm_stack_bytes)
        .map_err(|e: LoadError| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let name = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let plugin = crate::engine::plugins::LoadedPlugin {
        name: name.clone(),
        hash: Runtime::content_hash(&bytes),
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
        numbers: vec![event.justcall_number.clone()],
        default_country: None,
        verify_events: false,
        webhook_auth: WebhookAuth::None,
        webhook_secret: None,
        justcall_api: ApiDialect::Seed,
        justcall_base_url: reqwest::Url::parse("http://127.0.0.1:9/").expect("static URL"),
        justcall_api_key: Secret::new("unused"),
        justcall_api_secret: Secret::new("unused"),
        limits: Default::default(),
        justcall_rate_per_minute: u32::MAX,
    };
    let log = CallLog::default();
    let inv = Invocation {
        tenant: Arc::new(Tenant {
            justcall: crate::engine::justcall::JustCallClient::new(&tenant, reqwest::Client::new()),
            config: tenant,
        }),
        plugin: Arc::from(name.as_str()),
        manifest: plugin.manifest.clone(),
        db,
        event_id: Arc::from(event.event_id.as_str()),
        effects: Box::new(Recording::new(log.clone())),
    };
    let started = Instant::now();
    let result = crate::engine::dispatch::invoke(&plugin, inv, &event, None).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(TestRun {
        calls: log.calls(),
        result,
        elapsed_ms,
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
        assert!(matches!(classify_import("wasi:sockets/tcp@0.2.6"), ImportVerdict::Error(_)));
        assert!(matches!(
            classify_import("wasi:http/outgoing-handler@0.2.6"),
            ImportVerdict::Error(_)
        ));
        assert!(matches!(classify_import("acme:evil/thing"), ImportVerdict::Error(_)));
    }
}
