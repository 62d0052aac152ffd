//! The admin API under `/admin`, behind the configured bearer token: what each
//! tenant's plugins are doing (version serving, rejections, pause state and
//! failures), resuming paused plugins, searching deliveries, event
//! verifications and a plugin's KV, and replaying events. HTTP errors for it are mapped here
//! only.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::domain::EventKind;
use crate::domain::MAX_RECORD;
use crate::engine::accept::Replay;
use crate::engine::state::AppState;
use crate::storage::{DeliveryStatus, Search, SearchError, VerificationState};

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
    /// Too many failed authentications: refused without looking at the token.
    #[error("too many failed authentications; retry in {0} s")]
    Locked(u64),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
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
}

/// Refuses a tenant the config does not name.
pub(crate) fn known_tenant(state: &AppState, tenant: &str) -> Result<(), AdminError> {
    if state.tenants.contains_key(tenant) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("tenant `{tenant}`")))
    }
}

/// Checks the bearer token. Failed attempts are counted: past
/// `MAX_ADMIN_FAILURES` a minute, every request is refused (429) without its
/// token being looked at until the minute is over, and failures are logged
/// at warn (at most once a second, with the count not logged).
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    check_token(state, given)
}

/// Checks a given admin token (the bearer token, or the console's sign-in),
/// counting failures toward the lockout.
pub(crate) fn check_token(state: &AppState, given: Option<&str>) -> Result<(), AdminError> {
    let Some(token) = &state.config.admin_token else {
        return Err(AdminError::Unauthorized("the admin API is off: set admin_token in the config"));
    };
    if let Some(wait) = state.guards.admin_locked_for() {
        return Err(AdminError::Locked(wait.as_secs().max(1)));
    }
    let refusal = match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())) => return Ok(()),
        Some(_) => AdminError::Unauthorized("wrong bearer token"),
        None => AdminError::Unauthorized("missing bearer token"),
    };
    state.guards.admin_failed();
    if let Some(suppressed) = state.guards.admin_failure_log.check() {
        tracing::warn!(reason = %refusal, suppressed, "admin authentication failed");
    }
    Err(refusal)
}

async fn plugins(State(state): State<AppState>, headers: HeaderMap, Path(tenant): Path<String>) -> Result<Json<Value>, AdminError> {
    authorize(&state, &headers)?;
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
    authorize(&state, &headers)?;
    let released = resume_plugin(&state, &tenant, &plugin).await?;
    Ok(Json(
        json!({ "tenant": tenant, "plugin": plugin, "status": "active", "released": released }),
    ))
}

/// Resumes a paused plugin; how many held deliveries it released.
pub(crate) async fn resume_plugin(state: &AppState, tenant: &str, plugin: &str) -> Result<usize, AdminError> {
    known_tenant(state, tenant)?;
    match state.dispatcher.resume(tenant, plugin).await? {
        Some(released) => Ok(released),
        None if state.registry.get(tenant, plugin).is_some() => Err(AdminError::Conflict(format!("plugin `{plugin}` is not paused"))),
        None => Err(AdminError::NotFound(format!("plugin `{plugin}` of tenant `{tenant}`"))),
    }
}

/// A deliveries search as given in a query string (the admin API's and the
/// console's). Empty values count as not given, as an HTML form sends them.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
pub struct SearchParams {
    /// Sender or recipient number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Words in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Event kind (`sms.received`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Delivery status (`outcome` is the same).
    #[serde(default, alias = "outcome", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// RFC 3339 time, or a duration ago (`15m`, `2h`, `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339 time, or a duration ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The previous page's `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Page size (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `at` as unix ms: an RFC 3339 time, or a duration (`90s`, `15m`, `2h`, `7d`) before now.
fn time_param(name: &str, at: &str) -> Result<i64, AdminError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(at) {
        Ok(ago) => Ok(crate::storage::now_ms() - ago.as_millis() as i64),
        Err(_) => Err(AdminError::BadRequest(format!(
            "{name} `{at}` is neither an RFC 3339 time nor a duration like 15m, 2h or 7d"
        ))),
    }
}

impl SearchParams {
    /// The search these parameters ask for, or why they make no sense.
    pub fn to_search(&self) -> Result<Search, AdminError> {
        let kind = given(&self.kind)
            .map(|k| {
                EventKind::from_name(k).ok_or_else(|| {
                    let all: Vec<&str> = EventKind::ALL.iter().map(|s| s.seed_name()).collect();
                    AdminError::BadRequest(format!("kind `{k}` is not one of {}", all.join(", ")))
                })
            })
            .transpose()?;
        let status = given(&self.status)
            .map(|s| {
                DeliveryStatus::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
                    AdminError::BadRequest(format!("status `{s}` is not one of {}", all.join(", ")))
                })
            })
            .transpose()?;
        let number = given(&self.number).map(str::to_string);
        if let Some(n) = &number
            && !n.chars().any(|c| c.is_ascii_digit())
        {
            return Err(AdminError::BadRequest(format!("number `{n}` has no digits")));
        }
        let before = given(&self.before)
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| AdminError::BadRequest(format!("before `{b}` is not a delivery id")))
            })
            .transpose()?;
        Ok(Search {
            number,
            text: given(&self.text).map(str::to_string),
            kind,
            plugin: given(&self.plugin).map(str::to_string),
            status,
            since_ms: given(&self.since).map(|t| time_param("since", t)).transpose()?,
            until_ms: given(&self.until).map(|t| time_param("until", t)).transpose()?,
            before,
            limit: self.limit.unwrap_or(100).clamp(1, crate::storage::MAX_PAGE),
        })
    }
}

impl From<SearchError> for AdminError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::NoWords(_) => AdminError::BadRequest(e.to_string()),
            SearchError::Db(e) => AdminError::Unavailable(e),
        }
    }
}

/// Searches the tenant's deliveries (every filter of [`SearchParams`]),
/// newest first; `next` pages on with `before=`.
async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<SearchParams>,
) -> Result<Json<Value>, AdminError> {
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
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
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
    let not_found = || AdminError::NotFound(format!("delivery `{id}` of tenant `{tenant}`"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let detail = state.db.delivery_detail(&tenant, n).await?.ok_or_else(not_found)?;
    Ok(Json(json!(detail)))
}

/// `GET /metrics` (on the admin listener, behind the admin token): the
/// Prometheus text exposition, with gauges read now.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
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
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
    let accepted = match crate::engine::accept::replay(&state, &tenant, &event_id).await? {
        Replay::Replayed(a) => a,
        Replay::NotFound => return Err(AdminError::NotFound(format!("event `{event_id}` of tenant `{tenant}`"))),
        Replay::NotVerified(why) => return Err(AdminError::Conflict(format!("event `{event_id}` is not replayed: {why}"))),
    };
    let out: Vec<Value> = accepted
        .deliveries
        .iter()
        .map(|d| json!({ "id": d.id, "plugin": d.plugin, "status": if d.held { "held" } else { "pending" } }))
        .collect();
    tracing::info!(%tenant, event = %event_id, deliveries = out.len(), "event replayed");
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
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
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
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
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
    use crate::engine::tail::Missed;
    authorize(&state, &headers)?;
    known_tenant(&state, &tenant)?;
    if let Some(o) = q.outcome.as_deref().filter(|o| !matches!(*o, "done" | "failed")) {
        return Err(AdminError::BadRequest(format!("outcome `{o}` is not done or failed")));
    }
    let wanted = move |e: &crate::engine::tail::TailEvent| {
        e.tenant == tenant && q.plugin.as_deref().is_none_or(|p| p == e.plugin) && q.outcome.as_deref().is_none_or(|o| o == e.outcome)
    };
    let stream = futures_util::stream::unfold(Some(state.tail.watch()), move |watcher| {
        let wanted = wanted.clone();
        async move {
            let mut watcher = watcher?;
            loop {
                match watcher.next().await {
                    Ok(e) if wanted(&e) => {
                        let event = SseEvent::default().event("delivery").json_data(&*e).unwrap_or_default();
                        return Some((Ok(event), Some(watcher)));
                    }
                    Ok(_) => continue,
                    Err(Missed::Lagged(n)) => {
                        let notice = format!("{n} attempts were dropped: this watcher fell too far behind; reconnect to go on");
                        return Some((Ok(SseEvent::default().event("dropped").data(notice)), None));
                    }
                    Err(Missed::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
