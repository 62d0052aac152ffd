//! Plugin secrets over the API (`deploy` scope): set (the value is the
//! request body), list (names only: nothing ever reads a value back out) and
//! delete. Every change is audited by name, never by value.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::auth::Scope;
use super::{AdminError, allowed, audited};
use crate::engine::secrets::{MAX_SECRET, VaultError};
use crate::engine::state::AppState;

impl From<VaultError> for AdminError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Db(e) => AdminError::Unavailable(e),
            other => AdminError::Conflict(other.to_string()),
        }
    }
}

fn valid_key(key: &str) -> Result<(), AdminError> {
    let ok = !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadRequest(format!(
            "`{key}` is not a secret name: use A-Z, a-z, 0-9, '_', '-' and '.', at most 128"
        )))
    }
}

/// `PUT …/plugins/{p}/secrets/{key}` with the value as the body: sealed,
/// stored, and served to the plugin's next invocations. A version that was
/// refused for want of it is tried again.
pub async fn set(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin, key)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let result = async {
        valid_key(&key)?;
        if body.len() > MAX_SECRET {
            return Err(AdminError::BadRequest(format!("the value is over {MAX_SECRET} bytes")));
        }
        let value = String::from_utf8(body.to_vec()).map_err(|_| AdminError::BadRequest("the value is not UTF-8 text".into()))?;
        if value.is_empty() {
            return Err(AdminError::BadRequest("the value is empty: send it as the request body".into()));
        }
        state.vault.set(&tenant, &plugin, &key, value).await?;
        if state.registry.retry_rejected(&tenant, &plugin) {
            let (registry, dir, t) = (state.registry.clone(), state.config.plugins_dir.clone(), tenant.clone());
            tokio::task::spawn_blocking(move || registry.reload_tenant(&dir, &t, &Default::default(), std::time::Duration::ZERO))
                .await
                .map_err(|e| AdminError::Conflict(format!("the reload stopped: {e}")))?;
        }
        Ok(json!({ "tenant": tenant, "plugin": plugin, "key": key, "set": true }))
    }
    .await;
    Ok(Json(
        audited(&state, &caller, &tenant, "secret.set", &format!("{plugin}/{key}"), result).await?,
    ))
}

/// `GET …/plugins/{p}/secrets`: the names set, the names the serving
/// version requires, and which of those are missing.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let set = state.vault.names(&tenant, &plugin);
    let required = state
        .registry
        .get(&tenant, &plugin)
        .map(|p| p.manifest.secret_keys.clone())
        .unwrap_or_default();
    let missing: Vec<&String> = required.iter().filter(|k| !set.contains(k)).collect();
    Ok(Json(
        json!({ "tenant": tenant, "plugin": plugin, "keys": set, "required": required, "missing": missing }),
    ))
}

/// `DELETE …/plugins/{p}/secrets/{key}`; refused while the serving version
/// requires it.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, plugin, key)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    let caller = allowed(&state, &headers, &tenant, Scope::Deploy).await?;
    let result = async {
        if let Some(p) = state.registry.get(&tenant, &plugin)
            && p.manifest.secret_keys.contains(&key)
        {
            return Err(AdminError::Conflict(format!(
                "version {} of `{plugin}` requires `{key}`: deploy one that does not first",
                p.version
            )));
        }
        match state.vault.delete(&tenant, &plugin, &key).await? {
            true => Ok(json!({ "tenant": tenant, "plugin": plugin, "key": key, "deleted": true })),
            false => Err(AdminError::NotFound(format!("secret `{key}` of plugin `{plugin}`"))),
        }
    }
    .await;
    Ok(Json(
        audited(&state, &caller, &tenant, "secret.delete", &format!("{plugin}/{key}"), result).await?,
    ))
}
