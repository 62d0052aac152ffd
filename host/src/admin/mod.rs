//! The admin API under `/admin`, behind a bearer token (the operator's, or a
//! tenant's with its scopes, see [`auth`]): what each tenant's plugins are
//! doing (version serving, rejections, pause state and failures), resuming
//! paused plugins, searching deliveries, event verifications and a plugin's
//! KV, replaying events, plugin versions (upload, trials, history, rollback:
//! see [`deploy`]), plugin secrets, tenants' tokens and the audit log. HTTP errors for it are
//! mapped here only.

pub mod auth;
mod deploy;
mod search;
mod secrets;
mod timers;
mod tokens;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::domain::MAX_RECORD;
use crate::engine::accept::{Accepted, Replay};
use crate::engine::state::AppState;
use crate::storage::VerificationState;
pub use auth::{Caller, Scope};
pub use search::SearchParams;

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token, or no token configured.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// No such tenant (or plugin, or event) for this tenant.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request makes no sense as given.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not answer.
    #[error("unavailable: {0}")]
    Unavailable(#[from] crate::storage::DbError),
    /// The token may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An uploaded plugin version would not load; nothing changed.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Too many failed authentications: refused without looking at the token.
    #[error("too many failed authentications; retry in {0} s")]
    Locked(u64),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if let AdminError::Locked(secs) = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

/// The admin routes, to be nested at `/admin`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tenants/{tenant}/plugins", get(plugins))
        .route("/tenants/{tenant}/plugins/{plugin}/resume", post(resume))
        .route("/tenants/{tenant}/deliveries", get(deliveries))
        .route("/tenants/{tenant}/deliveries/{id}", get(delivery))
        .route("/tenants/{tenant}/tail", get(tail))
        .route("/tenants/{tenant}/events/{event}/replay", post(replay))
        .route("/tenants/{tenant}/verifications", get(verifications))
        .route("/tenants/{tenant}/plugins/{plugin}/kv", get(kv))
        .route("/tenants/{tenant}/timers", get(timers::list))
        .route("/tenants/{tenant}/tokens", get(tokens::list).post(tokens::create))
        .route("/tenants/{tenant}/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/tenants/{tenant}/audit", get(tokens::audit_log))
        .route(
            "/tenants/{tenant}/plugins/{plugin}/versions",
            get(deploy::list)
                .post(deploy::upload)
                .layer(axum::extract::DefaultBodyLimit::max(deploy::MAX_UPLOAD)),
        )
        .route("/tenants/{tenant}/plugins/{plugin}/rollback", post(deploy::rollback))
        .route("/tenants/{tenant}/plugins/{plugin}/trial", get(deploy::trial))
        .route("/tenants/{tenant}/plugins/{plugin}/canary", get(deploy::trial))
        .route("/tenants/{tenant}/plugins/{plugin}/shadow", get(deploy::trial))
        .route("/tenants/{tenant}/plugins/{plugin}/promote", post(deploy::promote))
        .route("/tenants/{tenant}/plugins/{plugin}/trial/stop", post(deploy::stop_trial))
        .route("/tenants/{tenant}/plugins/{plugin}/secrets", get(secrets::list))
        .route(
            "/tenants/{tenant}/plugins/{plugin}/secrets/{key}",
            axum::routing::put(secrets::set).delete(secrets::delete),
        )
}

/// Refuses a tenant the config does not name.
pub(crate) fn known_tenant(state: &AppState, tenant: &str) -> Result<(), AdminError> {
    if state.tenants.contains_key(tenant) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("tenant `{tenant}`")))
    }
}

/// Who sent this request's bearer token (see [`auth::identify`]).
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, AdminError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    auth::identify(state, given).await
}

/// Whether `caller` may act on `tenant` within `scope`, and `tenant` exists.
async fn allowed(state: &AppState, headers: &HeaderMap, tenant: &str, scope: Scope) -> Result<Caller, AdminError> {
    let caller = authorize(state, headers).await?;
    caller.may(tenant, scope)?;
    known_tenant(state, tenant)?;
    Ok(caller)
}

/// Records `action` on `target` by `caller` in the tenant's audit log, with
/// how it ended, and passes the result on. A log that cannot be written is
/// logged; the action has happened either way.
pub(crate) async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    action: &str,
    target: &str,
    result: Result<T, AdminError>,
) -> Result<T, AdminError> {
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    // Targets come from request paths: kept within a record's size.
    let target = crate::domain::cap(target, MAX_RECORD);
    if let Err(e) = state.db.audit(tenant, &caller.actor(), action, &target, &outcome).await {
        tracing::error!(%tenant, action, error = %e, "cannot write the audit log");
    }
    result
}

async fn plugins(State(state): State<AppState>, headers: HeaderMap, Path(tenant): Path<String>) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let out = plugin_statuses(&state, &tenant).await?;
    Ok(Json(
        json!({ "tenant": tenant, "plugins": out, "compile": state.registry.runtime().stats() }),
    ))
}

/// Each of the tenant's plugins (serving, rejected, or removed with
/// deliveries still held): status, summary, version, failures and held count.
pub(crate) async fn plugin_statuses(state: &AppState, tenant: &str) -> Result<Vec<Value>, AdminError> {
    known_tenant(state, tenant)?;
    let serving = state.registry.plugins(tenant);
    let mut rejections = state.registry.rejections(tenant);
    let mut health = state.db.plugin_health(tenant).await?;
    let mut out = Vec::new();
    // `rejected` only when nothing serves: a plugin whose newer file was
    // refused is still active on its previous version, and says so.
    let status = |serving: bool, paused: bool| match (serving, paused) {
        (_, true) => "paused",
        (false, false) => "rejected",
        (true, false) => "active",
    };
    for p in serving.iter() {
        let rejected = rejections.remove(&p.name);
        let h = health.remove(&p.name).unwrap_or_default();
        let short = &p.hash[..p.hash.len().min(12)];
        let mut summary = match &rejected {
            Some(r) => format!("serving {short}, newer version rejected: {}", r.error),
            None => format!("serving {short}"),
        };
        if !p.manifest.limits_clamped.is_empty() {
            summary.push_str(&format!("; limits cut to the tenant's: {}", p.manifest.limits_clamped.join("; ")));
        }
        out.push(json!({
            "name": p.name,
            "status": status(true, h.paused),
            "summary": summary,
            "hash": p.hash,
            "version": p.version,
            "contract": p.pre.contract().as_str(),
            "schedules": p.manifest.schedules.iter().map(|s| json!({ "name": s.name, "cron": s.pattern, "timezone": s.timezone.name() })).collect::<Vec<_>>(),
            "trial": state.trials.get(tenant, &p.name).map(|t| json!({ "mode": if t.kind == crate::engine::trials::TrialKind::Shadow { "shadow" } else { "canary" }, "version": t.plugin.version })),
            "loaded_at": p.loaded_at,
            "events": p.manifest.events.as_ref().map(|k| k.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            "rejected": rejected,
            "limits_clamped": p.manifest.limits_clamped,
            "delivery": h,
        }));
    }
    for (name, r) in rejections {
        let h = health.remove(&name).unwrap_or_default();
        let summary = format!("not serving: rejected: {}", r.error);
        out.push(
            json!({ "name": name, "status": status(false, h.paused), "summary": summary, "hash": null, "rejected": r, "delivery": h }),
        );
    }
    // Plugins no longer deployed that still have paused or held deliveries.
    for (name, h) in health.into_iter().filter(|(_, h)| h.paused || h.held > 0) {
        let summary = "removed; deliveries still held";
        out.push(json!({ "name": name, "status": if h.paused { "paused" } else { "removed" }, "summary": summary, "hash": null, "removed": true, "delivery": h }));
    }
    Ok(out)
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Operate).await?;
    let released = resume_plugin(&state, &caller, &tenant, &plugin).await?;
    Ok(Json(
        json!({ "tenant": tenant, "plugin": plugin, "status": "active", "released": released }),
    ))
}

/// Resumes a paused plugin (audited); how many held deliveries it released.
pub(crate) async fn resume_plugin(state: &AppState, caller: &Caller, tenant: &str, plugin: &str) -> Result<usize, AdminError> {
    caller.may(tenant, Scope::Operate)?;
    known_tenant(state, tenant)?;
    let result = match state.dispatcher.resume(tenant, plugin).await {
        Err(e) => Err(e.into()),
        Ok(Some(released)) => Ok(released),
        Ok(None) if state.registry.get(tenant, plugin).is_some() => Err(AdminError::Conflict(format!("plugin `{plugin}` is not paused"))),
        Ok(None) => Err(AdminError::NotFound(format!("plugin `{plugin}` of tenant `{tenant}`"))),
    };
    audited(state, caller, tenant, "resume", plugin, result).await
}

/// Replays a stored event (audited): its new deliveries.
pub(crate) async fn replay_event(state: &AppState, caller: &Caller, tenant: &str, event_id: &str) -> Result<Accepted, AdminError> {
    caller.may(tenant, Scope::Operate)?;
    known_tenant(state, tenant)?;
    let result = match crate::engine::accept::replay(state, tenant, event_id).await {
        Err(e) => Err(e.into()),
        Ok(Replay::Replayed(a)) => Ok(a),
        Ok(Replay::NotFound) => Err(AdminError::NotFound(format!("event `{event_id}` of tenant `{tenant}`"))),
        Ok(Replay::NotVerified(why)) => Err(AdminError::Conflict(format!("event `{event_id}` is not replayed: {why}"))),
    };
    if let Ok(a) = &result {
        tracing::info!(%tenant, event = %event_id, deliveries = a.deliveries.len(), actor = %caller.actor(), "event replayed");
    }
    audited(state, caller, tenant, "replay", event_id, result).await
}

/// Searches the tenant's deliveries (every filter of [`SearchParams`]),
/// newest first; `next` pages on with `before=`.
async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<SearchParams>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let page = state.db.search(&tenant, q.to_search()?).await?;
    Ok(Json(json!({ "tenant": tenant, "deliveries": page.deliveries, "next": page.next })))
}

/// One delivery: its state, its event, and every attempt with the plugin's
/// log lines and host calls.
async fn delivery(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let not_found = || AdminError::NotFound(format!("delivery `{id}` of tenant `{tenant}`"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let detail = state.db.delivery_detail(&tenant, n).await?.ok_or_else(not_found)?;
    Ok(Json(json!(detail)))
}

/// `GET /metrics` (on the admin listener, behind the admin token): the
/// Prometheus text exposition, with gauges read now.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AdminError> {
    authorize(&state, &headers).await?.operator("read the server's metrics")?;
    let load = state.dispatcher.load();
    let rejected = state.tenants.keys().map(|t| state.registry.rejections(t).len() as u64).sum();
    let gauges = crate::metrics::Gauges {
        queued: load.queued as u64,
        running: load.running as u64,
        memory_bytes: load.memory_bytes as u64,
        held: state.db.held_counts().await?,
        long_runs: state.dispatcher.lane_stats().moved,
        compiles: state.registry.runtime().stats().compiles,
        rejected,
        reloads: state.registry.reload_counts().0,
        rejections: state.registry.reload_counts().1,
        timers_pending: state.db.timers_pending().await?,
    };
    let body = state.metrics.render(&gauges);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}

async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, event_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let caller = authorize(&state, &headers).await?;
    let accepted = replay_event(&state, &caller, &tenant, &event_id).await?;
    let out: Vec<Value> = accepted
        .deliveries
        .iter()
        .map(|d| json!({ "id": d.id, "plugin": d.plugin, "status": if d.held { "held" } else { "pending" } }))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "tenant": tenant, "event_id": event_id, "deliveries": out })),
    ))
}

#[derive(serde::Deserialize)]
struct VerificationsQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// Events checked with JustCall: `refused` (the default: why each was
/// refused), `pending` (with the last error) or `verified`.
async fn verifications(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<VerificationsQuery>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let name = q.state.as_deref().unwrap_or("refused");
    let wanted = VerificationState::parse(name).ok_or_else(|| {
        let all: Vec<&str> = VerificationState::ALL.iter().map(|s| s.as_str()).collect();
        AdminError::BadRequest(format!("state `{name}` is not one of {}", all.join(", ")))
    })?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list: Vec<Value> = state
        .db
        .verifications(&tenant, wanted, limit)
        .await?
        .into_iter()
        .map(|v| json!({ "event_id": v.event_id, "attempts": v.attempts, "reason": v.reason, "updated_at": v.updated_at }))
        .collect();
    Ok(Json(json!({ "tenant": tenant, "state": name, "verifications": list })))
}

#[derive(serde::Deserialize)]
struct KvQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// A plugin's KV, in key order: each value as text when it is UTF-8, else
/// base64; `next` is the key to page on with `after=`.
async fn kv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
    Query(q): Query<KvQuery>,
) -> Result<Json<Value>, AdminError> {
    use base64::Engine as _;
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let prefix = q.prefix.unwrap_or_default();
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .db
        .kv_entries(&tenant, &plugin, &prefix, q.after.as_deref(), limit + 1)
        .await?;
    let more = entries.len() > limit as usize;
    let shown: Vec<Value> = entries
        .iter()
        .take(limit as usize)
        // A list never carries whole values: each shows at most
        // MAX_RECORD bytes (`truncated` says when), `bytes` its full size.
        .map(|(key, value)| {
            let cut = value.len() > MAX_RECORD;
            match std::str::from_utf8(value) {
                Ok(text) => {
                    json!({ "key": key, "value": crate::domain::cap(text, MAX_RECORD), "bytes": value.len(), "truncated": cut })
                }
                Err(_) => {
                    let shown = base64::engine::general_purpose::STANDARD.encode(&value[..value.len().min(MAX_RECORD)]);
                    json!({ "key": key, "value_base64": shown, "bytes": value.len(), "truncated": cut })
                }
            }
        })
        .collect();
    let next = more
        .then(|| shown.last().and_then(|e| e["key"].as_str()).map(str::to_string))
        .flatten();
    Ok(Json(
        json!({ "tenant": tenant, "plugin": plugin, "prefix": prefix, "entries": shown, "next": next }),
    ))
}

#[derive(serde::Deserialize)]
struct TailQuery {
    plugin: Option<String>,
    outcome: Option<String>,
}

/// The live tail, as Server-Sent Events: a `delivery` event (JSON) as each
/// of the tenant's attempts ends, optionally only one plugin's or one
/// outcome's. A watcher that falls too far behind gets a `dropped` event
/// saying how many it missed, and the stream ends; dispatch never waits.
async fn tail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<TailQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, AdminError> {
    use futures_util::StreamExt as _;
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    if let Some(o) = q.outcome.as_deref().filter(|o| !matches!(*o, "done" | "failed")) {
        return Err(AdminError::BadRequest(format!("outcome `{o}` is not done or failed")));
    }
    let wanted = move |e: &crate::engine::tail::TailEvent| {
        e.tenant == tenant && q.plugin.as_deref().is_none_or(|p| p == e.plugin) && q.outcome.as_deref().is_none_or(|o| o == e.outcome)
    };
    let stream = state.tail.follow(wanted).map(|ended| {
        Ok(match ended {
            Ok(e) => SseEvent::default().event("delivery").json_data(&*e).unwrap_or_default(),
            Err(n) => {
                let notice = format!("{n} attempts were dropped: this watcher fell too far behind; reconnect to go on");
                SseEvent::default().event("dropped").data(notice)
            }
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
