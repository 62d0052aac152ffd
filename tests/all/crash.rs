//! Crash safety of the real binary: `switchboard serve` is killed with
//! SIGKILL at random moments while a stream of signed events arrives, and
//! restarted on the same data dir. Every acknowledged event must be
//! delivered, and the fake JustCall must receive exactly one SMS per event.
//!
//! `cargo test` runs a tractable size (5 kills, 150 events). The long run:
//! `SWITCHBOARD_CRASH_KILLS=50 SWITCHBOARD_CRASH_EVENTS=2000 cargo test --release --test all crash -- --nocapture`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::auth::standard_webhooks_signature;

use crate::harness::{API_KEY, API_SECRET, NUMBER, RECEIVED_BODY, RECEIVED_ID, FakeJustCall, fixture, guest};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator, seeded per run and printed, so a failing
/// schedule can be replayed with `SWITCHBOARD_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(config: &std::path::Path) -> Server {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting switchboard serve");
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "switchboard did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_acknowledged_event_texts_exactly_once_across_kill_9() {
    let kills = env_or("SWITCHBOARD_CRASH_KILLS", 5);
    let events = env_or("SWITCHBOARD_CRASH_EVENTS", 150);
    let seed = std::env::var("SWITCHBOARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test: {kills} kills, {events} events, seed {seed}");

    let jc = FakeJustCall::start().await;
    // Every send takes a while to answer, so kills land between JustCall
    // sending and the journal learning it did.
    jc.set_latency(Duration::from_millis(30));
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d/acme");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("flaky"), plugins.join("replier.wasm")).unwrap();
    std::fs::write(
        plugins.join("replier.toml"),
        "events = [\"received\"]\n[config]\nreply = \"yes\"\n[limits]\nkv_keys = 100000\n",
    )
    .unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins.d\"\nretry_delays_ms = [100, 200, 400]\n\
             [tenants.acme]\nnumbers = [\"{NUMBER}\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SECRET}\"\n\
             justcall_base_url = \"{}\"\njustcall_api_key = \"{API_KEY}\"\njustcall_api_secret = \"{API_SECRET}\"\n\
             justcall_rate_per_minute = 1000000\n",
            jc.url
        ),
    )
    .unwrap();

    let server = Arc::new(Mutex::new(spawn(&config)));
    let url = server.lock().unwrap().url.clone();
    wait_healthy(&url).await;

    // The killer: SIGKILL at random moments, restart on the same data dir.
    let killer = {
        let (server, config) = (server.clone(), config.clone());
        let mut rng = Rng(seed);
        tokio::spawn(async move {
            for _ in 0..kills {
                tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
                let url = {
                    let mut s = server.lock().unwrap();
                    s.child.kill().unwrap();
                    s.child.wait().unwrap();
                    // Dropping the old handle reaps nothing more: it is dead.
                    *s = spawn(&config);
                    s.url.clone()
                };
                wait_healthy(&url).await;
            }
        })
    };

    // The sender: JustCall's behaviour, resending until a 2xx.
    let template = fixture("seed-format/sms.received.json");
    let client = reqwest::Client::new();
    let (mut acked, mut duplicates, mut refused) = (0usize, 0usize, 0usize);
    for i in 0..events {
        let body = template
            .replace(RECEIVED_ID, &format!("crash-{i}"))
            .replace(RECEIVED_BODY, &format!("crash {i}"));
        let id = format!("wh-{i}");
        loop {
            let url = server.lock().unwrap().url.clone();
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = standard_webhooks_signature(SECRET, &id, &ts, body.as_bytes());
            let sent = client
                .post(format!("{url}/webhooks/acme"))
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", &ts)
                .header("webhook-signature", &sig)
                .timeout(Duration::from_secs(5))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    acked += 1;
                    if r.status() == 200 {
                        duplicates += 1;
                    }
                    break;
                }
                Ok(r) => panic!("event {i} refused with {}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(_) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killer.await.unwrap();
    let url = server.lock().unwrap().url.clone();
    wait_healthy(&url).await;

    // Every event's one delivery finishes.
    let db = rusqlite::Connection::open(dir.path().join("data/switchboard.db")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let done: i64 = db
            .query_row("SELECT count(*) FROM deliveries WHERE status = 'done'", [], |r| r.get(0))
            .unwrap();
        if done as usize == events {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let mut stmt = db
                .prepare("SELECT id, status, attempts, failures, last_error FROM deliveries WHERE status != 'done' LIMIT 10")
                .unwrap();
            let rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} attempts={} failures={} {:?}",
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<String>>(4)?
                    ))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            panic!("{done} of {events} deliveries done after 60 s; unfinished: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: i64 = db.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    let deliveries: i64 = db.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0)).unwrap();
    let sent = jc.wait_for_sent(events).await;
    // Late duplicates would arrive after the count is reached.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_now = jc.sent();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for s in &sent_now {
        *per_event.entry(s.body.clone()).or_default() += 1;
    }
    let doubled: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "crash test: {acked} events acked ({duplicates} answered as duplicates after a lost reply), {kills} kills, \
         {refused} connection refusals, {} SMS at the fake JustCall, {} texted twice, {} send requests, {} reconciliation lookups",
        sent_now.len(),
        doubled.len(),
        jc.requests().0,
        jc.requests().1,
    );
    assert_eq!(acked, events);
    assert_eq!(
        (stored as usize, deliveries as usize),
        (events, events),
        "one event and one delivery per webhook"
    );
    assert!(doubled.is_empty(), "texted twice: {doubled:?}");
    assert_eq!(sent.len(), events);
    assert_eq!(sent_now.len(), events, "exactly one SMS per acknowledged event");
    for i in 0..events {
        assert_eq!(per_event.get(&format!("re: crash {i}")), Some(&1), "event {i}");
    }
}
