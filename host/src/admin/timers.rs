//! Pending timers over the API (`read` scope): a tenant's timers and manifest
//! schedules, soonest first, with when each is due on the server's clock.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::auth::Scope;
use super::{AdminError, allowed};
use crate::domain::clock::ms_to_rfc3339;
use crate::engine::state::AppState;

#[derive(serde::Deserialize)]
pub struct TimersQuery {
    plugin: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/tenants/{t}/timers[?plugin=&limit=]`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<TimersQuery>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let timers = state.db.timers(&tenant, q.plugin.as_deref(), limit).await?;
    let now = state.config.clock.now_ms();
    let shown: Vec<Value> = timers
        .iter()
        .map(|t| {
            json!({
                "plugin": t.plugin,
                "key": t.key,
                "kind": if t.scheduled { "schedule" } else { "timer" },
                "schedule": t.schedule,
                "due_at": ms_to_rfc3339(t.due_ms),
                "due_in_ms": t.due_ms - now,
                "payload_bytes": t.payload.len(),
                "set_by_delivery": t.set_by,
            })
        })
        .collect();
    Ok(Json(json!({ "tenant": tenant, "now": ms_to_rfc3339(now), "timers": shown })))
}
