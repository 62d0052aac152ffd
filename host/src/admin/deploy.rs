//! Plugin versions over the API (`deploy` scope to change, `read` to list):
//! uploading a version (`.wasm` + manifest, validated exactly as the plugin
//! folder's files are) to serve at once or on trial (canary, shadow), the
//! trial's report, promoting or stopping it, the kept versions of a plugin,
//! and rolling back to one of them. Every change is audited; the answer says
//! what changed from the version it replaced.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::auth::Scope;
use super::{AdminError, Caller, allowed, audited};
use crate::config::LIMITS;
use crate::engine::plugins::{Installed, LoadedPlugin, PluginLoadError, Registry, Upload, plugin_name};
use crate::engine::state::AppState;
use crate::engine::trials::{CanaryPolicy, Trial, TrialKind};

/// The largest upload: a componentized Python plugin is ~40 MB.
pub const MAX_UPLOAD: usize = 128 << 20;

/// How an upload is to serve: at once (the default), as a canary, or as a
/// shadow.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadMode {
    /// Serve this share of contacts (1–99 %), compared with the serving version.
    canary: Option<u8>,
    /// Roll the canary back when its failure rate is this many points above
    /// the serving version's (default 5).
    failure_margin: Option<f64>,
    /// … or its p99 this much (%) above (default 50).
    latency_margin: Option<f64>,
    /// Judge the canary after this many of its runs in the window (default 20).
    min_runs: Option<usize>,
    /// The window both are compared over (`10m`, `1h`; default 10 minutes).
    window: Option<String>,
    /// Run on every event beside the serving version, effects noted, not made.
    #[serde(default)]
    shadow: bool,
}

impl UploadMode {
    fn trial(&self) -> Result<Option<TrialKind>, AdminError> {
        let bad = |m: String| Err(AdminError::BadRequest(m));
        match (self.canary, self.shadow) {
            (Some(_), true) => bad("give `canary` or `shadow`, not both".into()),
            (None, true) => Ok(Some(TrialKind::Shadow)),
            (None, false) => Ok(None),
            (Some(percent), false) => {
                if !(1..=99).contains(&percent) {
                    return bad(format!("canary = {percent}: give a share of 1 to 99 %"));
                }
                let d = CanaryPolicy::default();
                let window = match &self.window {
                    Some(w) => humantime::parse_duration(w)
                        .map_err(|e| AdminError::BadRequest(format!("window = `{w}`: {e} (e.g. 10m, 1h)")))?
                        .as_secs()
                        .max(1),
                    None => d.window_secs,
                };
                Ok(Some(TrialKind::Canary(CanaryPolicy {
                    percent,
                    failure_margin_pct: self.failure_margin.unwrap_or(d.failure_margin_pct),
                    latency_margin_pct: self.latency_margin.unwrap_or(d.latency_margin_pct),
                    min_runs: self.min_runs.unwrap_or(d.min_runs).max(1),
                    window_secs: window,
                })))
            }
        }
    }
}

/// `POST …/plugins/{p}/versions[?canary=N|shadow=true]`, multipart: `wasm`
/// (the component) and, optionally, `manifest` (its TOML). A version that
/// would be rejected from the folder is 422 with the same reason, and
/// nothing changes. With `canary` or `shadow` it goes on trial beside the
/// serving version instead of replacing it.
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
    mode: Result<Query<UploadMode>, axum::extract::rejection::QueryRejection>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let target = plugin.clone();
    let mut action = "deploy";
    let result = async {
        valid_name(&plugin)?;
        let Query(mode) = mode.map_err(|e| AdminError::BadRequest(e.body_text()))?;
        let trial = mode.trial()?;
        let (wasm, manifest) = read_upload(multipart?).await?;
        match trial {
            None => install(&state, &caller, &tenant, &plugin, wasm, manifest, "api").await,
            Some(kind) => {
                action = if kind == TrialKind::Shadow {
                    "deploy.shadow"
                } else {
                    "deploy.canary"
                };
                start_trial(&state, &caller, &tenant, &plugin, wasm, manifest, kind).await
            }
        }
    }
    .await;
    let result = audited(&state, &caller, &tenant, action, &target, result).await?;
    Ok((StatusCode::CREATED, Json(result)))
}

/// Puts a version on trial beside the serving one.
async fn start_trial(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    plugin: &str,
    wasm: Vec<u8>,
    manifest: Option<String>,
    kind: TrialKind,
) -> Result<Value, AdminError> {
    let Some(serving) = state.registry.get(tenant, plugin) else {
        return Err(AdminError::Conflict(format!(
            "plugin `{plugin}` has no serving version to compare with: deploy it first"
        )));
    };
    let source = if kind == TrialKind::Shadow { "shadow" } else { "canary" };
    let up = upload_of(caller, tenant, plugin, wasm, manifest, source);
    let prepared = on_registry(state, move |r, dir| r.prepare(dir, &up)).await?;
    let changes = changes(Some(&serving), &prepared);
    let trial = Trial::new(prepared, kind, Some(serving.version.clone()), caller.actor());
    let trial = state.trials.start(tenant, plugin, trial);
    tracing::info!(%tenant, %plugin, version = %trial.plugin.version, mode = source, actor = %caller.actor(), "plugin version on trial");
    let mut out = trial.report();
    out["tenant"] = json!(tenant);
    out["plugin"] = json!(plugin);
    out["changes"] = changes;
    Ok(out)
}

/// `GET …/plugins/{p}/trial` (also `…/canary`, `…/shadow`): the version on
/// trial and how it compares — a canary's runs, failure rate and p99 beside
/// the serving version's; a shadow's agreement and its first differing
/// events, side by side — or how the last trial ended.
pub async fn trial(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let report = match state.trials.get(&tenant, &plugin) {
        Some(t) => t.report(),
        None => state
            .trials
            .last_ended(&tenant, &plugin)
            .ok_or_else(|| AdminError::NotFound(format!("a trial of plugin `{plugin}` (none since the server started)")))?,
    };
    Ok(Json(json!({ "tenant": tenant, "plugin": plugin, "trial": report })))
}

/// `POST …/plugins/{p}/promote`: the version on trial serves everything.
pub async fn promote(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let result = async {
        let trial = state
            .trials
            .get(&tenant, &plugin)
            .ok_or_else(|| AdminError::Conflict(format!("plugin `{plugin}` has no version on trial")))?;
        let kept = state
            .db
            .version(&tenant, &plugin, &trial.plugin.version)
            .await?
            .ok_or_else(|| AdminError::Conflict(format!("version `{}` is no longer kept", trial.plugin.version)))?;
        let code = state.db.kept_code(&kept).await.map_err(|e| AdminError::Conflict(e.to_string()))?;
        install(
            &state,
            &caller,
            &tenant,
            &plugin,
            code,
            trial.plugin.manifest_src.clone(),
            "promote",
        )
        .await
    }
    .await;
    Ok(Json(audited(&state, &caller, &tenant, "promote", &plugin, result).await?))
}

/// `POST …/plugins/{p}/trial/stop`: ends the trial; the serving version
/// keeps serving everything.
pub async fn stop_trial(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let result = match state.trials.end(&tenant, &plugin, &format!("stopped by {}", caller.actor())) {
        Some(t) => Ok(json!({ "tenant": tenant, "plugin": plugin, "stopped": t.plugin.version })),
        None => Err(AdminError::Conflict(format!("plugin `{plugin}` has no version on trial"))),
    };
    Ok(Json(audited(&state, &caller, &tenant, "trial.stop", &plugin, result).await?))
}

/// `GET …/plugins/{p}/versions`: the kept versions, the one that served
/// last first, and which serves now.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let serving = state.registry.get(&tenant, &plugin).map(|p| p.version.clone());
    let versions = state.db.versions(&tenant, &plugin).await?;
    if versions.is_empty() && serving.is_none() {
        return Err(AdminError::NotFound(format!("plugin `{plugin}` of tenant `{tenant}`")));
    }
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            let serves = serving.as_deref() == Some(v.id.as_str());
            json!({ "version": v.id, "hash": v.hash, "serving": serves, "source": v.source, "actor": v.actor,
                    "created_at": v.created_at, "served_at": v.served_at, "manifest": v.manifest })
        })
        .collect();
    Ok(Json(
        json!({ "tenant": tenant, "plugin": plugin, "serving": serving, "versions": versions }),
    ))
}

/// What a rollback asks for.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackTo {
    /// The kept version to serve (default: the one that served before the
    /// current one).
    version: Option<String>,
}

/// `POST …/plugins/{p}/rollback` `{"version": id}`: serves a kept version
/// again, from its kept code (compiled code comes from the cache).
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
    body: Option<Json<RollbackTo>>,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let to = body.map(|Json(b)| b).unwrap_or_default();
    let result = async {
        let serving = state.registry.get(&tenant, &plugin).map(|p| p.version.clone());
        let kept = state.db.versions(&tenant, &plugin).await?;
        let version = match &to.version {
            Some(id) => kept.into_iter().find(|v| &v.id == id).ok_or_else(|| {
                AdminError::NotFound(format!("version `{id}` of plugin `{plugin}` (see GET …/plugins/{plugin}/versions)"))
            })?,
            None => kept
                .into_iter()
                .find(|v| Some(&v.id) != serving.as_ref())
                .ok_or_else(|| AdminError::Conflict(format!("plugin `{plugin}` has no earlier version kept")))?,
        };
        if Some(&version.id) == serving.as_ref() {
            return Err(AdminError::Conflict(format!("version `{}` is already serving", version.id)));
        }
        let code = state
            .db
            .kept_code(&version)
            .await
            .map_err(|e| AdminError::Conflict(e.to_string()))?;
        install(&state, &caller, &tenant, &plugin, code, version.manifest, "rollback").await
    }
    .await;
    let target = match &to.version {
        Some(v) => format!("{plugin}@{v}"),
        None => plugin.clone(),
    };
    Ok(Json(audited(&state, &caller, &tenant, "rollback", &target, result).await?))
}

fn valid_name(plugin: &str) -> Result<(), AdminError> {
    match plugin_name(std::path::Path::new(&format!("{plugin}.wasm"))) {
        Some(n) if n == plugin => Ok(()),
        _ => Err(AdminError::BadRequest(format!(
            "`{plugin}` is not a plugin name: use a-z, 0-9, '-' and '_', at most 64"
        ))),
    }
}

impl From<axum::extract::multipart::MultipartRejection> for AdminError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        AdminError::BadRequest(format!(
            "{e}: send multipart/form-data with a `wasm` part and, optionally, a `manifest` part"
        ))
    }
}

/// The `wasm` and `manifest` parts of an upload.
async fn read_upload(mut multipart: Multipart) -> Result<(Vec<u8>, Option<String>), AdminError> {
    let bad = |e: axum::extract::multipart::MultipartError| AdminError::BadRequest(format!("reading the upload: {}", e.body_text()));
    let (mut wasm, mut manifest) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "wasm" => wasm = Some(field.bytes().await.map_err(bad)?.to_vec()),
            "manifest" => {
                let text = field.text().await.map_err(bad)?;
                manifest = Some(text);
            }
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown part `{other}`: send `wasm` and, optionally, `manifest`"
                )));
            }
        }
    }
    let wasm = wasm.ok_or_else(|| AdminError::BadRequest("no `wasm` part: the component is required".into()))?;
    Ok((wasm, manifest))
}

fn upload_of(caller: &Caller, tenant: &str, plugin: &str, code: Vec<u8>, manifest: Option<String>, source: &'static str) -> Upload {
    Upload {
        tenant: tenant.to_string(),
        plugin: plugin.to_string(),
        code,
        manifest,
        source,
        actor: caller.actor(),
    }
}

/// Runs `f` on the registry and the plugin folder on a blocking thread (it
/// may compile); a version that does not load is 422 with its reason.
async fn on_registry<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Registry, &std::path::Path) -> Result<T, PluginLoadError> + Send + 'static,
) -> Result<T, AdminError> {
    let (registry, dir) = (state.registry.clone(), state.config.plugins_dir.clone());
    tokio::task::spawn_blocking(move || f(&registry, &dir))
        .await
        .map_err(|e| AdminError::Conflict(format!("the deploy stopped: {e}")))?
        .map_err(|e| AdminError::Rejected(e.to_string()))
}

/// Installs a version on a blocking thread (it may compile) and describes it.
async fn install(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    plugin: &str,
    wasm: Vec<u8>,
    manifest: Option<String>,
    source: &'static str,
) -> Result<Value, AdminError> {
    let up = upload_of(caller, tenant, plugin, wasm, manifest, source);
    let Installed { serving, previous } = on_registry(state, move |r, dir| r.install(dir, &up)).await?;
    // A trial compares with the version serving when it began: a new
    // serving version (its own promotion included) ends it.
    state
        .trials
        .end(tenant, plugin, &format!("{source} of version {}", serving.version));
    Ok(json!({
        "tenant": tenant,
        "plugin": plugin,
        "version": serving.version,
        "hash": serving.hash,
        "previous": previous.as_ref().map(|p| p.version.clone()),
        "changes": changes(previous.as_deref(), &serving),
        "limits_clamped": serving.manifest.limits_clamped,
    }))
}

/// What changed from `old` to `new`: imports, subscribed events, limits as
/// written, allowed hosts and config keys (names only: values may be
/// credentials).
pub fn changes(old: Option<&LoadedPlugin>, new: &LoadedPlugin) -> Value {
    // Each set's `added` and `removed` from the old version to the new.
    let diff = |set: &dyn Fn(&LoadedPlugin) -> BTreeSet<String>| -> Value {
        let (before, after) = (old.map(set).unwrap_or_default(), set(new));
        json!({ "added": after.difference(&before).collect::<Vec<_>>(), "removed": before.difference(&after).collect::<Vec<_>>() })
    };
    let imports = |p: &LoadedPlugin| -> BTreeSet<String> {
        let component = p.pre.component();
        component
            .component_type()
            .imports(component.engine())
            .map(|(name, _)| name.to_string())
            .collect()
    };
    let hosts = |p: &LoadedPlugin| -> BTreeSet<String> { p.manifest.allowed_hosts.iter().map(|h| h.to_string()).collect() };
    let events = |p: &LoadedPlugin| -> BTreeSet<String> {
        match &p.manifest.events {
            Some(k) => k.iter().map(|k| k.as_str().to_string()).collect(),
            None => ["*".to_string()].into(),
        }
    };
    let keys = |p: &LoadedPlugin| -> BTreeSet<String> { p.manifest.config.keys().cloned().collect() };
    let limits: Vec<Value> = LIMITS
        .iter()
        .filter_map(|spec| {
            let before = old.and_then(|o| o.manifest.limit_overrides.get(spec.limit));
            let after = new.manifest.limit_overrides.get(spec.limit);
            (before != after).then(|| json!({ "limit": spec.key, "from": before, "to": after, "default": spec.default }))
        })
        .collect();
    let changed_values: Vec<&String> = match old {
        Some(o) => new
            .manifest
            .config
            .iter()
            .filter(|(k, v)| o.manifest.config.get(*k).is_some_and(|ov| ov != *v))
            .map(|(k, _)| k)
            .collect(),
        None => vec![],
    };
    let mut config_keys = diff(&keys);
    config_keys["changed"] = json!(changed_values);
    json!({
        "code": old.is_none_or(|o| o.hash != new.hash),
        "imports": diff(&imports),
        "events": diff(&events),
        "limits": limits,
        "allowed_hosts": diff(&hosts),
        "config_keys": config_keys,
    })
}
