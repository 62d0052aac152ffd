//! Plugin secrets through the real binary: a version that requires a secret
//! is refused until `switchboard secret set` sets it (from stdin), then the
//! plugin reads it with `config.get`; a planted value, which a second plugin
//! logs, prints and fails with, appears in no output — the server's log,
//! every admin answer, the console's pages, the CLI, the shadow report —
//! nor anywhere in the data dir; after a key rotation the values still open
//! and are re-sealed under the new key.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use switchboard::intake::auth::standard_webhooks_signature;

use crate::harness::{CONFIRM_ID, NUMBER, Recorder, fixture, guest};
use crate::process::{Process, free_port_and_next, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const PLANTED: &str = "sk_live_PLANTED_7d1f0c9a4e";
const TOKEN: &str = "operator-token-for-the-secrets-test-0123";
const WEBHOOK_SECRET: &str = "webhook-secret-of-acme-0123";
const OLD_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn config(dir: &Path, crm: &str, previous: bool) -> std::path::PathBuf {
    let path = dir.join("switchboard.toml");
    let previous = if previous {
        "secrets_previous_keys = [\"env:SB_OLD_KEY\"]\n"
    } else {
        ""
    };
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins.d\"\nadmin_token = \"{TOKEN}\"\nsecrets_key = \"env:SB_KEY\"\n{previous}\
             retry_delays_ms = [3600000]\n\
             [tenants.acme]\nnumbers = [\"{NUMBER}\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
             justcall_base_url = \"{crm}\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\n"
        ),
    )
    .unwrap();
    path
}

/// Starts the binary with `key` (and the old one in the environment), its
/// log (debug, JSON) appended to `dir/server.log`.
fn start(dir: &Path, config: &Path, key: &str) -> (Process, String) {
    let port = free_port_and_next();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let mut cmd = serve_command(BIN, config, port, Some(port + 1));
    cmd.env("RUST_LOG", "debug")
        .env("SB_KEY", key)
        .env("SB_OLD_KEY", OLD_KEY)
        .args(["--log-format", "json"])
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut server = Process::spawn(cmd, port);
    server.wait_healthy(Duration::from_secs(60));
    (server, format!("http://127.0.0.1:{}", port + 1))
}

async fn post_confirm(server: &Process, id: &str) {
    let body = fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, id);
    let ts = chrono::Utc::now().timestamp().to_string();
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/acme", server.url()))
        .header("webhook-id", id)
        .header("webhook-timestamp", &ts)
        .header(
            "webhook-signature",
            standard_webhooks_signature(WEBHOOK_SECRET, id, &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

async fn cli(admin: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let env = [("SWITCHBOARD_ADMIN_URL", admin), ("SWITCHBOARD_ADMIN_TOKEN", TOKEN)];
    crate::harness::switchboard(args, &env, stdin).await
}

async fn get(url: &str, cookie: Option<&str>) -> String {
    let mut req = reqwest::Client::new().get(url).bearer_auth(TOKEN);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.text().await.unwrap()
}

/// Every file under `dir`, as bytes, with its path.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[tokio::test]
async fn a_planted_secret_reaches_its_plugin_and_no_output_and_survives_a_key_rotation() {
    let _heavy = crate::harness::heavy().await;
    let crm = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d/acme");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("crm-logger"), plugins.join("crm.wasm")).unwrap();
    std::fs::write(
        plugins.join("crm.toml"),
        format!(
            "events = [\"received\"]\nallowed_hosts = [\"{0}\"]\n[config]\ncrm_url = \"{0}/crm\"\ncrm_token = {{ secret = true }}\n",
            crm.url
        ),
    )
    .unwrap();
    std::fs::copy(guest("misbehave"), plugins.join("leaky.wasm")).unwrap();
    std::fs::write(plugins.join("leaky.toml"), "events = [\"received\"]\n[config]\nmode = \"leak\"\n").unwrap();
    let cfg = config(dir.path(), &crm.url, false);
    let (server, admin) = start(dir.path(), &cfg, OLD_KEY);

    // Refused until its secret is set, saying how to set it.
    let plugins_api = format!("{admin}/admin/tenants/acme/plugins");
    let status: Value = serde_json::from_str(&get(&plugins_api, None).await).unwrap();
    let crm_status = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "crm")
        .unwrap()
        .clone();
    assert_eq!(crm_status["status"], "rejected", "{crm_status}");
    let why = crm_status["rejected"]["error"].as_str().unwrap();
    assert!(
        why.contains("config.crm_token is declared { secret = true } but not set for this plugin: switchboard secret set --tenant acme --plugin crm crm_token"),
        "{why}"
    );
    let (ok, out, err) = cli(
        &admin,
        &["secret", "set", "--tenant", "acme", "--plugin", "crm", "crm_token"],
        Some(&format!("{PLANTED}\n")),
    )
    .await;
    assert!(ok && out == "set crm_token\n", "{out}{err}");
    let (ok, _, err) = cli(
        &admin,
        &["secret", "set", "--tenant", "acme", "--plugin", "leaky", "token"],
        Some(PLANTED),
    )
    .await;
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&get(&plugins_api, None).await).unwrap();
    assert!(
        status["plugins"].as_array().unwrap().iter().all(|p| p["status"] == "active"),
        "{status}"
    );
    let (ok, out, _) = cli(&admin, &["secret", "list", "--tenant", "acme", "--plugin", "crm"], None).await;
    assert!(ok && out == "crm_token\n", "{out}");
    // The serving version requires it: it cannot be deleted from under it.
    let (ok, _, err) = cli(
        &admin,
        &["secret", "delete", "--tenant", "acme", "--plugin", "crm", "crm_token"],
        None,
    )
    .await;
    assert!(!ok && err.contains("requires `crm_token`"), "{err}");

    // A shadow of the leaky plugin that fails otherwise, so the report
    // shows the serving version's failure beside it.
    let form = reqwest::multipart::Form::new()
        .part(
            "wasm",
            reqwest::multipart::Part::bytes(std::fs::read(guest("misbehave")).unwrap()).file_name("l.wasm"),
        )
        .text("manifest", "events = [\"received\"]\n[config]\nmode = \"error\"\n");
    let resp = reqwest::Client::new()
        .post(format!("{admin}/admin/tenants/acme/plugins/leaky/versions?shadow=true"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    post_confirm(&server, "s1").await;
    let got = crm.wait_for_count("/crm", 1).await;
    assert_eq!(
        got[0].headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {PLANTED}").as_str())
    );
    let trial_url = format!("{admin}/admin/tenants/acme/plugins/leaky/shadow");
    let mut shadow = String::new();
    for _ in 0..200 {
        shadow = get(&trial_url, None).await;
        if serde_json::from_str::<Value>(&shadow).unwrap()["trial"]["compared"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shadow.contains("misbehave: failing with [secret]"), "{shadow}");

    // Every output a person or a log collector sees.
    let deliveries: Value = serde_json::from_str(&get(&format!("{admin}/admin/tenants/acme/deliveries"), None).await).unwrap();
    let mut outputs = vec![shadow, deliveries.to_string(), get(&plugins_api, None).await];
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = crate::sign_in::sign_in(&client, &admin, TOKEN).await;
    for d in deliveries["deliveries"].as_array().unwrap() {
        let id = d["id"].as_i64().unwrap();
        outputs.push(get(&format!("{admin}/admin/tenants/acme/deliveries/{id}"), None).await);
        outputs.push(get(&format!("{admin}/console/tenants/acme/deliveries/{id}"), Some(&cookie)).await);
        outputs.push(cli(&admin, &["admin", "delivery", "acme", &id.to_string()], None).await.1);
    }
    for path in [
        "audit",
        "plugins/crm/versions",
        "plugins/leaky/versions",
        "plugins/crm/secrets",
        "plugins/crm/kv",
    ] {
        outputs.push(get(&format!("{admin}/admin/tenants/acme/{path}"), None).await);
    }
    for page in ["/console/tenants/acme", "/console/tenants/acme/deliveries", "/console/tenants"] {
        outputs.push(get(&format!("{admin}{page}"), Some(&cookie)).await);
    }
    outputs.push(get(&format!("{admin}/metrics"), None).await);
    let audit: Value = serde_json::from_str(&get(&format!("{admin}/admin/tenants/acme/audit"), None).await).unwrap();
    let sets: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "secret.set")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(sets, ["leaky/token", "crm/crm_token"], "audited by name");
    let leaky_failed = outputs.iter().any(|o| o.contains("misbehave: failing with [secret]"));
    assert!(leaky_failed, "the leaky plugin's failure is recorded, scrubbed");
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.contains(PLANTED), "output {i} holds the secret: {o}");
    }
    server.terminate();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("the token is [secret]") && log.contains("stdout has [secret]"),
        "the plugin's lines are logged, scrubbed"
    );
    let leaked: Vec<&str> = log.lines().filter(|l| l.contains(PLANTED)).collect();
    assert!(leaked.is_empty(), "the server's log holds the secret: {leaked:#?}");
    for (path, bytes) in files(&dir.path().join("data")) {
        assert!(
            !bytes.windows(PLANTED.len()).any(|w| w == PLANTED.as_bytes()),
            "{} holds the secret in the clear",
            path.display()
        );
    }

    // Rotation: the new key seals, the old one still opens; the start re-seals.
    let cfg = config(dir.path(), &crm.url, true);
    let (server, _) = start(dir.path(), &cfg, NEW_KEY);
    let db = rusqlite::Connection::open(dir.path().join("data/switchboard.db")).unwrap();
    let new_id = switchboard::config::SecretsKey::parse(NEW_KEY).unwrap().id();
    let ids: Vec<String> = db
        .prepare("SELECT DISTINCT key_id FROM secrets")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, [new_id]);
    server.terminate();
    let cfg = config(dir.path(), &crm.url, false);
    let (server, _) = start(dir.path(), &cfg, NEW_KEY);
    post_confirm(&server, "s2").await;
    let got = crm.wait_for_count("/crm", 2).await;
    assert_eq!(
        got[1].headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {PLANTED}").as_str())
    );
}
