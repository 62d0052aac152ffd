//! The webhook endpoint: both wire formats, the ping, dedupe, and every
//! refusal with its status and reason.

use serde_json::{Value, json};
use switchboard::domain::Event;

use crate::harness::{FakeJustCall, Recorder, TenantSpec, TestHost, fixture, fixtures};

async fn dev_host() -> (TestHost, Recorder) {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url)]).await;
    (host, jc)
}

fn stored_event(host: &TestHost, event_id: &str) -> Event {
    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let json: String = db
        .query_row("SELECT event_json FROM events WHERE id = ?1", [event_id], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

#[tokio::test]
async fn every_seed_fixture_is_accepted_and_normalised() {
    let (host, _jc) = dev_host().await;
    let all = fixtures("seed-format");
    assert_eq!(all.len(), 7, "fixtures changed: {all:?}");
    for (name, body) in all {
        let (status, resp) = host.post("acme", body.clone(), &[]).await;
        assert_eq!(status, 202, "{name}: {resp}");
        let sent: Value = serde_json::from_str(&body).unwrap();
        let ev = stored_event(&host, resp["event_id"].as_str().unwrap());
        assert_eq!(ev.kind.seed_name(), sent["event"].as_str().unwrap(), "{name}");
        assert_eq!(ev.tenant, "acme");
        assert_eq!(ev.message_id, sent["data"]["message_id"].as_str().unwrap());
        assert_eq!(ev.from, sent["data"]["from"].as_str().unwrap());
        assert_eq!(ev.to, sent["data"]["to"].as_str().unwrap());
        assert_eq!(ev.body, sent["data"]["body"].as_str().unwrap());
        assert_eq!(ev.contact_name.as_deref(), sent["data"]["contact_name"].as_str());
        assert_eq!(ev.agent_id, sent["data"]["agent_id"].as_i64().map(|n| n.to_string()));
        assert_eq!(ev.occurred_at, sent["timestamp"].as_str().unwrap());
    }
    assert_eq!(host.event_count("acme"), 7);
}

#[tokio::test]
async fn every_v21_fixture_is_accepted_and_normalised() {
    let (host, _jc) = dev_host().await;
    let expected = [
        ("jc.contact_status_updated-optin.json", "opt-in", "+15125551234", ""),
        ("jc.contact_status_updated-optout.json", "opt-out", "+15125551234", ""),
        ("sms.received.json", "received", "+15125551234", "+15125550100"),
        ("sms.sent.json", "sent", "+15125550100", "+15125551234"),
        ("sms.sent_received-incoming.json", "received", "+15125551234", "+15125550100"),
        ("sms.status_updated-delivered.json", "delivered", "+15125550100", "+15125551234"),
        ("sms.status_updated-failed.json", "failed", "+15125550100", "+15125551234"),
    ];
    let all = fixtures("justcall-v2.1");
    assert_eq!(all.len(), expected.len());
    for ((name, body), (want_name, kind, from, to)) in all.into_iter().zip(expected) {
        assert_eq!(name, want_name);
        let (status, resp) = host.post("acme", body.clone(), &[]).await;
        assert_eq!(status, 202, "{name}: {resp}");
        assert_eq!(resp["kind"], kind, "{name}");
        let ev = stored_event(&host, resp["event_id"].as_str().unwrap());
        assert_eq!((ev.from.as_str(), ev.to.as_str()), (from, to), "{name}");
        let sent: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ev.message_id, sent["data"]["id"].to_string(), "{name}");
        if let Some(text) = sent["data"]["sms_info"]["body"].as_str() {
            assert_eq!(ev.body, text);
            assert_eq!(
                ev.occurred_at,
                format!(
                    "{}T{}Z",
                    sent["data"]["sms_date"].as_str().unwrap(),
                    sent["data"]["sms_time"].as_str().unwrap()
                )
            );
        }
    }
}

#[tokio::test]
async fn setup_ping_is_acknowledged_and_never_stored() {
    let (host, _jc) = dev_host().await;
    for body in ["", "{}", r#"{"hello": "justcall"}"#] {
        let (status, resp) = host.post("acme", body, &[]).await;
        assert_eq!((status, resp["status"].as_str()), (200, Some("ping")), "{body:?}");
    }
    assert_eq!(host.event_count("acme"), 0);
}

#[tokio::test]
async fn resent_webhooks_are_acknowledged_but_stored_once() {
    let (host, _jc) = dev_host().await;
    for body in [fixture("seed-format/sms.received.json"), fixture("justcall-v2.1/sms.received.json")] {
        let (first, r1) = host.post("acme", body.clone(), &[]).await;
        let (second, r2) = host.post("acme", body.clone(), &[]).await;
        assert_eq!((first, second), (202, 200));
        assert_eq!(r2["status"], "duplicate");
        assert_eq!(r2["event_id"], r1["event_id"], "a duplicate points at the event stored first");
    }
    // v2.1 dedupes on request_id even when the data differs.
    let mut changed: Value = serde_json::from_str(&fixture("justcall-v2.1/sms.received.json")).unwrap();
    changed["data"]["sms_info"]["body"] = json!("something else");
    let (status, resp) = host.post("acme", changed.to_string(), &[]).await;
    assert_eq!((status, resp["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(host.event_count("acme"), 2);
}

#[tokio::test]
async fn refusals_carry_status_and_a_reason_naming_the_field() {
    let (host, _jc) = dev_host().await;

    let (status, resp) = host.post("nobody", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 404);
    assert_eq!(resp["error"], "unknown tenant `nobody`");

    let (status, resp) = host.post("acme", "{not json", &[]).await;
    assert_eq!(status, 400);
    assert!(
        resp["error"].as_str().unwrap().starts_with("bad request: body is not valid JSON"),
        "{resp}"
    );

    let mut missing: Value = serde_json::from_str(&fixture("seed-format/sms.received.json")).unwrap();
    missing["data"].as_object_mut().unwrap().remove("message_id");
    let (status, resp) = host.post("acme", missing.to_string(), &[]).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (400, Some("bad request: data: missing field `message_id`"))
    );

    let mut bad_phone: Value = serde_json::from_str(&fixture("justcall-v2.1/sms.received.json")).unwrap();
    bad_phone["data"]["contact_number"] = json!("call me");
    let (status, resp) = host.post("acme", bad_phone.to_string(), &[]).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (400, Some("bad request: data.contact_number: `call me` is not a valid phone number"))
    );

    let mut wrong_type: Value = serde_json::from_str(&fixture("seed-format/sms.received.json")).unwrap();
    wrong_type["data"]["media_urls"] = json!("not a list");
    let (status, resp) = host.post("acme", wrong_type.to_string(), &[]).await;
    assert_eq!(status, 400);
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request: data.media_urls: invalid type"),
        "{resp}"
    );

    let huge = format!(r#"{{"event":"sms.received","pad":"{}"}}"#, "x".repeat(300 << 10));
    let (status, resp) = host.post("acme", huge, &[]).await;
    assert_eq!((status, resp["error"].as_str()), (413, Some("body exceeds 262144 bytes")));

    assert_eq!(host.event_count("acme"), 0, "nothing refused is stored");
    assert!(host.healthy().await);
}

#[tokio::test]
async fn a_number_without_its_country_code_is_refused_unless_the_tenant_names_one() {
    let jc = FakeJustCall::start().await;
    let mut us = TenantSpec::new("us", &jc.url);
    us.default_country = switchboard::domain::parse_country("US");
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url), us]).await;
    let mut national: Value = serde_json::from_str(&fixture("justcall-v2.1/sms.received.json")).unwrap();
    national["data"]["contact_number"] = json!("5125551234");

    // Read as E.164 without its plus, this would be a Peruvian number.
    let (status, resp) = host.post("acme", national.to_string(), &[]).await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request: data.contact_number: `5125551234` has no country code"),
        "{resp}"
    );
    assert_eq!(host.event_count("acme"), 0);

    let (status, resp) = host.post("us", national.to_string(), &[]).await;
    assert_eq!(status, 202, "{resp}");
    let event = host.stored_event(resp["event_id"].as_str().unwrap());
    assert_eq!(event["from"], "+15125551234");
}

#[tokio::test]
async fn ids_longer_than_64_bits_are_kept_exactly() {
    let (host, _jc) = dev_host().await;
    let id = "98765432109876543210987654321";
    let body = fixture("justcall-v2.1/sms.received.json");
    let original: Value = serde_json::from_str(&body).unwrap();
    // Replace the id with a bare JSON integer that no u64 or f64 holds exactly.
    let old = format!("\"id\":{}", original["data"]["id"]);
    let new = format!("\"id\":{id}");
    let compact = original.to_string();
    assert!(compact.contains(&old), "fixture id {old} in {compact}");
    let (status, resp) = host.post("acme", compact.replace(&old, &new), &[]).await;
    assert_eq!(status, 202, "{resp}");
    let event = host.stored_event(resp["event_id"].as_str().unwrap());
    assert_eq!(event["message_id"], id);
}

#[tokio::test]
async fn non_sms_types_are_acknowledged_and_ignored() {
    let (host, _jc) = dev_host().await;
    let (status, resp) = host
        .post("acme", r#"{"request_id":"r9","type":"call.completed","data":{}}"#, &[])
        .await;
    assert_eq!((status, resp["status"].as_str()), (200, Some("ignored")));
    assert_eq!(host.event_count("acme"), 0);
}
