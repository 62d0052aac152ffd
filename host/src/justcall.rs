//! The JustCall REST client: send, get and list SMS in either API dialect
//! (the guide's seed `/api/v2/texts/*` or JustCall's v2.1 `/texts*`).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

use crate::config::{ApiDialect, TenantConfig};

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
    /// No answer (connection failure or timeout).
    #[error("JustCall unreachable: {0}")]
    Unavailable(String),
    /// The answer could not be understood.
    #[error("unexpected answer from JustCall: {0}")]
    Decode(String),
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

/// One tenant's JustCall API client.
#[derive(Clone)]
pub struct JustCallClient {
    dialect: ApiDialect,
    base: String,
    auth: HeaderValue,
    http: reqwest::Client,
}

impl std::fmt::Debug for JustCallClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JustCallClient")
            .field("dialect", &self.dialect)
            .field("base", &self.base)
            .finish()
    }
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
        JustCallClient {
            dialect: tenant.justcall_api,
            base: tenant.justcall_base_url.as_str().trim_end_matches('/').to_string(),
            auth,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, JustCallError> {
        let resp = req
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| JustCallError::Unavailable(without_url(e)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| JustCallError::Unavailable(without_url(e)))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(JustCallError::NotFound);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !status.is_success() {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(JustCallError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(value)
    }

    /// Sends an SMS; returns JustCall's message id (empty if JustCall gave none).
    pub async fn send(&self, from: &str, to: &str, body: &str, media_urls: &[String]) -> Result<String, JustCallError> {
        let req = match self.dialect {
            ApiDialect::Seed => {
                let mut b = json!({ "from": from, "to": to, "body": body });
                if !media_urls.is_empty() {
                    b["media_urls"] = json!(media_urls);
                }
                self.http.post(self.url("/api/v2/texts/new")).json(&b)
            }
            ApiDialect::V21 => {
                let mut b = json!({ "justcall_number": from, "contact_number": to, "body": body });
                if !media_urls.is_empty() {
                    b["media_url"] = json!(media_urls.join(","));
                }
                self.http.post(self.url("/texts/new")).json(&b)
            }
        };
        let v = self.call(req).await?;
        let id = find_id(&v);
        if id.is_none() {
            tracing::warn!("JustCall accepted an SMS but returned no message id");
        }
        Ok(id.unwrap_or_default())
    }

    /// Fetches one message.
    pub async fn get(&self, id: &str) -> Result<ApiMessage, JustCallError> {
        let path = match self.dialect {
            ApiDialect::Seed => format!("/api/v2/texts/{}", urlencode(id)),
            ApiDialect::V21 => format!("/texts/{}", urlencode(id)),
        };
        let v = self.call(self.http.get(self.url(&path))).await?;
        let item = match v.get("data") {
            Some(Value::Array(a)) => a.first().cloned().ok_or(JustCallError::NotFound)?,
            Some(d @ Value::Object(_)) => d.clone(),
            _ => v,
        };
        parse_message(&item).ok_or_else(|| JustCallError::Decode("message has no id".into()))
    }

    /// Lists messages; `page` starts at 1.
    pub async fn list(&self, page: u32, per_page: u32) -> Result<Vec<ApiMessage>, JustCallError> {
        let path = match self.dialect {
            ApiDialect::Seed => "/api/v2/texts/list",
            ApiDialect::V21 => "/texts",
        };
        let req = self
            .http
            .get(self.url(path))
            .query(&[("page", page.max(1)), ("per_page", per_page.clamp(1, 100))]);
        let v = self.call(req).await?;
        let items = v
            .get("data")
            .and_then(Value::as_array)
            .or_else(|| v.as_array())
            .ok_or_else(|| JustCallError::Decode("no `data` list".into()))?;
        Ok(items.iter().filter_map(parse_message).collect())
    }
}

fn without_url(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.without_url().to_string()
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
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
    }
}
