//! The attacks from the front-door report, replayed against the real binary
//! on loopback, one after another: a lying `Content-Length`, hundreds of slow
//! clients, hundreds of idle connections, and hundreds of concurrent large
//! bodies. After each, the server's resident memory stays under a stated
//! bound and `/healthz` answers promptly; during the floods too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::process::{Process, free_port, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// What the server's resident memory must stay under, whatever the attack:
/// its own footprint plus the in-flight body budget (8 MiB here), with room.
const RSS_BOUND_MB: u64 = 200;
/// `/healthz` must answer within this, during and after each attack (a
/// liveness bound, not a speed claim: the benchmarks measure speed).
const HEALTH_BOUND: Duration = Duration::from_secs(2);

fn start() -> (Process, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
header_timeout_secs = 2
body_timeout_secs = 3
idle_timeout_secs = 4
max_inflight_body_kb = 8192

[tenants.acme]
numbers = ["+15125550100"]
webhook_auth = "standard-webhooks"
webhook_secret = "whsec_YXR0YWNrcy1vbi10aGUtZnJvbnQtZG9vcg=="
justcall_base_url = "http://127.0.0.1:9"
justcall_api_key = "k"
justcall_api_secret = "s"
"#
        ),
    )
    .unwrap();
    let mut server = Process::spawn(serve_command(BIN, &config, port, None), port);
    server.wait_healthy(Duration::from_secs(60));
    (server, port, dir)
}

fn rss_mb(server: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb / 1024
}

/// Time for `GET /healthz` on a new connection; panics past the bound.
fn health_within_bound(port: u16, when: &str) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(HEALTH_BOUND)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: switchboard\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap_or_else(|e| panic!("/healthz {when}: {e}"));
    let took = started.elapsed();
    assert!(head.ends_with(b"200"), "/healthz {when}: {}", String::from_utf8_lossy(&head));
    assert!(took < HEALTH_BOUND, "/healthz {when} took {took:?}");
    took
}

fn check(server: &Process, port: u16, when: &str) {
    health_within_bound(port, when);
    let rss = rss_mb(server);
    assert!(rss < RSS_BOUND_MB, "RSS {rss} MB {when}");
}

/// Headers of a signed-looking webhook POST (the signature is checked only
/// after the body is read, so these bodies are read) declaring `length`.
fn post_head(port: u16, length: usize) -> String {
    format!(
        "POST /webhooks/acme HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\
         webhook-id: msg_x\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AAAA\r\n\r\n"
    )
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // A server that neither reads nor closes must not stall the test.
    s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    s
}

/// Whether the server ended the connection (closed or reset it, perhaps
/// after writing an error response) instead of waiting on it.
fn cut_off(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) | Err(_) => true,
        Ok(_) => byte[0] == b'H',
    }
}

/// The status of the response on `s`, or `None` if it closed without one.
fn status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

#[test]
fn the_reported_attacks_leave_memory_bounded_and_health_prompt() {
    let (server, port, _dir) = start();
    check(&server, port, "at rest");

    // A lying Content-Length: 999999999 declared, 2 bytes sent. Refused at once.
    let mut liar = connect(port);
    liar.write_all(post_head(port, 999_999_999).as_bytes()).unwrap();
    liar.write_all(b"{}").unwrap();
    assert_eq!(status(&mut liar), Some(413));

    // 300 slow clients, each trickling its headers: all are cut off at the
    // header timeout, and /healthz is answered meanwhile.
    let mut slow: Vec<TcpStream> = (0..300).map(|_| connect(port)).collect();
    for s in &mut slow {
        s.write_all(b"POST /webhooks/acme HTTP/1.1\r\nhost: x\r\n").unwrap();
    }
    check(&server, port, "during 300 slow clients");
    let started = Instant::now();
    for s in &mut slow {
        let _ = s.write_all(b"x-slow: 1\r\n");
        assert!(cut_off(s), "a slow client was cut off");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "slow clients were cut off at the header timeout"
    );
    drop(slow);
    check(&server, port, "after the slow clients");

    // 600 idle connections: each closed at the idle timeout; health meanwhile.
    let mut idle: Vec<TcpStream> = (0..600).map(|_| connect(port)).collect();
    check(&server, port, "during 600 idle connections");
    for s in &mut idle {
        assert!(cut_off(s), "an idle connection was closed");
    }
    drop(idle);
    check(&server, port, "after the idle connections");

    // 400 concurrent bodies of 256 KiB, each all but its last byte: each
    // reserves its declared length of the 8 MiB in-flight budget, so at most
    // 32 are read at once (and end at the body timeout); the rest are
    // refused 503 unread. Memory stays bounded throughout.
    let body = vec![b' '; (256 << 10) - 1];
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..400 {
        let mut s = connect(port);
        s.write_all(post_head(port, 256 << 10).as_bytes()).unwrap();
        // A refused request's socket may already be closed: ignore that.
        let _ = s.write_all(&body);
        flood.push(s);
    }
    check(&server, port, "during 400 large bodies");
    // A refused request's socket may be reset before its 503 is read, so
    // count what can be: the budget refused some, and no more were read
    // than it holds.
    let answers: Vec<Option<u16>> = flood.iter_mut().map(status).collect();
    let busy = answers.iter().filter(|a| **a == Some(503)).count();
    let timed_out = answers.iter().filter(|a| **a == Some(408)).count();
    assert!(busy > 0, "the in-flight budget refused bodies: {answers:?}");
    assert!(timed_out <= 32, "at most 8 MiB / 256 KiB bodies read at once: {timed_out}");
    assert!(answers.iter().all(|a| matches!(a, None | Some(503) | Some(408))), "{answers:?}");
    drop(flood);
    check(&server, port, "after the large bodies");
}
