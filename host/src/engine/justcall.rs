//! The JustCall REST client: send, get and list SMS in either API dialect
//! (the guide's seed `/api/v2/texts/*` or JustCall's v2.1 `/texts*`), within
//! the tenant's own request budget, retrying 429 and 5xx as JustCall asks.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::config::{ApiDialect, TenantConfig};

/// Longest JustCall may take to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one idempotent request (the first plus retries).
pub const MAX_ATTEMPTS: u32 = 4;

/// A JustCall API failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JustCallError {
    /// JustCall answered with an error status.
    #[error("JustCall answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// JustCall's message, or the body.
        message: String,
    },
    /// No such message.
    #[error("message not found")]
    NotFound,
    /// No answer, and the request certainly did not reach JustCall.
    #[error("JustCall unreachable: {0}")]
    Unavailable(String),
    /// A send was made but its outcome is unknown (timeout, 5xx): JustCall
    /// may or may not have sent the SMS.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The tenant's request budget is spent for this long.
    #[error("rate limited for {} ms", .0.as_millis())]
    RateLimited(Duration),
    /// The answer could not be understood.
    #[error("unexpected answer from JustCall: {0}")]
    Decode(String),
    /// The request was refused before it was made (a malformed id); JustCall
    /// was not called.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Checks that `id` can name a JustCall message: 1 to 128 letters, digits,
/// `-` or `_`. Checked before any URL is built, so an id like `..` cannot
/// change the path the tenant's credentials are sent to.
pub fn check_message_id(id: &str) -> Result<(), JustCallError> {
    if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(());
    }
    let shown = crate::domain::cap(id, 64);
    Err(JustCallError::Invalid(format!(
        "message id `{}` must be 1 to 128 letters, digits, '-' or '_'",
        crate::domain::escape_controls(&shown)
    )))
}

/// A message as JustCall reports it, in dialect-neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiMessage {
    /// JustCall's id.
    pub id: String,
    /// Sender, as JustCall gives it.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub body: String,
    /// `inbound`/`outbound` (seed) or `Incoming`/`Outgoing` (v2.1).
    pub direction: String,
    /// Delivery status, if reported.
    pub status: Option<String>,
    /// When the message was created, if reported.
    pub created_at: Option<String>,
}

impl ApiMessage {
    /// Whether this is a message the tenant sent.
    pub fn outgoing(&self) -> bool {
        self.direction.eq_ignore_ascii_case("outbound") || self.direction.eq_ignore_ascii_case("outgoing")
    }
}

/// One tenant's JustCall API client.
#[derive(Clone)]
pub struct JustCallClient {
    dialect: ApiDialect,
    base: String,
    auth: HeaderValue,
    http: reqwest::Client,
    budget: Arc<DefaultDirectRateLimiter>,
    /// Set when JustCall said the budget is spent (`X-Rate-Limit-Remaining: 0`).
    blocked_until: Arc<Mutex<Option<Instant>>>,
    default_country: Option<crate::domain::Country>,
    /// Where requests are counted, under this tenant.
    metrics: Option<(Arc<crate::metrics::Metrics>, String)>,
}

impl std::fmt::Debug for JustCallClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JustCallClient")
            .field("dialect", &self.dialect)
            .field("base", &self.base)
            .finish()
    }
}

enum Attempt {
    Done(Value),
    Retry { after: Option<Duration>, error: JustCallError },
    Fail(JustCallError),
}

impl JustCallClient {
    /// A client for one tenant's account, sharing `http`'s connection pool.
    pub fn new(tenant: &TenantConfig, http: reqwest::Client) -> JustCallClient {
        let credentials = format!("{}:{}", tenant.justcall_api_key.expose(), tenant.justcall_api_secret.expose());
        let value = match tenant.justcall_api {
            ApiDialect::Seed => format!("Bearer {credentials}"),
            ApiDialect::V21 => credentials,
        };
        let mut auth = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        auth.set_sensitive(true);
        let per_minute = NonZeroU32::new(tenant.justcall_rate_per_minute).unwrap_or(NonZeroU32::MIN);
        JustCallClient {
            dialect: tenant.justcall_api,
            base: tenant.justcall_base_url.as_str().trim_end_matches('/').to_string(),
            auth,
            http,
            budget: Arc::new(RateLimiter::direct(Quota::per_minute(per_minute))),
            blocked_until: Arc::default(),
            default_country: tenant.default_country,
            metrics: None,
        }
    }

    /// Counts this client's requests, results, latency and budget waits in
    /// `metrics` under `tenant`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>, tenant: &str) -> JustCallClient {
        self.metrics = Some((metrics, tenant.to_string()));
        self
    }

    fn count(&self, result: &str, since: Instant) {
        if let Some((m, tenant)) = &self.metrics {
            m.justcall(tenant, result, since.elapsed().as_secs_f64());
        }
    }

    fn count_budget(&self, result: &str) {
        if let Some((m, tenant)) = &self.metrics {
            m.budget(tenant, result);
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits for the tenant's budget to allow one request, if it will before
    /// `deadline`.
    async fn take_budget(&self, deadline: Instant) -> Result<(), JustCallError> {
        loop {
            let blocked = *crate::sync::lock(&self.blocked_until);
            let wait = match blocked.filter(|b| *b > Instant::now()) {
                Some(until) => until - Instant::now(),
                None => match self.budget.check() {
                    Ok(()) => return Ok(()),
                    Err(not_until) => not_until.wait_time_from(DefaultClock::default().now()),
                },
            };
            if Instant::now() + wait > deadline {
                self.count_budget("exhausted");
                return Err(JustCallError::RateLimited(wait));
            }
            self.count_budget("waited");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, req: reqwest::RequestBuilder, deadline: Instant) -> Attempt {
        if let Err(e) = self.take_budget(deadline).await {
            return Attempt::Fail(e);
        }
        let timeout = deadline.saturating_duration_since(Instant::now()).min(REQUEST_TIMEOUT);
        let started = Instant::now();
        let sent = crate::engine::lanes::on_io(req.header(AUTHORIZATION, self.auth.clone()).timeout(timeout).send()).await;
        let result = match &sent {
            Ok(Ok(r)) if r.status().as_u16() == 429 => "429",
            Ok(Ok(r)) if r.status().is_success() => "2xx",
            Ok(Ok(r)) if r.status().is_server_error() => "5xx",
            Ok(Ok(_)) => "4xx",
            _ => "transport",
        };
        self.count(result, started);
        let resp = match sent {
            Err(closed) => return Attempt::Fail(JustCallError::Unavailable(closed.to_string())),
            Ok(sent) => sent,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Attempt::Retry {
                    after: None,
                    error: JustCallError::Unavailable(without_url(e)),
                };
            }
            // Refused while building: the request was never sent.
            Err(e) if e.is_builder() => return Attempt::Fail(JustCallError::Invalid(without_url(e))),
            Err(e) => return Attempt::Fail(JustCallError::Unknown(without_url(e))),
        };
        let status = resp.status();
        let after = retry_after(resp.headers(), status.as_u16());
        if status.is_success()
            && header_u64(resp.headers(), "x-rate-limit-remaining") == Some(0)
            && let Some(reset) = rate_limit_reset(resp.headers())
        {
            *crate::sync::lock(&self.blocked_until) = Some(Instant::now() + reset);
        }
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Attempt::Fail(JustCallError::Unknown(without_url(e))),
        };
        if status == reqwest::StatusCode::NOT_FOUND {
            return Attempt::Fail(JustCallError::NotFound);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_success() {
            return Attempt::Done(value);
        }
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let error = JustCallError::Status {
            status: status.as_u16(),
            message,
        };
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Attempt::Retry { after, error }
        } else {
            Attempt::Fail(error)
        }
    }

    /// Runs a request, retrying 429, 5xx and connection failures with
    /// backoff (or as long as JustCall's `Retry-After` asks) while the
    /// deadline allows. `idempotent = false` retries only what certainly did
    /// not act (429, connection refused) and returns a 5xx as it is, for the
    /// caller to reconcile; a timeout is [`JustCallError::Unknown`].
    async fn call(&self, make: impl Fn() -> reqwest::RequestBuilder, idempotent: bool, deadline: Instant) -> Result<Value, JustCallError> {
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=MAX_ATTEMPTS {
            let (after, error) = match self.attempt(make(), deadline).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { after, error } => (after, error),
            };
            let status = match &error {
                JustCallError::Status { status, .. } => *status,
                _ => 0,
            };
            if status >= 500 && !idempotent {
                // JustCall answered, so it is done with the request, but a
                // 5xx does not say whether it acted: the caller reconciles.
                return Err(error);
            }
            let wait = after.unwrap_or(backoff);
            backoff *= 2;
            if attempt == MAX_ATTEMPTS || Instant::now() + wait >= deadline {
                return Err(match status {
                    429 => JustCallError::RateLimited(wait),
                    _ => error,
                });
            }
            tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying JustCall request");
            tokio::time::sleep(wait).await;
        }
        unreachable!("the last attempt returns")
    }

    /// Sends an SMS; returns JustCall's message id (empty if JustCall gave none).
    pub async fn send(&self, from: &str, to: &str, body: &str, media_urls: &[String], deadline: Instant) -> Result<String, JustCallError> {
        let (url, payload) = match self.dialect {
            ApiDialect::Seed => {
                let mut b = json!({ "from": from, "to": to, "body": body });
                if !media_urls.is_empty() {
                    b["media_urls"] = json!(media_urls);
                }
                (self.url("/api/v2/texts/new"), b)
            }
            ApiDialect::V21 => {
                let mut b = json!({ "justcall_number": from, "contact_number": to, "body": body });
                if !media_urls.is_empty() {
                    b["media_url"] = json!(media_urls.join(","));
                }
                (self.url("/texts/new"), b)
            }
        };
        let v = self.call(|| self.http.post(&url).json(&payload), false, deadline).await?;
        let id = find_id(&v);
        if id.is_none() {
            tracing::warn!("JustCall accepted an SMS but returned no message id");
        }
        Ok(id.unwrap_or_default())
    }

    /// Fetches one message.
    pub async fn get(&self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError> {
        check_message_id(id)?;
        let path = match self.dialect {
            // Checked above: letters, digits, '-' and '_' need no encoding.
            ApiDialect::Seed => format!("/api/v2/texts/{id}"),
            ApiDialect::V21 => format!("/texts/{id}"),
        };
        let url = self.url(&path);
        let v = self.call(|| self.http.get(&url), true, deadline).await?;
        let item = match v.get("data") {
            Some(Value::Array(a)) => a.first().cloned().ok_or(JustCallError::NotFound)?,
            Some(d @ Value::Object(_)) => d.clone(),
            _ => v,
        };
        parse_message(&item).ok_or_else(|| JustCallError::Decode("message has no id".into()))
    }

    /// Lists messages, newest first; `page` starts at 1.
    pub async fn list(&self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.list_where(page, per_page, &[], deadline).await
    }

    async fn list_where(
        &self,
        page: u32,
        per_page: u32,
        filters: &[(&str, String)],
        deadline: Instant,
    ) -> Result<Vec<ApiMessage>, JustCallError> {
        let path = match self.dialect {
            ApiDialect::Seed => "/api/v2/texts/list",
            ApiDialect::V21 => "/texts",
        };
        let url = self.url(path);
        let mut query: Vec<(&str, String)> = vec![("page", page.max(1).to_string()), ("per_page", per_page.clamp(1, 100).to_string())];
        query.extend(filters.iter().cloned());
        let v = self.call(|| self.http.get(&url).query(&query), true, deadline).await?;
        let items = v
            .get("data")
            .and_then(Value::as_array)
            .or_else(|| v.as_array())
            .ok_or_else(|| JustCallError::Decode("no `data` list".into()))?;
        Ok(items.iter().filter_map(parse_message).collect())
    }

    /// Messages the tenant sent from `from` to `to` with exactly `body` since
    /// `since` (less a clock-skew allowance), newest first: the candidates
    /// for a send whose outcome is unknown. The v2.1 API filters on the
    /// server; the seed API lists recent pages and is filtered here.
    pub async fn find_sent(
        &self,
        from: &str,
        to: &str,
        body: &str,
        since: chrono::DateTime<chrono::Utc>,
        deadline: Instant,
    ) -> Result<Vec<ApiMessage>, JustCallError> {
        const SKEW: chrono::Duration = chrono::Duration::minutes(5);
        const PAGES: u32 = 10;
        let earliest = since - SKEW;
        let filters: Vec<(&str, String)> = match self.dialect {
            ApiDialect::Seed => vec![],
            ApiDialect::V21 => vec![
                ("contact_number", to.trim_start_matches('+').to_string()),
                ("justcall_number", from.trim_start_matches('+').to_string()),
                ("from_datetime", earliest.format("%Y-%m-%d %H:%M:%S").to_string()),
                ("sms_direction", "Outgoing".to_string()),
            ],
        };
        let e164 = |n: &str| crate::domain::normalize_e164(n, self.default_country).ok();
        let same = |a: &str, b: &str| e164(a).is_some_and(|a| Some(a) == e164(b));
        let mut out = Vec::new();
        for page in 1..=PAGES {
            let batch = self.list_where(page, 100, &filters, deadline).await?;
            // A short page is the last one.
            let mut older = batch.len() < 100;
            for m in batch {
                let created = m.created_at.as_deref().and_then(parse_time);
                if created.is_some_and(|c| c < earliest) {
                    older = true;
                    continue;
                }
                if m.outgoing() && m.body == body && same(&m.to, to) && same(&m.from, from) {
                    out.push(m);
                }
            }
            if older || self.dialect == ApiDialect::V21 {
                break;
            }
        }
        Ok(out)
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.to_utc())
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
                .ok()
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc())
        })
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `X-Rate-Limit-Reset` as a wait: seconds to go, or a Unix time.
fn rate_limit_reset(h: &HeaderMap) -> Option<Duration> {
    let v = header_u64(h, "x-rate-limit-reset").or_else(|| header_u64(h, "x-rate-limit-burst-reset"))?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    Some(Duration::from_secs(if v > 1_000_000_000 { v.saturating_sub(now) } else { v }))
}

/// How long JustCall asked us to wait: `Retry-After` (seconds or an HTTP
/// date), else on 429 the rate-limit reset.
fn retry_after(h: &HeaderMap, status: u16) -> Option<Duration> {
    if let Some(v) = h.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        if let Ok(secs) = v.trim().parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(v.trim()) {
            return Some((at.to_utc() - chrono::Utc::now()).to_std().unwrap_or_default());
        }
    }
    if status == 429 { rate_limit_reset(h) } else { None }
}

fn without_url(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.without_url().to_string()
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn find_id(v: &Value) -> Option<String> {
    text(v, "id")
        .or_else(|| text(v, "message_id"))
        .or_else(|| v.get("data").and_then(|d| text(d, "id")))
        .or_else(|| v.get("data").and_then(|d| d.get(0)).and_then(|d| text(d, "id")))
}

/// Reads a message in either dialect's shape.
fn parse_message(v: &Value) -> Option<ApiMessage> {
    let id = text(v, "id")?;
    if v.get("sms_info").is_some() || v.get("contact_number").is_some() {
        let outgoing = text(v, "direction").is_some_and(|d| d.eq_ignore_ascii_case("outgoing"));
        let contact = text(v, "contact_number").unwrap_or_default();
        let line = text(v, "justcall_number").unwrap_or_default();
        let (from, to) = if outgoing { (line, contact) } else { (contact, line) };
        let created_at = match (text(v, "sms_date"), text(v, "sms_time")) {
            (Some(d), Some(t)) => Some(format!("{d}T{t}Z")),
            _ => None,
        };
        return Some(ApiMessage {
            id,
            from,
            to,
            body: v.get("sms_info").and_then(|i| text(i, "body")).unwrap_or_default(),
            direction: text(v, "direction").unwrap_or_default(),
            status: text(v, "delivery_status"),
            created_at,
        });
    }
    Some(ApiMessage {
        id,
        from: text(v, "from").unwrap_or_default(),
        to: text(v, "to").unwrap_or_default(),
        body: text(v, "body").unwrap_or_default(),
        direction: text(v, "direction").unwrap_or_default(),
        status: text(v, "status"),
        created_at: text(v, "created_at"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_messages_in_both_shapes() {
        assert_eq!(find_id(&json!({"id": 5})).as_deref(), Some("5"));
        assert_eq!(find_id(&json!({"data": [{"id": "a"}]})).as_deref(), Some("a"));
        assert_eq!(find_id(&json!({"status": "success"})), None);
        let m = parse_message(
            &json!({"id": 9, "contact_number": "+1555", "justcall_number": "+1512", "direction": "Outgoing", "sms_info": {"body": "x"}}),
        )
        .unwrap();
        assert_eq!((m.from.as_str(), m.to.as_str(), m.body.as_str()), ("+1512", "+1555", "x"));
        assert!(m.outgoing());
    }

    #[test]
    fn retry_after_in_seconds_dates_and_rate_limit_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, 503), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-rate-limit-reset", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, 429), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&h, 500), None);
        let at = (chrono::Utc::now() + chrono::Duration::seconds(60)).timestamp().to_string();
        h.insert("x-rate-limit-reset", HeaderValue::from_str(&at).unwrap());
        assert!(retry_after(&h, 429).is_some_and(|d| d > Duration::from_secs(50) && d <= Duration::from_secs(60)));
        assert!(parse_time("2026-03-12 14:30:00").is_some() && parse_time("2026-03-12T14:30:00.5Z").is_some());
    }
}
