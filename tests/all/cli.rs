//! The `switchboard` binary and its commands: `serve` with a real config
//! file, config errors that locate the problem, and `send`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchboard::config::WebhookAuth;
use switchboard::domain::EventKind;
use switchboard::tools::send::{SendRequest, SignWith, WireFormat};

use crate::harness::{
    ADMIN_TOKEN, PluginSpec, RECEIVED_BODY, Recorder, TenantSpec, TestHost, fixture, fixtures_dir, guest, paused_flaky, wait_for,
};
use crate::process::{Process, free_port, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SW_SECRET: &str = "whsec_c2VjcmV0LWZvci1sb2dz";

/// Starts `serve` on `config` (which listens on `port`) with `env`, its log
/// lines (stderr) coming through the returned channel.
fn serve_logging(config: &std::path::Path, port: u16, env: &[(&str, &str)]) -> (Process, std::sync::mpsc::Receiver<String>) {
    let mut cmd = serve_command(BIN, config, port, None);
    cmd.env("RUST_LOG", "info").stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = Process::spawn(cmd, port);
    let stderr = server.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (server, rx)
}

/// A data folder whose `acme` tenant has the `appointment-confirm` example
/// deployed, and a free port to serve on.
fn serve_dir() -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins.d/acme")).unwrap();
    std::fs::copy(
        guest("appointment-confirm"),
        dir.path().join("plugins.d/acme/appointment-confirm.wasm"),
    )
    .unwrap();
    (dir, free_port())
}

#[tokio::test]
async fn serve_accepts_a_signed_v21_event_and_rejects_a_tampered_one() {
    let jc = Recorder::start().await;
    let (dir, port) = serve_dir();
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "data"
plugins_dir = "plugins.d"
public_url = "https://hooks.example.com"

[tenants.acme]
numbers = ["+15125550100"]
webhook_auth = "justcall-v1"
webhook_secret = "env:ACME_WEBHOOK_SECRET"
# This JustCall is a recorder that holds no messages to check events against
# (verification has its own tests, against the simulator).
verify_events = false
justcall_api = "v2.1"
justcall_base_url = "{}/v2.1"
justcall_api_key = "env:ACME_JC_KEY"
justcall_api_secret = "env:ACME_JC_SECRET"
"#,
        jc.url
    );
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, config).unwrap();
    let env = [
        ("ACME_WEBHOOK_SECRET", "hook-secret-of-the-cli-test"),
        ("ACME_JC_KEY", "k"),
        ("ACME_JC_SECRET", "s"),
    ];
    let (server, rx) = serve_logging(&path, port, &env);
    let mut log = Vec::new();
    wait_for("the server to listen", Duration::from_secs(30), || {
        log.extend(rx.try_iter());
        log.iter().any(|l| l.contains("switchboard listening"))
    })
    .await;
    assert!(!log.iter().any(|l| l.contains("hook-secret")), "secrets are never logged");
    assert!(
        !log.iter().any(|l| l.contains('\x1b')),
        "no colour codes when stderr is not a terminal: {log:?}"
    );

    let url = format!("http://127.0.0.1:{port}");
    let mut req = SendRequest {
        url: url.clone(),
        tenant: "acme".into(),
        kind: EventKind::Received,
        from: "+15125551234".into(),
        to: "+15125550100".into(),
        body: "CONFIRM".into(),
        format: WireFormat::V21,
        sign: Some((SignWith::JustCallV1, "hook-secret-of-the-cli-test".into())),
        webhook_url: Some("https://hooks.example.com/webhooks/acme".into()),
        message_id: None,
    };
    let resp = switchboard::tools::send::send(&req).await.unwrap();
    assert_eq!(resp.status, 202, "{}", resp.body);
    let sent = jc.wait_for_count("/v2.1/texts/new", 1).await;
    assert_eq!(sent[0].headers["authorization"], "k:s");

    // Signed for another URL than the server's public_url: refused.
    req.webhook_url = Some(format!("{url}/webhooks/acme"));
    let resp = switchboard::tools::send::send(&req).await.unwrap();
    assert_eq!(resp.status, 401, "{}", resp.body);
    // A wrong secret: refused.
    req.webhook_url = Some("https://hooks.example.com/webhooks/acme".into());
    req.sign = Some((SignWith::JustCallV1, "guess".into()));
    let resp = switchboard::tools::send::send(&req).await.unwrap();
    assert_eq!(resp.status, 401);
    assert!(resp.body.contains("signature does not match"), "{}", resp.body);

    // SIGTERM stops it cleanly.
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(jc.to("/texts/new").len(), 1);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_delivery_as_fields() {
    let jc = Recorder::start().await;
    let (dir, port) = serve_dir();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nplugins_dir = \"plugins.d\"\n\n\
         [tenants.acme]\nnumbers = [\"+15125550100\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SW_SECRET}\"\n\
         justcall_base_url = \"{}\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\n",
        jc.url
    );
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, config).unwrap();
    let (mut server, rx) = serve_logging(&path, port, &[("SWITCHBOARD_LOG_FORMAT", "json")]);
    // Nothing else on this runtime needs to run while the server starts.
    server.wait_healthy(Duration::from_secs(30));
    let mut log = Vec::new();
    wait_for("the server to listen", Duration::from_secs(30), || {
        log.extend(rx.try_iter());
        log.iter().any(|l| l.contains("switchboard listening"))
    })
    .await;
    let body = fixture("seed-format/sms.received-confirm.json");
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = switchboard::intake::auth::standard_webhooks_signature(SW_SECRET, "wh-1", &ts, body.as_bytes());
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/acme"))
        .header("webhook-id", "wh-1")
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let event: Value = resp.json().await.unwrap();
    wait_for("the delivery to be logged", Duration::from_secs(30), || {
        log.extend(rx.try_iter());
        log.iter().any(|l| l.contains("delivery done"))
    })
    .await;
    let lines: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    let done = lines.iter().find(|l| l["message"] == "delivery done").unwrap();
    assert_eq!(done["level"], "INFO");
    assert_eq!(done["tenant"], "acme");
    assert_eq!(done["plugin"], "appointment-confirm");
    assert_eq!(done["event"], event["event_id"]);
    assert!(done["delivery"].as_i64().is_some(), "{done}");
    // The plugin's own line carries the delivery through its span.
    let plugin_line = lines
        .iter()
        .find(|l| l["target"] == "plugin" && l["message"].as_str().unwrap_or("").contains("confirmed appointment"))
        .unwrap_or_else(|| panic!("no plugin line in {log:#?}"));
    assert_eq!(plugin_line["span"]["delivery"], done["delivery"]);
    assert_eq!(plugin_line["span"]["tenant"], "acme");
}

fn serve_error(config: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(&path).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "sb.toml")
}

#[test]
fn bad_config_files_are_refused_with_file_line_and_key() {
    let base = "[tenants.acme]\nnumbers = [\"+15125550100\"]\nwebhook_auth = \"justcall-v1\"\nwebhook_secret = \"env:SB_TEST_SECRET\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\n";
    let err = serve_error(
        &base.replace("webhook_auth", "webhok_auth"),
        &[("SB_TEST_SECRET", "a-long-enough-test-secret")],
    );
    assert!(
        err.starts_with("error: sb.toml:3: tenants.acme.webhok_auth: unknown field `webhok_auth`"),
        "{err}"
    );
    let err = serve_error(base, &[]);
    assert_eq!(
        err.trim(),
        "error: sb.toml:4: tenants.acme.webhook_secret: environment variable SB_TEST_SECRET is not set"
    );
    let err = serve_error(
        &base.replace("justcall-v1", "none"),
        &[("SB_TEST_SECRET", "a-long-enough-test-secret")],
    );
    assert!(
        err.starts_with("error: sb.toml:3: tenants.acme.webhook_auth: \"none\" is allowed only in dev mode"),
        "{err}"
    );
    let err = serve_error(
        &format!("listen = \"localhost\"\n{base}"),
        &[("SB_TEST_SECRET", "a-long-enough-test-secret")],
    );
    assert!(err.starts_with("error: sb.toml:1: listen: `localhost` is not an address"), "{err}");
}

#[tokio::test]
async fn send_command_builds_valid_events_for_each_kind_and_format() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("jc", &jc.url).auth(WebhookAuth::JustCallV1, "s1"),
        TenantSpec::new("sw", &jc.url)
            .auth(WebhookAuth::StandardWebhooks, "whsec_c2VjcmV0")
            .plugin(PluginSpec::new("appointment-confirm", "appointment-confirm", "")),
    ])
    .await;
    for kind in EventKind::ALL {
        for (tenant, format, auth, secret) in [
            ("jc", WireFormat::V21, SignWith::JustCallV1, "s1"),
            ("jc", WireFormat::Seed, SignWith::JustCallV1, "s1"),
            ("sw", WireFormat::Seed, SignWith::StandardWebhooks, "whsec_c2VjcmV0"),
            ("sw", WireFormat::V21, SignWith::StandardWebhooks, "whsec_c2VjcmV0"),
        ] {
            if tenant == "jc" && format == WireFormat::Seed {
                // The JustCall v1 signature covers `type`, which seed payloads lack.
                continue;
            }
            let req = SendRequest {
                url: host.url.clone(),
                tenant: tenant.into(),
                kind,
                from: "+15125551234".into(),
                to: "+15125550100".into(),
                body: "CONFIRM".into(),
                format,
                sign: Some((auth, secret.into())),
                webhook_url: None,
                message_id: None,
            };
            let resp = switchboard::tools::send::send(&req).await.unwrap();
            assert_eq!(resp.status, 202, "{tenant} {format:?} {kind:?}: {}", resp.body);
            let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
            assert_eq!(v["kind"], kind.as_str());
        }
    }
    host.idle().await;
    // Two `received` CONFIRMs reached the sw tenant's plugin.
    assert_eq!(jc.to("/texts/new").len(), 2);
}

#[test]
fn send_print_shows_each_kind_the_right_way_round() {
    let print = |kind: &str| -> serde_json::Value {
        let out = Command::new(BIN).args(["send", "--print", "--kind", kind]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (customer, line) = ("+15125551234", "+15125550100");
    for kind in ["received", "optout", "optin"] {
        let d = &print(kind)["data"];
        assert_eq!(
            (d["from"].as_str(), d["to"].as_str(), d["direction"].as_str()),
            (Some(customer), Some(line), Some("inbound")),
            "{kind}: {d}"
        );
    }
    for kind in ["sent", "delivered", "failed"] {
        let d = &print(kind)["data"];
        assert_eq!(
            (d["from"].as_str(), d["to"].as_str(), d["direction"].as_str()),
            (Some(line), Some(customer), Some("outbound")),
            "{kind}: {d}"
        );
        assert_eq!(d["justcall_number"], line);
    }
    assert_eq!(print("failed")["event"], "sms.failed");
}

#[test]
fn send_binary_reports_status_and_reason() {
    let out = Command::new(BIN)
        .args(["send", "--url", "http://127.0.0.1:9", "--tenant", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../switchboard.example.toml");
    let env = |name: &str| Some(format!("value-of-{name}"));
    let cfg = switchboard::config::Config::parse(&path, &std::fs::read_to_string(&path).unwrap(), &env).unwrap();
    assert_eq!(cfg.tenants["acme"].webhook_auth, WebhookAuth::JustCallV1);
    assert_eq!(cfg.webhook_url("acme"), "https://hooks.example.com/webhooks/acme");
    assert_eq!(cfg.tenants["acme"].justcall_rate_per_minute, 60, "the pro plan's budget");
    assert_eq!(cfg.delivery.retry_delays, [30, 300, 1800].map(Duration::from_secs));
}

/// Runs `switchboard admin …` against a host; returns (success, stdout, stderr).
async fn admin_cli(host: &TestHost, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["admin", "--url", &host.admin_url, "--token", token];
    all.extend_from_slice(args);
    crate::harness::switchboard(&all, &[], None).await
}

#[tokio::test]
async fn admin_commands_mirror_the_admin_api() {
    let jc = Recorder::start().await;
    let (host, event) = paused_flaky(&jc.url).await;

    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["plugins", "acme"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(v["plugins"][0]["status"], "paused", "{out}");
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["deliveries", "acme", "--status", "failed"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(v["deliveries"][0]["event_id"], event.as_str());
    // Searching: body words and a time range find it; another kind does not;
    // a kind that does not exist is refused with the ones that do.
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["deliveries", "acme", "--text", "fail", "--since", "1h"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(v["deliveries"][0]["event_id"], event.as_str(), "{out}");
    assert_eq!(v["deliveries"][0]["body"], "FAIL", "{out}");
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["deliveries", "acme", "--kind", "sms.optout"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["deliveries"],
        serde_json::json!([])
    );
    let (ok, _, err) = admin_cli(&host, ADMIN_TOKEN, &["deliveries", "acme", "--kind", "sms.bogus"]).await;
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("kind `sms.bogus` is not one of sms.received"),
        "{err}"
    );
    // One delivery with its attempts: the flaky plugin failed each one.
    let id = v["deliveries"][0]["id"].to_string();
    let (ok, out, err) = admin_cli(&host, ADMIN_TOKEN, &["delivery", "acme", &id]).await;
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let attempts = d["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty(), "{out}");
    assert!(attempts.iter().all(|a| a["outcome"] == "failed"), "{out}");
    assert_eq!(d["event"]["event_id"], event.as_str());
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["resume", "acme", "flaky"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["replay", "acme", &event]).await;
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["deliveries"][0]["plugin"],
        "flaky"
    );

    // The plugin's KV is visible: flaky counted its attempts at this event.
    let (ok, out, err) = admin_cli(&host, ADMIN_TOKEN, &["kv", "--tenant", "acme", "--plugin", "flaky"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let key = format!("attempts/{event}");
    let attempts = entries.iter().find(|e| e["key"] == key.as_str()).unwrap_or_else(|| panic!("{out}"));
    assert!(attempts["value"].as_str().unwrap().parse::<u32>().unwrap() >= 1, "{out}");
    assert_eq!(v["next"], serde_json::Value::Null, "{out}");
    let (ok, out, _) = admin_cli(
        &host,
        ADMIN_TOKEN,
        &["kv", "--tenant", "acme", "--plugin", "flaky", "--prefix", "nope/"],
    )
    .await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["entries"],
        serde_json::json!([])
    );
    let (ok, _, err) = admin_cli(&host, ADMIN_TOKEN, &["kv", "--tenant", "nobody", "--plugin", "flaky"]).await;
    assert!(!ok);
    assert!(err.starts_with("error: 404 Not Found: "), "{err}");

    // This tenant does not verify events: nothing was refused.
    let (ok, out, _) = admin_cli(&host, ADMIN_TOKEN, &["verifications", "acme"]).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["verifications"].as_array().map(Vec::len)),
        (Some("refused"), Some(0))
    );
    let (ok, _, err) = admin_cli(&host, ADMIN_TOKEN, &["verifications", "acme", "--state", "lost"]).await;
    assert!(!ok);
    assert!(err.contains("state `lost` is not one of refused, pending, verified"), "{err}");

    let (ok, _, err) = admin_cli(&host, "wrong", &["plugins", "acme"]).await;
    assert!(!ok);
    assert!(err.starts_with("error: 401 Unauthorized: "), "{err}");
    assert!(err.contains("wrong bearer token"), "{err}");
    let (ok, _, err) = admin_cli(&host, ADMIN_TOKEN, &["replay", "acme", "no-such-event"]).await;
    assert!(!ok);
    assert!(err.starts_with("error: 404 Not Found: "), "{err}");
}

fn plugin_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("plugin").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_check_lists_imports_and_exports_and_refuses_what_would_not_load() {
    let ok = guest("appointment-confirm");
    let (code, out, err) = plugin_cmd(&["check", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  switchboard:plugin/plugin@0.1.0#handle-event") || out.contains("handle-event"),
        "{out}"
    );
    assert!(out.contains("  ok       switchboard:plugin/sms@0.1.0"), "{out}");
    assert!(out.contains("compile  "), "{out}");
    assert!(out.lines().any(|l| l.starts_with("size     ") && l.ends_with(" bytes")), "{out}");
    assert!(out.contains("contract switchboard:plugin@0.2.0"), "{out}");
    assert!(out.contains("ok: implements switchboard:plugin/plugin@0.2.0"), "{out}");

    // A plugin built before timers: its contract version is named, and it loads.
    let old = fixtures_dir().join("contract-0.1.0/crm-logger.wasm");
    let (code, out, err) = plugin_cmd(&["check", old.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("contract switchboard:plugin@0.1.0"), "{out}");
    assert!(out.contains("ok: implements switchboard:plugin/plugin@0.1.0"), "{out}");

    // Sockets are linked (so Python runs without --stub-wasi) but refused at run time.
    let (code, out, err) = plugin_cmd(&["check", guest("sockets").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("  warning  wasi:sockets/") && l.contains("every socket call is refused")),
        "{out}"
    );

    let (code, _, err) = plugin_cmd(&["check", guest("wrong-world").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("does not implement world switchboard:plugin/plugin@0.2.0"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (code, _, err) = plugin_cmd(&["check", core.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("core.wasm: a core WebAssembly module, not a component"), "{err}");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"MZ not wasm").unwrap();
    let (code, _, err) = plugin_cmd(&["check", garbage.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("garbage.wasm: not a WebAssembly file (bad magic number)"), "{err}");

    // A manifest asking above a tenant's ceiling is flagged; a broken one refused.
    let greedy = dir.path().join("greedy.wasm");
    std::fs::copy(&ok, &greedy).unwrap();
    std::fs::write(dir.path().join("greedy.toml"), "[limits]\nmemory_mb = 512\nsms_per_event = 2\n").unwrap();
    let (code, out, err) = plugin_cmd(&["check", greedy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning  limits: memory_mb = 512 exceeds the tenant's 128; runs at 128"),
        "{out}"
    );
    assert!(!out.contains("sms_per_event"), "{out}");
    std::fs::write(dir.path().join("greedy.toml"), "[limits]\nmemory = 512\n").unwrap();
    let (code, _, err) = plugin_cmd(&["check", greedy.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("greedy.toml:2: limits.memory: unknown limit"), "{err}");
}

#[test]
fn plugin_test_prints_the_side_effects_it_did_not_make() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = fixtures_dir().join("seed-format");
    let wasm = guest("appointment-confirm");
    let manifest = repo.join("plugins/appointment-confirm/plugin.toml");
    let confirm = fixtures.join("sms.received-confirm.json");
    let run = |manifest: &std::path::Path| {
        plugin_cmd(&[
            "test",
            wasm.to_str().unwrap(),
            "--event",
            confirm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--config",
            "booking_url=https://booking.example.com/c",
            "--config",
            "reply=See you then!",
        ])
    };
    // The shipped manifest allows no host: refused exactly as the live path would.
    let (code, out, err) = run(&manifest);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        "http.send    POST https://booking.example.com/c refused: https://booking.example.com:443 is not in allowed_hosts",
        "{out}"
    );
    assert!(
        err.starts_with("error: plugin error: http: https://booking.example.com:443 is not in allowed_hosts"),
        "{err}"
    );
    // Allowed, it is recorded and answered 200.
    let allowing = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        allowing.path(),
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("allowed_hosts = []", "allowed_hosts = [\"https://booking.example.com\"]"),
    )
    .unwrap();
    let (code, out, err) = run(allowing.path());
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("http.send    POST https://booking.example.com/c \"{"), "{out}");
    assert!(lines[0].contains("\\\"phone\\\":\\\"+15125551234\\\""), "{out}");
    assert_eq!(lines[1], "sms.send     from +15125550100 to +15125551234: \"See you then!\"");
    assert!(lines[2].starts_with("log.info    confirmed appointment for +15125551234"), "{out}");
    assert!(lines[3].starts_with("ok (") && lines[3].ends_with("ms; nothing was sent)"), "{out}");

    // KV writes are shown too; a failing plugin exits non-zero with its reason.
    let flaky = guest("flaky");
    let fail = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        fail.path(),
        std::fs::read_to_string(fixtures.join("sms.received.json"))
            .unwrap()
            .replace(RECEIVED_BODY, "FAIL"),
    )
    .unwrap();
    let (code, out, err) = plugin_cmd(&["test", flaky.to_str().unwrap(), "--event", fail.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.lines().next().unwrap().starts_with("kv.set       attempts/"), "{out}");
    assert!(err.starts_with("error: plugin error: flaky: attempt 1 fails as planned ("), "{err}");

    // Built-in samples by kind, KV pre-filled (flags and a file) and shown after the run.
    let kv_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kv_file.path(), r#"{"from-file": "yes", "n": 3}"#).unwrap();
    let (code, out, err) = plugin_cmd(&[
        "test",
        flaky.to_str().unwrap(),
        "--event",
        "received",
        "--kv",
        "seeded=1",
        "--kv-file",
        kv_file.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let after: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "kv after the run:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(after.len(), 4, "{out}");
    assert!(after[0].starts_with("  attempts/") && after[0].ends_with(" = \"1\""), "{out}");
    assert_eq!(&after[1..], ["  from-file = \"yes\"", "  n = \"3\"", "  seeded = \"1\""], "{out}");
    for kind in ["sent", "delivered", "failed", "optout", "optin"] {
        let (code, out, err) = plugin_cmd(&["test", flaky.to_str().unwrap(), "--event", kind]);
        assert_eq!(code, 0, "{kind}: {out}{err}");
    }

    // Bad input is named.
    let (code, _, err) = plugin_cmd(&["test", flaky.to_str().unwrap(), "--event", "/nonexistent.json"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: reading /nonexistent.json: no such file, and not an event kind (received, sent,"),
        "{err}"
    );
}

#[tokio::test]
async fn plugin_new_output_builds_and_runs_in_the_host_unedited() {
    let _load = crate::harness::heavy().await;
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url)]).await;
    let work = tempfile::tempdir().unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold");
    guest("noop"); // the pinned JS and Python tools are installed by the guest build
    let names = ["hello-rs", "hello-js", "hello-py"];
    for (name, lang) in names.iter().zip(["rust", "js", "python"]) {
        let out = tokio::process::Command::new(BIN)
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(work.path())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = work.path().join(name);
        assert!(dir.join("README.md").is_file() && dir.join("plugin.toml").is_file());
        if lang == "js" {
            // The starter type-checks against the declarations jco wrote
            // from wit/, and a misspelt field of the event does not.
            let tsc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/node_modules/.bin/tsc");
            let check = || {
                std::process::Command::new(&tsc)
                    .args(["-p", "jsconfig.json"])
                    .current_dir(&dir)
                    .output()
                    .unwrap()
            };
            let out = check();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
            let source = std::fs::read_to_string(dir.join("plugin.js")).unwrap();
            std::fs::write(dir.join("plugin.js"), source.replace("${event.from}", "${event.fromm}")).unwrap();
            let out = check();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("Property 'fromm' does not exist on type 'SmsEvent'"), "{said}");
            std::fs::write(dir.join("plugin.js"), source).unwrap();
        }
        let out = tokio::process::Command::new(BIN)
            .args(["plugin", "build"])
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{lang}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let wasm = dir.join(format!("target/{name}.wasm"));
        assert!(
            stdout
                .trim()
                .ends_with(&format!("bytes  {}", wasm.canonicalize().unwrap().display())),
            "{stdout}"
        );
        // `plugin test` exactly as the starter's README says, with its sample events.
        let out = tokio::process::Command::new(BIN)
            .args([
                "plugin",
                "test",
                &format!("target/{name}.wasm"),
                "--manifest",
                "plugin.toml",
                "--event",
                "events/received.json",
            ])
            .current_dir(&dir)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{lang}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            stdout.lines().next(),
            Some("sms.send     from +15125550100 to +15125551234: \"Thanks! We got your message and will answer soon.\""),
            "{lang}: {stdout}"
        );
        // Deploy exactly as the README says: manifest beside the .wasm.
        std::fs::copy(dir.join("plugin.toml"), host.plugin_dir("acme").join(format!("{name}.toml"))).unwrap();
        crate::harness::write_then_rename(
            &host.plugin_dir("acme").join(format!("{name}.wasm")),
            &std::fs::read(&wasm).unwrap(),
        );
    }
    for name in names {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while host.admin_plugin("acme", name).await.is_none_or(|p| p["status"] != "active") {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never loaded: {:?}",
                host.admin_plugin("acme", name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, _) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 202);
    host.idle().await;
    let replies = jc.to("/api/v2/texts/new");
    assert_eq!(replies.len(), 3, "one reply per scaffolded plugin: {replies:?}");
    for r in replies {
        assert_eq!(
            r.body,
            serde_json::json!({"from": "+15125550100", "to": "+15125551234", "body": "Thanks! We got your message and will answer soon."})
        );
    }

    // What a guest prints reaches the plugin's log, and an uncaught
    // exception's message (a Python traceback) becomes the failure reason.
    let edits = [
        (
            "hello-py",
            "app.py",
            "    def handle_event(self, event: types.SmsEvent) -> None:\n",
            "        import time\n        print(f\"got {event.body} at {str(time.time() > 0).lower()}\")\n        if event.body == \"BOOM\":\n            raise ValueError(\"boom from python\")\n",
            "ValueError: boom from python",
        ),
        (
            "hello-js",
            "plugin.js",
            "export async function handleEvent(event) {\n",
            "  console.log(`got ${event.body} at ${Date.now() > 0}`);\n  if (event.body === 'BOOM') {\n    throw new Error('boom from js');\n  }\n",
            "boom from js",
        ),
    ];
    let boom = work.path().join("boom.json");
    std::fs::write(&boom, fixture("seed-format/sms.received.json").replace(RECEIVED_BODY, "BOOM")).unwrap();
    for (name, file, anchor, insert, reason) in edits {
        let dir = work.path().join(name);
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(source.contains(anchor), "{name}: the starter changed");
        std::fs::write(dir.join(file), source.replace(anchor, &format!("{anchor}{insert}"))).unwrap();
        let out = tokio::process::Command::new(BIN)
            .args(["plugin", "build"])
            .arg(&dir)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let wasm = dir.join(format!("target/{name}.wasm"));
        let test = |event: &std::path::Path| {
            std::process::Command::new(BIN)
                .args(["plugin", "test"])
                .arg(&wasm)
                .arg("--manifest")
                .arg(dir.join("plugin.toml"))
                .arg("--event")
                .arg(event)
                .output()
                .unwrap()
        };
        let out = test(&dir.join("events/received.json"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().next(), Some("log.info    got CONFIRM at true"), "{name}: {stdout}");
        let out = test(&boom);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(reason), "{name}: {stderr}");
    }
}
