//! `switchboard dev`, the README's first command, run as a user runs it: the
//! banner appears only once the port answers, the quick start's CONFIRM is
//! answered through the simulator, and the simulator posts `sms.sent` and the
//! delivered status back, as JustCall does.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
use crate::process::{free_port, healthy};

#[tokio::test]
async fn dev_serves_the_quick_start_and_reports_statuses_like_justcall() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let origin = format!("http://127.0.0.1:{port}");
    let banner = format!("Switchboard dev is listening on {origin}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("dev printed its banner");
        if line == banner {
            break;
        }
    }
    // Printed only once the port answers, not while plugins compile.
    assert!(healthy(port), "the banner came before the port answered");

    let client = reqwest::Client::new();
    let confirm = json!({"event":"sms.received","timestamp":"2026-03-12T14:30:00Z","data":{"message_id":"msg_1","direction":"inbound",
        "from":"+15125551234","to":"+15125550100","body":"CONFIRM","media_urls":[],"justcall_number":"+15125550100",
        "contact_name":"Sarah Chen","agent_id":null}});
    let resp = client.post(format!("{origin}/webhooks/demo")).json(&confirm).send().await.unwrap();
    assert_eq!(resp.status(), 202);

    // The JavaScript example answers through the simulator.
    let reply = wait(|| async {
        let list: Value = client
            .get(format!("{origin}/justcall/api/v2/texts/list"))
            .bearer_auth("demo-key:demo-secret")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["data"]
            .as_array()?
            .iter()
            .find(|m| m["direction"] == "outbound" && m["to"] == "+15125551234")
            .cloned()
    })
    .await;
    assert_eq!(reply["body"], "Your appointment is confirmed.", "{reply}");
    let id = reply["id"].as_str().unwrap().to_string();

    // The simulator reports it sent, then delivered, to the tenant's webhook:
    // analytics-pipeline streams both events, about that message, to the warehouse.
    let streamed = wait(|| async {
        let sink: Value = client
            .get(format!("{origin}/dev/sink/warehouse"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let about: Vec<String> = sink["data"]
            .as_array()?
            .iter()
            .filter(|e| e["message_id"] == id.as_str())
            .filter_map(|e| e["kind"].as_str().map(str::to_string))
            .collect();
        (about.len() >= 2).then_some(about)
    })
    .await;
    assert_eq!(streamed, ["sent", "delivered"], "in order, once each");

    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "dev stopped cleanly on SIGINT: {status}");
}

/// Polls `check` until it gives a value (30 s at most).
async fn wait<T, F, Fut>(check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
