//! OpenTelemetry traces from the real binary: with `otlp_endpoint` set, one
//! event makes one trace at a local OTLP/HTTP collector (protobuf, decoded
//! here), with spans for the webhook, its commit, the delivery and each
//! host call; and the plugin's HTTP request carries that trace's W3C
//! `traceparent`. Spans are flushed when the server stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use switchboard::intake::auth::standard_webhooks_signature;

use crate::harness::{API_KEY, API_SECRET, FakeJustCall, NUMBER, Recorder, fixture, guest, wait_for};
use crate::process::{Process, free_port, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// An OTLP/HTTP collector on loopback: every span POSTed to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Got>>>) {
    let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
                let mut all = kept.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            all.push(Got {
                                name: s.name,
                                trace: hex::encode(s.trace_id),
                                id: hex::encode(s.span_id),
                                parent: hex::encode(s.parent_span_id),
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test]
async fn one_event_is_one_trace_and_its_http_calls_carry_the_traceparent() {
    let (endpoint, spans) = collector().await;
    let jc = FakeJustCall::start().await;
    let sink = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d/acme");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("flaky"), plugins.join("replier.wasm")).unwrap();
    let manifest = format!(
        "events = [\"received\"]\nallowed_hosts = [\"{}\"]\n[config]\nsink = \"{}/sink\"\nreply = \"yes\"\n",
        sink.url, sink.url
    );
    std::fs::write(plugins.join("replier.toml"), manifest).unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins.d\"\notlp_endpoint = \"{endpoint}\"\n\
             [tenants.acme]\nnumbers = [\"{NUMBER}\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SECRET}\"\n\
             justcall_base_url = \"{}\"\njustcall_api_key = \"{API_KEY}\"\njustcall_api_secret = \"{API_SECRET}\"\n",
            jc.url
        ),
    )
    .unwrap();
    let port = free_port();
    let server = tokio::task::spawn_blocking(move || {
        let mut server = Process::spawn(serve_command(BIN, &config, port, None), port);
        server.wait_healthy(Duration::from_secs(60));
        server
    })
    .await
    .unwrap();

    let body = fixture("seed-format/sms.received.json");
    let ts = chrono::Utc::now().timestamp().to_string();
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/acme", server.url()))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_otlp_1")
        .header("webhook-timestamp", &ts)
        .header(
            "webhook-signature",
            standard_webhooks_signature(SECRET, "msg_otlp_1", &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    jc.wait_for_sent(1).await;
    let posted = sink.wait_for_count("/sink", 1).await;
    // A graceful stop flushes the spans still queued.
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "{status}");
    wait_for("the spans to arrive", Duration::from_secs(10), || {
        spans.lock().unwrap().iter().any(|s| s.name == "webhook")
    })
    .await;

    let spans = spans.lock().unwrap().clone();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span in {spans:#?}"))
            .clone()
    };
    let (webhook, commit, delivery) = (named("webhook"), named("commit"), named("delivery"));
    let (sms, http) = (named("sms.send"), named("http.send"));
    // One trace: the commit and the delivery under the webhook, the host
    // calls under the delivery.
    for s in [&commit, &delivery, &sms, &http] {
        assert_eq!(s.trace, webhook.trace, "{s:?} is not in the webhook's trace: {spans:#?}");
    }
    assert_eq!(webhook.parent, "", "{webhook:?}");
    assert_eq!(
        (commit.parent.as_str(), delivery.parent.as_str()),
        (webhook.id.as_str(), webhook.id.as_str())
    );
    assert_eq!(
        (sms.parent.as_str(), http.parent.as_str()),
        (delivery.id.as_str(), delivery.id.as_str())
    );
    // The plugin's request went out with the delivery's traceparent.
    let traceparent = posted[0]
        .headers
        .get("traceparent")
        .expect("a traceparent header")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(traceparent, format!("00-{}-{}-01", webhook.trace, delivery.id));
}
