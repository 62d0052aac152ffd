//! Fair tenancy through the real server: a tenant whose plugin sleeps on a
//! hundred events holds only its own slots, so another tenant's deliveries
//! run at once; and memory-hungry invocations are admitted only while the
//! host's wasm memory budget has room, so the real binary's RSS stays under
//! that budget plus a stated overhead, and returns near idle afterwards.

use std::time::{Duration, Instant};

use switchboard::intake::auth::standard_webhooks_signature;

use crate::harness::{PluginSpec, RECEIVED_ID, Recorder, TenantSpec, TestHost, fixture, guest};
use crate::process::{Process, free_port, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const NOISY_NUMBER: &str = "+15125550111";

fn event(id: &str, number: &str) -> String {
    fixture("seed-format/sms.received.json")
        .replace(RECEIVED_ID, id)
        .replace("+15125550100", number)
}

/// Posts `n` events to the victim one after another and returns how long
/// each took from the post to its delivery being done, sorted.
async fn victim_latencies(host: &TestHost, tag: &str, n: usize) -> Vec<Duration> {
    let mut took = Vec::new();
    for i in 0..n {
        let id = format!("{tag}_{i}");
        let started = Instant::now();
        let (status, ack) = host.post("victim", event(&id, "+15125550100"), &[]).await;
        assert_eq!(status, 202);
        let event_id = ack["event_id"].as_str().unwrap();
        loop {
            let d = host.deliveries(event_id);
            if !d.is_empty() && d.iter().all(|d| d.1 == "done") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "victim delivery {id} never finished");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took.push(started.elapsed());
    }
    took.sort();
    took
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

#[tokio::test]
async fn a_tenant_whose_plugin_sleeps_does_not_delay_another_tenant() {
    let _load = crate::harness::deadline_bound().await;
    let (jc, slow) = (Recorder::start().await, Recorder::start().await);
    slow.delay(Duration::from_secs(4));
    let sleeper = format!(
        "events = [\"received\"]\nallowed_hosts = [\"{}\"]\n[config]\nmode = \"hog\"\nurl = \"{}/sleep\"\n[limits]\ntimeout_ms = 10000\n",
        slow.url, slow.url
    );
    let host = TestHost::start(vec![
        TenantSpec::new("noisy", &jc.url)
            .number(NOISY_NUMBER)
            .plugin(PluginSpec::new("hostile", "sleeper", sleeper)),
        TenantSpec::new("victim", &jc.url).plugin(PluginSpec::new("noop", "quiet", "events = [\"received\"]\n")),
    ])
    .await;
    let calm = victim_latencies(&host, "calm", 10).await;

    // A hundred events whose plugin waits 4 s each, all at once.
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..100 {
        let url = format!("{}/webhooks/noisy", host.url);
        let body = event(&format!("noisy_{i}"), NOISY_NUMBER);
        posts.spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            resp.unwrap().status().as_u16()
        });
    }
    assert!(posts.join_all().await.iter().all(|s| *s == 202));
    // The neighbour now holds every slot its share gives it.
    slow.wait_for_count("/sleep", 4).await;
    let busy = victim_latencies(&host, "busy", 20).await;
    println!(
        "victim delivery p99: {:?} calm, {:?} beside 100 sleeping neighbour deliveries",
        p99(&calm),
        p99(&busy)
    );
    // The neighbour's share of the harness's pool of 16 is 4: it never has more.
    let sleeping = slow.requests().len();
    assert!(sleeping <= 8, "{sleeping} neighbour deliveries started within the victim's run");
    // Loose on purpose (the bench measures the figure): before fair queues the
    // victim waited for a sleeper's slot, 4 s.
    assert!(p99(&busy) < p99(&calm) + Duration::from_millis(1000), "{busy:?}");
}

fn rss_mb(server: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

/// The host's wasm memory budget in the test below, MiB.
const BUDGET_MB: u64 = 256;
/// What the server may hold beyond the budget: its own footprint, compiled
/// code and each running instance's bookkeeping.
const OVERHEAD_MB: u64 = 160;

#[tokio::test]
async fn memory_hungry_invocations_wait_for_the_host_memory_budget() {
    let _load = crate::harness::heavy().await;
    let slow = Recorder::start().await;
    slow.delay(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d/acme");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("hostile"), plugins.join("hog.wasm")).unwrap();
    std::fs::write(
        plugins.join("hog.toml"),
        format!(
            "events = [\"received\"]\nallowed_hosts = [\"{}\"]\n[config]\nmode = \"hog\"\nmb = \"48\"\nurl = \"{}/wait\"\n\
             [limits]\nmemory_mb = 64\ntimeout_ms = 10000\n",
            slow.url, slow.url
        ),
    )
    .unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nplugins_dir = \"plugins.d\"\nmax_wasm_memory_mb = {BUDGET_MB}\n\
             [tenants.acme]\nnumbers = [\"+15125550100\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{secret}\"\n\
             justcall_base_url = \"http://127.0.0.1:9\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\nmax_concurrent = 64\n"
        ),
    )
    .unwrap();
    let mut server = Process::spawn(serve_command(BIN, &config, port, None), port);
    server.wait_healthy(Duration::from_secs(120));
    let idle = rss_mb(&server);

    let client = reqwest::Client::new();
    const EVENTS: usize = 24;
    for i in 0..EVENTS {
        let body = event(&format!("hog_{i}"), "+15125550100");
        let (id, ts) = (format!("wh-hog-{i}"), chrono::Utc::now().timestamp().to_string());
        let resp = client
            .post(format!("{}/webhooks/acme", server.url()))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", standard_webhooks_signature(secret, &id, &ts, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    }
    // Sample RSS until every delivery is done.
    let db = rusqlite::Connection::open(dir.path().join("data/switchboard.db")).unwrap();
    let (mut peak, started) = (0, Instant::now());
    loop {
        peak = peak.max(rss_mb(&server));
        let done: i64 = db
            .query_row("SELECT count(*) FROM deliveries WHERE status = 'done'", [], |r| r.get(0))
            .unwrap();
        if done == EVENTS as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{done} of {EVENTS} deliveries done");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each request waited 0.7 s holding 48 MiB: at most 4 at once fit the budget.
    let most_at_once = slow.requests().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mb(&server);
    println!("RSS idle {idle} MiB, peak {peak} MiB, after the burst {after} MiB (budget {BUDGET_MB} MiB)");
    assert_eq!(most_at_once, EVENTS);
    assert!(peak >= idle + 48, "the hogs never held their memory: peak {peak}, idle {idle}");
    assert!(peak < idle + BUDGET_MB + OVERHEAD_MB, "peak {peak} MiB, idle {idle} MiB");
    assert!(after < idle + 64, "after the burst {after} MiB, idle {idle} MiB");
}
