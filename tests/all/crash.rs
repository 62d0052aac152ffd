//! Crash safety of the real binary: `switchboard serve` is killed with
//! SIGKILL at random moments while a stream of signed events arrives, and
//! restarted on the same data dir. Every acknowledged event must be stored
//! and delivered, and JustCall must receive exactly one SMS per event.
//!
//! `cargo test` runs a tractable size (5 kills, 150 events). The long run:
//! `SWITCHBOARD_CRASH_KILLS=50 SWITCHBOARD_CRASH_EVENTS=2000 cargo test --release --test all crash -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::intake::auth::standard_webhooks_signature;

use crate::harness::{API_KEY, API_SECRET, FakeJustCall, NUMBER, RECEIVED_BODY, RECEIVED_ID, fixture, guest};
use crate::process::{Process, free_port, serve_command, wait_until_healthy};

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

fn spawn(config: &std::path::Path) -> Process {
    let port = free_port();
    Process::spawn(serve_command(BIN, config, port, None), port)
}

/// Waits (off the async threads) until the server on `port` answers /healthz.
async fn wait_healthy(port: u16) {
    tokio::task::spawn_blocking(move || wait_until_healthy(port, Duration::from_secs(30)))
        .await
        .unwrap();
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
             justcall_rate_per_minute = 1000000\n[tenants.acme.limits]\nkv_keys = 100000\n",
            jc.url
        ),
    )
    .unwrap();

    let server = Arc::new(Mutex::new(spawn(&config)));
    let port = server.lock().unwrap().port;
    wait_healthy(port).await;

    // The killer: SIGKILL at random moments, restart on the same data dir.
    let killer = {
        let (server, config) = (server.clone(), config.clone());
        let mut rng = Rng(seed);
        tokio::spawn(async move {
            for _ in 0..kills {
                tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
                let port = {
                    let mut s = server.lock().unwrap();
                    s.child.kill().unwrap();
                    s.child.wait().unwrap();
                    // Dropping the old handle reaps nothing more: it is dead.
                    *s = spawn(&config);
                    s.port
                };
                wait_healthy(port).await;
            }
        })
    };

    // The sender: JustCall's behaviour, resending until a 2xx.
    let template = fixture("seed-format/sms.received.json");
    let client = reqwest::Client::new();
    let (mut acked, mut duplicates, mut refused) = (HashSet::new(), 0usize, 0usize);
    for i in 0..events {
        let body = template
            .replace(RECEIVED_ID, &format!("crash-{i}"))
            .replace(RECEIVED_BODY, &format!("crash {i}"));
        let id = format!("wh-{i}");
        loop {
            let url = server.lock().unwrap().url();
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
                    if r.status() == 200 {
                        duplicates += 1;
                    }
                    // The id of the event this acknowledgement promises is stored.
                    let answer: serde_json::Value = r.json().await.expect("a JSON acknowledgement");
                    let event_id = answer["event_id"].as_str().expect("an event id").to_string();
                    assert!(acked.insert(event_id), "event {i} acknowledged as another webhook's event");
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
    let port = server.lock().unwrap().port;
    wait_healthy(port).await;

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
    let stored: HashSet<String> = db
        .prepare("SELECT id FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
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
        "crash test: {} events acked ({duplicates} answered as duplicates after a lost reply), {kills} kills, \
         {refused} connection refusals, {} SMS at the fake JustCall, {} texted twice, {} send requests, {} reconciliation lookups",
        acked.len(),
        sent_now.len(),
        doubled.len(),
        jc.requests().0,
        jc.requests().1,
    );
    // Nothing acknowledged was lost: every event id a 2xx named survived
    // the kills, and there is one event and one delivery per webhook.
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert_eq!(
        (acked.len(), stored.len(), deliveries as usize),
        (events, events, events),
        "one event and one delivery per webhook"
    );
    assert!(doubled.is_empty(), "texted twice: {doubled:?}");
    assert_eq!(sent.len(), events);
    assert_eq!(sent_now.len(), events, "exactly one SMS per acknowledged event");
    for i in 0..events {
        assert_eq!(per_event.get(&format!("re: crash {i}")), Some(&1), "event {i}");
    }
}
