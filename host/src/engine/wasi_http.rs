//! Standard HTTP for guests: `wasi:http/outgoing-handler` (JavaScript's
//! `fetch()`, any wasi:http client) sent through the same [`Effects`] as
//! `switchboard:plugin/http`, so both share one policy: the allow-list, the
//! egress checks after DNS and on every redirect, the response size limit,
//! the per-event request quota, the deadline, and the journal of non-GET
//! requests. A refused request is a wasi:http error the guest can catch.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::engine::bindings::http;
use crate::engine::effects::Effects;
use crate::engine::trace::Tracer;

/// The future `send_request` hands wasmtime-wasi-http.
type Sending =
    Box<dyn Future<Output = Result<(hyper::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>> + Send>;

/// One invocation's outbound HTTP: what both HTTP interfaces count and
/// check against. Lives in the store data beside the WASI context.
#[derive(Debug, Clone)]
pub struct HttpGate {
    effects: Arc<dyn Effects>,
    deadline: Instant,
    max_body: usize,
    max_request: usize,
    per_event: u32,
    calls: u32,
    tenant: String,
    plugin: Arc<str>,
    event: Arc<str>,
    trace: Option<Arc<Tracer>>,
}

/// A request over the per-event quota.
#[derive(Debug, Clone, Copy)]
pub struct OverQuota(pub u32);

impl HttpGate {
    /// The gate of one invocation of `plugin` of `tenant`, handling `event`.
    pub fn new(
        effects: Arc<dyn Effects>,
        limits: &crate::config::Limits,
        deadline: Instant,
        who: (&str, &Arc<str>, &Arc<str>),
    ) -> HttpGate {
        HttpGate {
            effects,
            deadline,
            max_body: limits.http_response_bytes,
            max_request: limits.http_request_bytes,
            per_event: limits.http_per_event,
            calls: 0,
            tenant: who.0.to_string(),
            plugin: who.1.clone(),
            event: who.2.clone(),
            trace: None,
        }
    }

    /// Records every request in `trace`.
    pub fn traced(mut self, trace: Arc<Tracer>) -> HttpGate {
        self.trace = Some(trace);
        self
    }

    /// Counts one request, refused or not, so a loop of refused requests
    /// still ends at the quota.
    pub fn count(&mut self) -> Result<(), OverQuota> {
        if self.calls >= self.per_event {
            return Err(OverQuota(self.per_event));
        }
        self.calls += 1;
        Ok(())
    }

    /// Sends a plugin's request through the effects, logging a refusal
    /// (warn) with who made it (`call`) and why. The future owns what it
    /// needs, so a wasi:http request can run beside the guest.
    pub fn send(
        &self,
        call: &'static str,
        req: http::Request,
    ) -> impl Future<Output = Result<http::Response, http::HttpError>> + Send + 'static {
        let (effects, deadline, max_body) = (self.effects.clone(), self.deadline, self.max_body);
        let (tenant, plugin, event) = (self.tenant.clone(), self.plugin.clone(), self.event.clone());
        let too_large = (req.body.len() > self.max_request)
            .then(|| http::HttpError::InvalidRequest(request_too_large(req.body.len(), self.max_request)));
        let trace = self.trace.clone();
        async move {
            let traced = trace.as_ref().map(|t| t.begin(call, &format!("{} {}", req.method, req.url)));
            let result = match too_large {
                Some(refused) => Err(refused),
                None => effects.http_send(req, deadline, max_body).await,
            };
            if let (Some(t), Some(traced)) = (&trace, traced) {
                let summary = match &result {
                    Ok(resp) => Ok(format!("{} ({} bytes)", resp.status, resp.body.len())),
                    Err(e) => Err(format!("{e:?}")),
                };
                t.end(traced, summary);
            }
            if let Err(http::HttpError::NotAllowed(reason) | http::HttpError::InvalidRequest(reason)) = &result {
                log_refused((&tenant, &plugin, &event), call, reason);
            }
            result
        }
    }
}

/// Why a request body over `http_request_kb` is refused.
fn request_too_large(len: usize, max: usize) -> String {
    format!("request body is over {max} bytes ({len}; raise http_request_kb to send more)")
}

/// Logs (warn) a host call the host refused: who made it (tenant, plugin,
/// event), which call, and why. Every refusal, whichever interface, is
/// logged here.
pub fn log_refused((tenant, plugin, event): (&str, &str, &str), call: &'static str, reason: &str) {
    let reason = crate::domain::escape_controls(reason);
    tracing::warn!(%tenant, %plugin, %event, call, %reason, "host call refused");
}

impl WasiHttpHooks for HttpGate {
    // The request keeps only the headers the guest set.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _io: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sending {
        let over = self.count().err();
        let (deadline, this) = (self.deadline, self.clone());
        Box::new(async move {
            if let Some(OverQuota(n)) = over {
                return Err(Error::InternalError(Some(format!("http quota exceeded ({n} requests per event)"))));
            }
            let req = tokio::time::timeout_at(deadline.into(), read_request(request, this.max_request))
                .await
                .map_err(|_| Error::HttpResponseTimeout)??;
            let resp = this.send("wasi:http", req).await.map_err(wasi_error)?;
            let done: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
            Ok((to_hyper(resp)?, done))
        })
    }
}

/// The guest's request as our `http` record: the whole body, read as the
/// guest writes it, up to `max_body` bytes (more is refused before it is
/// all read). Framing headers a runtime adds (`content-length`) are
/// dropped: the host frames the body it sends.
async fn read_request(request: hyper::Request<WasiBody>, max_body: usize) -> Result<http::Request, Error> {
    let (parts, mut body) = request.into_parts();
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if crate::engine::effects::HOST_SET_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| Error::InternalError(Some(format!("header `{name}` is not visible ASCII"))))?;
        headers.push((name.as_str().to_string(), value.to_string()));
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > max_body {
                let reason = request_too_large(bytes.len() + data.len(), max_body);
                return Err(Error::InternalError(Some(format!("invalid request: {reason}"))));
            }
            bytes.extend_from_slice(&data);
        }
    }
    let body = bytes;
    Ok(http::Request {
        method: parts.method.as_str().to_string(),
        url: parts.uri.to_string(),
        headers,
        body,
    })
}

/// Our `http` error as the wasi:http error code the guest sees.
fn wasi_error(e: http::HttpError) -> Error {
    match e {
        http::HttpError::NotAllowed(_) => Error::HttpRequestDenied,
        http::HttpError::InvalidRequest(reason) => Error::InternalError(Some(format!("invalid request: {reason}"))),
        http::HttpError::ResponseTooLarge => Error::HttpResponseBodySize(None),
        http::HttpError::Timeout => Error::HttpResponseTimeout,
        http::HttpError::Transport(reason) => Error::InternalError(Some(reason)),
    }
}

/// Our `http` response as a wasi:http incoming response.
fn to_hyper(resp: http::Response) -> Result<hyper::Response<WasiBody>, Error> {
    let mut builder = hyper::Response::builder().status(resp.status);
    for (name, value) in &resp.headers {
        builder = builder.header(name, value);
    }
    let body = Full::new(Bytes::from(resp.body)).map_err(|never| match never {}).boxed_unsync();
    builder.body(body).map_err(|e| Error::InternalError(Some(e.to_string())))
}
