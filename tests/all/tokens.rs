//! Tenants' API tokens, through the real server: the operator makes them
//! (shown once, scoped), a token opens its own tenant within its scopes and
//! nothing of another tenant's (every admin and console route is refused,
//! and nothing changes), a revoked token opens nothing, and every resume,
//! replay and token change is in the tenant's audit log with who did it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, RECEIVED_BODY, Recorder, TenantSpec, TestHost, fixture, flaky, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A request to the admin listener with `token`: its status and JSON.
async fn call(host: &TestHost, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", host.admin_url);
    let mut req = match method {
        "POST" => client.post(url),
        "PUT" => client.put(url).body("a-value"),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn new_token(host: &TestHost, tenant: &str, scopes: &[&str]) -> (String, String) {
    let (status, made) = call(
        host,
        "POST",
        &format!("/admin/tenants/{tenant}/tokens"),
        ADMIN_TOKEN,
        Some(json!({ "scopes": scopes, "label": "test" })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    (
        made["id"].as_str().unwrap().to_string(),
        made["token"].as_str().unwrap().to_string(),
    )
}

/// Signs in to the console with `token` as a browser would: a client that
/// keeps no redirects, the session cookie, and the tenants page it shows.
async fn console(host: &TestHost, token: &str) -> (reqwest::Client, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = crate::sign_in::sign_in(&client, &host.admin_url, token).await;
    let overview = client
        .get(format!("{}/console/tenants", host.admin_url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (client, cookie, overview)
}

#[tokio::test]
async fn a_tenants_token_opens_its_own_tenant_only_and_every_change_is_audited() {
    let sink = Recorder::start().await;
    let host = TestHost::builder(vec![
        TenantSpec::new("acme", &sink.url).plugin(flaky(&sink.url, false, 5000)),
        TenantSpec::new("globex", &sink.url)
            .number("+15125550199")
            .plugin(flaky(&sink.url, false, 5000)),
    ])
    .retries(vec![Duration::from_millis(20)])
    .start()
    .await;
    // globex: one delivery failed every retry, so its plugin is paused.
    let failing = fixture("seed-format/sms.received.json")
        .replace(RECEIVED_BODY, "FAIL")
        .replace("+15125550100", "+15125550199");
    let (_, g) = host.post("globex", failing, &[]).await;
    let globex_event = g["event_id"].as_str().unwrap().to_string();
    wait_for("globex's plugin to pause", Duration::from_secs(10), || {
        host.deliveries(&globex_event).first().is_some_and(|d| d.1 == "failed")
    })
    .await;
    let (_, a) = host.post("acme", fixture("seed-format/sms.received.json"), &[]).await;
    let acme_event = a["event_id"].as_str().unwrap().to_string();
    wait_for("acme's delivery", Duration::from_secs(10), || {
        host.deliveries(&acme_event).first().is_some_and(|d| d.1 == "done")
    })
    .await;
    let (_, list) = call(&host, "GET", "/admin/tenants/globex/deliveries", ADMIN_TOKEN, None).await;
    let globex_delivery = list["deliveries"][0]["id"].clone();

    // Tokens are the operator's to make; a tenant's token cannot.
    let (full_id, full) = new_token(&host, "acme", &["read", "operate", "deploy"]).await;
    let (_, reader) = new_token(&host, "acme", &["read"]).await;
    let (status, listed) = call(&host, "GET", "/admin/tenants/acme/tokens", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(full.rsplit('_').next().unwrap()),
        "a listing shows a secret: {listed}"
    );
    let (status, _) = call(
        &host,
        "POST",
        "/admin/tenants/acme/tokens",
        &full,
        Some(json!({ "scopes": ["read"] })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, bad) = call(
        &host,
        "POST",
        "/admin/tenants/acme/tokens",
        ADMIN_TOKEN,
        Some(json!({ "scopes": ["root"] })),
    )
    .await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("bad request: scope `root` is not one of read, deploy, operate"))
    );
    let body = Some(json!({ "label": "no scopes" }));
    let (status, bad) = call(&host, "POST", "/admin/tenants/acme/tokens", ADMIN_TOKEN, body).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("missing field `scopes`"), "{bad}");

    // Its own tenant, within its scopes.
    let (status, plugins) = call(&host, "GET", "/admin/tenants/acme/plugins", &full, None).await;
    assert_eq!((status, plugins["plugins"][0]["name"].as_str()), (200, Some("flaky")));
    let (status, _) = call(
        &host,
        "POST",
        &format!("/admin/tenants/acme/events/{acme_event}/replay"),
        &full,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (status, why) = call(
        &host,
        "POST",
        &format!("/admin/tenants/acme/events/{acme_event}/replay"),
        &reader,
        None,
    )
    .await;
    assert_eq!(
        (status, why["error"].as_str()),
        (403, Some("forbidden: this token lacks the `operate` scope"))
    );

    let (_, before) = call(&host, "GET", "/admin/tenants/globex/plugins", ADMIN_TOKEN, None).await;
    // Nothing of another tenant's, through any route.
    let gx = "/admin/tenants/globex";
    let routes: Vec<(&str, String)> = vec![
        ("GET", format!("{gx}/plugins")),
        ("POST", format!("{gx}/plugins/flaky/resume")),
        ("GET", format!("{gx}/deliveries")),
        ("GET", format!("{gx}/deliveries/{globex_delivery}")),
        ("GET", format!("{gx}/tail")),
        ("POST", format!("{gx}/events/{globex_event}/replay")),
        ("GET", format!("{gx}/verifications")),
        ("GET", format!("{gx}/plugins/flaky/kv")),
        ("GET", format!("{gx}/plugins/flaky/versions")),
        ("POST", format!("{gx}/plugins/flaky/versions")),
        ("POST", format!("{gx}/plugins/flaky/rollback")),
        ("GET", format!("{gx}/plugins/flaky/trial")),
        ("POST", format!("{gx}/plugins/flaky/promote")),
        ("POST", format!("{gx}/plugins/flaky/trial/stop")),
        ("GET", format!("{gx}/plugins/flaky/secrets")),
        ("PUT", format!("{gx}/plugins/flaky/secrets/token")),
        ("DELETE", format!("{gx}/plugins/flaky/secrets/token")),
        ("GET", format!("{gx}/audit")),
        ("GET", format!("{gx}/tokens")),
        ("POST", format!("{gx}/tokens")),
        ("DELETE", format!("{gx}/tokens/{full_id}")),
        ("GET", "/metrics".to_string()),
    ];
    for (method, path) in &routes {
        let body = (path.ends_with("/tokens") && *method == "POST").then(|| json!({ "scopes": ["read"] }));
        let (status, answer) = call(&host, method, path, &full, body).await;
        assert!(matches!(status, 403 | 404), "{method} {path} with acme's token: {status} {answer}");
    }
    let (client, cookie, overview) = console(&host, &full).await;
    let csrf = overview
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_string();
    let cx = "/console/tenants/globex";
    let pages: Vec<(&str, String)> = vec![
        ("GET", cx.to_string()),
        ("GET", format!("{cx}/activity.json")),
        ("POST", format!("{cx}/plugins/flaky/resume")),
        ("GET", format!("{cx}/deliveries")),
        ("GET", format!("{cx}/deliveries/live")),
        ("GET", format!("{cx}/deliveries/{globex_delivery}")),
        ("POST", format!("{cx}/deliveries/{globex_delivery}/replay")),
    ];
    for (method, path) in &pages {
        let url = format!("{}{path}", host.admin_url);
        let req = if *method == "POST" {
            client.post(url).form(&[("csrf", csrf.as_str())])
        } else {
            client.get(url)
        };
        let status = req.header("cookie", &cookie).send().await.unwrap().status().as_u16();
        assert!(matches!(status, 403 | 404), "console {method} {path} with acme's token: {status}");
    }
    assert!(overview.contains(">acme<") && !overview.contains("globex"), "{overview}");
    // And nothing changed: globex's plugin is still paused, its event not replayed.
    let (_, after) = call(&host, "GET", "/admin/tenants/globex/plugins", ADMIN_TOKEN, None).await;
    assert_eq!(after["plugins"][0]["status"], "paused", "{after}");
    assert_eq!(after["plugins"][0]["version"], before["plugins"][0]["version"], "{after}");
    assert_eq!(host.deliveries(&globex_event).len(), 1);

    // The operator resumes globex; revokes acme's token, which then opens nothing.
    let (status, _) = call(&host, "POST", "/admin/tenants/globex/plugins/flaky/resume", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&host, "DELETE", &format!("/admin/tenants/acme/tokens/{full_id}"), ADMIN_TOKEN, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&host, "GET", "/admin/tenants/acme/plugins", &full, None).await;
    assert_eq!(status, 401);

    // The audit log: who did what, newest first, per tenant.
    let (status, log) = call(&host, "GET", "/admin/tenants/acme/audit", &reader, None).await;
    assert_eq!(status, 200);
    let seen: Vec<(String, String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    let actor = format!("token:{full_id}");
    let expected = [
        ("operator", "token.revoke", "ok"),
        (actor.as_str(), "replay", "ok"),
        ("operator", "token.create", "ok"),
        ("operator", "token.create", "ok"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(seen, expected, "{log}");
    let (_, globex_log) = call(&host, "GET", "/admin/tenants/globex/audit", ADMIN_TOKEN, None).await;
    let globex_actions: Vec<&str> = globex_log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(globex_actions, ["resume"], "{globex_log}");

    // The CLI makes and lists tokens the same way.
    let out = tokio::process::Command::new(BIN)
        .args(["admin", "--url", &host.admin_url, "--token", ADMIN_TOKEN])
        .args(["token", "create", "--tenant", "globex", "--scope", "read", "--label", "warehouse"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = made["token"].as_str().unwrap();
    assert!(token.starts_with("sbt_"), "{made}");
    let (status, _) = call(&host, "GET", "/admin/tenants/globex/deliveries", token, None).await;
    assert_eq!(status, 200);
}
