//! Tenants' API tokens (create, list, revoke: the operator's alone; a new
//! token's text is shown once, only its hash is kept) and the audit log
//! (`read` scope), under `/admin/tenants/{t}/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::auth::{Scope, new_token, secret_hash};
use super::{AdminError, allowed, audited, authorize, known_tenant};
use crate::engine::state::AppState;

#[derive(Debug, serde::Deserialize)]
pub struct NewToken {
    /// What it may do: `read`, `deploy`, `operate`.
    scopes: Vec<String>,
    /// What to call it.
    #[serde(default)]
    label: String,
}

/// `POST /admin/tenants/{t}/tokens` `{scopes, label}`: a new token for the
/// tenant. Its text is in this answer and nowhere else, ever.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let caller = authorize(&state, &headers).await?;
    caller.operator("create tokens")?;
    known_tenant(&state, &tenant)?;
    let Json(req) = body.map_err(|e| AdminError::BadRequest(format!("{e}: send {{\"scopes\": [\"read\", …], \"label\": \"…\"}}")))?;
    let mut scopes = Vec::new();
    for s in &req.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            AdminError::BadRequest(format!("scope `{s}` is not one of {}", all.join(", ")))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(AdminError::BadRequest("a token needs at least one scope".into()));
    }
    if req.label.len() > 200 {
        return Err(AdminError::BadRequest("label is longer than 200 bytes".into()));
    }
    let (id, text) = new_token();
    let secret = text.rsplit('_').next().unwrap_or_default();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let stored = state
        .db
        .create_token(&id, &tenant, &names.join(" "), &req.label, &secret_hash(secret))
        .await
        .map_err(AdminError::from);
    let stored = audited(&state, &caller, &tenant, "token.create", &id, stored).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "tenant": tenant, "id": stored.id, "token": text, "scopes": names, "label": stored.label,
                     "created_at": stored.created_at, "note": "shown once: only its hash is kept" }),
        ),
    ))
}

/// `GET /admin/tenants/{t}/tokens`: the tenant's tokens, without secrets.
pub async fn list(State(state): State<AppState>, headers: HeaderMap, Path(tenant): Path<String>) -> Result<Json<Value>, AdminError> {
    authorize(&state, &headers).await?.operator("list tokens")?;
    known_tenant(&state, &tenant)?;
    let tokens = state.db.tokens(&tenant).await?;
    Ok(Json(json!({ "tenant": tenant, "tokens": tokens })))
}

/// `DELETE /admin/tenants/{t}/tokens/{id}`: revokes a token, at once.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let caller = authorize(&state, &headers).await?;
    caller.operator("revoke tokens")?;
    known_tenant(&state, &tenant)?;
    let result = match state.db.revoke_token(&tenant, &id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(AdminError::NotFound(format!("live token `{id}` of tenant `{tenant}`"))),
        Err(e) => Err(e.into()),
    };
    audited(&state, &caller, &tenant, "token.revoke", &id, result).await?;
    Ok(Json(json!({ "tenant": tenant, "id": id, "revoked": true })))
}

#[derive(Debug, serde::Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/tenants/{t}/audit?before=&limit=`: who did what, newest
/// first; `next` pages on with `before`.
pub async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Read).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state.db.audit_log(&tenant, q.before, limit).await?;
    let next = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Json(json!({ "tenant": tenant, "entries": entries, "next": next })))
}
