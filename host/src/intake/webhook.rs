//! `POST /webhooks/{tenant}`: decode, authenticate and parse a webhook, hand
//! the event to [`crate::engine::accept`], and map the outcome to an HTTP
//! status. Webhook statuses are mapped here only.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::json;

use crate::config::WebhookAuth;
use crate::engine::accept::{Acceptance, Source, accept};
use crate::engine::state::{AppState, MAX_EVENTS_PER_SIGNATURE};
use crate::intake::auth::{self, AuthError};
use crate::intake::wire::{self, Format, Parsed, PayloadError};
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
    /// The body did not arrive within the body timeout.
    #[error("body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Too many bodies are being read at once; JustCall should retry.
    #[error("too many requests in progress, retry later")]
    Busy,
    /// The event could not be stored; JustCall should retry.
    #[error("cannot store the event right now, retry later: {0}")]
    Unavailable(#[from] DbError),
    /// The tenant's config names an auth scheme but no secret.
    #[error("tenant has no webhook secret configured")]
    NoSecret,
    /// The tenant verifies events with JustCall, and this one cannot be.
    #[error("forbidden: {0}")]
    Unverifiable(String),
    /// This JustCall v1 signature has already authenticated as many events
    /// as one may.
    #[error("this signature has already authenticated {MAX_EVENTS_PER_SIGNATURE} events; sign each request afresh")]
    SignatureReused,
}

impl WebhookError {
    /// Its `outcome` label in `/metrics`.
    pub fn metric(&self) -> &'static str {
        match self {
            WebhookError::UnknownTenant(_) => "refused_unknown_tenant",
            WebhookError::Unauthorized(_) => "refused_unauthorized",
            WebhookError::BadRequest(_) | WebhookError::Body(_) => "refused_bad_request",
            WebhookError::TooLarge => "refused_too_large",
            WebhookError::BodyTimeout(_) => "refused_body_timeout",
            WebhookError::Unavailable(_) | WebhookError::NoSecret | WebhookError::Busy => "refused_unavailable",
            WebhookError::Unverifiable(_) => "refused_unverifiable",
            WebhookError::SignatureReused => "refused_signature_reused",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebhookError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebhookError::BadRequest(_) | WebhookError::Body(_) => StatusCode::BAD_REQUEST,
            WebhookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            WebhookError::Unavailable(_) | WebhookError::NoSecret | WebhookError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WebhookError::Unverifiable(_) => StatusCode::FORBIDDEN,
            WebhookError::SignatureReused => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        match &self {
            WebhookError::Busy => {
                resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            }
            WebhookError::SignatureReused => {
                resp.headers_mut().insert("retry-after", HeaderValue::from_static("30"));
            }
            WebhookError::Unavailable(_) | WebhookError::NoSecret => {
                resp.headers_mut().insert("retry-after", HeaderValue::from_static("30"));
            }
            // The rest of the body may never come: do not keep the connection.
            WebhookError::BodyTimeout(_) | WebhookError::TooLarge => {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// A body this small may be read without signature headers: JustCall's
/// setup ping is not documented to be signed.
const UNSIGNED_PING_BYTES: usize = 1024;

/// The webhook handler. Refusals an attacker can cause at will (401, 404)
/// are logged at warn, at most once a second, with how many were not.
pub async fn receive(State(state): State<AppState>, Path(tenant_id): Path<String>, headers: HeaderMap, body: Body) -> Response {
    use tracing::Instrument as _;
    let known = state.tenants.contains_key(&tenant_id).then_some(tenant_id.as_str());
    let span = crate::telemetry::span(|| tracing::info_span!("webhook", tenant = %tenant_id));
    match handle(&state, &tenant_id, &headers, body).instrument(span).await {
        Ok(response) => {
            let outcome = match response.status() {
                StatusCode::ACCEPTED => "accepted",
                _ => "duplicate_or_ping",
            };
            state.metrics.webhook(known, outcome);
            response
        }
        Err(e) => {
            state.metrics.webhook(known, e.metric());
            if matches!(e, WebhookError::UnknownTenant(_) | WebhookError::Unauthorized(_))
                && let Some(suppressed) = state.guards.refusal_log.check()
            {
                // Debug-formatted: the tenant is the caller's path segment, and
                // must not forge log lines with newlines or escapes.
                tracing::warn!(tenant = ?tenant_id, reason = ?e.to_string(), suppressed, "webhook refused");
            }
            e.into_response()
        }
    }
}

/// Everything that can be refused from the headers is refused before the
/// body is read: an unknown tenant, a declared length over the limit, missing
/// signature headers, and no room in the in-flight body budget.
async fn handle(state: &AppState, tenant_id: &str, headers: &HeaderMap, body: Body) -> Result<Response, WebhookError> {
    let tenant = state
        .tenants
        .get(tenant_id)
        .ok_or_else(|| WebhookError::UnknownTenant(tenant_id.to_string()))?
        .clone();
    let declared = declared_length(headers)?;
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(WebhookError::TooLarge);
    }
    if let Some(missing) = auth::missing_header(tenant.config.webhook_auth, headers)
        && declared.is_none_or(|n| n > UNSIGNED_PING_BYTES)
    {
        return Err(WebhookError::Unauthorized(AuthError::MissingHeader(missing)));
    }
    let body = read_body(state, body, declared).await?;

    // Decode first: the JustCall v1 signature covers the payload's `type`.
    let payload = match wire::decode(&body)? {
        wire::Body::Ping => {
            // The setup ping: no event to authenticate or dispatch.
            tracing::debug!(tenant = %tenant_id, "webhook ping");
            return Ok((StatusCode::OK, Json(json!({ "status": "ping" }))).into_response());
        }
        wire::Body::Payload(payload) => payload,
    };

    let cfg = &tenant.config;
    let now = Utc::now();
    let tolerance = state.config.signature_tolerance;
    let (mut delivery_id, mut v1_signature) = (None, None);
    match (cfg.webhook_auth, &cfg.webhook_secret) {
        (WebhookAuth::JustCallV1, Some(secret)) => {
            v1_signature = Some(auth::verify_justcall_v1(
                secret.expose(),
                &state.config.webhook_url(tenant_id),
                Some(payload.type_name()),
                headers,
                now,
                tolerance,
            )?);
        }
        (WebhookAuth::StandardWebhooks, Some(secret)) => {
            delivery_id = Some(auth::verify_standard_webhooks(secret.expose(), headers, &body, now, tolerance)?);
        }
        (WebhookAuth::None, _) => {}
        (_, None) => return Err(WebhookError::NoSecret),
    }

    let incoming = match wire::parse(&payload, cfg.default_country)? {
        Parsed::Ignored { type_name, reason } => {
            tracing::info!(tenant = %tenant_id, %type_name, %reason, "webhook ignored");
            return Ok((StatusCode::OK, Json(json!({ "status": "ignored", "reason": reason }))).into_response());
        }
        Parsed::Event(i) => *i,
    };
    if let Some(signature) = &v1_signature {
        // The v1 signature does not cover the payload: one header set may
        // carry only so many distinct events.
        if !state
            .guards
            .signature_uses
            .admit(tenant_id, signature, &incoming.dedupe_key, 2 * tolerance)
        {
            return Err(WebhookError::SignatureReused);
        }
    }
    let source = Source {
        dedupe_key: match delivery_id {
            Some(id) => format!("swh:{id}"),
            None => incoming.dedupe_key,
        },
        format: match incoming.format {
            Format::Seed => "seed",
            Format::V21 => "v2.1",
        },
    };
    match accept(state, tenant_id, incoming.event, source).await? {
        Acceptance::Duplicate { event_id } => {
            tracing::info!(tenant = %tenant_id, %event_id, "duplicate webhook acknowledged, not dispatched");
            Ok((StatusCode::OK, Json(json!({ "status": "duplicate", "event_id": event_id }))).into_response())
        }
        Acceptance::Unverifiable { reason } => {
            tracing::warn!(tenant = %tenant_id, %reason, "webhook refused: it cannot be verified with JustCall");
            Err(WebhookError::Unverifiable(reason))
        }
        Acceptance::Accepted(a) => {
            let (event, held) = (&a.event, a.held());
            tracing::info!(tenant = %tenant_id, event_id = %event.event_id, kind = event.kind.as_str(), deliveries = a.deliveries.len(), held, verifying = a.verifying, "event accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "status": "accepted", "event_id": event.event_id, "kind": event.kind.as_str(), "deliveries": a.deliveries.len(), "held": held, "verifying": a.verifying })),
            )
                .into_response())
        }
    }
}

/// The `Content-Length` a request declares, if any.
///
/// HTTP/1.1 gives a request with neither `Content-Length` nor
/// `Transfer-Encoding` no body: such a request (a bare setup ping) declares 0.
fn declared_length(headers: &HeaderMap) -> Result<Option<usize>, WebhookError> {
    match headers.get(header::CONTENT_LENGTH) {
        None if !headers.contains_key(header::TRANSFER_ENCODING) => Ok(Some(0)),
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| WebhookError::Body("content-length is not a number".into())),
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within the body timeout,
/// holding its share of the in-flight body budget (the declared length, or
/// the maximum when none is declared) while it does.
async fn read_body(state: &AppState, body: Body, declared: Option<usize>) -> Result<Bytes, WebhookError> {
    let share = u32::try_from(declared.unwrap_or(MAX_BODY_BYTES).max(1)).unwrap_or(u32::MAX);
    let _permit = state.guards.body_budget.try_acquire_many(share).map_err(|_| WebhookError::Busy)?;
    let limit = state.config.front_door.body_timeout;
    match tokio::time::timeout(limit, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(WebhookError::BodyTimeout(limit)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(WebhookError::TooLarge),
        Ok(Err(e)) => Err(WebhookError::Body(e.to_string())),
    }
}
