//! Versions on trial, through the real server: a canary that fails is rolled
//! back automatically (the operator told, the audit log saying why) with
//! every event still answered once by the serving version, each contact
//! kept on one version meanwhile; a shadow that would reply differently is
//! reported side by side — and none of its SMS, POSTs or KV writes reached
//! anything — until it is promoted; a trial resumes after a restart, with
//! its policy, and a stopped one does not.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, CONFIRM_ID, PluginSpec, Recorder, TenantSpec, TestHost, fixture, guest, wait_for};

const CUSTOMER: &str = "+15125551234";

/// A CONFIRM from contact `+1512555{n:04}` with message id `m{n}`.
fn from_contact(n: usize) -> String {
    fixture("seed-format/sms.received-confirm.json")
        .replace(CONFIRM_ID, &format!("m{n}"))
        .replace(CUSTOMER, &format!("+1512555{n:04}"))
}

async fn upload(host: &TestHost, query: &str, wasm: Vec<u8>, manifest: &str) -> (u16, Value) {
    let path = format!("acme/plugins/answer/versions?{query}");
    crate::deploy::upload_with(host, ADMIN_TOKEN, &path, wasm, Some(manifest)).await
}

async fn trial(host: &TestHost) -> Value {
    let (status, v) = host.admin("GET", "/tenants/acme/plugins/answer/trial", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    v["trial"].clone()
}

async fn wait_trial(host: &TestHost, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let t = trial(host).await;
        if cond(&t) {
            return t;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn notices(ops: &Recorder, kind: &str) -> Vec<Value> {
    ops.to("/operator")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["type"] == kind)
        .collect()
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_every_event_is_still_answered_once() {
    let (jc, ops) = (Recorder::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "answer-a",
        "answer",
        "events = [\"received\"]\n",
    ))])
    .retries(vec![Duration::from_millis(300); 3])
    .operator_webhook(&format!("{}/operator", ops.url), "operator-secret-0123456789")
    .start()
    .await;
    let serving = host.admin_plugin("acme", "answer").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, t) = upload(
        &host,
        "canary=50&min_runs=5&failure_margin=10",
        std::fs::read(guest("misbehave")).unwrap(),
        "events = [\"received\"]\n[config]\nmode = \"error\"\n",
    )
    .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(
        (t["mode"].as_str(), t["against"].as_str()),
        (Some("canary"), Some(serving.as_str()))
    );
    let canary = t["version"].as_str().unwrap().to_string();

    const N: usize = 40;
    for n in 0..N {
        let (status, _) = host.post("acme", from_contact(n), &[]).await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = wait_trial(&host, "the canary's rollback", |t| t["ended"].is_string()).await;
    let how = ended["ended"].as_str().unwrap();
    assert!(how.starts_with("rolled back: failure rate 100.0%"), "{ended}");
    assert_eq!(ended["canary"]["failure_pct"], 100.0);
    assert_eq!(ended["serving"]["failure_pct"], 0.0);
    host.idle().await;

    // Every event was answered once, by the serving version (the canary
    // never texts), its failed deliveries retried there after the rollback.
    let mut answered: HashMap<String, usize> = HashMap::new();
    for r in jc.to("/api/v2/texts/new") {
        let body = r.body["body"].as_str().unwrap().to_string();
        assert!(body.starts_with("answer-a:"), "{body}");
        *answered.entry(body).or_default() += 1;
    }
    assert_eq!(answered.len(), N);
    assert!(answered.values().all(|&n| n == 1), "{answered:?}");
    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let done: i64 = db
        .query_row("SELECT count(*) FROM deliveries WHERE status = 'done'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(done, N as i64);
    // Sticky: each contact's first attempts ran on one version, and some
    // contacts were on each.
    let hashes: Vec<(String, i64)> = db
        .prepare(
            "SELECT json_extract(e.event_json, '$.from'), count(DISTINCT a.plugin_hash)
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id
             WHERE a.ended_ms <= (SELECT max(ended_ms) FROM attempts WHERE error IS NOT NULL AND attempt = 1)
             GROUP BY 1",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(hashes.iter().all(|(_, n)| *n == 1), "{hashes:?}");
    let failed_first: i64 = db
        .query_row("SELECT count(*) FROM attempts WHERE attempt = 1 AND error IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(failed_first >= 5 && failed_first < N as i64, "{failed_first} first attempts failed");

    // The operator is told, and the audit log says why.
    wait_for("the canary.rolled_back notice", Duration::from_secs(10), || {
        !notices(&ops, "canary.rolled_back").is_empty()
    })
    .await;
    let notice = &notices(&ops, "canary.rolled_back")[0];
    assert_eq!(notice["data"]["version"], canary.as_str());
    assert!(notice["data"]["reason"].as_str().unwrap().starts_with("failure rate"), "{notice}");
    let (_, audit) = host.admin("GET", "/tenants/acme/audit", Some(ADMIN_TOKEN)).await;
    let entries = audit["entries"].as_array().unwrap();
    let rollback = entries
        .iter()
        .find(|e| e["action"] == "canary.rollback")
        .expect("a canary.rollback entry");
    assert_eq!(rollback["actor"], "switchboard");
    assert_eq!(rollback["target"], format!("answer@{canary}"));
    assert!(rollback["result"].as_str().unwrap().starts_with("failure rate"), "{rollback}");
    assert!(entries.iter().any(|e| e["action"] == "deploy.canary" && e["result"] == "ok"));
    assert_eq!(host.admin_plugin("acme", "answer").await.unwrap()["version"], serving.as_str());
}

#[tokio::test]
async fn a_shadow_is_compared_side_by_side_and_never_acts_until_promoted() {
    let (jc, sink, ops) = (Recorder::start().await, Recorder::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "answer-a",
        "answer",
        "events = [\"received\"]\n",
    ))])
    .operator_webhook(&format!("{}/operator", ops.url), "operator-secret-0123456789")
    .start()
    .await;
    let manifest = format!(
        "events = [\"received\"]\nallowed_hosts = [\"{0}\"]\n[config]\nsink = \"{0}/sink\"\nreply = \"yes\"\n",
        sink.url
    );
    let (status, t) = upload(&host, "shadow=true", std::fs::read(guest("flaky")).unwrap(), &manifest).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["mode"], "shadow");
    let shadow = t["version"].as_str().unwrap().to_string();

    const N: usize = 6;
    for n in 0..N {
        assert_eq!(host.post("acme", from_contact(n), &[]).await.0, 202);
    }
    let report = wait_trial(&host, "every event compared", |t| t["compared"] == N).await;
    assert_eq!(
        (report["agreed"].as_u64(), report["agreement_pct"].as_f64()),
        (Some(0), Some(0.0)),
        "{report}"
    );
    let first = &report["differences"][0];
    let id = first["event_id"].as_str().unwrap();
    let contact = host.stored_event(id)["from"].as_str().unwrap().to_string();
    let message = host.stored_event(id)["message_id"].as_str().unwrap().to_string();
    assert_eq!(
        first["serving"],
        json!({ "acts": [{ "call": "sms", "to": contact, "body": format!("answer-a:{message}") }], "outcome": "done" })
    );
    let acts = first["shadow"]["acts"].as_array().unwrap();
    assert_eq!(acts[0], json!({ "call": "sms", "to": contact, "body": "re: CONFIRM" }));
    assert_eq!((acts[1]["call"].as_str(), acts[1]["method"].as_str()), (Some("http"), Some("POST")));
    assert_eq!(acts[1]["url"], format!("{}/sink", sink.url));
    assert_eq!(first["shadow"]["outcome"], "done");

    // Nothing of the shadow's reached anything: JustCall has the serving
    // version's replies only, the sink nothing, the plugin's KV nothing.
    let sent: Vec<String> = jc
        .to("/api/v2/texts/new")
        .iter()
        .map(|r| r.body["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), N);
    assert!(sent.iter().all(|b| b.starts_with("answer-a:")), "{sent:?}");
    assert!(sink.to("/sink").is_empty());
    let (_, kv) = host.admin("GET", "/tenants/acme/plugins/answer/kv", Some(ADMIN_TOKEN)).await;
    assert_eq!(kv["entries"], json!([]), "{kv}");
    wait_for("the shadow.diverged notice", Duration::from_secs(10), || {
        !notices(&ops, "shadow.diverged").is_empty()
    })
    .await;
    assert_eq!(notices(&ops, "shadow.diverged").len(), 1, "told once per trial");

    // The CLI shows the same report, side by side.
    let args = [
        "admin",
        "--url",
        &host.admin_url,
        "--token",
        ADMIN_TOKEN,
        "shadow",
        "--tenant",
        "acme",
        "--plugin",
        "answer",
    ];
    let (ok, text, err) = crate::harness::switchboard(&args, &[], None).await;
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!("agreement 0.0% over {N} events ({N} differ, 0 skipped)")),
        "{text}"
    );
    assert!(
        text.contains("re: CONFIRM") && text.contains(&format!("answer-a:{message}")),
        "{text}"
    );
    assert!(text.contains(" │ "), "{text}");

    // Promoted, it serves and acts.
    let (status, p) = host.admin("POST", "/tenants/acme/plugins/answer/promote", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["version"], shadow.as_str());
    let ended = trial(&host).await;
    assert_eq!(ended["ended"], format!("promote of version {shadow}"));
    assert_eq!(host.post("acme", from_contact(99), &[]).await.0, 202);
    sink.wait_for_count("/sink", 1).await;
    let (_, audit) = host.admin("GET", "/tenants/acme/audit", Some(ADMIN_TOKEN)).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["promote", "deploy.shadow"]);
}

#[tokio::test]
async fn a_trial_resumes_after_a_restart_and_an_ended_one_does_not() {
    let jc = Recorder::start().await;
    let spec = || vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("answer-a", "answer", "events = [\"received\"]\n"))];
    let host = TestHost::start(spec()).await;
    let (status, t) = upload(
        &host,
        "canary=25&min_runs=7&window=5m",
        std::fs::read(guest("answer-b")).unwrap(),
        "events = [\"received\"]\n",
    )
    .await;
    assert_eq!(status, 201, "{t}");
    let canary = t["version"].as_str().unwrap().to_string();
    // An audited request writes behind the trial's write: once it is
    // answered, the trial is stored.
    host.admin("POST", "/tenants/acme/plugins/answer/resume", Some(ADMIN_TOKEN)).await;

    let host = TestHost::builder(spec()).in_dir(host.stop().await).start().await;
    let resumed = trial(&host).await;
    assert!(resumed["ended"].is_null(), "{resumed}");
    assert_eq!(
        (resumed["mode"].as_str(), resumed["version"].as_str()),
        (Some("canary"), Some(canary.as_str()))
    );
    assert_eq!(
        (resumed["policy"]["percent"].as_u64(), resumed["policy"]["min_runs"].as_u64()),
        (Some(25), Some(7))
    );
    assert_eq!(resumed["policy"]["window_secs"], 300);
    // It serves its share again: across 40 contacts, some get the canary.
    for n in 0..40 {
        assert_eq!(host.post("acme", from_contact(n), &[]).await.0, 202);
    }
    host.idle().await;
    let by: Vec<String> = jc
        .to("/api/v2/texts/new")
        .iter()
        .map(|r| r.body["body"].as_str().unwrap().split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(by.len(), 40);
    assert!(by.iter().any(|v| v == "answer-b") && by.iter().any(|v| v == "answer-a"), "{by:?}");

    let (status, _) = host
        .admin("POST", "/tenants/acme/plugins/answer/trial/stop", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    host.admin("POST", "/tenants/acme/plugins/answer/resume", Some(ADMIN_TOKEN)).await;
    let host = TestHost::builder(spec()).in_dir(host.stop().await).start().await;
    let (status, _) = host.admin("GET", "/tenants/acme/plugins/answer/trial", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "a stopped trial stays stopped");
}
