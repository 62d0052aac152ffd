//! Plugins inside the real host: the examples' effects at local fake
//! JustCall and CRM servers, and misbehaving plugins contained.

use serde_json::{Value, json};
use switchboard::config::ApiDialect;

use crate::harness::{
    CONFIRM_AT, CONFIRM_ID, CONTACT_NAME, PluginSpec, RECEIVED_AT, RECEIVED_BODY, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture,
};

fn confirm_plugin() -> PluginSpec {
    PluginSpec::new("appointment-confirm", "appointment-confirm", "events = [\"received\"]\n")
}

fn crm_plugin(crm: &Recorder) -> PluginSpec {
    PluginSpec::new(
        "crm-logger",
        "crm-logger",
        format!(
            "events = [\"received\", \"sent\"]\nallowed_hosts = [\"{}\"]\n[config]\ncrm_url = \"{}/crm\"\ncrm_token = \"t0k\"\n",
            crm.url, crm.url
        ),
    )
}

#[tokio::test]
async fn confirm_sends_exactly_one_sms_through_the_seed_api() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(confirm_plugin())]).await;

    let (status, resp) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    assert_eq!(status, 202, "{resp}");
    let sent = jc.wait_for_count("/api/v2/texts/new", 1).await;
    host.idle().await;
    let sent_after = jc.to("/api/v2/texts/new");
    assert_eq!(sent_after.len(), 1, "exactly one SMS: {sent_after:?}");
    let req = &sent[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.headers["authorization"], "Bearer test-key:test-secret");
    assert_eq!(
        req.body,
        json!({"from": "+15125550100", "to": "+15125551234", "body": "Your appointment is confirmed."})
    );
    let event_id = resp["event_id"].as_str().unwrap();
    assert_eq!(
        host.deliveries(event_id),
        vec![("appointment-confirm".to_string(), "done".to_string(), None)]
    );

    // Any other reply gets no answer.
    let (status, _) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 202);
    host.idle().await;
    assert_eq!(jc.to("/texts/new").len(), 1);
}

#[tokio::test]
async fn confirm_speaks_the_v21_dialect() {
    let jc = Recorder::start().await;
    let base = format!("{}/v2.1", jc.url);
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &base).dialect(ApiDialect::V21).plugin(confirm_plugin()),
    ])
    .await;

    // v2.1 webhook, lowercase and padded CONFIRM.
    let mut body: Value = serde_json::from_str(&fixture("justcall-v2.1/sms.received.json")).unwrap();
    body["data"]["sms_info"]["body"] = json!("  confirm \n");
    let (status, _) = host.post("acme", body.to_string(), &[]).await;
    assert_eq!(status, 202);
    let sent = jc.wait_for_count("/v2.1/texts/new", 1).await;
    host.idle().await;
    assert_eq!(jc.requests().len(), 1);
    assert_eq!(sent[0].headers["authorization"], "test-key:test-secret");
    assert_eq!(
        sent[0].body,
        json!({"justcall_number": "+15125550100", "contact_number": "+15125551234", "body": "Your appointment is confirmed."})
    );
}

#[tokio::test]
async fn crm_logger_posts_once_per_received_or_sent_event() {
    let jc = Recorder::start().await;
    let crm = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(crm_plugin(&crm))]).await;

    let mut ids = Vec::new();
    for f in [
        "seed-format/sms.received.json",
        "seed-format/sms.sent.json",
        "seed-format/sms.delivered.json",
        "justcall-v2.1/sms.sent.json",
    ] {
        let (status, resp) = host.post("acme", fixture(f), &[]).await;
        assert_eq!(status, 202, "{f}: {resp}");
        ids.push(resp["event_id"].as_str().unwrap().to_string());
    }
    host.idle().await;
    let posts = crm.to("/crm");
    assert_eq!(posts.len(), 3, "received, sent and the v2.1 sent; not delivered: {posts:?}");
    let mut posted_ids: Vec<&str> = posts.iter().map(|p| p.body["event_id"].as_str().unwrap()).collect();
    posted_ids.sort();
    let mut want = vec![ids[0].as_str(), ids[1].as_str(), ids[3].as_str()];
    want.sort();
    assert_eq!(posted_ids, want);
    let received = posts.iter().find(|p| p.body["event_id"] == ids[0]).unwrap();
    assert_eq!(received.headers["authorization"], "Bearer t0k");
    assert_eq!(received.body["event"], "received");
    assert_eq!(received.body["from"], "+15125551234");
    assert_eq!(received.body["body"], RECEIVED_BODY);
    assert!(host.deliveries(&ids[2]).is_empty(), "crm-logger does not subscribe to delivered");
}

#[tokio::test]
async fn crm_failures_and_disallowed_hosts_fail_the_delivery() {
    let jc = Recorder::start().await;
    let crm = Recorder::start().await;
    crm.respond_with(500);
    let blocked = PluginSpec::new(
        "crm-logger",
        "crm-blocked",
        format!("[config]\ncrm_url = \"{}/blocked\"\n", crm.url),
    );
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(crm_plugin(&crm)).plugin(blocked)]).await;

    let (_, resp) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d.len(), 2);
    let (_, status, error) = &d[0];
    assert_eq!(status, "retrying");
    let origin = crm.url.replace("http://", "");
    assert_eq!(
        error.as_deref(),
        Some(format!("plugin error: http: http://{origin} is not in allowed_hosts").as_str())
    );
    let (_, status, error) = &d[1];
    assert_eq!(status, "retrying");
    assert!(error.as_deref().unwrap().starts_with("plugin error: CRM answered 500"), "{error:?}");
    assert!(crm.to("/blocked").is_empty(), "a disallowed host is never contacted");
}

#[tokio::test]
async fn trapping_and_looping_plugins_are_contained() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let tenant = TenantSpec::new("acme", &jc.url)
        .plugin(confirm_plugin())
        .plugin(PluginSpec::new("misbehave", "trapper", "[config]\nmode = \"trap\"\n"))
        .plugin(PluginSpec::new(
            "misbehave",
            "looper",
            "[config]\nmode = \"loop\"\n[limits]\ntimeout_ms = 200\n",
        ))
        .plugin(PluginSpec::new("misbehave", "failer", "[config]\nmode = \"error\"\n"));
    let neighbour = TenantSpec::new("other", &jc.url).plugin(confirm_plugin());
    let host = TestHost::start(vec![tenant, neighbour]).await;

    for round in 0..2 {
        let (status, resp) = host
            .post(
                "acme",
                fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, &format!("m{round}")),
                &[],
            )
            .await;
        assert_eq!(status, 202, "{resp}");
        let (status, _) = host
            .post(
                "other",
                fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, &format!("o{round}")),
                &[],
            )
            .await;
        assert_eq!(status, 202);
        assert!(host.healthy().await);
        host.idle().await;
        let d = host.deliveries(resp["event_id"].as_str().unwrap());
        let by_name = |n: &str| d.iter().find(|x| x.0 == n).unwrap().clone();
        assert_eq!(by_name("appointment-confirm").1, "done");
        let (_, status, error) = by_name("trapper");
        assert_eq!(status, "retrying");
        assert!(error.as_deref().unwrap().starts_with("trap: "), "{error:?}");
        let (_, status, error) = by_name("looper");
        assert_eq!(
            (status.as_str(), error.as_deref()),
            ("retrying", Some("deadline exceeded (200 ms)"))
        );
        let (_, status, error) = by_name("failer");
        assert_eq!(
            (status.as_str(), error.as_deref()),
            ("retrying", Some("plugin error: misbehave: failing on purpose"))
        );
    }
    // Both tenants' well-behaved plugins answered every event.
    assert_eq!(jc.to("/api/v2/texts/new").len(), 4);
    assert!(host.healthy().await);
}

#[tokio::test]
async fn sms_from_a_number_the_tenant_does_not_own_is_refused() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(confirm_plugin())]).await;
    // The event claims another JustCall number; the plugin replies from it.
    let body = fixture("seed-format/sms.received-confirm.json")
        .replace("\"justcall_number\": \"+15125550100\"", "\"justcall_number\": \"+15125559999\"");
    assert!(body.contains("+15125559999"));
    let (_, resp) = host.post("acme", body, &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d[0].1, "retrying");
    assert_eq!(
        d[0].2.as_deref(),
        Some("plugin error: sms: +15125559999 is not one of the tenant's numbers")
    );
    assert!(jc.requests().is_empty());
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let jc = Recorder::start().await;
    // JustCall hangs, so the plugin is still running when the server stops;
    // its delivery is finished before shutdown completes (deadline bounded).
    jc.delay(std::time::Duration::from_millis(300));
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(confirm_plugin())]).await;
    let (status, resp) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    assert_eq!(status, 202);
    let dir = host.stop().await;
    // Graceful stop let the in-flight delivery finish.
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(confirm_plugin())])
        .in_dir(dir)
        .start()
        .await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d[0].1, "done", "{d:?}");
    assert_eq!(jc.to("/texts/new").len(), 1);
}

#[tokio::test]
async fn appointment_confirm_in_javascript_books_and_replies() {
    let jc = Recorder::start().await;
    let booking = Recorder::start().await;
    let js = |booking_url: &str| {
        PluginSpec::new(
            "appointment-confirm-js",
            "appointment-confirm-js",
            format!(
                "events = [\"received\"]\nallowed_hosts = [\"{b}\"]\n[config]\nbooking_url = \"{booking_url}\"\n\
                 [limits]\nmemory_mb = 128\ntimeout_ms = 5000\n",
                b = booking.url
            ),
        )
    };
    // globex's booking system is not in its allowed_hosts (a loopback
    // address, so nothing leaves the machine even if it were reached).
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(js(&format!("{}/confirmations", booking.url))),
        TenantSpec::new("globex", &jc.url).plugin(js("http://127.0.0.1:9/confirmations")),
    ])
    .await;
    let confirm = fixture("seed-format/sms.received-confirm.json");
    let (status, resp) = host.post("acme", confirm.replace("CONFIRM", "  confirm "), &[]).await;
    assert_eq!(status, 202);
    host.idle().await;
    assert_eq!(
        host.deliveries(resp["event_id"].as_str().unwrap()),
        vec![("appointment-confirm-js".to_string(), "done".to_string(), None)]
    );
    let booked = booking.to("/confirmations");
    assert_eq!(booked.len(), 1);
    assert_eq!(booked[0].body["phone"], "+15125551234");
    assert_eq!(booked[0].body["confirmed_at"], CONFIRM_AT);
    let sent = jc.to("/api/v2/texts/new");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].body,
        json!({"from": "+15125550100", "to": "+15125551234", "body": "Your appointment is confirmed."})
    );

    // Other replies get no answer.
    host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    assert_eq!((booking.requests().len(), jc.requests().len()), (1, 1));

    // A failing booking system fails the delivery, with the reason, and no text.
    booking.respond_with(503);
    let (_, resp) = host.post("acme", confirm.replace(CONFIRM_ID, "m2"), &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(
        (d[0].1.as_str(), d[0].2.as_deref()),
        ("retrying", Some("plugin error: booking system answered 503"))
    );
    assert_eq!(jc.requests().len(), 1);

    // fetch() to a host that is not allowed rejects, the plugin catches it,
    // and its own message is the reason; nothing is sent anywhere.
    let (status, resp) = host.post("globex", confirm.replace(CONFIRM_ID, "m3"), &[]).await;
    assert_eq!(status, 202, "{resp}");
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d[0].1, "retrying");
    assert_eq!(
        d[0].2.as_deref(),
        Some("plugin error: cannot reach the booking system: TypeError: NetworkError when attempting to fetch resource")
    );
    assert_eq!(jc.requests().len(), 1, "no text without a booking");
}

fn inbound(from: &str, message_id: &str, at: &str, body: &str) -> String {
    fixture("seed-format/sms.received.json")
        .replace("\"from\": \"+15125551234\"", &format!("\"from\": \"{from}\""))
        .replace(RECEIVED_ID, message_id)
        .replace(RECEIVED_AT, at)
        .replace(RECEIVED_BODY, body)
}

#[tokio::test]
async fn lead_router_in_python_assigns_texts_and_does_not_reroute_within_the_window() {
    let jc = Recorder::start().await;
    let crm = Recorder::start().await;
    let router = |sales: &str| {
        let manifest = format!(
            "events = [\"received\"]\nallowed_hosts = [\"{crm}\"]\n[config]\nteams = \"sales,support\"\n\
             sales_keywords = \"price|quote\"\nsales_url = \"{sales}\"\nsupport_keywords = \"broken|help\"\n\
             support_url = \"{crm}/support\"\nreroute_window_secs = \"3600\"\n[limits]\ntimeout_ms = 5000\nmemory_mb = 128\n",
            crm = crm.url
        );
        PluginSpec::new("lead-router", "lead-router", manifest)
    };
    // globex's sales CRM is not in its allowed_hosts.
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(router(&format!("{}/sales", crm.url))),
        TenantSpec::new("globex", &jc.url).plugin(router("http://127.0.0.1:9/sales")),
    ])
    .await;
    let sarah = "+15125551234";
    let bob = "+15125559876";

    let (status, resp) = host
        .post(
            "acme",
            inbound(sarah, "m1", "2026-03-12T14:30:00Z", "What's the PRICE of a cleaning?"),
            &[],
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    host.idle().await;
    assert_eq!(host.deliveries(resp["event_id"].as_str().unwrap())[0].1, "done");
    let leads = crm.to("/sales");
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].body["team"], "sales");
    assert_eq!(leads[0].body["contact"], sarah);
    assert_eq!(leads[0].body["message"], "What's the PRICE of a cleaning?");
    let texts = jc.to("/api/v2/texts/new");
    assert_eq!(
        texts[0].body,
        json!({"from": "+15125550100", "to": sarah, "body": "Thanks, our sales team will reply shortly"})
    );

    // Sarah writes again ten minutes later: not routed again.
    host.post("acme", inbound(sarah, "m2", "2026-03-12T14:40:00Z", "also it is broken"), &[])
        .await;
    // Bob needs help: support.
    host.post("acme", inbound(bob, "m3", "2026-03-12T14:41:00Z", "Help, the app is broken"), &[])
        .await;
    // A message matching no rule is left alone.
    host.post("acme", inbound("+15125550001", "m4", "2026-03-12T14:42:00Z", "hello"), &[])
        .await;
    host.idle().await;
    assert_eq!(crm.to("/sales").len(), 1, "Sarah is not re-routed within the window");
    let support = crm.to("/support");
    assert_eq!((support.len(), support[0].body["contact"].as_str()), (1, Some(bob)));
    assert_eq!(jc.to("/api/v2/texts/new").len(), 2);

    // After the window, Sarah is routed again.
    host.post("acme", inbound(sarah, "m5", "2026-03-12T16:00:00Z", "a quote, please"), &[])
        .await;
    host.idle().await;
    assert_eq!(crm.to("/sales").len(), 2);
    assert_eq!(jc.to("/api/v2/texts/new").len(), 3);

    // A CRM that fails fails the delivery with the reason.
    crm.respond_with(500);
    let (_, resp) = host.post("acme", inbound(bob, "m6", "2026-03-12T18:00:00Z", "price?"), &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d[0].1, "retrying");
    assert_eq!(d[0].2.as_deref(), Some("plugin error: the sales CRM answered 500"));

    // urllib to a host that is not allowed raises URLError, which the plugin
    // catches; its message says why.
    let (_, resp) = host.post("globex", inbound(bob, "m7", "2026-03-12T18:00:00Z", "price?"), &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(d[0].1, "retrying");
    assert_eq!(
        d[0].2.as_deref(),
        Some("plugin error: cannot reach the sales CRM: http.send: not-allowed: http://127.0.0.1:9 is not in allowed_hosts")
    );
}

#[tokio::test]
async fn analytics_pipeline_in_c_streams_all_six_kinds_as_ndjson() {
    let jc = Recorder::start().await;
    let warehouse = Recorder::start().await;
    let manifest = format!(
        "allowed_hosts = [\"{w}\"]\n[config]\nwarehouse_url = \"{w}/ingest\"\nwarehouse_token = \"wh-token\"\n",
        w = warehouse.url
    );
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "analytics-pipeline",
        "analytics-pipeline",
        manifest,
    ))])
    .await;
    let kinds = ["received", "sent", "delivered", "failed", "optout", "optin"];
    for k in kinds {
        let (status, resp) = host.post("acme", fixture(&format!("seed-format/sms.{k}.json")), &[]).await;
        assert_eq!(status, 202, "{k}: {resp}");
        // One at a time, so the warehouse sees them in order.
        host.idle().await;
    }
    let lines = warehouse.to("/ingest");
    assert_eq!(lines.len(), 6);
    let got: Vec<&str> = lines.iter().map(|l| l.body["kind"].as_str().unwrap()).collect();
    assert_eq!(got, ["received", "sent", "delivered", "failed", "opt-out", "opt-in"]);
    for l in &lines {
        assert_eq!(l.headers["content-type"], "application/x-ndjson");
        assert_eq!(l.headers["authorization"], "Bearer wh-token");
        assert_eq!(l.body["tenant"], "acme");
    }
    let first = &lines[0].body;
    assert_eq!(first["from"], "+15125551234");
    assert_eq!(first["body"], RECEIVED_BODY);
    assert_eq!(first["contact_name"], CONTACT_NAME);
    assert_eq!(first["agent_id"], Value::Null);
    assert_eq!(first["direction"], "inbound");

    // A failing warehouse fails the delivery with the reason.
    warehouse.respond_with(502);
    let (_, resp) = host
        .post("acme", fixture("seed-format/sms.received.json").replace(RECEIVED_ID, "m9"), &[])
        .await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(
        (d[0].1.as_str(), d[0].2.as_deref()),
        ("retrying", Some("plugin error: warehouse answered 502"))
    );
}
