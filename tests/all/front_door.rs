//! The webhook listener under hostile traffic on loopback: requests refused
//! from their headers alone, stalled bodies and headers, idle connections,
//! the in-flight body budget and the connection cap. `/healthz` keeps
//! answering throughout.

use std::time::Duration;

use switchboard::config::{FrontDoor, WebhookAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ADMIN_TOKEN, Recorder, TenantSpec, TestHost, fixture};

const SECRET: &str = "whsec_ZnJvbnQtZG9vci10ZXN0cw==";

async fn host(limits: FrontDoor) -> (TestHost, Recorder) {
    let jc = Recorder::start().await;
    let host = TestHost::builder(vec![
        TenantSpec::new("open", &jc.url),
        TenantSpec::new("signed", &jc.url).auth(WebhookAuth::StandardWebhooks, SECRET),
    ])
    .front_door(limits)
    .start()
    .await;
    (host, jc)
}

fn quick() -> FrontDoor {
    FrontDoor {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        max_connections: 64,
        max_inflight_body_bytes: 300 << 10,
    }
}

async fn connect(host: &TestHost) -> TcpStream {
    TcpStream::connect(host.url.trim_start_matches("http://")).await.unwrap()
}

/// Request headers for a POST to `path` declaring `length` body bytes.
fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: switchboard\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n")
}

/// Reads one response: its status and body, or `None` if the connection
/// closed without one. Gives up (panics) after 10 s.
async fn response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                });
                if length.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer within 10 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Whether the server closed the connection (within 10 s).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn headers_alone_are_enough_to_refuse() {
    let (host, _jc) = host(FrontDoor::default()).await;
    // None of these bodies is ever sent: each answer comes from the headers.
    let cases = [
        (post_head("/webhooks/nobody", 100_000, ""), 404, "unknown tenant `nobody`"),
        (post_head("/webhooks/open", 999_999_999, ""), 413, "body exceeds 262144 bytes"),
        (
            post_head("/webhooks/signed", 100_000, ""),
            401,
            "unauthorized: missing header webhook-id",
        ),
        (
            post_head("/webhooks/signed", 100_000, "webhook-id: x\r\nwebhook-timestamp: 1\r\n"),
            401,
            "unauthorized: missing header webhook-signature",
        ),
    ];
    for (head, status, reason) in cases {
        let mut s = connect(&host).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let (got, body) = response(&mut s).await.expect("an answer");
        assert_eq!(got, status, "{head}: {body}");
        assert!(body.contains(reason), "{head}: {body}");
    }
    // An unsigned setup ping is small: it is read, and acknowledged.
    let mut s = connect(&host).await;
    s.write_all(format!("{}{{}}", post_head("/webhooks/signed", 2, "")).as_bytes())
        .await
        .unwrap();
    let (status, body) = response(&mut s).await.unwrap();
    assert_eq!((status, body.contains("\"ping\"")), (200, true), "{body}");
    assert_eq!(host.event_count("signed"), 0);
    assert!(host.healthy().await);
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_the_connection_closed() {
    let (host, _jc) = host(quick()).await;
    let mut s = connect(&host).await;
    s.write_all(format!("{}{{\"", post_head("/webhooks/open", 200, "")).as_bytes())
        .await
        .unwrap();
    let (status, body) = response(&mut s).await.expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body not received within 500ms"), "{body}");
    assert!(closed(&mut s).await, "the connection is closed after a stalled body");
    assert_eq!(host.event_count("open"), 0);
    assert!(host.healthy().await);
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let (host, _jc) = host(quick()).await;
    // Half a request line, then nothing.
    let mut slow = connect(&host).await;
    slow.write_all(b"POST /webhooks/open HTTP/1.1\r\nhost: sw").await.unwrap();
    // Nothing at all.
    let mut silent = connect(&host).await;
    // A finished request on a kept-alive connection, then silence.
    let mut kept = connect(&host).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: switchboard\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut kept).await.map(|r| r.0), Some(200));
    assert!(host.healthy().await, "others are served meanwhile");
    assert!(closed(&mut slow).await, "slow headers are cut off");
    assert!(closed(&mut silent).await, "a silent connection is closed");
    assert!(closed(&mut kept).await, "an idle kept-alive connection is closed");
    assert!(host.healthy().await);
}

#[tokio::test]
async fn body_bytes_in_flight_are_capped() {
    let (host, _jc) = host(FrontDoor {
        body_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(10),
        ..quick()
    })
    .await;
    // One request declares the largest body and sends a little of it.
    let mut first = connect(&host).await;
    first
        .write_all(format!("{}{{\"event\"", post_head("/webhooks/open", 256 << 10, "")).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second as large does not fit in the 300 KiB budget beside it.
    let mut second = connect(&host).await;
    second
        .write_all(post_head("/webhooks/open", 256 << 10, "").as_bytes())
        .await
        .unwrap();
    let (status, body) = response(&mut second).await.expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many requests in progress"), "{body}");
    // A small webhook still fits, and already-accepted work goes on.
    let (status, resp) = host.post("open", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 202, "{resp}");
    assert!(host.healthy().await);
    // The stalled one ends at its body timeout and frees its share.
    assert_eq!(response(&mut first).await.map(|r| r.0), Some(408));
    let mut third = connect(&host).await;
    let body = fixture("seed-format/sms.received-confirm.json");
    third
        .write_all(format!("{}{body}", post_head("/webhooks/open", body.len(), "")).as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut third).await.map(|r| r.0), Some(202));
}

#[tokio::test]
async fn at_the_connection_cap_the_idlest_connection_makes_room() {
    let (host, _jc) = host(FrontDoor {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 16,
        ..quick()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(connect(&host).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Every slot is taken by an idle connection; /healthz still gets in.
    for _ in 0..4 {
        assert!(host.healthy().await);
    }
    let mut evicted = 0;
    for s in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut byte)).await {
            evicted += 1;
        }
    }
    assert!((1..=4).contains(&evicted), "{evicted} idle connections closed for 4 newcomers");
}

#[tokio::test]
async fn failed_admin_authentications_lock_the_admin_api_for_a_while() {
    let (host, _jc) = host(FrontDoor::default()).await;
    let client = reqwest::Client::new();
    let get = |token: String| {
        client
            .get(format!("{}/admin/tenants/open/plugins", host.admin_url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get(ADMIN_TOKEN.to_string()).await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for i in 0..25 {
        statuses.push(get(format!("guess-{i}")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses[..20], [401; 20], "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right token waits out the window: guessing cannot go on.
    let locked = get(ADMIN_TOKEN.to_string()).await.unwrap();
    assert_eq!(locked.status(), 429);
    let wait: u64 = locked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Webhooks are not affected.
    let (status, _) = host.post("open", fixture("seed-format/sms.received.json"), &[]).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn the_admin_api_is_on_its_own_listener_only() {
    let (host, _jc) = host(FrontDoor::default()).await;
    let client = reqwest::Client::new();
    let admin_path = "/admin/tenants/open/plugins";
    let on_public = client
        .get(format!("{}{admin_path}", host.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(on_public.status(), 404, "the webhook listener does not serve /admin");
    let on_admin = client
        .get(format!("{}{admin_path}", host.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), 200);
    let health = client.get(format!("{}/healthz", host.admin_url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the admin listener answers /healthz too");
    let webhook = client
        .post(format!("{}/webhooks/open", host.admin_url))
        .body(fixture("seed-format/sms.received.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 404, "and takes no webhooks");
}
