//! Timers and schedules, end to end: a plugin (`ticker`) schedules and
//! cancels timers from a webhook's text; every firing reaches its sink. Also
//! the guarantees: once across kill -9, never after a cancel, never twice
//! for a retried delivery; cron across a DST change on an injected clock;
//! one catch-up firing after downtime; a 0.1.0 plugin beside a 0.2.0 one.

use std::time::Duration;

use serde_json::Value;
use switchboard::intake::auth::standard_webhooks_signature;

use crate::harness::{
    ADMIN_TOKEN, FakeJustCall, PluginSpec, RECEIVED_BODY, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture, guest, wait_for,
};
use crate::process::{Process, free_port, serve_command, wait_until_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A received webhook whose text is `body` (a unique message each time).
fn received(body: &str) -> String {
    fixture("seed-format/sms.received.json")
        .replace(RECEIVED_ID, &format!("tick-{}", uuid::Uuid::now_v7()))
        .replace(RECEIVED_BODY, body)
}

fn ticker(sink: &str, extra: &str) -> PluginSpec {
    PluginSpec::new(
        "ticker",
        "ticker",
        format!("events = [\"received\"]\nallowed_hosts = [\"{sink}\"]\n[config]\nsink = \"{sink}/fired\"\n{extra}"),
    )
}

/// The firings the sink got, as `(key, due_at)`.
fn fired(sink: &Recorder) -> Vec<(String, String)> {
    sink.to("/fired")
        .iter()
        .map(|r| {
            (
                r.body["key"].as_str().unwrap().to_string(),
                r.body["due_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn pending(host: &TestHost, tenant: &str) -> Vec<String> {
    let (status, v) = host.admin("GET", &format!("/tenants/{tenant}/timers"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    v["timers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_cancelled_timer_does_not_fire_and_its_twin_does() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(ticker(&sink.url, ""))]).await;
    let (status, _) = host.post("acme", received("schedule kept 700 schedule dropped 700"), &[]).await;
    assert_eq!(status, 202);
    while pending(&host, "acme").await.len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = host.post("acme", received("cancel dropped"), &[]).await;
    assert_eq!(status, 202);
    let got = sink.wait_for_count("/fired", 1).await;
    assert_eq!(got[0].body["key"], "kept");
    assert_eq!(got[0].body["payload"], "schedule kept 700 schedule dropped 700");
    // Well past when `dropped` was due: it never fires.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fired(&sink).len(), 1, "{:?}", fired(&sink));
    assert!(pending(&host, "acme").await.is_empty());
    // The firing is an event with a delivery like any webhook's.
    let event_id = got[0].body["event_id"].as_str().unwrap();
    let stored = host.stored_event(event_id);
    assert_eq!(stored["kind"], "timer");
    assert_eq!(stored["timer"]["key"], "kept");
    assert_eq!(host.deliveries(event_id), vec![("ticker".to_string(), "done".to_string(), None)]);
    // Counted for the operator: one firing, nothing pending.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", host.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_timers_fired_total{tenant=\"acme\",plugin=\"ticker\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_host{kind=\"timers_pending\"} 0"), "{metrics}");
    assert!(metrics.contains("switchboard_timer_lag_seconds_count 1"), "{metrics}");
}

#[tokio::test]
async fn a_retried_delivery_schedules_once() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(ticker(&sink.url, ""))])
        .retries(vec![Duration::from_millis(100); 3])
        .start()
        .await;
    // Each attempt schedules a timer keyed by its attempt number, and the
    // first attempt then fails: only the attempt that succeeded counts.
    let (status, body) = host.post("acme", received("schedule k-{attempt} 600000 fail 1"), &[]).await;
    assert_eq!(status, 202);
    let event_id = body["event_id"].as_str().unwrap().to_string();
    wait_for("the retry to succeed", Duration::from_secs(10), || {
        host.deliveries(&event_id).first().is_some_and(|d| d.1 == "done")
    })
    .await;
    assert_eq!(pending(&host, "acme").await, ["k-2"]);
}

#[tokio::test]
async fn quotas_refuse_more_timers_than_the_limit() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(ticker(&sink.url, "[limits]\ntimers = 2\ntimer_max_days = 1\n")),
    ])
    .await;
    let (_, body) = host
        .post("acme", received("schedule a 600000 schedule b 600000 schedule c 600000"), &[])
        .await;
    let event_id = body["event_id"].as_str().unwrap().to_string();
    wait_for("the delivery to fail", Duration::from_secs(10), || {
        host.deliveries(&event_id).first().is_some_and(|d| d.2.is_some())
    })
    .await;
    let error = host.deliveries(&event_id)[0].2.clone().unwrap();
    assert!(error.contains("timers: 2 timers are already pending"), "{error}");
    // Nothing of the failed delivery was kept.
    assert!(pending(&host, "acme").await.is_empty());
    let (_, body) = host.post("acme", received("schedule far 172800000"), &[]).await;
    let event_id = body["event_id"].as_str().unwrap().to_string();
    wait_for("the delivery to fail", Duration::from_secs(10), || {
        host.deliveries(&event_id).first().is_some_and(|d| d.2.is_some())
    })
    .await;
    let error = host.deliveries(&event_id)[0].2.clone().unwrap();
    assert!(error.contains("timer_max_days"), "{error}");
}

/// Chicago starts DST on 2026-03-08: 09:00 local is 15:00 UTC the day
/// before and 14:00 UTC from that day on.
#[tokio::test]
async fn a_schedule_follows_its_time_zone_across_dst() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-07T12:00:00Z").unwrap().to_utc();
    let schedule = "[[schedule]]\nname = \"morning\"\ncron = \"0 9 * * *\"\ntimezone = \"America/Chicago\"\n";
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(ticker(&sink.url, schedule))])
        // A day passes every 2 s.
        .clock(switchboard::domain::Clock::new(Some(start), 43_200.0))
        .start()
        .await;
    let got = sink.wait_for_count("/fired", 3).await;
    let mut due: Vec<String> = got.iter().map(|r| r.body["due_at"].as_str().unwrap().to_string()).collect();
    due.sort();
    assert_eq!(
        due[..3],
        ["2026-03-07T15:00:00.000Z", "2026-03-08T14:00:00.000Z", "2026-03-09T14:00:00.000Z"]
    );
    assert!(got.iter().all(|r| r.body["key"] == "morning" && r.body["scheduled"] == true));
    drop(host);
}

#[tokio::test]
async fn a_schedule_missed_during_downtime_fires_once_at_start() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let schedule = "[[schedule]]\nname = \"minutely\"\ncron = \"* * * * *\"\n";
    let at = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc());
    let tenants = || vec![TenantSpec::new("acme", &jc.url).plugin(ticker(&sink.url, schedule))];
    let host = TestHost::builder(tenants())
        .clock(switchboard::domain::Clock::new(at("2026-03-07T12:00:10Z"), 1.0))
        .start()
        .await;
    while pending(&host, "acme").await != ["minutely"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = host.stop().await;
    // Back an hour later: sixty firings were missed; one is made up.
    let host = TestHost::builder(tenants())
        .in_dir(dir)
        .clock(switchboard::domain::Clock::new(at("2026-03-07T13:00:10Z"), 1.0))
        .start()
        .await;
    let got = sink.wait_for_count("/fired", 1).await;
    assert_eq!(got[0].body["due_at"], "2026-03-07T12:01:00.000Z");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fired(&sink).len(), 1, "{:?}", fired(&sink));
    let (_, v) = host.admin("GET", "/tenants/acme/timers", Some(ADMIN_TOKEN)).await;
    assert_eq!(v["timers"][0]["due_at"], "2026-03-07T13:01:00.000Z", "{v}");
}

#[tokio::test]
async fn a_0_1_0_plugin_runs_beside_a_0_2_0_plugin() {
    let (jc, crm) = (FakeJustCall::start().await, Recorder::start().await);
    let manifest = |path: &str| {
        format!(
            "events = [\"received\"]\nallowed_hosts = [\"{0}\"]\n[config]\ncrm_url = \"{0}/{path}\"\n",
            crm.url
        )
    };
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(PluginSpec::new("contract-0.1.0/crm-logger.wasm", "crm-old", manifest("old")))
            .plugin(PluginSpec::new("crm-logger", "crm-new", manifest("new")))
            .plugin(PluginSpec::new(
                "contract-0.1.0/appointment-confirm.wasm",
                "confirm-old",
                "events = [\"received\"]\n",
            ))
            .plugin(PluginSpec::new(
                "contract-0.1.0/analytics-pipeline.wasm",
                "analytics-old",
                format!("allowed_hosts = [\"{0}\"]\n[config]\nwarehouse_url = \"{0}/warehouse\"\n", crm.url),
            )),
    ])
    .await;
    let plugins = host.admin_plugins("acme").await;
    let contract =
        |name: &str| -> Value { plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["contract"].clone() };
    assert_eq!(
        (contract("crm-old"), contract("crm-new")),
        ("0.1.0".into(), "0.2.0".into()),
        "{plugins}"
    );
    let (status, _) = host.post("acme", received("CONFIRM"), &[]).await;
    assert_eq!(status, 202);
    let (old, new) = (crm.wait_for_count("/old", 1).await, crm.wait_for_count("/new", 1).await);
    assert_eq!(old[0].body["body"], "CONFIRM");
    assert_eq!(old[0].body, new[0].body);
    // The C example built against 0.1.0 streams it too.
    let line = crm.wait_for_count("/warehouse", 1).await;
    assert_eq!(line[0].body["kind"], "received", "{}", line[0].body);
    assert_eq!(contract("analytics-old"), "0.1.0");
    // And the Rust SDK example built against 0.1.0 answers through JustCall.
    let sent = jc.wait_for_sent(1).await;
    assert_eq!(sent[0].body, "Your appointment is confirmed.");
    // A 0.1.0 plugin cannot declare schedules: it would never see them fire.
    let dir = host.plugin_dir("acme");
    std::fs::write(
        dir.join("crm-old.toml"),
        format!("{}[[schedule]]\nname = \"x\"\ncron = \"* * * * *\"\n", manifest("old")),
    )
    .unwrap();
    let refused = "[[schedule]] needs a plugin built against switchboard:plugin@0.2.0";
    let started = std::time::Instant::now();
    while !host.admin_plugins("acme").await.to_string().contains(refused) {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", host.admin_plugins("acme").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data dir whose config serves tenant `acme` (Standard Webhooks) with the
/// `ticker` plugin reporting to `sink`: what the real-binary tests run.
fn ticker_node_dir(justcall: &str, sink: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d/acme");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("ticker"), plugins.join("ticker.wasm")).unwrap();
    std::fs::write(plugins.join("ticker.toml"), &ticker(sink, "").manifest).unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins.d\"\n[tenants.acme]\nnumbers = [\"+15125550100\"]\n\
             webhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SECRET}\"\njustcall_base_url = \"{justcall}\"\n\
             justcall_api_key = \"k\"\njustcall_api_secret = \"s\"\n"
        ),
    )
    .unwrap();
    (dir, config)
}

/// `switchboard serve` on `config`, once it answers.
async fn serve_node(config: &std::path::Path) -> Process {
    let port = free_port();
    let node = Process::spawn(serve_command(BIN, config, port, None), port);
    tokio::task::spawn_blocking(move || wait_until_healthy(port, Duration::from_secs(30)))
        .await
        .unwrap();
    node
}

/// Posts a received webhook with `body` to `node`'s tenant `acme`, signed
/// with webhook id `id`; asserts it was accepted.
async fn post_signed(node: &Process, id: &str, body: &str) {
    let body = received(body);
    let ts = chrono::Utc::now().timestamp().to_string();
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/acme", node.url()))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", &ts)
        .header("webhook-signature", standard_webhooks_signature(SECRET, id, &ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
}

/// The real binary: a timer committed before a kill -9 fires after the
/// restart, late rather than never, and exactly once.
#[tokio::test]
async fn a_timer_fires_once_across_kill_9() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let (dir, config) = ticker_node_dir(&jc.url, &sink.url);
    let mut server = serve_node(&config).await;
    post_signed(&server, "wh-survivor", "schedule survivor 1500").await;
    let db = dir.path().join("data/switchboard.db");
    let stored = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM timers WHERE key = 'survivor'", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    wait_for("the timer to be committed", Duration::from_secs(10), || stored() == 1).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Down past its due time.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(fired(&sink).is_empty());
    let server = serve_node(&config).await;
    let got = sink.wait_for_count("/fired", 1).await;
    assert_eq!(got[0].body["key"], "survivor");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(fired(&sink).len(), 1);
    assert_eq!(stored(), 0);
    drop(server);
}

/// The fifth example: a booking texted to a customer schedules a reminder a
/// day before it and an escalation if they stay quiet; a CONFIRM cancels
/// both. An hour passes every second here.
#[tokio::test]
async fn appointment_reminder_reminds_escalates_and_stops_on_confirm() {
    let (jc, team) = (FakeJustCall::start().await, Recorder::start().await);
    let manifest = format!(
        "events = [\"sent\", \"received\", \"opt-out\"]\nallowed_hosts = [\"{0}\"]\n[config]\nutc_offset = \"+00:00\"\n\
         remind_before = \"24h\"\nescalate_after = \"2h\"\nteam_url = \"{0}/team\"\n",
        team.url
    );
    let clock = switchboard::domain::Clock::new(None, 3_600.0);
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "appointment-reminder",
        "appointment-reminder",
        manifest,
    ))])
    .clock(clock)
    .start()
    .await;
    // Appointments 30 h ahead (on the host's clock): reminders due in 6 h.
    let when = (clock.now() + chrono::Duration::hours(30)).format("%Y-%m-%d %H:%M").to_string();
    let booking = |contact: &str, id: &str| {
        fixture("seed-format/sms.sent.json")
            .replace("sb_m003", id)
            .replace("+15125551234", contact)
            .replace("Booked: Tuesday 10:30.", &format!("Booked: {when}."))
    };
    let (quiet, confirms) = ("+15125551234", "+15125557777");
    for (contact, id) in [(quiet, "book-1"), (confirms, "book-2")] {
        let (status, v) = host.post("acme", booking(contact, id), &[]).await;
        assert_eq!(status, 202, "{v}");
    }
    let mut keys = Vec::new();
    while keys.len() < 4 {
        keys = pending(&host, "acme").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("escalate:{quiet}"),
            format!("escalate:{confirms}"),
            format!("reminder:{quiet}"),
            format!("reminder:{confirms}")
        ]
    );
    let confirm = fixture("seed-format/sms.received-confirm.json")
        .replace("sb_m002", "confirm-2")
        .replace("+15125551234", confirms);
    let (status, _) = host.post("acme", confirm, &[]).await;
    assert_eq!(status, 202);
    // Two hours on, the quiet customer is escalated to the team, once.
    let told = team.wait_for_count("/team", 1).await;
    assert_eq!(told[0].body["contact"], quiet);
    assert!(told[0].body["booking"].as_str().unwrap().contains(&when));
    // Six hours on, the quiet customer is reminded; the one who confirmed is not.
    let sent = jc.wait_for_sent(1).await;
    assert_eq!((sent[0].to.as_str(), sent[0].from.as_str()), (quiet, "+15125550100"));
    assert!(sent[0].body.contains(&when), "{}", sent[0].body);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jc.sent().len(), 1);
    assert_eq!(team.to("/team").len(), 1);
    assert!(pending(&host, "acme").await.is_empty());
}

/// `plugin test` shows the timer changes a live delivery would commit, and
/// commits none.
#[tokio::test]
async fn plugin_test_shows_the_timers_it_would_set() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    let commands = "schedule soon 60000 schedule gone 1000 cancel gone";
    std::fs::write(&event, received(commands)).unwrap();
    let wasm = guest("ticker");
    let (ok, out, err) = crate::harness::switchboard(
        &["plugin", "test", wasm.to_str().unwrap(), "--event", event.to_str().unwrap()],
        &[("SWITCHBOARD_CACHE", dir.path().join("cache").to_str().unwrap())],
        None,
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("timers.cancel   gone"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("timers.schedule soon due "))
        .unwrap_or_else(|| panic!("{out}"));
    // The payload is the message's text.
    assert!(line.ends_with(&format!("({} bytes)", commands.len())), "{line}");

    // A timer's firing, with its payload, for the example's reminder.
    let reminder = guest("appointment-reminder");
    let payload = r#"{"line":"+15125550100","contact":"+15125551234","when":"2026-12-10 10:00"}"#;
    let cache = [("SWITCHBOARD_CACHE", dir.path().join("cache").to_str().unwrap().to_string())];
    let env: Vec<(&str, &str)> = cache.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "plugin",
        "test",
        reminder.to_str().unwrap(),
        "--event",
        "timer:reminder:+15125551234",
        "--timer-payload",
        payload,
    ];
    let (ok, out, err) = crate::harness::switchboard(&args, &env, None).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("sms.send     from +15125550100 to +15125551234: \"Reminder: your appointment is on 2026-12-10 10:00."),
        "{out}"
    );
    // A 0.1.0 component cannot take one.
    let old = crate::harness::fixtures_dir().join("contract-0.1.0/crm-logger.wasm");
    let (ok, out, err) = crate::harness::switchboard(&["plugin", "test", old.to_str().unwrap(), "--event", "timer:x"], &env, None).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("a `timer` event cannot reach a switchboard:plugin@0.1.0 plugin"),
        "{err}"
    );
}

/// Two nodes (real binaries) on one database: every timer fires on one of
/// them, once. The claim — the row deleted as read, in the transaction that
/// stores the firing — is what decides, whichever node gets there first.
#[tokio::test]
async fn two_nodes_on_one_database_fire_each_timer_once() {
    let (jc, sink) = (FakeJustCall::start().await, Recorder::start().await);
    let (_dir, config) = ticker_node_dir(&jc.url, &sink.url);
    // One after the other: the first creates the schema.
    let nodes = [serve_node(&config).await, serve_node(&config).await];
    // 40 timers, due together in a second, scheduled through the first node.
    let commands: Vec<String> = (0..40).map(|i| format!("schedule t{i} 1000")).collect();
    post_signed(&nodes[0], "wh-nodes", &commands.join(" ")).await;
    sink.wait_for_count("/fired", 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut keys: Vec<String> = fired(&sink).into_iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!((keys.len(), fired(&sink).len()), (40, 40));
    drop(nodes);
}
