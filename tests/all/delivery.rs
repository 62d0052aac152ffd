//! Durable delivery: the retry schedule and pause, held events resumed in
//! order, replay, the admin API's refusals, 503 while the database is
//! locked, and side effects that happen once however often a delivery runs.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    ADMIN_TOKEN, FakeJustCall, Fault, RECEIVED_BODY, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture, flaky, wait_for,
};

/// Retries 50, 100 and 150 ms after a failure.
fn fast_retries() -> Vec<Duration> {
    vec![Duration::from_millis(50), Duration::from_millis(100), Duration::from_millis(150)]
}

/// A received message with this id and body.
fn message(id: &str, body: &str) -> String {
    fixture("seed-format/sms.received.json")
        .replace(RECEIVED_ID, id)
        .replace(RECEIVED_BODY, body)
}

async fn delivery_of(host: &TestHost, event_id: &str) -> Value {
    let (status, v) = host.admin("GET", "/tenants/acme/deliveries?limit=1000", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == event_id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_status(host: &TestHost, event_id: &str, status: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let d = delivery_of(host, event_id).await;
        if d["status"] == status {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "delivery of {event_id} never became {status}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sink_bodies(sink: &Recorder) -> Vec<String> {
    sink.to("/sink")
        .iter()
        .map(|r| r.body["body"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn failures_retry_on_schedule_the_fourth_pauses_and_resume_runs_held_events_in_order() {
    let sink = Recorder::start().await;
    let jc = FakeJustCall::start().await;
    let tenant = || TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, false, 3000));
    let host = TestHost::builder(vec![tenant()]).retries(fast_retries()).start().await;

    // Failing 1, 2 and 3 times: each succeeds on its retry, attempts = failures + 1.
    for n in 1..=3 {
        let (status, resp) = host.post("acme", message(&format!("m-fail-{n}"), &format!("fail {n}")), &[]).await;
        assert_eq!(status, 202, "{resp}");
        let d = wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
        assert_eq!((d["attempts"].as_i64(), d["failures"].as_i64()), (Some(n + 1), Some(n)), "{d}");
        assert_eq!(d["last_error"], format!("plugin error: flaky: attempt {n} fails as planned"));
    }
    let (_, plugins) = host.admin("GET", "/tenants/acme/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(plugins["plugins"][0]["status"], "active", "{plugins}");
    assert_eq!(plugins["plugins"][0]["delivery"]["failed_attempts"], 6);

    // Failing a fourth time: the delivery is failed and the plugin paused.
    let (_, resp) = host.post("acme", message("m-fail-4", "fail 4"), &[]).await;
    let failing = resp["event_id"].as_str().unwrap().to_string();
    let d = wait_status(&host, &failing, "failed").await;
    assert_eq!((d["attempts"].as_i64(), d["failures"].as_i64()), (Some(4), Some(4)), "{d}");
    let (_, plugins) = host.admin("GET", "/tenants/acme/plugins", Some(ADMIN_TOKEN)).await;
    let p = &plugins["plugins"][0];
    assert_eq!(p["status"], "paused", "{plugins}");
    assert_eq!(p["delivery"]["failed_attempts"], 10);
    assert_eq!(p["delivery"]["failed_deliveries"], 1);
    assert_eq!(p["delivery"]["last_error"], "plugin error: flaky: attempt 4 fails as planned");
    // Each event reached the sink once, however often its delivery ran.
    assert_eq!(sink_bodies(&sink), ["fail 1", "fail 2", "fail 3", "fail 4"]);

    // While paused, new events are accepted and held, not run.
    let mut held = Vec::new();
    for i in 0..5 {
        let (status, resp) = host.post("acme", message(&format!("m-held-{i}"), &format!("held {i}")), &[]).await;
        assert_eq!((status, resp["held"].as_i64()), (202, Some(1)), "{resp}");
        held.push(resp["event_id"].as_str().unwrap().to_string());
    }
    let (_, list) = host.admin("GET", "/tenants/acme/deliveries?status=held", Some(ADMIN_TOKEN)).await;
    assert_eq!(list["deliveries"].as_array().unwrap().len(), 5, "{list}");
    let (_, list) = host.admin("GET", "/tenants/acme/deliveries?status=failed", Some(ADMIN_TOKEN)).await;
    assert_eq!(list["deliveries"][0]["event_id"], failing.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink_bodies(&sink).len(), 4, "held events do not run");

    // The pause and the held events survive a restart.
    let dir = host.stop().await;
    let host = TestHost::builder(vec![tenant()]).in_dir(dir).retries(fast_retries()).start().await;
    let (_, plugins) = host.admin("GET", "/tenants/acme/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(plugins["plugins"][0]["status"], "paused", "{plugins}");
    assert_eq!(plugins["plugins"][0]["delivery"]["held"], 5);

    // Resuming runs the held events once each, in arrival order.
    let (status, resp) = host.admin("POST", "/tenants/acme/plugins/flaky/resume", Some(ADMIN_TOKEN)).await;
    assert_eq!((status, resp["released"].as_i64()), (200, Some(5)), "{resp}");
    for id in &held {
        wait_status(&host, id, "done").await;
    }
    assert_eq!(sink_bodies(&sink)[4..], ["held 0", "held 1", "held 2", "held 3", "held 4"]);
    let (_, plugins) = host.admin("GET", "/tenants/acme/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(plugins["plugins"][0]["status"], "active");
    let (status, resp) = host.admin("POST", "/tenants/acme/plugins/flaky/resume", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (409, Some("conflict: plugin `flaky` is not paused"))
    );

    // New events run straight away again; the failed one stays failed until replayed.
    let (_, resp) = host.post("acme", message("m-after", "after"), &[]).await;
    wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(delivery_of(&host, &failing).await["status"], "failed");
}

#[tokio::test]
async fn a_retried_delivery_does_not_text_or_post_twice() {
    let sink = Recorder::start().await;
    let jc = FakeJustCall::start().await;
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, true, 3000))])
        .retries(fast_retries())
        .start()
        .await;
    // The plugin texts the customer and posts to the CRM, then fails twice.
    let (_, resp) = host.post("acme", message("m1", "fail 2"), &[]).await;
    let d = wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(d["attempts"], 3);
    let sent = jc.sent();
    assert_eq!(sent.len(), 1, "one SMS for three attempts: {sent:?}");
    assert_eq!((sent[0].to.as_str(), sent[0].body.as_str()), ("+15125551234", "re: fail 2"));
    assert_eq!(sink_bodies(&sink), ["fail 2"], "one CRM POST for three attempts");
    // The journal replayed results; JustCall saw one send and no lookups.
    assert_eq!(jc.requests(), (1, 0));
}

#[tokio::test]
async fn a_send_with_an_unknown_outcome_is_reconciled_not_repeated() {
    let sink = Recorder::start().await;
    let jc = FakeJustCall::start().await;
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, true, 2000))])
        .retries(fast_retries())
        .start()
        .await;

    // The deadline leaves room for a send plus a reconciling lookup on a
    // loaded CI machine (one took 420 ms there); each stall is far beyond it.
    // JustCall sends the SMS but answers only after the plugin's deadline:
    // the attempt fails with the outcome unknown; the retry finds the SMS in
    // JustCall's list and does not send it again.
    jc.fail_next(&[Fault::SendThenStall(Duration::from_secs(5))]);
    let (_, resp) = host.post("acme", message("m1", "slow"), &[]).await;
    let d = wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["last_error"], "deadline exceeded (2000 ms)");
    assert_eq!(jc.sent().len(), 1);
    let (sends, lists) = jc.requests();
    assert_eq!((sends, lists), (1, 1), "reconciled by one list lookup");

    // JustCall sends, then answers 502: reconciled within the same attempt.
    jc.fail_next(&[Fault::SendThenFail(502)]);
    let (_, resp) = host.post("acme", message("m2", "flaky upstream"), &[]).await;
    let d = wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(jc.sent().iter().filter(|s| s.body == "re: flaky upstream").count(), 1);

    // JustCall answers 500 without sending: the lookup finds nothing, so it is sent.
    jc.fail_next(&[Fault::Refuse(500, None)]);
    let (_, resp) = host.post("acme", message("m3", "down"), &[]).await;
    wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(jc.sent().iter().filter(|s| s.body == "re: down").count(), 1);

    // An unknown outcome that was in fact not sent, while another event sent
    // the same text to the same customer: that other SMS is already claimed
    // by its own delivery, so this one is sent, not mistaken for it.
    jc.fail_next(&[Fault::StallWithoutSending(Duration::from_secs(5))]);
    let sends_before = jc.requests().0;
    let (_, r4) = host.post("acme", message("m4", "slow"), &[]).await;
    wait_for("m4's send to reach JustCall", Duration::from_secs(5), || {
        jc.requests().0 > sends_before
    })
    .await;
    let (_, r5) = host.post("acme", message("m5", "slow"), &[]).await;
    wait_status(&host, r5["event_id"].as_str().unwrap(), "done").await;
    let d = wait_status(&host, r4["event_id"].as_str().unwrap(), "done").await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(
        jc.sent().iter().filter(|s| s.body == "re: slow").count(),
        3,
        "m1, m5 and m4 each texted once"
    );
}

#[tokio::test]
async fn justcall_429_is_retried_and_the_tenant_budget_is_enforced() {
    let sink = Recorder::start().await;
    let jc = FakeJustCall::start().await;
    let mut tenant = TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, true, 3000));
    tenant.rate_per_minute = 3;
    let host = TestHost::start(vec![tenant]).await;

    // A 429 with Retry-After: 1 is waited out and retried within the deadline.
    // (Queued over the simulator's HTTP fault route, as a plugin author would
    // in `switchboard dev`; a bad fault is refused with the reason.)
    let faults = reqwest::Client::new().post(format!("{}/faults", jc.url));
    let bad = faults
        .try_clone()
        .unwrap()
        .body(r#"[{"refuse": {"status": 200}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("status 200 is not an error status"));
    let queued = faults
        .body(r#"[{"refuse": {"status": 429, "retry_after_secs": 1}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
    let started = std::time::Instant::now();
    let (_, resp) = host.post("acme", message("m1", "one"), &[]).await;
    let d = wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!((d["attempts"].as_i64(), jc.requests().0), (Some(1), 2));

    // The budget is 3 requests a minute and two are spent: one more SMS
    // goes out, the next is refused by Switchboard without calling JustCall.
    let (_, resp) = host.post("acme", message("m2", "two"), &[]).await;
    wait_status(&host, resp["event_id"].as_str().unwrap(), "done").await;
    let (_, resp) = host.post("acme", message("m3", "three"), &[]).await;
    host.idle().await;
    let d = delivery_of(&host, resp["event_id"].as_str().unwrap()).await;
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin error: sms: JustCall rate limit reached; retry in "),
        "{error}"
    );
    assert_eq!(jc.requests().0, 3);
    assert_eq!(jc.sent().len(), 2);
}

#[tokio::test]
async fn replay_runs_a_stored_event_through_the_current_plugins() {
    let sink = Recorder::start().await;
    let jc = FakeJustCall::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, false, 3000)),
        TenantSpec::new("other", &jc.url).plugin(flaky(&sink.url, false, 3000)),
    ])
    .await;
    let (_, resp) = host.post("acme", message("m1", "hello"), &[]).await;
    let event = resp["event_id"].as_str().unwrap().to_string();
    sink.wait_for_count("/sink", 1).await;

    let (status, resp) = host
        .admin("POST", &format!("/tenants/acme/events/{event}/replay"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["deliveries"][0]["plugin"], "flaky");
    sink.wait_for_count("/sink", 2).await;
    host.idle().await;
    let (_, list) = host.admin("GET", "/tenants/acme/deliveries?status=done", Some(ADMIN_TOKEN)).await;
    let runs: Vec<&Value> = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["event_id"] == event.as_str())
        .collect();
    assert_eq!(runs.len(), 2, "the original delivery and the replay: {list}");

    // Another tenant's event id is not found; nor is an unknown one.
    let (status, _) = host
        .admin("POST", &format!("/tenants/other/events/{event}/replay"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 404);
    let (status, _) = host.admin("POST", "/tenants/acme/events/nope/replay", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_admin_api_refuses_bad_tokens_unknown_ids_and_bad_filters() {
    let jc = FakeJustCall::start().await;
    let sink = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, false, 3000))]).await;
    for (method, path) in [
        ("GET", "/tenants/acme/plugins"),
        ("POST", "/tenants/acme/plugins/flaky/resume"),
        ("GET", "/tenants/acme/deliveries"),
        ("POST", "/tenants/acme/events/x/replay"),
    ] {
        let (status, body) = host.admin(method, path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized: missing bearer token")),
            "{path}"
        );
        let (status, body) = host.admin(method, path, Some("wrong")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized: wrong bearer token")),
            "{path}"
        );
    }
    let (status, _) = host.admin("GET", "/tenants/ghost/deliveries", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
    let (status, body) = host.admin("POST", "/tenants/acme/plugins/ghost/resume", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not found: plugin `ghost` of tenant `acme`"))
    );
    let (status, body) = host.admin("GET", "/tenants/acme/deliveries?status=lost", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "bad request: status `lost` is not one of verifying, pending, running, done, failed, held, refused"
    );
    // Each search filter says precisely what it could not use.
    for (query, error) in [
        (
            "since=yesterday",
            "since `yesterday` is neither an RFC 3339 time nor a duration like 15m, 2h or 7d",
        ),
        (
            "until=2026-13-01",
            "until `2026-13-01` is neither an RFC 3339 time nor a duration like 15m, 2h or 7d",
        ),
        ("number=call-me", "number `call-me` has no digits"),
        ("text=%3F%21", "text `?!` has no words to search for"),
        ("before=last", "before `last` is not a delivery id"),
    ] {
        let (status, body) = host
            .admin("GET", &format!("/tenants/acme/deliveries?{query}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(format!("bad request: {error}").as_str())),
            "{query}"
        );
    }
    // Empty filters (as a form sends them) are no filter.
    let (status, body) = host
        .admin(
            "GET",
            "/tenants/acme/deliveries?number=&text=&kind=&plugin=&status=&since=&until=",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!((status, body["next"].clone()), (200, serde_json::Value::Null), "{body}");
}

#[tokio::test]
async fn a_locked_database_answers_503_and_loses_nothing() {
    let jc = FakeJustCall::start().await;
    let sink = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = switchboard::config::DbOptions {
        busy_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(flaky(&sink.url, false, 3000))])
        .in_dir(dir)
        .delivery(options)
        .start()
        .await;

    // Another process holds the write lock longer than the server waits.
    let locker = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (status, resp) = host.post("acme", message("m1", "while locked"), &[]).await;
    assert_eq!(status, 503, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot store the event right now, retry later: "),
        "{resp}"
    );
    locker.execute_batch("ROLLBACK").unwrap();

    // JustCall retries: now it is stored, once, and delivered.
    let (status, resp) = host.post("acme", message("m1", "while locked"), &[]).await;
    assert_eq!(status, 202, "{resp}");
    sink.wait_for_count("/sink", 1).await;
    assert_eq!(host.event_count("acme"), 1);
    assert!(host.healthy().await);
}
