//! The admin API under `/admin`, behind the configured bearer token: what each
//! tenant's plugins are doing (version serving, rejections). HTTP errors for
//! it are mapped here only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::server::AppState;

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token, or no token configured.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// No such tenant (or plugin, or event) for this tenant.
    #[error("not found: {0}")]
    NotFound(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The admin routes, to be nested at `/admin`.
pub fn router() -> Router<AppState> {
    Router::new().route("/tenants/{tenant}/plugins", get(plugins))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(token) = &state.config.admin_token else {
        return Err(AdminError::Unauthorized("the admin API is off: set admin_token in the config"));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::Unauthorized("missing bearer token"))?;
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized("wrong bearer token"))
    }
}

async fn plugins(State(state): State<AppState>, headers: HeaderMap, Path(tenant): Path<String>) -> Result<Json<Value>, AdminError> {
    authorize(&state, &headers)?;
    if !state.tenants.contains_key(&tenant) {
        return Err(AdminError::NotFound(format!("tenant `{tenant}`")));
    }
    let serving = state.registry.plugins(&tenant);
    let mut rejections = state.registry.rejections(&tenant);
    let mut out = Vec::new();
    for p in serving.iter() {
        let rejected = rejections.remove(&p.name);
        out.push(json!({
            "name": p.name,
            "status": if rejected.is_some() { "rejected" } else { "active" },
            "hash": p.hash,
            "loaded_at": p.loaded_at,
            "events": p.manifest.events.as_ref().map(|k| k.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            "rejected": rejected,
        }));
    }
    for (name, r) in rejections {
        out.push(json!({ "name": name, "status": "rejected", "hash": null, "rejected": r }));
    }
    Ok(Json(
        json!({ "tenant": tenant, "plugins": out, "compile": state.registry.runtime().stats() }),
    ))
}
