//! JustCall v1's weak signature, closed: events of a `justcall-v1` tenant
//! are checked against JustCall's API before they act, so a captured header
//! set replayed with another payload is refused (and recorded), an outage
//! postpones the check instead of skipping it, and one header set
//! authenticates only a bounded number of events.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use switchboard::config::{ApiDialect, WebhookAuth};
use switchboard::engine::state::MAX_EVENTS_PER_SIGNATURE;
use switchboard::intake::auth::{self, JC_SIGNATURE, JC_SIGNATURE_VERSION, JC_TIMESTAMP};

use crate::harness::{ADMIN_TOKEN, FakeJustCall, NUMBER, Recorder, TenantSpec, TestHost, fixture, flaky, wait_for};

const SECRET: &str = "a-justcall-api-secret-for-tests";
const CONTACT: &str = "+15125551234";

/// Checks are retried after these delays (the last repeating).
fn fast() -> Vec<Duration> {
    vec![Duration::from_millis(50), Duration::from_millis(100)]
}

/// A justcall-v1 tenant whose plugin posts each message to `sink` (and,
/// with `reply`, texts the sender back).
fn tenant(jc: &FakeJustCall, sink: &Recorder, reply: bool) -> TenantSpec {
    let mut t = TenantSpec::new("jc", &format!("{}/v2.1", jc.url))
        .auth(WebhookAuth::JustCallV1, SECRET)
        .dialect(ApiDialect::V21)
        .plugin(flaky(&sink.url, reply, 3000));
    // As a justcall-v1 tenant's config has it by default.
    t.verify_events = true;
    t
}

/// A v2.1 `sms.received` about JustCall message `id`, with this text.
fn received(request_id: &str, id: &str, body: &str) -> String {
    let mut v: Value = serde_json::from_str(&fixture("justcall-v2.1/sms.received.json")).unwrap();
    v["request_id"] = json!(request_id);
    v["data"]["id"] = json!(id.parse::<u64>().unwrap());
    v["data"]["contact_number"] = json!(CONTACT.trim_start_matches('+'));
    v["data"]["justcall_number"] = json!(NUMBER.trim_start_matches('+'));
    v["data"]["sms_info"]["body"] = json!(body);
    v.to_string()
}

/// One captured header set: what JustCall signed for one `sms.received`.
fn signed(host: &TestHost) -> Vec<(&'static str, String)> {
    let ts = Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let sig = auth::justcall_v1_signature(SECRET, &format!("{}/webhooks/jc", host.url), "sms.received", &ts);
    vec![(JC_SIGNATURE, sig), (JC_SIGNATURE_VERSION, "v1".into()), (JC_TIMESTAMP, ts)]
}

/// Waits until every delivery of the event has left `verifying`, and
/// returns (plugin, status, last_error) of each.
async fn settled(host: &TestHost, event_id: &str) -> Vec<(String, String, Option<String>)> {
    wait_for("the event's verification", Duration::from_secs(20), || {
        let d = host.deliveries(event_id);
        !d.is_empty() && d.iter().all(|(_, s, _)| s != "verifying" && s != "pending" && s != "running")
    })
    .await;
    host.deliveries(event_id)
}

#[tokio::test]
async fn a_forged_v1_event_with_reused_headers_is_refused_and_never_acts() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![tenant(&jc, &sink, true)]).retries(fast()).start().await;
    let headers = signed(&host);

    // The genuine event: JustCall holds the message, so it runs.
    let id = jc.receive(CONTACT, NUMBER, "hello");
    let (status, resp) = host.post("jc", received("r-genuine", &id, "hello"), &headers).await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["verifying"], true);
    let genuine = resp["event_id"].as_str().unwrap().to_string();
    assert_eq!(settled(&host, &genuine).await, [("flaky".into(), "done".into(), None)]);
    assert_eq!(jc.sent().iter().filter(|s| s.body == "re: hello").count(), 1);

    // The same headers with another text for the same message: refused.
    let (status, resp) = host.post("jc", received("r-forged", &id, "call me at 555"), &headers).await;
    assert_eq!(status, 202, "stored before it is checked: {resp}");
    let forged = resp["event_id"].as_str().unwrap().to_string();
    let d = settled(&host, &forged).await;
    assert_eq!((d[0].1.as_str()), "refused", "{d:?}");
    let why = d[0].2.clone().unwrap_or_default();
    assert!(why.starts_with("event refused: body differs from JustCall's message"), "{why}");

    // A forged STOP never opts the contact out.
    let (_, resp) = host.post("jc", received("r-stop", &id, "STOP"), &headers).await;
    let stop = resp["event_id"].as_str().unwrap().to_string();
    assert_eq!(settled(&host, &stop).await[0].1, "refused");
    assert!(!host.opted_out("jc", CONTACT));
    // …nor does a message JustCall never had.
    let (_, resp) = host.post("jc", received("r-ghost", "999999", "START"), &headers).await;
    let ghost = resp["event_id"].as_str().unwrap().to_string();
    let d = settled(&host, &ghost).await;
    assert_eq!(d[0].2.as_deref(), Some("event refused: JustCall has no message `999999`"), "{d:?}");

    // No refused event acted: one reply in all, one sink POST in all.
    assert_eq!(jc.sent().len(), 1, "{:?}", jc.sent());
    assert_eq!(sink.to("/sink").len(), 1);

    // Each refusal is recorded with its reason, and cannot be replayed.
    let (status, v) = host.admin("GET", "/tenants/jc/verifications", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    let refused: Vec<&str> = v["verifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    for e in [&forged, &stop, &ghost] {
        assert!(refused.contains(&e.as_str()), "{e} in {v}");
    }
    assert!(!refused.contains(&genuine.as_str()));
    let (status, v) = host
        .admin("POST", &format!("/tenants/jc/events/{forged}/replay"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("refused by verification"), "{v}");

    // One header set authenticates a bounded number of distinct events.
    let mut accepted = 4;
    loop {
        let (status, resp) = host
            .post("jc", received(&format!("r-more-{accepted}"), &id, "hello"), &headers)
            .await;
        if status == 429 {
            assert!(
                resp["error"].as_str().unwrap().contains("signature has already authenticated"),
                "{resp}"
            );
            break;
        }
        assert_eq!(status, 202, "{resp}");
        accepted += 1;
        assert!(accepted <= MAX_EVENTS_PER_SIGNATURE, "the signature was never exhausted");
    }
    assert_eq!(accepted, MAX_EVENTS_PER_SIGNATURE);
    // A resend of an event it did authenticate is still a duplicate, not refused.
    let (status, resp) = host.post("jc", received("r-genuine", &id, "hello"), &headers).await;
    assert_eq!((status, resp["status"].as_str()), (200, Some("duplicate")), "{resp}");
    assert!(host.healthy().await);
}

#[tokio::test]
async fn verification_waits_out_a_justcall_outage_and_a_restart() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![tenant(&jc, &sink, false)]).retries(fast()).start().await;

    jc.set_unavailable(true);
    let id = jc.receive(CONTACT, NUMBER, "STOP");
    let (status, resp) = host.post("jc", received("r-outage", &id, "STOP"), &signed(&host)).await;
    assert_eq!(status, 202, "{resp}");
    let event = resp["event_id"].as_str().unwrap().to_string();

    // Retried, never skipped: the event and its opt-out wait.
    let mut pending = Value::Null;
    for _ in 0..200 {
        let (_, v) = host
            .admin("GET", "/tenants/jc/verifications?state=pending", Some(ADMIN_TOKEN))
            .await;
        if v["verifications"][0]["attempts"].as_u64().is_some_and(|a| a >= 2) {
            pending = v["verifications"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending["event_id"], event.as_str(), "{pending}");
    assert!(pending["reason"].as_str().unwrap().contains("503"), "{pending}");
    assert_eq!(host.deliveries(&event)[0].1, "verifying");
    assert!(!host.opted_out("jc", CONTACT));

    // Stopped mid-outage; started again with JustCall back: it resumes.
    let dir = host.stop().await;
    jc.set_unavailable(false);
    let host = TestHost::builder(vec![tenant(&jc, &sink, false)])
        .retries(fast())
        .in_dir(dir)
        .start()
        .await;
    assert_eq!(settled(&host, &event).await[0].1, "done");
    assert!(host.opted_out("jc", CONTACT), "the verified STOP opted the contact out");
    assert_eq!(sink.to("/sink").len(), 1, "the plugin ran once");
}
