//! The hostile-plugin suite: real guest components that attack the host, run
//! in the real server while a well-behaved tenant receives events at the same
//! time. Each attack must end in its own recorded reason, and the neighbour
//! must get every delivery done with `/healthz` green throughout.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    CONFIRM_ID, FakeJustCall, ID_PREFIX, PluginSpec, RECEIVED_BODY, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture,
};

const EVIL_NUMBER: &str = "+15125550199";

/// (status, last error) of an event's deliveries, by plugin.
fn by_plugin(host: &TestHost, event_id: &str) -> HashMap<String, (String, Option<String>)> {
    host.deliveries(event_id).into_iter().map(|(p, s, e)| (p, (s, e))).collect()
}

fn hostile(name: &'static str, manifest: String) -> PluginSpec {
    PluginSpec::new("hostile", name, format!("events = [\"received\"]\n{manifest}"))
}

fn evil_event(id: &str) -> String {
    fixture("seed-format/sms.received.json")
        .replace(RECEIVED_ID, id)
        .replace("+15125550100", EVIL_NUMBER)
        .replace("+15125551234", "+15125557777")
}

#[tokio::test]
async fn hostile_plugins_are_contained_and_the_neighbour_is_unaffected() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let crm = Recorder::start().await;
    let redirector = Recorder::start().await;
    redirector.redirect_to("http://169.254.169.254/latest/meta-data/");
    let silent = Recorder::start().await;
    silent.delay(Duration::from_secs(30));
    let crm_port = crm.url.rsplit(':').next().unwrap().to_string();

    let evil = TenantSpec::new("evil", &jc.url)
        .number(EVIL_NUMBER)
        .plugin(hostile("looper", "[config]\nmode = \"loop\"\n[limits]\ntimeout_ms = 300\n".into()))
        // A few ms of wasm: past 1 ms it runs on the idle-priority lane, so
        // give it room to reach its memory cap on a busy test machine.
        .plugin(hostile(
            "grower",
            "[config]\nmode = \"grow\"\n[limits]\nmemory_mb = 32\ntimeout_ms = 5000\n".into(),
        ))
        .plugin(hostile("recurser", "[config]\nmode = \"recurse\"\n".into()))
        .plugin(hostile("panicker", "[config]\nmode = \"panic\"\n".into()))
        .plugin(hostile(
            "logger",
            "[config]\nmode = \"log-flood\"\nlines = 2000\n[limits]\ntimeout_ms = 10000\n".into(),
        ))
        .plugin(hostile("spammer", "[config]\nmode = \"sms-flood\"\n".into()))
        .plugin(hostile(
            "outsider",
            "[config]\nmode = \"http\"\nurl = \"https://example.com/\"\n".into(),
        ))
        .plugin(hostile("loopback", format!("[config]\nmode = \"http\"\nurl = \"{}/x\"\n", crm.url)))
        .plugin(hostile(
            "by-name",
            format!(
                "allowed_hosts = [\"http://localhost:{crm_port}\"]\n[config]\nmode = \"http\"\nurl = \"http://localhost:{crm_port}/x\"\n"
            ),
        ))
        .plugin(hostile(
            "metadata",
            "[config]\nmode = \"http\"\nurl = \"http://169.254.169.254/latest/meta-data/\"\n".into(),
        ))
        .plugin(hostile(
            "redirected",
            format!(
                "allowed_hosts = [\"{}\"]\n[config]\nmode = \"http\"\nurl = \"{}/go\"\n",
                redirector.url, redirector.url
            ),
        ))
        .plugin(hostile(
            "waiter",
            format!(
                "allowed_hosts = [\"{}\"]\n[config]\nmode = \"http\"\nurl = \"{}/slow\"\n[limits]\ntimeout_ms = 500\n",
                silent.url, silent.url
            ),
        ))
        .plugin(hostile("vault", "[config]\nmode = \"kv-read\"\n".into()))
        .plugin(hostile(
            "impostor",
            "[config]\nmode = \"send-from\"\nfrom = \"+15125550100\"\n".into(),
        ))
        .plugin(hostile("nagger", "[config]\nmode = \"send-to\"\nto = \"+15125551234\"\n".into()))
        .plugin(PluginSpec::new("sockets", "sockets", ""))
        .plugin(PluginSpec::new("wrong-world", "wrong-world", ""));
    let good = TenantSpec::new("good", &jc.url)
        .plugin(PluginSpec::new("appointment-confirm", "appointment-confirm", ""))
        .plugin(PluginSpec::new(
            "hostile",
            "vault",
            "[config]\nmode = \"kv-write\"\nvalue = \"s3cret\"\n",
        ));
    let host = TestHost::start(vec![evil, good]).await;
    std::fs::write(host.plugin_dir("evil").join("core-module.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(host.plugin_dir("evil").join("garbage.wasm"), b"MZ\x90\0 not wasm at all").unwrap();

    // The good tenant stores its secret; the evil tenant's opted-out contact opts out.
    let (status, _) = host.post("good", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 202);
    let stop = fixture("seed-format/sms.optout.json").replace("+15125550100", EVIL_NUMBER);
    assert_eq!(host.post("evil", stop, &[]).await.0, 202);
    host.idle().await;
    let good_sms_before = jc.to("/texts/new").len();

    // Attack, while the neighbour keeps texting.
    let (status, resp) = host.post("evil", evil_event("attack"), &[]).await;
    assert_eq!(status, 202);
    let attack = resp["event_id"].as_str().unwrap().to_string();
    let mut good_events = Vec::new();
    for i in 0..10 {
        let (status, resp) = host
            .post(
                "good",
                fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, &format!("g{i}")),
                &[],
            )
            .await;
        assert_eq!(status, 202);
        good_events.push(resp["event_id"].as_str().unwrap().to_string());
        assert!(host.healthy().await, "healthz went red during the attack");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    host.idle().await;
    assert!(host.healthy().await);

    for id in &good_events {
        let d = host.deliveries(id);
        assert!(d.iter().all(|(_, status, _)| status == "done"), "neighbour delivery {d:?}");
    }
    let good_replies = jc.to("/texts/new").into_iter().filter(|r| r.body["from"] == "+15125550100").count();
    assert_eq!(good_replies - good_sms_before, 10, "every neighbour CONFIRM answered");

    let reasons: HashMap<String, (String, Option<String>)> = host.deliveries(&attack).into_iter().map(|(p, s, e)| (p, (s, e))).collect();
    let reason = |p: &str| -> String {
        let (status, error) = reasons.get(p).unwrap_or_else(|| panic!("no delivery for {p}: {reasons:?}"));
        assert_eq!(status, "retrying", "{p}: {error:?}");
        error.clone().unwrap()
    };
    assert_eq!(reason("looper"), "deadline exceeded (300 ms)");
    assert!(reason("grower").starts_with("memory limit (32 MiB)"), "{}", reason("grower"));
    assert_eq!(reason("recurser"), "stack overflow (wasm stack limit 512 KiB)");
    // A trap's reason carries what the guest wrote to stderr: here, the panic message.
    assert!(reason("panicker").starts_with("trap: "), "{}", reason("panicker"));
    assert!(
        reason("panicker").contains(&format!("hostile plugin panics on {attack}")),
        "{}",
        reason("panicker")
    );
    // wasi:sockets is linked so Python runs unstubbed, but every use is refused.
    assert!(
        reason("sockets").starts_with("plugin error: connect failed: "),
        "{}",
        reason("sockets")
    );
    assert_eq!(reason("spammer"), "sms quota exceeded (5 sends per event)");
    assert_eq!(
        reason("outsider"),
        "plugin error: http: https://example.com:443 is not in allowed_hosts"
    );
    assert_eq!(
        reason("loopback"),
        format!("plugin error: http: {} is not in allowed_hosts", crm.url)
    );
    assert!(
        reason("by-name").starts_with("plugin error: http: localhost resolves to "),
        "{}",
        reason("by-name")
    );
    assert!(reason("by-name").ends_with("a loopback address"), "{}", reason("by-name"));
    assert_eq!(
        reason("metadata"),
        "plugin error: http: http://169.254.169.254:80 is not in allowed_hosts"
    );
    assert_eq!(
        reason("redirected"),
        "plugin error: http: redirect refused: http://169.254.169.254:80 is not in allowed_hosts"
    );
    assert_eq!(reason("waiter"), "deadline exceeded (500 ms)");
    assert_eq!(
        reason("impostor"),
        "plugin error: sms: +15125550100 is not one of the tenant's numbers"
    );
    assert_eq!(reason("nagger"), "plugin error: sms: +15125551234 has opted out");
    // The log flood is cut off, not fatal; KV of another tenant is invisible.
    assert_eq!(reasons["logger"].0, "done");
    assert_eq!(reasons["vault"], ("done".to_string(), None), "the evil vault read nothing");
    assert!(crm.requests().is_empty(), "no disallowed request was ever made");
    assert_eq!(
        redirector.requests().len(),
        1,
        "the allowed host was asked once; its redirect was not followed"
    );
    assert_eq!(
        jc.to("/texts/new").into_iter().filter(|r| r.body["from"] == EVIL_NUMBER).count(),
        5,
        "the spammer got exactly its quota out"
    );

    // Components that cannot load are rejected with their reasons and never run.
    let plugins = host.admin_plugins("evil").await;
    let rejected: HashMap<String, String> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "rejected")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["rejected"]["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!rejected.contains_key("sockets"), "{rejected:?}");
    assert!(
        rejected["wrong-world"].contains("does not implement world switchboard:plugin/plugin@0.2.0"),
        "{rejected:?}"
    );
    // core-module and garbage were written after start: the watcher rejects them.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = host.admin_plugins("evil").await;
        let names: Vec<&str> = seen["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "rejected")
            .filter_map(|p| p["name"].as_str())
            .collect();
        if names.contains(&"core-module") && names.contains(&"garbage") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error_of = |name: &str| {
        seen["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["rejected"]["error"].as_str().unwrap_or("").to_string())
    };
    assert!(
        error_of("core-module")
            .unwrap()
            .contains("a core WebAssembly module, not a component"),
        "{seen}"
    );
    assert!(error_of("garbage").unwrap().contains("not a WebAssembly file"), "{seen}");
    assert!(!reasons.contains_key("wrong-world"));
}

#[tokio::test]
async fn tenant_limits_are_ceilings_a_manifest_may_lower_but_not_raise() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let mut tenant = TenantSpec::new("acme", &jc.url)
        .plugin(hostile("spammer", "[config]\nmode = \"sms-flood\"\n".into()))
        .plugin(hostile(
            "chatty",
            "[config]\nmode = \"sms-flood\"\n[limits]\nsms_per_event = 3\n".into(),
        ))
        .plugin(hostile(
            "modest",
            "[config]\nmode = \"sms-flood\"\n[limits]\nsms_per_event = 1\n".into(),
        ))
        .plugin(hostile(
            "greedy",
            "[config]\nmode = \"grow\"\n[limits]\nmemory_mb = 512\ntimeout_ms = 5000\n".into(),
        ));
    tenant.limits.set(switchboard::config::Limit::SmsPerEvent, 2);
    tenant.limits.set(switchboard::config::Limit::MemoryMb, 64);
    let host = TestHost::start(vec![tenant]).await;
    let (_, resp) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    let d: HashMap<String, Option<String>> = host
        .deliveries(resp["event_id"].as_str().unwrap())
        .into_iter()
        .map(|(p, _, e)| (p, e))
        .collect();
    assert_eq!(
        d["spammer"].as_deref(),
        Some("sms quota exceeded (2 sends per event)"),
        "the tenant's limit"
    );
    assert_eq!(
        d["chatty"].as_deref(),
        Some("sms quota exceeded (2 sends per event)"),
        "cut to the tenant's"
    );
    assert_eq!(
        d["modest"].as_deref(),
        Some("sms quota exceeded (1 sends per event)"),
        "lowered by the manifest"
    );
    assert!(d["greedy"].as_deref().unwrap().starts_with("memory limit (64 MiB)"), "{d:?}");
    assert_eq!(jc.to("/texts/new").len(), 5);
    // The admin status says which manifests asked for more.
    let greedy = host.admin_plugin("acme", "greedy").await.unwrap();
    assert_eq!(greedy["limits_clamped"][0], "memory_mb = 512 exceeds the tenant's 64; runs at 64");
    assert!(
        greedy["summary"]
            .as_str()
            .unwrap()
            .contains("limits cut to the tenant's: memory_mb = 512"),
        "{greedy}"
    );
    let chatty = host.admin_plugin("acme", "chatty").await.unwrap();
    assert_eq!(chatty["limits_clamped"][0], "sms_per_event = 3 exceeds the tenant's 2; runs at 2");
    let modest = host.admin_plugin("acme", "modest").await.unwrap();
    assert_eq!(modest["limits_clamped"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn kv_is_bounded_per_tenant_and_plugin() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(hostile("hoarder", "[config]\nmode = \"kv-fill\"\n[limits]\nkv_keys = 3\n".into())),
    ])
    .await;
    let (_, resp) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    let d = host.deliveries(resp["event_id"].as_str().unwrap());
    assert_eq!(
        d[0].2.as_deref(),
        Some("plugin error: kv: quota exceeded: the store holds its maximum of 3 keys")
    );
    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM kv WHERE tenant = 'acme' AND plugin = 'hoarder'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn opt_out_holds_for_every_keyword_and_event_source() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(hostile("nagger", "[config]\nmode = \"send-to\"\nto = \"+15125551234\"\n".into())),
    ])
    .await;
    let mut n = 0;
    let mut post = |body: String| {
        n += 1;
        let body = body.replace(ID_PREFIX, &format!("opt{n}_"));
        let host = &host;
        async move { host.post("acme", body, &[]).await.1["event_id"].as_str().map(str::to_string) }
    };
    let received = |text: &str| fixture("seed-format/sms.received.json").replace(RECEIVED_BODY, text);
    let nag = |host: &TestHost, id: Option<String>| {
        let d = host.deliveries(&id.unwrap());
        d.into_iter().find(|x| x.0 == "nagger").map(|x| x.2)
    };
    let opted_out = Some(Some("plugin error: sms: +15125551234 has opted out".to_string()));

    let sources: Vec<(String, String)> = ["STOP", "quit", " End ", "REVOKE", "opt out", "Cancel", "UNSUBSCRIBE"]
        .iter()
        .map(|k| (received(k), received("START")))
        .chain([
            (fixture("seed-format/sms.optout.json"), fixture("seed-format/sms.optin.json")),
            (
                fixture("justcall-v2.1/jc.contact_status_updated-optout.json"),
                fixture("justcall-v2.1/jc.contact_status_updated-optin.json"),
            ),
        ])
        .collect();
    for (out, back_in) in sources {
        post(out.clone()).await;
        host.idle().await;
        let id = post(received("hello?")).await;
        host.idle().await;
        assert_eq!(nag(&host, id), opted_out, "after {out}");
        post(back_in.clone()).await;
        host.idle().await;
        let id = post(received("hello again")).await;
        host.idle().await;
        assert_eq!(nag(&host, id), Some(None), "after {back_in}");
    }
}

#[tokio::test]
async fn input_size_and_log_volume_are_bounded_per_plugin() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(PluginSpec::new("appointment-confirm", "small-input", "[limits]\nevent_kb = 1\n"))
            .plugin(hostile(
                "logger",
                "[config]\nmode = \"log-flood\"\nlines = 5000\n[limits]\nlog_kb = 4\n".into(),
            )),
    ])
    .await;
    let long_body = "y".repeat(2000);
    let body = fixture("seed-format/sms.received.json").replace(RECEIVED_BODY, &long_body);
    let (_, resp) = host.post("acme", body, &[]).await;
    host.idle().await;
    let d = by_plugin(&host, resp["event_id"].as_str().unwrap());
    let (status, error) = &d["small-input"];
    assert_eq!(status, "retrying");
    assert!(error.as_deref().unwrap().starts_with("event input too large ("), "{error:?}");
    assert!(error.as_deref().unwrap().ends_with("bytes, limit 1024)"), "{error:?}");
    assert_eq!(d["logger"].0, "done", "a log flood is cut off, not fatal");
}

#[tokio::test]
async fn the_wasm_stack_is_set_per_plugin_within_host_bounds() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(hostile(
                "small-stack",
                "[config]\nmode = \"recurse\"\n[limits]\nstack_kb = 64\n".into(),
            ))
            .plugin(hostile(
                "rounded-stack",
                "[config]\nmode = \"recurse\"\n[limits]\nstack_kb = 200\n".into(),
            ))
            .plugin(hostile(
                "too-big-stack",
                "[config]\nmode = \"recurse\"\n[limits]\nstack_kb = 4096\n".into(),
            )),
    ])
    .await;
    // Out of bounds is refused at load, naming the file, line and key.
    let rejected = host.admin_plugin("acme", "too-big-stack").await.unwrap();
    assert_eq!(rejected["status"], "rejected");
    let error = rejected["rejected"]["error"].as_str().unwrap();
    assert!(
        error.ends_with("too-big-stack.toml:5: limits.stack_kb: must be 64..=1024"),
        "{error}"
    );

    let (_, resp) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    let d = by_plugin(&host, resp["event_id"].as_str().unwrap());
    assert_eq!(d["small-stack"].1.as_deref(), Some("stack overflow (wasm stack limit 64 KiB)"));
    assert_eq!(d["rounded-stack"].1.as_deref(), Some("stack overflow (wasm stack limit 256 KiB)"));
    assert!(host.healthy().await);
}

#[tokio::test]
async fn only_wasm_time_makes_a_plugin_a_long_runner() {
    let _load = crate::harness::deadline_bound().await;
    // Five SMS sends that each wait 20 ms for JustCall: 100 ms of host calls,
    // microseconds of wasm. A loop: only wasm.
    let jc = FakeJustCall::start().await;
    jc.set_latency(Duration::from_millis(20));
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(hostile("chatty", "[config]\nmode = \"sms-flood\"\n".into())),
        TenantSpec::new("evil", &jc.url)
            .number(EVIL_NUMBER)
            .plugin(hostile("looper", "[config]\nmode = \"loop\"\n[limits]\ntimeout_ms = 300\n".into())),
    ])
    .await;
    let long_runs = || async {
        let v: Value = reqwest::get(format!("{}/healthz", host.url)).await.unwrap().json().await.unwrap();
        v["long_runs"]["moved"].as_u64().unwrap()
    };
    let (_, resp) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    host.idle().await;
    let d = by_plugin(&host, resp["event_id"].as_str().unwrap());
    assert_eq!(d["chatty"].1.as_deref(), Some("sms quota exceeded (5 sends per event)"));
    assert_eq!(jc.sent().len(), 5);
    assert_eq!(long_runs().await, 0, "waiting on host calls is not running wasm");

    let (_, resp) = host.post("evil", evil_event("msg_loop"), &[]).await;
    host.idle().await;
    let d = by_plugin(&host, resp["event_id"].as_str().unwrap());
    assert_eq!(d["looper"].1.as_deref(), Some("deadline exceeded (300 ms)"));
    assert_eq!(long_runs().await, 1, "the loop was moved to the long-run lane");
}
