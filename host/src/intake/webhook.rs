//! `POST /webhooks/{tenant}`: decode, authenticate and parse a webhook, hand
//! the event to [`crate::engine::accept`], and map the outcome to an HTTP
//! status. Webhook statuses are mapped here only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use crate::config::WebhookAuth;
use crate::engine::accept::{Acceptance, Source, accept};
use crate::engine::state::AppState;
use crate::intake::auth::{self, AuthError};
use crate::intake::wire::{self, Body, Format, Parsed, PayloadError};
use crate::storage::DbError;

/// Largest webhook body accepted.
pub const MAX_BODY_BYTES: usize = 256 << 10;

/// Every way a webhook can be refused, each with its status and reason.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such tenant.
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    /// Authentication failed.
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    /// The payload is malformed.
    #[error("bad request: {0}")]
    BadRequest(#[from] PayloadError),
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body could not be read.
    #[error("cannot read body: {0}")]
    Body(String),
    /// The event could not be stored; JustCall should retry.
    #[error("cannot store the event right now, retry later: {0}")]
    Unavailable(#[from] DbError),
    /// The tenant's config names an auth scheme but no secret.
    #[error("tenant has no webhook secret configured")]
    NoSecret,
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebhookError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebhookError::BadRequest(_) | WebhookError::Body(_) => StatusCode::BAD_REQUEST,
            WebhookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::Unavailable(_) | WebhookError::NoSecret => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("30"));
        }
        resp
    }
}

/// The webhook handler.
pub async fn receive(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, WebhookError> {
    let tenant = state
        .tenants
        .get(&tenant_id)
        .ok_or_else(|| WebhookError::UnknownTenant(tenant_id.clone()))?
        .clone();
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookError::TooLarge
        } else {
            WebhookError::Body(e.body_text())
        }
    })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge);
    }

    // Decode first: the JustCall v1 signature covers the payload's `type`.
    let value = match wire::decode(&body)? {
        Body::Ping => {
            // The setup ping: no event to authenticate or dispatch.
            tracing::info!(tenant = %tenant_id, "webhook ping");
            return Ok((StatusCode::OK, Json(json!({ "status": "ping" }))).into_response());
        }
        Body::Payload(value) => value,
    };
    let type_name = wire::type_name(&value).map(str::to_string);

    let cfg = &tenant.config;
    let now = Utc::now();
    let tolerance = state.config.signature_tolerance;
    let mut delivery_id = None;
    match (cfg.webhook_auth, &cfg.webhook_secret) {
        (WebhookAuth::JustCallV1, Some(secret)) => {
            auth::verify_justcall_v1(
                secret.expose(),
                &state.config.webhook_url(&tenant_id),
                type_name.as_deref(),
                &headers,
                now,
                tolerance,
            )?;
        }
        (WebhookAuth::StandardWebhooks, Some(secret)) => {
            delivery_id = Some(auth::verify_standard_webhooks(secret.expose(), &headers, &body, now, tolerance)?);
        }
        (WebhookAuth::None, _) => {}
        (_, None) => return Err(WebhookError::NoSecret),
    }

    let incoming = match wire::parse_value(value)? {
        Parsed::Ignored { type_name, reason } => {
            tracing::info!(tenant = %tenant_id, %type_name, %reason, "webhook ignored");
            return Ok((StatusCode::OK, Json(json!({ "status": "ignored", "reason": reason }))).into_response());
        }
        Parsed::Event(i) => *i,
    };
    let source = Source {
        dedupe_key: match delivery_id {
            Some(id) => format!("swh:{id}"),
            None => incoming.dedupe_key,
        },
        format: match incoming.format {
            Format::Seed => "seed",
            Format::V21 => "v2.1",
        },
        raw: String::from_utf8_lossy(&body).into_owned(),
    };
    match accept(&state, &tenant_id, incoming.event, source).await? {
        Acceptance::Duplicate { event_id } => {
            tracing::info!(tenant = %tenant_id, %event_id, "duplicate webhook acknowledged, not dispatched");
            Ok((StatusCode::OK, Json(json!({ "status": "duplicate", "event_id": event_id }))).into_response())
        }
        Acceptance::Accepted(a) => {
            let (event, held) = (&a.event, a.held());
            tracing::info!(tenant = %tenant_id, event_id = %event.event_id, kind = event.kind.as_str(), deliveries = a.deliveries.len(), held, "event accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "status": "accepted", "event_id": event.event_id, "kind": event.kind.as_str(), "deliveries": a.deliveries.len(), "held": held })),
            )
                .into_response())
        }
    }
}
