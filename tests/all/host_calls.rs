//! Host-call hygiene through the real server: each hole a hostile plugin
//! could use (path injection into JustCall URLs, framing and credential
//! headers, unbounded media and request bodies, NUL keys, racing quotas,
//! huge errors that forge log lines) ends in a precise refusal or a cap,
//! read back from the delivery's recorded reason and what the local
//! servers received.

use std::collections::HashMap;

use crate::harness::{ADMIN_TOKEN, PluginSpec, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture};

fn hostile(name: &'static str, manifest: String) -> PluginSpec {
    PluginSpec::new("hostile", name, format!("events = [\"received\"]\n{manifest}"))
}

/// The failure reason of each plugin's delivery of one event.
async fn reasons(host: &TestHost, id: &str) -> HashMap<String, String> {
    let event = fixture("seed-format/sms.received.json").replace(RECEIVED_ID, id);
    let (status, ack) = host.post("acme", event, &[]).await;
    assert_eq!(status, 202);
    host.idle().await;
    host.deliveries(ack["event_id"].as_str().unwrap())
        .into_iter()
        .map(|(plugin, _, error)| (plugin, error.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn message_ids_and_media_urls_are_checked_before_justcall_is_called() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let eleven = (0..11)
        .map(|i| format!("https://cdn.example.com/{i}.png"))
        .collect::<Vec<_>>()
        .join(" ");
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(hostile("dotdot", "[config]\nmode = \"get-message\"\nid = \"..\"\n".into()))
            .plugin(hostile(
                "slashed",
                "[config]\nmode = \"get-message\"\nid = \"a/../../admin\"\n".into(),
            ))
            .plugin(hostile("fair-id", "[config]\nmode = \"get-message\"\nid = \"msg_42-a\"\n".into()))
            .plugin(hostile("many-media", format!("[config]\nmode = \"media\"\nmedia = \"{eleven}\"\n")))
            .plugin(hostile(
                "plain-media",
                "[config]\nmode = \"media\"\nmedia = \"http://cdn.example.com/a.png\"\n".into(),
            ))
            .plugin(hostile(
                "metadata-media",
                "[config]\nmode = \"media\"\nmedia = \"https://cdn.example.com/a.png https://169.254.169.254/latest\"\n".into(),
            ))
            .plugin(hostile(
                "fair-media",
                "[config]\nmode = \"media\"\nmedia = \"https://cdn.example.com/a.png\"\n".into(),
            )),
    ])
    .await;
    let r = reasons(&host, "hc_ids").await;
    assert!(
        r["dotdot"].contains("invalid request: message id `..` must be 1 to 128 letters, digits, '-' or '_'"),
        "{r:?}"
    );
    assert!(r["slashed"].contains("invalid request: message id `a/../../admin`"), "{r:?}");
    assert!(r["many-media"].contains("11 media URLs; at most 10"), "{r:?}");
    assert!(r["plain-media"].contains("media_urls[0]: scheme `http` is not https"), "{r:?}");
    assert!(
        r["metadata-media"].contains("media_urls[1]: 169.254.169.254 is a cloud metadata address"),
        "{r:?}"
    );
    // JustCall saw exactly the two acceptable calls, and no path but theirs.
    let paths: Vec<String> = jc.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.iter().filter(|p| p.ends_with("/texts/msg_42-a")).count(), 1, "{paths:?}");
    assert_eq!(paths.iter().filter(|p| p.ends_with("/texts/new")).count(), 1, "{paths:?}");
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(
        jc.to("/texts/new")[0].body["media_urls"],
        serde_json::json!(["https://cdn.example.com/a.png"])
    );
    // A read that JustCall answers is never called an unknown outcome.
    assert!(!r["fair-id"].contains("outcome unknown"), "{r:?}");
}

#[tokio::test]
async fn framing_headers_big_bodies_and_cross_origin_credentials_are_refused() {
    let _load = crate::harness::deadline_bound().await;
    let (crm, bouncer, elsewhere) = (Recorder::start().await, Recorder::start().await, Recorder::start().await);
    bouncer.redirect_to(&format!("{}/landed", elsewhere.url));
    let allowed = format!("allowed_hosts = [\"{}\", \"{}\", \"{}\"]\n", crm.url, bouncer.url, elsewhere.url);
    let post = |url: &str, headers: &str, kb: u32| {
        format!("{allowed}[config]\nmode = \"http-post\"\nurl = \"{url}\"\nheaders = \"{headers}\"\nbody_kb = \"{kb}\"\n")
    };
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &crm.url)
            .plugin(hostile("host-header", post(&format!("{}/h", crm.url), "Host: evil.example", 1)))
            .plugin(hostile("framing", post(&format!("{}/f", crm.url), "Transfer-Encoding: chunked", 1)))
            .plugin(hostile("too-big", post(&format!("{}/big", crm.url), "", 300)))
            .plugin(hostile(
                "raised",
                post(&format!("{}/raised", crm.url), "", 300) + "[limits]\nhttp_request_kb = 512\n",
            ))
            .plugin(hostile(
                "bounced",
                post(
                    &format!("{}/go", bouncer.url),
                    "Authorization: Bearer s3cret;Cookie: sid=1;X-Trace: t1",
                    1,
                ),
            )),
    ])
    .await;
    let r = reasons(&host, "hc_http").await;
    assert!(
        r["host-header"].contains("invalid request: header `host` is set by the host, not the plugin"),
        "{r:?}"
    );
    assert!(r["framing"].contains("header `transfer-encoding` is set by the host"), "{r:?}");
    assert!(
        r["too-big"].contains("invalid request: request body is over 262144 bytes (307200; raise http_request_kb"),
        "{r:?}"
    );
    assert!(crm.to("/big").is_empty() && crm.to("/h").is_empty() && crm.to("/f").is_empty());
    assert!(r["raised"].contains("status 200"), "{r:?}");
    assert_eq!(crm.to("/raised").len(), 1);
    // The bouncer got the credentials; the other origin it sent us to did not.
    assert!(r["bounced"].contains("status 200"), "{r:?}");
    let first = &bouncer.to("/go")[0];
    assert_eq!(first.headers["authorization"], "Bearer s3cret");
    let landed = &elsewhere.to("/landed")[0];
    assert!(landed.headers.get("authorization").is_none(), "{:?}", landed.headers);
    assert!(landed.headers.get("cookie").is_none(), "{:?}", landed.headers);
    assert_eq!(landed.headers["x-trace"], "t1");
}

#[tokio::test]
async fn nul_keys_and_racing_writers_cannot_beat_kv_quotas() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let mut acme = TenantSpec::new("acme", &jc.url)
        .plugin(hostile("nul", "[config]\nmode = \"kv-nul\"\n".into()))
        .plugin(hostile("racer", "[config]\nmode = \"kv-one\"\n[limits]\nkv_keys = 5\n".into()));
    // Two plugins that fill their stores share the tenant's total.
    let mut globex = TenantSpec::new("globex", &jc.url)
        .number("+15125550111")
        .plugin(hostile("fill-a", "[config]\nmode = \"kv-fill\"\n[limits]\nkv_keys = 3\n".into()))
        .plugin(hostile("fill-b", "[config]\nmode = \"kv-fill\"\n[limits]\nkv_keys = 3\n".into()));
    globex.kv_total.keys = 4;
    acme.kv_total.keys = 1_000;
    // The whole pool of 16 may race, not just a default share of it.
    acme.max_concurrent = Some(16);
    let host = TestHost::start(vec![acme, globex]).await;

    // 40 events at once, each storing one new key under a quota of 5.
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..40 {
        let event = fixture("seed-format/sms.received.json").replace(RECEIVED_ID, &format!("race_{i}"));
        let url = format!("{}/webhooks/acme", host.url);
        posts.spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(event)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let ack: serde_json::Value = resp.json().await.unwrap();
            ack["event_id"].as_str().unwrap().to_string()
        });
    }
    let race_ids = posts.join_all().await;
    let globex_event = fixture("seed-format/sms.received.json")
        .replace(RECEIVED_ID, "fill_1")
        .replace("+15125550100", "+15125550111");
    let (status, fill) = host.post("globex", globex_event, &[]).await;
    assert_eq!(status, 202);
    host.idle().await;

    let db = rusqlite::Connection::open(host.config.data_dir.join("switchboard.db")).unwrap();
    let count = |tenant: &str, plugin: &str| -> i64 {
        db.query_row("SELECT count(*) FROM kv WHERE tenant = ?1 AND plugin = ?2", [tenant, plugin], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(count("acme", "racer"), 5, "exactly the quota, however the writes race");
    let refused = race_ids
        .iter()
        .filter_map(|id| host.deliveries(id).into_iter().find(|d| d.0 == "racer"))
        .filter(|d| d.2.as_deref().is_some_and(|e| e.contains("the store holds its maximum of 5 keys")))
        .count();
    assert!(refused >= 35, "{refused} refused deliveries");
    assert_eq!(count("acme", "nul"), 0);
    let nul = host.deliveries(&race_ids[0]).into_iter().find(|d| d.0 == "nul").unwrap();
    assert_eq!(nul.2.as_deref(), Some("plugin error: quota exceeded: key contains NUL"));

    assert_eq!(count("globex", "fill-a") + count("globex", "fill-b"), 4);
    let fills: Vec<String> = host
        .deliveries(fill["event_id"].as_str().unwrap())
        .into_iter()
        .filter_map(|d| d.2)
        .collect();
    assert!(
        fills.iter().any(|e| e.contains("the tenant's stores hold their maximum of 4 keys")),
        "{fills:?}"
    );
}

#[tokio::test]
async fn a_multi_megabyte_plugin_error_is_stored_and_served_capped() {
    let _load = crate::harness::deadline_bound().await;
    let jc = Recorder::start().await;
    let big_value = "v".repeat(20_000);
    let host = TestHost::start(vec![
        TenantSpec::new("acme", &jc.url)
            .plugin(hostile(
                "shouter",
                "[config]\nmode = \"big-error\"\nbytes = \"3000000\"\n[limits]\nmemory_mb = 128\ntimeout_ms = 5000\n".into(),
            ))
            .plugin(hostile(
                "keeper",
                format!("[config]\nmode = \"kv-write\"\nvalue = \"{big_value}\"\n"),
            )),
    ])
    .await;
    let r = reasons(&host, "hc_big").await;
    let reason = &r["shouter"];
    assert!(reason.len() <= 4096 + 64, "{} bytes stored", reason.len());
    assert!(reason.starts_with("plugin error: EEEE"), "{}", &reason[..40]);
    assert!(reason.ends_with("more bytes cut]"), "{}", &reason[reason.len() - 40..]);

    let (status, list) = host.admin("GET", "/tenants/acme/deliveries?limit=5", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let served = serde_json::to_string(&list).unwrap();
    assert!(served.len() < 16 << 10, "the list answered {} bytes", served.len());
    let plugins = serde_json::to_string(&host.admin_plugins("acme").await).unwrap();
    assert!(plugins.len() < 16 << 10, "the plugin status answered {} bytes", plugins.len());
    // A KV listing shows at most 4 KiB of each value, and its full size.
    let (status, kv) = host.admin("GET", "/tenants/acme/plugins/keeper/kv", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let entry = &kv["entries"][0];
    assert_eq!((entry["key"].as_str(), entry["bytes"].as_u64()), (Some("secret"), Some(20_000)));
    assert_eq!(entry["truncated"], true);
    assert!(entry["value"].as_str().unwrap().len() < 4096 + 64, "{entry}");
}
