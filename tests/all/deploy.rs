//! Plugin versions over the admin API, through the real server: a tenant's
//! deploy token uploads a version while events stream in, then rolls back,
//! and every event runs exactly once, on the version serving when it ran;
//! the folder and the API share one history; a version the folder would
//! reject is refused with the same reason and changes nothing; another
//! tenant's token and a read-only token cannot deploy; `switchboard deploy`
//! uploads a built file and says what changed; all of it is audited.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, CONFIRM_ID, PluginSpec, Recorder, TenantSpec, TestHost, fixture, guest};

fn confirm_event(id: &str) -> String {
    fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, id)
}

async fn token(host: &TestHost, tenant: &str, scopes: &[&str]) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/tenants/{tenant}/tokens", host.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "scopes": scopes }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

/// Uploads `wasm` (+ `manifest`) as `tenant`'s plugin `name`: status, answer.
async fn upload(host: &TestHost, token: &str, tenant: &str, name: &str, wasm: Vec<u8>, manifest: Option<&str>) -> (u16, Value) {
    upload_with(host, token, &format!("{tenant}/plugins/{name}/versions"), wasm, manifest).await
}

/// Uploads to `/admin/tenants/{path}` (with its query string): status, answer.
pub async fn upload_with(host: &TestHost, token: &str, path: &str, wasm: Vec<u8>, manifest: Option<&str>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new().part("wasm", reqwest::multipart::Part::bytes(wasm).file_name("p.wasm"));
    if let Some(m) = manifest {
        form = form.text("manifest", m.to_string());
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/tenants/{path}", host.admin_url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn call(host: &TestHost, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", host.admin_url);
    let mut req = if method == "POST" { client.post(url) } else { client.get(url) }.bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Which version answered each event (`answer-a:m3` → m3: [answer-a]).
fn answers(jc: &Recorder) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in jc.to("/api/v2/texts/new") {
        let body = r.body["body"].as_str().unwrap().to_string();
        let (version, id) = body.split_once(':').unwrap();
        out.entry(id.to_string()).or_default().push(version.to_string());
    }
    out
}

#[tokio::test]
async fn upload_then_rollback_under_a_stream_runs_every_event_once_and_is_audited() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("answer-a", "answer", "")),
        TenantSpec::new("globex", &jc.url).number("+15125550199"),
    ])
    .await;
    let deployer = token(&host, "acme", &["deploy", "read"]).await;
    let reader = token(&host, "acme", &["read"]).await;
    let other = token(&host, "globex", &["deploy", "read"]).await;
    let (a, b) = (std::fs::read(guest("answer-a")).unwrap(), std::fs::read(guest("answer-b")).unwrap());
    let before = host.admin_plugin("acme", "answer").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();

    // Nobody else deploys: another tenant's token sees no such tenant, a
    // read-only token may not, and nothing changes.
    assert_eq!(upload(&host, &other, "acme", "answer", b.clone(), None).await.0, 404);
    assert_eq!(upload(&host, &reader, "acme", "answer", b.clone(), None).await.0, 403);
    let (status, _) = call(&host, "POST", "/admin/tenants/acme/plugins/answer/rollback", &other, None).await;
    assert_eq!(status, 404);
    assert_eq!(host.admin_plugin("acme", "answer").await.unwrap()["version"], before.as_str());

    const N: usize = 90;
    let (mut deployed, mut rolled_back) = (None, None);
    let (mut v_b, mut v_a) = (String::new(), String::new());
    for i in 0..N {
        if i == 30 {
            let (status, d) = upload(&host, &deployer, "acme", "answer", b.clone(), Some("events = [\"received\"]\n")).await;
            assert_eq!(status, 201, "{d}");
            assert_eq!(d["previous"], before.as_str());
            assert_eq!(d["changes"]["code"], true);
            assert_eq!(d["changes"]["events"], json!({ "added": ["received"], "removed": ["*"] }), "{d}");
            v_b = d["version"].as_str().unwrap().to_string();
            deployed = Some(i);
        }
        if i == 60 {
            let compiles = host.compile_stats().await["compiles"].clone();
            let (status, r) = call(&host, "POST", "/admin/tenants/acme/plugins/answer/rollback", &deployer, None).await;
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["previous"], v_b.as_str());
            v_a = r["version"].as_str().unwrap().to_string();
            // Served from the compiled code kept: nothing was compiled.
            assert_eq!(host.compile_stats().await["compiles"], compiles);
            rolled_back = Some(i);
        }
        let (status, _) = host.post("acme", confirm_event(&format!("m{i}")), &[]).await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.idle().await;
    assert_eq!(v_a, before, "the rollback serves the version that served before");
    let (deployed, rolled_back) = (deployed.unwrap(), rolled_back.unwrap());
    let answers = answers(&jc);
    assert_eq!(answers.len(), N, "every event answered");
    for i in 0..N {
        let got = &answers[&format!("m{i}")];
        assert_eq!(got.len(), 1, "event m{i} answered {got:?}");
        let want = if (deployed..rolled_back).contains(&i) {
            "answer-b"
        } else {
            "answer-a"
        };
        assert_eq!(got[0], want, "event m{i}");
    }
    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let (deliveries, once): (i64, i64) = db
        .query_row(
            "SELECT count(*), sum(status = 'done' AND attempts = 1) FROM deliveries WHERE tenant = 'acme'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((deliveries, once), (N as i64, N as i64));

    // The folder holds what serves, so the operator's path and the API agree.
    let folder = host.plugin_dir("acme");
    assert_eq!(std::fs::read(folder.join("answer.wasm")).unwrap(), a);
    // Version a's manifest (empty, as the harness deployed it), not b's.
    assert_eq!(std::fs::read_to_string(folder.join("answer.toml")).unwrap(), "");

    // One history: the folder's version and the upload, newest first.
    let (status, list) = call(&host, "GET", "/admin/tenants/acme/plugins/answer/versions", &reader, None).await;
    assert_eq!(status, 200, "{list}");
    let rows: Vec<(String, String, bool)> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().into(),
                v["source"].as_str().unwrap().into(),
                v["serving"] == true,
            )
        })
        .collect();
    assert_eq!(rows, [(v_a.clone(), "rollback".into(), true), (v_b.clone(), "api".into(), false)]);
    // Rolling forward to a kept version by id works the same way.
    let (status, r) = call(
        &host,
        "POST",
        "/admin/tenants/acme/plugins/answer/rollback",
        &deployer,
        Some(json!({ "version": v_b })),
    )
    .await;
    assert_eq!((status, r["version"].as_str()), (200, Some(v_b.as_str())), "{r}");
    let (status, r) = call(
        &host,
        "POST",
        "/admin/tenants/acme/plugins/answer/rollback",
        &deployer,
        Some(json!({ "version": "0000000000000000" })),
    )
    .await;
    assert_eq!(status, 404, "{r}");

    let (_, audit) = call(&host, "GET", "/admin/tenants/acme/audit", &reader, None).await;
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "token.create")
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    let actor_ok = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "deploy" || e["action"] == "rollback")
        .all(|e| e["actor"].as_str().unwrap().starts_with("token:"));
    assert!(actor_ok, "{audit}");
    assert_eq!(entries[0].0, "rollback");
    assert!(entries[0].2.contains("not found"), "{entries:?}");
    assert_eq!(entries[1], ("rollback".into(), format!("answer@{v_b}"), "ok".into()));
    assert_eq!(entries[2], ("rollback".into(), "answer".into(), "ok".into()));
    assert_eq!(entries[3], ("deploy".into(), "answer".into(), "ok".into()));
    assert!(
        entries
            .iter()
            .all(|e| e.0 != "deploy" || e.2 == "ok" || e.2.starts_with("forbidden")),
        "{entries:?}"
    );
}

#[tokio::test]
async fn an_upload_the_folder_would_reject_is_refused_with_the_same_reason() {
    let (jc, ops) = (Recorder::start().await, Recorder::start().await);
    let host = TestHost::builder(vec![
        TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("answer-a", "answer", "")),
        TenantSpec::new("globex", &jc.url).number("+15125550199"),
    ])
    .operator_webhook(&format!("{}/operator", ops.url), "operator-secret-0123456789")
    .start()
    .await;
    let serving = host.admin_plugin("acme", "answer").await.unwrap()["version"].clone();
    let bad_manifest = "events = [\"received\"]\nallowed_hosts = [\"ftp://x\"]\n";
    let cases: [(&str, Vec<u8>, Option<&str>); 3] = [
        ("garbage", b"definitely not wasm".to_vec(), None),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), None),
        ("bad manifest", std::fs::read(guest("answer-b")).unwrap(), Some(bad_manifest)),
    ];
    for (i, (what, wasm, manifest)) in cases.into_iter().enumerate() {
        let (status, body) = upload(&host, ADMIN_TOKEN, "acme", "answer", wasm.clone(), manifest).await;
        assert_eq!(status, 422, "{what}: {body}");
        let api_reason = body["error"].as_str().unwrap().to_string();
        // The same files in globex's folder: the folder path's reason.
        let name = format!("p{i}");
        let dir = host.plugin_dir("globex");
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(m) = manifest {
            std::fs::write(dir.join(format!("{name}.toml")), m).unwrap();
        }
        crate::harness::write_then_rename(&dir.join(format!("{name}.wasm")), &wasm);
        let start = std::time::Instant::now();
        let folder_reason = loop {
            if let Some(p) = host.admin_plugin("globex", &name).await
                && let Some(e) = p["rejected"]["error"].as_str()
            {
                break e.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: never rejected from the folder");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let plugins = host.config.plugins_dir.display().to_string();
        assert_eq!(
            api_reason.replace(&format!("{plugins}/acme/answer"), "PLUGIN"),
            format!("rejected: {}", folder_reason.replace(&format!("{plugins}/globex/{name}"), "PLUGIN")),
            "{what}"
        );
    }
    assert_eq!(host.admin_plugin("acme", "answer").await.unwrap()["version"], serving);
    // The operator hears of each refused upload, as of a refused file.
    let refused = || -> Vec<Value> {
        ops.to("/operator")
            .into_iter()
            .map(|r| r.body)
            .filter(|b| b["type"] == "version.rejected" && b["data"]["source"] == "api")
            .collect()
    };
    let start = std::time::Instant::now();
    while refused().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", refused());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        refused()
            .iter()
            .all(|n| n["data"]["tenant"] == "acme" && n["data"]["plugin"] == "answer")
    );
}

#[tokio::test]
async fn switchboard_deploy_uploads_a_built_file_and_says_what_changed() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "answer-a",
        "answer",
        "events = [\"received\"]\n",
    ))])
    .await;
    let deployer = token(&host, "acme", &["deploy", "read"]).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("answer.wasm");
    std::fs::copy(guest("answer-b"), &file).unwrap();
    std::fs::write(
        work.path().join("answer.toml"),
        "events = [\"received\", \"opt-out\"]\nallowed_hosts = [\"https://crm.example.com\"]\n[config]\ncrm_url = \"https://crm.example.com/x\"\n[limits]\ntimeout_ms = 2000\n",
    )
    .unwrap();
    let cache = work_cache().display().to_string();
    let run = |args: Vec<String>| {
        let (token, cache) = (deployer.clone(), cache.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env = [("SWITCHBOARD_ADMIN_TOKEN", token.as_str()), ("SWITCHBOARD_CACHE", cache.as_str())];
            crate::harness::switchboard(&args, &env, None).await
        }
    };
    let was = host.admin_plugin("acme", "answer").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = run(vec![
        "deploy".into(),
        file.display().to_string(),
        "--tenant".into(),
        "acme".into(),
        "--server".into(),
        host.admin_url.clone(),
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    let now = host.admin_plugin("acme", "answer").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(now, was);
    assert!(
        out.starts_with(&format!("deployed acme/answer version {now} (was {was})\n")),
        "{out}"
    );
    for line in [
        "  events     + opt-out",
        "  hosts      + https://crm.example.com:443",
        "  config     + crm_url",
        "  limits     timeout_ms: default (1000) → 2000",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
    // A file that would not load is refused before anything is sent.
    let broken = work.path().join("broken.wasm");
    std::fs::write(&broken, b"not wasm").unwrap();
    let (ok, _, err) = run(vec![
        "deploy".into(),
        broken.display().to_string(),
        "--tenant".into(),
        "acme".into(),
        "--server".into(),
        host.admin_url.clone(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    // The admin commands list and roll back.
    let admin = |rest: &[&str]| {
        let mut v: Vec<String> = vec!["admin".into(), "--url".into(), host.admin_url.clone()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let (ok, out, err) = run(admin(&["versions", "--tenant", "acme", "--plugin", "answer"])).await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["serving"], now.as_str());
    assert_eq!(list["versions"].as_array().unwrap().len(), 2);
    let (ok, out, err) = run(admin(&["rollback", "--tenant", "acme", "--plugin", "answer"])).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("rolled back acme/answer: version {was} serves (was {now})\n")),
        "{out}"
    );
    assert!(out.contains("  events     - opt-out"), "what the rollback undid: {out}");
    assert_eq!(host.admin_plugin("acme", "answer").await.unwrap()["version"], was.as_str());
}

/// The compiled-code cache `plugin check` (inside `deploy`) uses here.
fn work_cache() -> std::path::PathBuf {
    std::env::temp_dir().join("switchboard-test-deploy-cache")
}

#[tokio::test]
async fn switchboard_deploy_builds_a_starter_folder_then_uploads_it() {
    let _load = crate::harness::heavy().await;
    crate::harness::guest("noop"); // the pinned JS tools are installed by the guest build
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url)]).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display().to_string();
    let (ok, _, err) = crate::harness::switchboard(&["plugin", "new", "hello-js", "--lang", "js", "--dir", &dir], &[], None).await;
    assert!(ok, "{err}");
    let (folder, cache) = (
        work.path().join("hello-js").display().to_string(),
        work_cache().display().to_string(),
    );
    let args = [
        "deploy",
        &folder,
        "--tenant",
        "acme",
        "--server",
        &host.admin_url,
        "--token",
        ADMIN_TOKEN,
    ];
    let (ok, stdout, stderr) = crate::harness::switchboard(&args, &[("SWITCHBOARD_CACHE", &cache)], None).await;
    assert!(ok, "{stdout}\n{stderr}");
    let serving = host.admin_plugin("acme", "hello-js").await.expect("deployed");
    assert_eq!(serving["status"], "active");
    let version = serving["version"].as_str().unwrap();
    assert!(
        stdout.starts_with(&format!("deployed acme/hello-js version {version} (first version)\n")),
        "{stdout}"
    );
    assert!(stdout.contains("  imports    + switchboard:plugin/sms@0.1.0"), "{stdout}");
    // The manifest went with it: the starter's plugin.toml is in the folder.
    let manifest = std::fs::read_to_string(host.plugin_dir("acme").join("hello-js.toml")).unwrap();
    assert_eq!(manifest, std::fs::read_to_string(work.path().join("hello-js/plugin.toml")).unwrap());
}
