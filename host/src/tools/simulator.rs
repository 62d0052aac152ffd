//! Dev mode's stand-ins for the outside world: a JustCall API simulator
//! (both dialects: send, list, get, with auth checks, messages received from
//! contacts, and injectable faults: refusals, 5xx after sending, stalls, an
//! outage) mounted at `/justcall`, and a request
//! sink at `/dev/sink/{name}` that plays a CRM or booking system. Like
//! JustCall, it can post `sms.sent` and delivered statuses back to the
//! sending tenant's webhook. The tests use the same simulator as their JustCall.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Secret;
use crate::tools::send::StatusReports;

#[derive(Debug, Clone)]
struct SimMessage {
    id: u64,
    outgoing: bool,
    from: String,
    to: String,
    body: String,
    media_urls: Vec<String>,
    created_at: chrono::DateTime<Utc>,
}

impl SimMessage {
    fn seed(&self) -> Value {
        json!({
            "id": self.id.to_string(), "from": self.from, "to": self.to, "body": self.body,
            "media_urls": self.media_urls, "direction": if self.outgoing { "outbound" } else { "inbound" },
            "status": if self.outgoing { "sent" } else { "received" },
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        })
    }

    fn v21(&self) -> Value {
        let (line, contact) = if self.outgoing {
            (&self.from, &self.to)
        } else {
            (&self.to, &self.from)
        };
        json!({
            "id": self.id, "justcall_number": line.trim_start_matches('+'), "contact_number": contact.trim_start_matches('+'),
            "direction": if self.outgoing { "Outgoing" } else { "Incoming" },
            "delivery_status": if self.outgoing { "sent" } else { "received" }, "medium": "SMS",
            "sms_date": self.created_at.format("%Y-%m-%d").to_string(),
            "sms_time": self.created_at.format("%H:%M:%S").to_string(),
            "sms_info": { "body": self.body, "is_mms": (!self.media_urls.is_empty()).to_string(), "mms": self.media_urls },
        })
    }
}

/// How the simulator answers a send: fault injection for tests and for
/// trying a plugin against a misbehaving JustCall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Refuse with this status (and `Retry-After` seconds), sending nothing.
    Refuse(u16, Option<u64>),
    /// Send the SMS, then answer with this error status anyway.
    SendThenFail(u16),
    /// Send the SMS, then take this long to answer.
    SendThenStall(Duration),
    /// Take this long, then answer 504 without sending.
    StallWithoutSending(Duration),
}

/// A fault as `POST /justcall/faults` takes it, e.g.
/// `[{"refuse": {"status": 429, "retry_after_secs": 2}}, {"send_then_fail": {"status": 502}}]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum FaultSpec {
    Refuse {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    SendThenFail {
        status: u16,
    },
    SendThenStall {
        ms: u64,
    },
    StallWithoutSending {
        ms: u64,
    },
}

impl FaultSpec {
    fn fault(self) -> Result<Fault, String> {
        let status = |s: u16| match s {
            400..=599 => Ok(s),
            _ => Err(format!("status {s} is not an error status (400..=599)")),
        };
        Ok(match self {
            FaultSpec::Refuse {
                status: s,
                retry_after_secs,
            } => Fault::Refuse(status(s)?, retry_after_secs),
            FaultSpec::SendThenFail { status: s } => Fault::SendThenFail(status(s)?),
            FaultSpec::SendThenStall { ms } => Fault::SendThenStall(Duration::from_millis(ms)),
            FaultSpec::StallWithoutSending { ms } => Fault::StallWithoutSending(Duration::from_millis(ms)),
        })
    }
}

/// One SMS the simulator sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    /// Its message id.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub body: String,
}

#[derive(Debug, Default)]
struct SimState {
    messages: Vec<SimMessage>,
    sink: Vec<(String, Value)>,
    faults: VecDeque<Fault>,
    latency: Duration,
    unavailable: bool,
    send_requests: usize,
    list_requests: usize,
    get_requests: usize,
}

/// The simulator; clones share state.
#[derive(Debug, Clone)]
pub struct Simulator {
    credentials: Arc<Vec<(Secret, Secret)>>,
    state: Arc<Mutex<SimState>>,
    reports: Option<Arc<StatusReports>>,
}

#[derive(Deserialize)]
struct Paging {
    page: Option<usize>,
    per_page: Option<usize>,
}

#[derive(Deserialize)]
struct SeedSend {
    from: String,
    to: String,
    body: String,
    #[serde(default)]
    media_urls: Vec<String>,
}

#[derive(Deserialize)]
struct V21Send {
    justcall_number: String,
    contact_number: String,
    body: String,
    #[serde(default)]
    media_url: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "status": "error", "message": message }))).into_response()
}

impl Simulator {
    /// A simulator that accepts these (key, secret) pairs.
    pub fn new(credentials: Vec<(Secret, Secret)>) -> Simulator {
        Simulator {
            credentials: Arc::new(credentials),
            state: Arc::default(),
            reports: None,
        }
    }

    /// Like JustCall, posts `sms.sent` and then the delivered status of
    /// each SMS it sends back to the sending tenant's webhook.
    pub fn with_status_reports(mut self, reports: StatusReports) -> Simulator {
        self.reports = Some(Arc::new(reports));
        self
    }

    /// The JustCall API routes, to be nested at `/justcall`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v2/texts/new", post(seed_send))
            .route("/api/v2/texts/list", get(seed_list))
            .route("/api/v2/texts/{id}", get(seed_get))
            .route("/v2.1/texts/new", post(v21_send))
            .route("/v2.1/texts", get(v21_list))
            .route("/v2.1/texts/{id}", get(v21_get))
            .route("/faults", post(faults_post))
            .with_state(self.clone())
    }

    /// The request sink, to be nested at `/dev`.
    pub fn sink_router(&self) -> Router {
        Router::new()
            .route("/sink/{name}", post(sink_post).get(sink_list))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap, bearer: bool) -> bool {
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let creds = if bearer {
            match value.strip_prefix("Bearer ") {
                Some(c) => c,
                None => return false,
            }
        } else {
            value
        };
        self.credentials
            .iter()
            .any(|(k, s)| creds == format!("{}:{}", k.expose(), s.expose()))
    }

    /// Answers the next sends with these faults, in order.
    pub fn fail_next(&self, faults: &[Fault]) {
        crate::sync::lock(&self.state).faults.extend(faults.iter().copied());
    }

    /// Takes this long to answer each send, after sending it.
    pub fn set_latency(&self, latency: Duration) {
        crate::sync::lock(&self.state).latency = latency;
    }

    /// Every SMS sent, oldest first.
    pub fn sent(&self) -> Vec<SentSms> {
        crate::sync::lock(&self.state)
            .messages
            .iter()
            .filter(|m| m.outgoing)
            .map(|m| SentSms {
                id: m.id.to_string(),
                from: m.from.clone(),
                to: m.to.clone(),
                body: m.body.clone(),
            })
            .collect()
    }

    /// How many (send, list) requests arrived, authorized ones only.
    pub fn requests(&self) -> (usize, usize) {
        let st = crate::sync::lock(&self.state);
        (st.send_requests, st.list_requests)
    }

    /// Sends a message unless a queued fault says otherwise; `Err` is the
    /// answer to give instead of the dialect's success.
    async fn send(&self, from: String, to: String, body: String, media_urls: Vec<String>, v21: bool) -> Result<SimMessage, Response> {
        if let Some(resp) = self.down() {
            return Err(resp);
        }
        let fault = {
            let mut st = crate::sync::lock(&self.state);
            st.send_requests += 1;
            st.faults.pop_front()
        };
        match fault {
            Some(Fault::StallWithoutSending(d)) => {
                tokio::time::sleep(d).await;
                return Err(error(StatusCode::GATEWAY_TIMEOUT, "timed out"));
            }
            Some(Fault::Refuse(status, retry_after)) => {
                let mut resp = error(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "refused");
                if let Some(v) = retry_after.and_then(|s| axum::http::HeaderValue::from_str(&s.to_string()).ok()) {
                    resp.headers_mut().insert("retry-after", v);
                }
                return Err(resp);
            }
            _ => {}
        }
        let m = self.store(true, from, to, body, media_urls);
        if let Some(reports) = &self.reports {
            reports.sent(&m.id.to_string(), &m.from, &m.to, &m.body, v21);
        }
        let latency = crate::sync::lock(&self.state).latency;
        tokio::time::sleep(latency).await;
        match fault {
            Some(Fault::SendThenFail(status)) => Err(error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                "upstream trouble",
            )),
            Some(Fault::SendThenStall(d)) => {
                tokio::time::sleep(d).await;
                Ok(m)
            }
            _ => Ok(m),
        }
    }

    /// Records an SMS a contact sent to one of the tenant's numbers, as
    /// JustCall would hold it; returns its id (for the webhook about it).
    pub fn receive(&self, contact: &str, line: &str, body: &str) -> String {
        let m = self.store(false, contact.to_string(), line.to_string(), body.to_string(), Vec::new());
        m.id.to_string()
    }

    /// While on, every API request is answered 503: JustCall is down.
    pub fn set_unavailable(&self, on: bool) {
        crate::sync::lock(&self.state).unavailable = on;
    }

    /// How many single-message lookups (`GET …/texts/{id}`) were made.
    pub fn get_requests(&self) -> usize {
        crate::sync::lock(&self.state).get_requests
    }

    fn down(&self) -> Option<Response> {
        crate::sync::lock(&self.state)
            .unavailable
            .then(|| error(StatusCode::SERVICE_UNAVAILABLE, "JustCall is down (simulated)"))
    }

    /// Answers a lookup by id (counted), the message as `render` puts it.
    fn lookup(&self, id: &str, render: impl Fn(&SimMessage) -> Value) -> Response {
        if let Some(resp) = self.down() {
            return resp;
        }
        crate::sync::lock(&self.state).get_requests += 1;
        match self.find(id) {
            Some(m) => Json(json!({ "status": "success", "data": render(&m) })).into_response(),
            None => error(StatusCode::NOT_FOUND, "message not found"),
        }
    }

    /// Keeps a message: one the tenant sent (`outgoing`), or received.
    fn store(&self, outgoing: bool, from: String, to: String, body: String, media_urls: Vec<String>) -> SimMessage {
        let mut st = crate::sync::lock(&self.state);
        let m = SimMessage {
            id: 100_000 + st.messages.len() as u64 + 1,
            outgoing,
            from,
            to,
            body,
            media_urls,
            created_at: Utc::now(),
        };
        if outgoing {
            tracing::info!(target: "justcall_simulator", id = m.id, from = %m.from, to = %m.to, body = %m.body, "simulated SMS sent");
        }
        st.messages.push(m.clone());
        m
    }

    fn page(&self, p: &Paging) -> Vec<SimMessage> {
        let mut st = crate::sync::lock(&self.state);
        st.list_requests += 1;
        let per = p.per_page.unwrap_or(20).clamp(1, 100);
        let skip = (p.page.unwrap_or(1).max(1) - 1) * per;
        st.messages.iter().rev().skip(skip).take(per).cloned().collect()
    }

    fn find(&self, id: &str) -> Option<SimMessage> {
        let st = crate::sync::lock(&self.state);
        st.messages.iter().find(|m| m.id.to_string() == id).cloned()
    }
}

fn body_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &format!("invalid request body: {e}"))))
}

async fn seed_send(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    if !sim.authorized(&headers, true) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid API key or secret (expected `Authorization: Bearer key:secret`)",
        );
    }
    let req: SeedSend = match body_json(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let m = match sim.send(req.from, req.to, req.body, req.media_urls, false).await {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    (
        StatusCode::OK,
        Json(json!({ "status": "success", "id": m.id.to_string(), "data": m.seed() })),
    )
        .into_response()
}

async fn seed_list(State(sim): State<Simulator>, headers: HeaderMap, Query(p): Query<Paging>) -> Response {
    if !sim.authorized(&headers, true) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key or secret");
    }
    let data: Vec<Value> = sim.page(&p).iter().map(SimMessage::seed).collect();
    Json(json!({ "status": "success", "count": data.len(), "data": data })).into_response()
}

async fn seed_get(State(sim): State<Simulator>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !sim.authorized(&headers, true) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key or secret");
    }
    sim.lookup(&id, SimMessage::seed)
}

async fn v21_send(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    if !sim.authorized(&headers, false) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid API key or secret (expected `Authorization: key:secret`)",
        );
    }
    let req: V21Send = match body_json(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.body.chars().count() > 1600 {
        return error(StatusCode::BAD_REQUEST, "body is over 1600 characters");
    }
    let media = req
        .media_url
        .map(|m| m.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let m = match sim.send(req.justcall_number, req.contact_number, req.body, media, true).await {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    (StatusCode::OK, Json(json!({ "status": "success", "data": [m.v21()] }))).into_response()
}

async fn v21_list(State(sim): State<Simulator>, headers: HeaderMap, Query(p): Query<Paging>) -> Response {
    if !sim.authorized(&headers, false) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key or secret");
    }
    let data: Vec<Value> = sim.page(&p).iter().map(SimMessage::v21).collect();
    Json(json!({ "status": "success", "count": data.len(), "data": data })).into_response()
}

async fn v21_get(State(sim): State<Simulator>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !sim.authorized(&headers, false) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key or secret");
    }
    sim.lookup(&id, |m| json!([m.v21()]))
}

/// Queues faults for the next sends, in order: how an author sees what their
/// plugin does when JustCall refuses, rate-limits or fails after sending.
async fn faults_post(State(sim): State<Simulator>, body: Bytes) -> Response {
    let specs: Vec<FaultSpec> = match body_json(&body) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let faults: Result<Vec<Fault>, String> = specs.into_iter().map(FaultSpec::fault).collect();
    match faults {
        Ok(faults) => {
            sim.fail_next(&faults);
            tracing::info!(target: "justcall_simulator", count = faults.len(), "faults queued for the next sends");
            Json(json!({ "status": "success", "queued": faults.len() })).into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn sink_post(State(sim): State<Simulator>, Path(name): Path<String>, body: Bytes) -> Response {
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    tracing::info!(target: "dev_sink", sink = %name, body = %value, "dev sink received a request");
    crate::sync::lock(&sim.state).sink.push((name, value));
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

async fn sink_list(State(sim): State<Simulator>, Path(name): Path<String>) -> Response {
    let st = crate::sync::lock(&sim.state);
    let data: Vec<&Value> = st.sink.iter().filter(|(n, _)| *n == name).map(|(_, v)| v).collect();
    Json(json!({ "data": data })).into_response()
}
