//! Every delivery attempt is recorded, through the real server: the admin
//! API's delivery view shows the event and each attempt with its outcome, the
//! plugin version, wasm time and peak memory, the plugin's log lines and its
//! host calls (an SMS sent, HTTP refused), and a retried delivery shows one
//! attempt per run. `/metrics` counts the same webhooks and deliveries.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{ADMIN_TOKEN, FakeJustCall, PluginSpec, TenantSpec, TestHost, fixture};

async fn detail(host: &TestHost, id: &Value) -> (u16, Value) {
    host.admin("GET", &format!("/tenants/acme/deliveries/{id}"), Some(ADMIN_TOKEN))
        .await
}

/// The id of the event's delivery to `plugin`, once its attempts number `n`
/// and the last has been recorded.
async fn delivery_with_attempts(host: &TestHost, event_id: &str, plugin: &str, n: usize) -> Value {
    let mut found = Value::Null;
    for _ in 0..300 {
        let (_, list) = host.admin("GET", "/tenants/acme/deliveries?limit=100", Some(ADMIN_TOKEN)).await;
        if let Some(d) = list["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_id"] == event_id && d["plugin"] == plugin)
        {
            let (_, v) = detail(host, &d["id"]).await;
            if v["attempts"].as_array().is_some_and(|a| a.len() >= n) {
                return v;
            }
            found = v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{plugin}'s delivery of {event_id} never had {n} attempts: {found}");
}

/// Tenant `acme` with `confirmer` (appointment-confirm: logs and sends an
/// SMS) and `outsider` (fails on a refused request), retried after `retry`.
async fn confirmer_and_outsider(jc: &FakeJustCall, retry: Duration) -> TestHost {
    TestHost::builder(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(PluginSpec::new("appointment-confirm", "confirmer", "events = [\"received\"]\n"))
            .plugin(PluginSpec::new(
                "hostile",
                "outsider",
                "events = [\"received\"]\n[config]\nmode = \"http\"\nurl = \"https://example.com/\"\n",
            )),
    ])
    .retries(vec![retry])
    .start()
    .await
}

#[tokio::test]
async fn each_attempt_is_recorded_with_its_logs_and_host_calls() {
    let jc = FakeJustCall::start().await;
    let host = confirmer_and_outsider(&jc, Duration::from_millis(50)).await;
    let (status, ack) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    assert_eq!(status, 202);
    let event_id = ack["event_id"].as_str().unwrap();
    jc.wait_for_sent(1).await;

    let ok = delivery_with_attempts(&host, event_id, "confirmer", 1).await;
    assert_eq!(ok["delivery"]["status"], "done", "{ok}");
    assert_eq!(ok["event"]["event_id"], event_id);
    let attempt = &ok["attempts"][0];
    assert_eq!(
        (attempt["attempt"].as_i64(), attempt["outcome"].as_str()),
        (Some(1), Some("done")),
        "{attempt}"
    );
    let serving = host.admin_plugin("acme", "confirmer").await.unwrap();
    assert_eq!(attempt["plugin_hash"], serving["hash"]);
    assert!(attempt["wasm_us"].as_i64().unwrap() > 0, "{attempt}");
    assert!(attempt["peak_memory_bytes"].as_i64().unwrap() >= 1 << 16, "{attempt}");
    let logs = attempt["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l["level"] == "info" && l["message"].as_str().unwrap().starts_with("confirmed appointment for +1")),
        "{logs:?}"
    );
    let calls = attempt["calls"].as_array().unwrap();
    let send = calls
        .iter()
        .find(|c| c["call"] == "sms.send")
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert_eq!(send["ok"], true, "{send}");
    assert!(send["args"].as_str().unwrap().contains(" to +1"), "{send}");
    assert!(send["result"].as_str().unwrap().starts_with("ok: id "), "{send}");

    // A failing plugin: one attempt per run, each with its refused request.
    let failed = delivery_with_attempts(&host, event_id, "outsider", 2).await;
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{failed}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"].as_i64(), Some(i as i64 + 1));
        assert_eq!(a["outcome"], "failed");
        assert!(a["error"].as_str().unwrap().starts_with("plugin error: http: "), "{a}");
        let http = &a["calls"][0];
        assert_eq!(
            (http["call"].as_str(), http["ok"].as_bool()),
            (Some("http.send"), Some(false)),
            "{a}"
        );
        assert_eq!(http["args"], "GET https://example.com/");
        assert!(http["result"].as_str().unwrap().contains("not in allowed_hosts"), "{http}");
    }

    // The same runs, counted in /metrics (admin listener, admin token).
    let (status, _) = host.post("nobody", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 404);
    let metrics = |token: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(format!("{}/metrics", host.admin_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(metrics(None).await.0, 401);
    let (status, text) = metrics(Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    for line in [
        "switchboard_webhooks_total{tenant=\"acme\",outcome=\"accepted\"} 1",
        "switchboard_webhooks_total{tenant=\"_other\",outcome=\"refused_unknown_tenant\"} 1",
        "switchboard_deliveries_total{tenant=\"acme\",plugin=\"confirmer\",outcome=\"done\"} 1",
        "switchboard_invocation_seconds_count{tenant=\"acme\",plugin=\"confirmer\"} 1",
        "switchboard_dispatch{kind=\"running\"} 0",
        "switchboard_justcall_requests_total{tenant=\"acme\",result=\"2xx\"} 1",
        "switchboard_justcall_seconds_count{tenant=\"acme\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_deliveries_total{tenant=\"acme\",plugin=\"outsider\",outcome=\"failed\"} "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(failed >= 2, "{text}");
    // Two plugins loaded at start; every event and attempt went through
    // committed write batches.
    assert!(text.lines().any(|l| l == "switchboard_host{kind=\"reloads\"} 2"), "{text}");
    assert!(text.lines().any(|l| l == "switchboard_host{kind=\"rejections\"} 0"), "{text}");
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_db_commit_seconds_count "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(commits >= 3, "{text}");

    let (status, missing) = detail(&host, &Value::from(999_999)).await;
    assert_eq!(status, 404, "{missing}");
    let (status, _) = host.admin("GET", "/tenants/acme/deliveries/nope", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
}

/// Reads Server-Sent Events blocks (`event: …` / `data: …`) from a response.
async fn next_block(resp: &mut reqwest::Response, pending: &mut String) -> Option<(String, String)> {
    loop {
        if let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let (mut kind, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !kind.is_empty() {
                return Some((kind, data));
            }
            continue;
        }
        let chunk = resp.chunk().await.ok()??;
        pending.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_tail_streams_attempts_as_they_end_and_the_cli_prints_them() {
    let jc = FakeJustCall::start().await;
    let host = confirmer_and_outsider(&jc, Duration::from_secs(3600)).await;
    let tail = |query: &str| {
        reqwest::Client::new()
            .get(format!("{}/admin/tenants/acme/tail{query}", host.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(tail("?outcome=maybe").await.unwrap().status(), 400);
    let unauthorized = reqwest::Client::new()
        .get(format!("{}/admin/tenants/acme/tail", host.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    // The API: only the confirmer's attempts, as they end.
    let mut stream = tail("?plugin=confirmer").await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // The CLI: only failed attempts.
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["admin", "--url", &host.admin_url, "--token", ADMIN_TOKEN])
        .args(["tail", "--tenant", "acme", "--outcome", "failed"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = cli.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Let the CLI subscribe before the event is posted.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, ack) = host.post("acme", fixture("seed-format/sms.received-confirm.json"), &[]).await;
    assert_eq!(status, 202);
    let event_id = ack["event_id"].as_str().unwrap();
    let mut pending = String::new();
    let (kind, data) = tokio::time::timeout(Duration::from_secs(10), next_block(&mut stream, &mut pending))
        .await
        .expect("an attempt within 10 s")
        .expect("the stream stays open");
    assert_eq!(kind, "delivery");
    let e: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (e["plugin"].as_str(), e["outcome"].as_str()),
        (Some("confirmer"), Some("done")),
        "{e}"
    );
    assert_eq!(e["event_id"], event_id);
    assert!(
        e["logs"][0]["message"].as_str().unwrap().starts_with("confirmed appointment"),
        "{e}"
    );
    assert_eq!(e["calls"][0]["call"], "sms.send", "{e}");

    let mut printed = Vec::new();
    let started = std::time::Instant::now();
    while !printed.iter().any(|l: &String| l.contains("acme/outsider FAIL delivery")) {
        assert!(started.elapsed() < Duration::from_secs(10), "the CLI printed: {printed:?}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            printed.push(line);
        }
    }
    let fail = printed.iter().find(|l| l.contains("acme/outsider FAIL")).unwrap();
    assert!(fail.contains(&format!("event …{}", &event_id[event_id.len() - 8..])), "{fail}");
    assert!(fail.ends_with("is not in allowed_hosts"), "{fail}");
    assert!(
        !printed.iter().any(|l| l.contains("confirmer")),
        "only failed attempts: {printed:?}"
    );

    // Stopping the server ends the open streams instead of waiting on them.
    tokio::time::timeout(Duration::from_secs(10), host.stop())
        .await
        .expect("the server stops with tails open");
    let status = cli.wait().unwrap();
    assert!(status.success(), "the CLI ends when the server ends the tail: {status}");
}
