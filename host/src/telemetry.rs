//! Optional OpenTelemetry traces over OTLP/HTTP (`otlp_endpoint`): one trace
//! per event, with spans for the webhook, its commit, each delivery attempt
//! and each host call, exported in batches from a thread of their own; and
//! the W3C `traceparent` of the current span, for plugins' HTTP requests.
//!
//! [`start`] builds the exporter and the tracing layer, installed with the
//! log layers at start-up when the config names an endpoint. Without one, no
//! span here is even created: [`span`] gives `Span::none()` and host calls
//! skip theirs, so tracing costs nothing when off.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::Registry;

/// The layer that turns Switchboard's spans into OpenTelemetry spans.
pub type TraceLayer = OpenTelemetryLayer<Registry, SdkTracer>;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("otlp_endpoint: {0}")]
    Exporter(String),
}

/// What the traces hold: Switchboard's own spans (not those of the
/// libraries beneath it, such as WASI's per-call spans).
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("switchboard", tracing::Level::INFO)
}

/// Whether traces are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `make()`'s span when traces are exported, else a disabled one.
pub fn span(make: impl FnOnce() -> Span) -> Span {
    if enabled() { make() } else { Span::none() }
}

/// The W3C `traceparent` naming `span`, when traces are exported.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace an event's deliveries belong to: the context of the webhook
/// that brought it, kept without keeping its span open.
#[derive(Debug, Clone, Default)]
pub struct Parent(Option<opentelemetry::Context>);

impl Parent {
    /// The current span's trace, when traces are exported.
    pub fn current() -> Parent {
        Parent(enabled().then(|| Span::current().context()))
    }

    /// Makes `span` a child of this trace (nothing if there is none).
    pub fn adopt(&self, span: &Span) {
        if let Some(cx) = &self.0 {
            let _ = span.set_parent(cx.clone());
        }
    }
}

/// Sends the exporter's batches with a blocking client: the batch
/// processor runs them on its own thread, outside any async runtime.
#[derive(Debug)]
struct Blocking(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Blocking {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let sent = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut response = Response::builder().status(sent.status());
        if let Some(h) = response.headers_mut() {
            h.extend(sent.headers().clone());
        }
        Ok(response.body(sent.bytes()?)?)
    }
}

/// Exporting traces; dropping it flushes what is queued and stops.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush traces to the OTLP endpoint");
        }
        ENABLED.store(false, Ordering::Relaxed);
    }
}

/// Starts exporting traces to `endpoint` (the collector's base URL; spans go
/// to `/v1/traces` under it, as OTLP/HTTP protobuf): the guard that flushes
/// at the end, and the layer to install. Blocking: call it before the async
/// runtime starts.
pub fn start(endpoint: &str) -> Result<(Telemetry, TraceLayer), TelemetryError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Blocking(client))
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("switchboard").build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("switchboard"));
    ENABLED.store(true, Ordering::Relaxed);
    Ok((Telemetry { provider }, layer))
}
