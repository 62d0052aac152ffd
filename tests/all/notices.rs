//! Operational notices to the operator, through the real server: a delivery
//! that fails every retry sends `delivery.exhausted` and `plugin.paused`, a
//! broken plugin version sends `version.rejected`; each is a Standard Webhook
//! whose signature verifies with `operator_webhook_secret`, and a notice the
//! operator's endpoint refuses at first arrives on a retry, with the same id.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use switchboard::intake::auth::verify_standard_webhooks;

use crate::harness::{RECEIVED_BODY, Recorder, TenantSpec, TestHost, fixture, flaky, wait_for, write_then_rename};

const SECRET: &str = "operator-notice-secret-0123";

/// What the operator's endpoint received: headers and the exact body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// The operator's endpoint: answers `status` (changeable), keeps every request.
async fn endpoint(status: Arc<AtomicU16>) -> (String, Received) {
    let got: Received = Arc::default();
    let kept = got.clone();
    let app = Router::new().route(
        "/notices",
        post(move |headers: HeaderMap, body: Bytes| {
            let (kept, status) = (kept.clone(), status.clone());
            async move {
                kept.lock().unwrap().push((headers, body));
                StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notices", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// The notices received, decoded, each with its id, once its signature verified.
fn verified(got: &Received) -> Vec<(String, Value)> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| {
            let id = verify_standard_webhooks(SECRET, headers, body, chrono::Utc::now(), Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("a notice's signature does not verify: {e}"));
            (id, serde_json::from_slice(body).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn exhausted_deliveries_paused_plugins_and_rejected_versions_reach_the_operator_signed() {
    let status = Arc::new(AtomicU16::new(503));
    let (url, got) = endpoint(status.clone()).await;
    let sink = Recorder::start().await;
    let host = TestHost::builder(vec![TenantSpec::new("acme", &sink.url).plugin(flaky(&sink.url, false, 5000))])
        .retries(vec![Duration::from_millis(20)])
        .operator_webhook(&url, SECRET)
        .start()
        .await;
    let (_, ack) = host
        .post("acme", fixture("seed-format/sms.received.json").replace(RECEIVED_BODY, "FAIL"), &[])
        .await;
    let event = ack["event_id"].as_str().unwrap().to_string();

    // Refused at first (503): the first notice comes again after a second.
    wait_for("the first notice", Duration::from_secs(10), || !got.lock().unwrap().is_empty()).await;
    status.store(200, Ordering::SeqCst);
    wait_for("both notices", Duration::from_secs(15), || {
        let kinds: Vec<String> = verified(&got)
            .iter()
            .map(|(_, v)| v["type"].as_str().unwrap().to_string())
            .collect();
        kinds.contains(&"plugin.paused".to_string())
    })
    .await;
    let notices = verified(&got);
    let (first_id, first) = &notices[0];
    assert_eq!(first["type"], "delivery.exhausted", "{notices:?}");
    assert_eq!(
        (
            first["data"]["tenant"].as_str(),
            first["data"]["plugin"].as_str(),
            first["data"]["event_id"].as_str()
        ),
        (Some("acme"), Some("flaky"), Some(event.as_str()))
    );
    assert_eq!(&notices[1].0, first_id, "a retry keeps its webhook-id");
    assert_eq!(notices[1].1, *first);
    assert_eq!(notices[2].1["type"], "plugin.paused");
    assert_ne!(&notices[2].0, first_id);

    // A broken version of the plugin is refused, and the operator told why.
    write_then_rename(&host.plugin_dir("acme").join("flaky.wasm"), b"\0asm broken");
    wait_for("the rejection notice", Duration::from_secs(15), || {
        verified(&got).iter().any(|(_, v)| v["type"] == "version.rejected")
    })
    .await;
    let rejected = verified(&got).into_iter().find(|(_, v)| v["type"] == "version.rejected").unwrap().1;
    assert_eq!(
        (rejected["data"]["tenant"].as_str(), rejected["data"]["plugin"].as_str()),
        (Some("acme"), Some("flaky"))
    );
    assert!(rejected["data"]["error"].as_str().unwrap().contains("flaky.wasm"), "{rejected}");
    assert!(rejected["data"]["serving"].is_string(), "the serving version stays: {rejected}");
}
