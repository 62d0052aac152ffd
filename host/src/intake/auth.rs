//! Webhook authentication: JustCall's `x-justcall-signature` v1 scheme and
//! Standard Webhooks, both HMAC-SHA256 with constant-time comparison.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

use crate::config::WebhookAuth;

type HmacSha256 = Hmac<Sha256>;

/// JavaScript's `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Header carrying JustCall's signature.
pub const JC_SIGNATURE: &str = "x-justcall-signature";
/// Header carrying JustCall's signature version.
pub const JC_SIGNATURE_VERSION: &str = "x-justcall-signature-version";
/// Header carrying JustCall's request timestamp.
pub const JC_TIMESTAMP: &str = "x-justcall-request-timestamp";
/// Standard Webhooks message id header.
pub const SW_ID: &str = "webhook-id";
/// Standard Webhooks timestamp header.
pub const SW_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks signature header.
pub const SW_SIGNATURE: &str = "webhook-signature";

/// Why a webhook was not authenticated. Every variant maps to HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The signature does not match.
    #[error("signature does not match")]
    BadSignature,
    /// The signature header is not in the expected form.
    #[error("malformed {header}: {reason}")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The timestamp is outside the accepted window.
    #[error("timestamp is {0} s away from now, outside the accepted window")]
    Stale(i64),
    /// The payload has no `type`, which the JustCall v1 signature covers.
    #[error("payload has no `type` to verify the signature against")]
    NoType,
}

/// The JustCall v1 signature: HMAC-SHA256 keyed with the API secret over
/// `secret|encodeURIComponent(webhook_url)|type|timestamp`, lowercase hex.
pub fn justcall_v1_signature(secret: &str, webhook_url: &str, type_name: &str, timestamp: &str) -> String {
    hex::encode(justcall_v1_mac(secret, webhook_url, type_name, timestamp).finalize().into_bytes())
}

fn justcall_v1_mac(secret: &str, webhook_url: &str, type_name: &str, timestamp: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    let encoded = utf8_percent_encode(webhook_url, URI_COMPONENT).to_string();
    mac.update(format!("{secret}|{encoded}|{type_name}|{timestamp}").as_bytes());
    mac
}

/// Parses JustCall's timestamp header: Unix seconds (or milliseconds), or
/// `YYYY-MM-DD HH:MM:SS` in UTC as in JustCall's example, or RFC 3339.
pub fn parse_justcall_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = raw.parse().ok()?;
        return if n > 100_000_000_000 {
            DateTime::from_timestamp_millis(n)
        } else {
            DateTime::from_timestamp(n, 0)
        };
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S") {
        return Some(dt.and_utc());
    }
    DateTime::parse_from_rfc3339(raw).ok().map(|d| d.with_timezone(&Utc))
}

fn within(ts: DateTime<Utc>, now: DateTime<Utc>, tolerance: Duration) -> Result<(), AuthError> {
    let skew = (now - ts).num_seconds();
    if skew.unsigned_abs() > tolerance.as_secs() {
        Err(AuthError::Stale(skew))
    } else {
        Ok(())
    }
}

/// The headers `scheme` cannot verify a webhook without, in the order its
/// verifier reads them.
pub fn required_headers(scheme: WebhookAuth) -> &'static [&'static str] {
    match scheme {
        WebhookAuth::JustCallV1 => &[JC_SIGNATURE, JC_TIMESTAMP],
        WebhookAuth::StandardWebhooks => &[SW_ID, SW_TIMESTAMP, SW_SIGNATURE],
        WebhookAuth::None => &[],
    }
}

/// The first header `scheme` requires that `headers` lacks: checked before a
/// body is read, so an unsigned request costs no more than its headers.
pub fn missing_header(scheme: WebhookAuth, headers: &impl HeaderLookup) -> Option<&'static str> {
    required_headers(scheme).iter().copied().find(|h| headers.header(h).is_none())
}

/// Headers as the verifiers need them: a lookup by lowercase name.
pub trait HeaderLookup {
    /// The header's value, if present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for axum::http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Verifies a JustCall v1 signed webhook; returns the signature that
/// verified, as lowercase hex (what bounds how many events it may carry).
pub fn verify_justcall_v1(
    secret: &str,
    webhook_url: &str,
    type_name: Option<&str>,
    headers: &impl HeaderLookup,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<String, AuthError> {
    let signature = headers.header(JC_SIGNATURE).ok_or(AuthError::MissingHeader(JC_SIGNATURE))?;
    if let Some(v) = headers.header(JC_SIGNATURE_VERSION)
        && !v.trim().eq_ignore_ascii_case("v1")
    {
        return Err(AuthError::Malformed {
            header: JC_SIGNATURE_VERSION,
            reason: format!("version `{v}` is not supported (only v1)"),
        });
    }
    let timestamp = headers.header(JC_TIMESTAMP).ok_or(AuthError::MissingHeader(JC_TIMESTAMP))?;
    let type_name = type_name.ok_or(AuthError::NoType)?;
    let sig = hex::decode(signature.trim()).map_err(|_| AuthError::BadSignature)?;
    justcall_v1_mac(secret, webhook_url, type_name, timestamp)
        .verify_slice(&sig)
        .map_err(|_| AuthError::BadSignature)?;
    let ts = parse_justcall_timestamp(timestamp).ok_or_else(|| AuthError::Malformed {
        header: JC_TIMESTAMP,
        reason: format!("`{timestamp}` is not a timestamp"),
    })?;
    within(ts, now, tolerance)?;
    Ok(hex::encode(sig))
}

/// The Standard Webhooks key: the base64 after `whsec_`, or the secret's bytes
/// when it has no such prefix.
fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => BASE64.decode(b64).unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

fn standard_webhooks_mac(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&standard_webhooks_key(secret)).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value (`v1,<base64>`) for a message.
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1,{}",
        BASE64.encode(standard_webhooks_mac(secret, id, timestamp, body).finalize().into_bytes())
    )
}

/// Verifies a Standard Webhooks message; returns its `webhook-id`.
pub fn verify_standard_webhooks(
    secret: &str,
    headers: &impl HeaderLookup,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<String, AuthError> {
    let id = headers.header(SW_ID).ok_or(AuthError::MissingHeader(SW_ID))?;
    let timestamp = headers.header(SW_TIMESTAMP).ok_or(AuthError::MissingHeader(SW_TIMESTAMP))?;
    let signatures = headers.header(SW_SIGNATURE).ok_or(AuthError::MissingHeader(SW_SIGNATURE))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| AuthError::Malformed {
        header: SW_TIMESTAMP,
        reason: format!("`{timestamp}` is not Unix seconds"),
    })?;
    let ts = DateTime::from_timestamp(ts, 0).ok_or_else(|| AuthError::Malformed {
        header: SW_TIMESTAMP,
        reason: "out of range".into(),
    })?;
    within(ts, now, tolerance)?;
    let mac = standard_webhooks_mac(secret, id, timestamp, body);
    // The header may list several space-separated signatures (key rotation);
    // one valid v1 signature suffices.
    let mut saw_v1 = false;
    for candidate in signatures.split_ascii_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else { continue };
        saw_v1 = true;
        if let Ok(sig) = BASE64.decode(b64)
            && mac.clone().verify_slice(&sig).is_ok()
        {
            return Ok(id.to_string());
        }
    }
    if saw_v1 {
        Err(AuthError::BadSignature)
    } else {
        Err(AuthError::Malformed {
            header: SW_SIGNATURE,
            reason: "no `v1,<base64>` signature".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    impl HeaderLookup for HashMap<&'static str, String> {
        fn header(&self, name: &str) -> Option<&str> {
            self.get(name).map(String::as_str)
        }
    }

    const SECRET: &str = "ea39089c40790e9dc7a080ec95e849b8fa0fa5fb";
    const URL: &str = "https://webhook.site/3bcea770-370a-4b09-8b66-426f687e08a4";
    const TS: &str = "2024-03-21 17:08:22";
    const SIG: &str = "56761bae5b27a784a3ddd2af828bc5def7176bc0a8650199b04c737bd39bbecf";

    fn at(ts: &str) -> DateTime<Utc> {
        parse_justcall_timestamp(ts).unwrap()
    }

    #[test]
    fn justcall_published_test_vector() {
        assert_eq!(justcall_v1_signature(SECRET, URL, "call.completed", TS), SIG);
    }

    #[test]
    fn justcall_verify_accepts_vector_and_rejects_tampering() {
        let tol = Duration::from_secs(300);
        let mut h = HashMap::from([
            (JC_SIGNATURE, SIG.to_string()),
            (JC_TIMESTAMP, TS.to_string()),
            (JC_SIGNATURE_VERSION, "v1".to_string()),
        ]);
        assert_eq!(
            verify_justcall_v1(SECRET, URL, Some("call.completed"), &h, at(TS), tol),
            Ok(SIG.to_string())
        );
        assert_eq!(
            verify_justcall_v1(SECRET, URL, Some("sms.received"), &h, at(TS), tol),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_justcall_v1("other", URL, Some("call.completed"), &h, at(TS), tol),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify_justcall_v1(SECRET, URL, Some("call.completed"), &h, at("2024-03-21 17:20:00"), tol),
            Err(AuthError::Stale(_))
        ));
        for odd in ["", "abc", "zz", &SIG[..63], &format!("{SIG}00")] {
            h.insert(JC_SIGNATURE, odd.to_string());
            assert_eq!(
                verify_justcall_v1(SECRET, URL, Some("call.completed"), &h, at(TS), tol),
                Err(AuthError::BadSignature),
                "{odd:?}"
            );
        }
        h.remove(JC_SIGNATURE);
        assert_eq!(
            verify_justcall_v1(SECRET, URL, Some("call.completed"), &h, at(TS), tol),
            Err(AuthError::MissingHeader(JC_SIGNATURE))
        );
    }

    #[test]
    fn justcall_timestamps() {
        assert_eq!(at("1711040902"), at("2024-03-21 17:08:22"));
        assert_eq!(at("1711040902000"), at("2024-03-21T17:08:22Z"));
        assert!(parse_justcall_timestamp("yesterday").is_none());
    }

    #[test]
    fn standard_webhooks_roundtrip_and_odd_inputs() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let body = br#"{"event":"sms.received"}"#;
        let sig = standard_webhooks_signature(secret, "msg_1", &ts, body);
        let tol = Duration::from_secs(300);
        let mut h = HashMap::from([
            (SW_ID, "msg_1".to_string()),
            (SW_TIMESTAMP, ts.clone()),
            (SW_SIGNATURE, format!("v1,bogus {sig}")),
        ]);
        assert_eq!(verify_standard_webhooks(secret, &h, body, now, tol).as_deref(), Ok("msg_1"));
        assert_eq!(verify_standard_webhooks(secret, &h, b"{}", now, tol), Err(AuthError::BadSignature));
        for odd in ["v1,", "v1", "v2,abc", "", "v1,====", "v1,YQ"] {
            h.insert(SW_SIGNATURE, odd.to_string());
            assert!(verify_standard_webhooks(secret, &h, body, now, tol).is_err(), "{odd:?}");
        }
        h.insert(SW_SIGNATURE, sig);
        assert!(matches!(
            verify_standard_webhooks(secret, &h, body, now + chrono::Duration::seconds(301), tol),
            Err(AuthError::Stale(_))
        ));
    }
}
