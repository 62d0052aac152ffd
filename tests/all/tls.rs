//! HTTPS without a proxy: `serve` with `tls_cert`/`tls_key` answers webhooks
//! over TLS to a client that trusts a certificate made in the test, reloads
//! a renewed certificate without a restart, keeps serving through a bad
//! renewal, and refuses to start on a key that does not match.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::write_then_rename;
use crate::process::{Process, free_port, serve_command, wait_until_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// The name the certificates are made for; the client resolves it to loopback.
const HOST: &str = "hooks.switchboard.test";

/// A fresh self-signed certificate for [`HOST`]: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A client that trusts only `cert_pem`, reaching [`HOST`] on `port`.
fn client(cert_pem: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve(HOST, SocketAddr::from(([127, 0, 0, 1], port)))
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
}

fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("switchboard.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
# An ephemeral admin port: listen + 1 may belong to another test's server.
admin_listen = "127.0.0.1:0"
public_url = "https://{HOST}:{port}"
tls_cert = "cert.pem"
tls_key = "key.pem"

[tenants.acme]
numbers = ["+15125550100"]
webhook_auth = "standard-webhooks"
webhook_secret = "whsec_c2VjcmV0LWZvci10bHMtdGVzdHM="
justcall_base_url = "http://127.0.0.1:9"
justcall_api_key = "k"
justcall_api_secret = "s"
"#
        ),
    )
    .unwrap();
    path
}

async fn health(client: &reqwest::Client, port: u16) -> Result<u16, String> {
    client
        .get(format!("https://{HOST}:{port}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn serves_https_and_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = certificate();
    std::fs::write(dir.path().join("cert.pem"), &cert_a).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_a).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut server = Process::spawn(serve_command(BIN, &config(dir.path(), port), port, Some(admin)), port);
    tokio::task::spawn_blocking(move || wait_until_healthy(admin, Duration::from_secs(60)))
        .await
        .unwrap();

    let trusts_a = client(&cert_a, port);
    assert_eq!(health(&trusts_a, port).await, Ok(200));
    // A webhook over HTTPS: the setup ping is acknowledged.
    let resp = trusts_a
        .post(format!("https://{HOST}:{port}/webhooks/acme"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, answer) = (resp.status(), resp.text().await.unwrap());
    assert_eq!((status.as_u16(), answer.as_str()), (200, r#"{"status":"ping"}"#));
    // So is a bare POST with no body (and no Content-Length) at all.
    let resp = trusts_a.post(format!("https://{HOST}:{port}/webhooks/acme")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A renewal lands (certbot writes both files): new connections get it.
    let (cert_b, key_b) = certificate();
    write_then_rename(&dir.path().join("key.pem"), key_b.as_bytes());
    write_then_rename(&dir.path().join("cert.pem"), cert_b.as_bytes());
    let trusts_b = client(&cert_b, port);
    let mut served_b = false;
    for _ in 0..100 {
        if health(&trusts_b, port).await == Ok(200) {
            served_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_b, "the renewed certificate was never served");
    assert!(
        health(&client(&cert_a, port), port).await.is_err(),
        "the old certificate is no longer served"
    );

    // A bad renewal (a key that is not the certificate's) changes nothing.
    let (_, stray_key) = certificate();
    write_then_rename(&dir.path().join("key.pem"), stray_key.as_bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health(&client(&cert_b, port), port).await, Ok(200));
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
    let port = free_port();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config(dir.path(), port))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_key") && err.contains("does not match tls_cert"), "{err}");

    // An empty certificate file is named too.
    std::fs::write(dir.path().join("cert.pem"), "").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config(dir.path(), port))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_cert") && err.contains("no CERTIFICATE block"), "{err}");
}
