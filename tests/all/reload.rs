//! Hot reload of the plugin folder: replacing under load, rejected versions,
//! delete and re-add, slow copies, manifest-only changes, and the compiled
//! code cache across restarts.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{CONFIRM_ID, PluginSpec, Recorder, TenantSpec, TestHost, fixture, guest, wait_for, write_then_rename};

fn confirm_event(id: &str) -> String {
    fixture("seed-format/sms.received-confirm.json").replace(CONFIRM_ID, id)
}

/// A server with tenant `acme` running appointment-confirm as `confirm`.
async fn confirm_host(manifest: &str) -> (TestHost, Recorder) {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new(
        "appointment-confirm",
        "confirm",
        manifest,
    ))])
    .await;
    (host, jc)
}

fn hash_of(path: &std::path::Path) -> String {
    switchboard::engine::runtime::Runtime::content_hash(&std::fs::read(path).unwrap())
}

async fn wait_admin(host: &TestHost, tenant: &str, name: &str, what: &str, cond: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
    let start = std::time::Instant::now();
    loop {
        let p = host.admin_plugin(tenant, name).await;
        if cond(p.as_ref()) {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}: {p:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn replacing_a_plugin_under_a_stream_runs_each_event_once_on_one_version() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("answer-a", "answer", "")),
    ])
    .await;
    let (hash_a, hash_b) = (hash_of(&guest("answer-a")), hash_of(&guest("answer-b")));
    let target = host.plugin_dir("acme").join("answer.wasm");
    const N: usize = 120;
    let mut swapped_at = None;
    for i in 0..N {
        if i == 40 {
            write_then_rename(&target, &std::fs::read(guest("answer-b")).unwrap());
        }
        if i >= 40 && swapped_at.is_none() && host.admin_plugin("acme", "answer").await.unwrap()["hash"] == hash_b.as_str() {
            swapped_at = Some(i);
        }
        let (status, _) = host.post("acme", confirm_event(&format!("m{i}")), &[]).await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let swapped_at = swapped_at.expect("the new version was never reported serving");
    host.idle().await;

    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    for r in jc.to("/api/v2/texts/new") {
        let body = r.body["body"].as_str().unwrap().to_string();
        let (version, id) = body.split_once(':').unwrap();
        answers.entry(id.to_string()).or_default().push(version.to_string());
    }
    assert_eq!(answers.len(), N, "every event answered");
    for i in 0..N {
        let a = &answers[&format!("m{i}")];
        assert_eq!(a.len(), 1, "event m{i} answered {a:?}");
        if i >= swapped_at {
            assert_eq!(a[0], "answer-b", "event m{i} was sent after v2 was serving");
        }
    }
    assert_eq!(answers["m0"][0], "answer-a");
    // The delivery records name the version that handled each event.
    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let hashes: Vec<String> = db
        .prepare("SELECT DISTINCT plugin_hash FROM deliveries ORDER BY plugin_hash")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut want = vec![hash_a, hash_b];
    want.sort();
    assert_eq!(hashes, want);
}

#[tokio::test]
async fn a_bad_new_version_leaves_the_old_one_serving_with_the_reason_shown() {
    let (host, jc) = confirm_host("").await;
    let v1 = hash_of(&guest("appointment-confirm"));
    let dir = host.plugin_dir("acme");

    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly file (bad magic number)",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "wrong world",
            std::fs::read(guest("wrong-world")).unwrap(),
            "does not implement world switchboard:plugin/plugin@0.2.0",
        ),
    ];
    for (n, (what, bytes, reason)) in cases.into_iter().enumerate() {
        write_then_rename(&dir.join("confirm.wasm"), &bytes);
        let bad_hash = switchboard::engine::runtime::Runtime::content_hash(&bytes);
        let p = wait_admin(&host, "acme", "confirm", what, |p| {
            p.is_some_and(|p| p["rejected"]["hash"] == bad_hash.as_str())
        })
        .await
        .unwrap();
        // Still serving v1, and it says so, with why the newer file was refused.
        assert_eq!(p["status"], "active");
        assert_eq!(p["hash"], v1.as_str(), "{what}: v1 still serving");
        let summary = p["summary"].as_str().unwrap();
        assert!(
            summary.starts_with(&format!("serving {}, newer version rejected: ", &v1[..12])) && summary.contains(reason),
            "{what}: {summary}"
        );
        let error = p["rejected"]["error"].as_str().unwrap();
        assert!(error.contains(reason), "{what}: {error}");
        assert!(error.contains("confirm.wasm"), "{what}: the reason names the file: {error}");
        let (_, resp) = host.post("acme", confirm_event(&format!("bad-{n}")), &[]).await;
        assert_eq!(resp["deliveries"], 1);
    }

    // A bad manifest is rejected with file, line and key; v1 keeps serving.
    write_then_rename(&dir.join("confirm.wasm"), &std::fs::read(guest("appointment-confirm")).unwrap());
    wait_admin(&host, "acme", "confirm", "recovery", |p| {
        p.is_some_and(|p| p["status"] == "active" && p["rejected"].is_null())
    })
    .await;
    write_then_rename(&dir.join("confirm.toml"), b"events = [\"received\"]\ntimeout = 5\n");
    let p = wait_admin(&host, "acme", "confirm", "bad manifest", |p| {
        p.is_some_and(|p| p["rejected"].is_object())
    })
    .await
    .unwrap();
    let error = p["rejected"]["error"].as_str().unwrap();
    assert!(error.contains("confirm.toml:2: timeout: unknown field `timeout`"), "{error}");
    assert_eq!(p["hash"], v1.as_str());

    host.idle().await;
    assert_eq!(
        jc.to("/texts/new").len(),
        3,
        "v1 answered every CONFIRM while the bad versions were rejected"
    );
}

#[tokio::test]
async fn delete_unloads_and_re_adding_loads_again() {
    let (host, jc) = confirm_host("").await;
    let dir = host.plugin_dir("acme");
    std::fs::remove_file(dir.join("confirm.wasm")).unwrap();
    wait_admin(&host, "acme", "confirm", "unload", |p| p.is_none()).await;
    let (_, resp) = host.post("acme", confirm_event("gone"), &[]).await;
    assert_eq!(resp["deliveries"], 0);

    write_then_rename(&dir.join("confirm.wasm"), &std::fs::read(guest("appointment-confirm")).unwrap());
    wait_admin(&host, "acme", "confirm", "re-add", |p| p.is_some_and(|p| p["status"] == "active")).await;
    let (_, resp) = host.post("acme", confirm_event("back"), &[]).await;
    assert_eq!(resp["deliveries"], 1);
    host.idle().await;
    assert_eq!(jc.to("/texts/new").len(), 1);
}

#[tokio::test]
async fn a_slow_copy_in_place_is_loaded_only_once_complete() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("answer-a", "answer", "")),
    ])
    .await;
    let v2 = std::fs::read(guest("answer-b")).unwrap();
    let path = host.plugin_dir("acme").join("answer.wasm");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in v2.chunks(v2.len() / 8 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = host.admin_plugin("acme", "answer").await.unwrap();
        assert!(
            p["status"] == "active" && p["rejected"].is_null(),
            "a half-written file must not even be tried: {p}"
        );
    }
    drop(f);
    let v2_hash = switchboard::engine::runtime::Runtime::content_hash(&v2);
    wait_admin(&host, "acme", "answer", "v2", |p| p.is_some_and(|p| p["hash"] == v2_hash.as_str())).await;
    let (_, _) = host.post("acme", confirm_event("after"), &[]).await;
    host.idle().await;
    assert_eq!(jc.to("/texts/new")[0].body["body"], "answer-b:after");
}

#[tokio::test]
async fn a_manifest_only_change_applies_the_new_manifest() {
    let (host, jc) = confirm_host("[config]\nreply = \"first\"\n").await;
    let before = host.admin_plugin("acme", "confirm").await.unwrap();
    write_then_rename(&host.plugin_dir("acme").join("confirm.toml"), b"[config]\nreply = \"second\"\n");
    let after = wait_admin(&host, "acme", "confirm", "the new manifest", |p| {
        p.is_some_and(|p| p["loaded_at"] != before["loaded_at"])
    })
    .await
    .unwrap();
    assert_eq!(after["hash"], before["hash"], "same code");
    host.post("acme", confirm_event("x"), &[]).await;
    host.idle().await;
    assert_eq!(jc.to("/texts/new")[0].body["body"], "second");
}

#[tokio::test]
async fn compiled_code_is_shared_cached_on_disk_and_verified() {
    let jc = Recorder::start().await;
    let tenants = || {
        vec![
            TenantSpec::new("acme", &jc.url).plugin(PluginSpec::new("appointment-confirm", "confirm", "")),
            TenantSpec::new("globex", &jc.url).plugin(PluginSpec::new("appointment-confirm", "confirm", "")),
        ]
    };
    let host = TestHost::start(tenants()).await;
    let stats = host.compile_stats().await;
    assert_eq!(
        (stats["compiles"].as_u64(), stats["memory_hits"].as_u64()),
        (Some(1), Some(1)),
        "identical files compile once: {stats}"
    );

    // A restart loads from the on-disk cache without compiling.
    let dir = host.stop().await;
    let host = TestHost::builder(tenants()).in_dir(dir).start().await;
    let stats = host.compile_stats().await;
    assert_eq!(
        (stats["compiles"].as_u64(), stats["disk_hits"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );

    // A corrupt entry is detected, discarded and recompiled, never executed.
    let cache = host.config.data_dir.join("cache");
    let dir = host.stop().await;
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        let mut bytes = std::fs::read(entry.path()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(entry.path(), bytes).unwrap();
    }
    let host = TestHost::builder(tenants()).in_dir(dir).start().await;
    let stats = host.compile_stats().await;
    assert_eq!(
        (stats["compiles"].as_u64(), stats["corrupt_entries"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    host.post("acme", confirm_event("after-corruption"), &[]).await;
    host.idle().await;
    wait_for("the reply", Duration::from_secs(5), || jc.to("/texts/new").len() == 1).await;
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_a_known_tenant() {
    let jc = Recorder::start().await;
    let host = TestHost::start(vec![TenantSpec::new("acme", &jc.url)]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/admin/tenants/acme/plugins", host.admin_url);
    let no_token = client.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(
        no_token.json::<Value>().await.unwrap()["error"],
        "unauthorized: missing bearer token"
    );
    let wrong = client.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let other = client
        .get(format!("{}/admin/tenants/nobody/plugins", host.admin_url))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(host.admin_plugins("acme").await["plugins"], serde_json::json!([]));
}

#[tokio::test]
async fn when_the_watched_folder_disappears_periodic_rescans_take_over() {
    let (host, _jc) = confirm_host("").await;
    std::fs::remove_dir_all(&host.config.plugins_dir).unwrap();
    wait_admin(&host, "acme", "confirm", "unload", |p| p.is_none()).await;
    // The watch on the old folder is gone; only rescans can see this.
    std::fs::create_dir_all(host.plugin_dir("acme")).unwrap();
    write_then_rename(
        &host.plugin_dir("acme").join("confirm.wasm"),
        &std::fs::read(guest("appointment-confirm")).unwrap(),
    );
    wait_admin(&host, "acme", "confirm", "the rescan", |p| {
        p.is_some_and(|p| p["status"] == "active")
    })
    .await;
    let (_, resp) = host.post("acme", confirm_event("rescued"), &[]).await;
    assert_eq!(resp["deliveries"], 1);
}
