//! Shared benchmark plumbing: built guests, starting the real release binary
//! with a generated config, percentiles, and a description of the machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use switchboard::tools::guest_build::GuestWorkspace;

pub use crate::process::free_port;
use crate::process::{Process, serve_command};

/// The release binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// The admin token of every benchmark server.
pub const TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Built guests by name.
pub type Guests = HashMap<String, PathBuf>;

pub fn build_guests() -> Guests {
    let built = GuestWorkspace::from_source_checkout()
        .expect("plugins/")
        .build(true)
        .expect("build guests");
    built.into_iter().map(|p| (p.name, p.wasm)).collect()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A running `switchboard serve` over its own data dir; killed on drop.
pub struct Server {
    pub process: Process,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self) -> String {
        self.process.url()
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn plugin_dir(&self, tenant: &str) -> PathBuf {
        self.dir.path().join("plugins.d").join(tenant)
    }
}

/// A tenant for [`start`]: id, number, and (plugin file stem, guest, manifest).
pub struct Tenant<'a> {
    pub id: String,
    pub number: String,
    pub plugins: Vec<(&'a str, &'a str, &'a str)>,
}

/// Webhook secret of every benchmark tenant (Standard Webhooks).
pub const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtYmVuY2hlcw==";

/// Writes a config and plugin folders, starts the binary, waits for /healthz.
pub fn start(guests: &Guests, tenants: &[Tenant<'_>], justcall: &str) -> Server {
    start_with(guests, tenants, justcall, "")
}

/// [`start`] with extra top-level config lines (`max_wasm_memory_mb = 512\n`).
pub fn start_with(guests: &Guests, tenants: &[Tenant<'_>], justcall: &str, extra: &str) -> Server {
    start_in(tempfile::tempdir().unwrap(), guests, tenants, justcall, extra)
}

/// [`start_with`] in `dir`, whose `data/` may already hold a database.
pub fn start_in(dir: tempfile::TempDir, guests: &Guests, tenants: &[Tenant<'_>], justcall: &str, extra: &str) -> Server {
    let port = free_port();
    let mut cfg =
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nplugins_dir = \"plugins.d\"\nadmin_token = \"{TOKEN}\"\n{extra}");
    for t in tenants {
        cfg.push_str(&format!(
            "[tenants.{}]\nnumbers = [\"{}\"]\nwebhook_auth = \"standard-webhooks\"\nwebhook_secret = \"{SECRET}\"\njustcall_base_url = \"{justcall}\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\njustcall_rate_per_minute = 100000000\n",
            t.id, t.number
        ));
        let d = dir.path().join("plugins.d").join(&t.id);
        std::fs::create_dir_all(&d).unwrap();
        for (name, guest, manifest) in &t.plugins {
            std::fs::copy(&guests[*guest], d.join(format!("{name}.wasm"))).unwrap();
            std::fs::write(d.join(format!("{name}.toml")), manifest).unwrap();
        }
    }
    std::fs::write(dir.path().join("switchboard.toml"), cfg).unwrap();
    let admin_port = free_port();
    let mut process = Process::spawn(
        serve_command(BIN, &dir.path().join("switchboard.toml"), port, Some(admin_port)),
        port,
    );
    process.wait_healthy(Duration::from_secs(300));
    Server { process, admin_port, dir }
}

/// The server's resident memory, MiB.
pub fn rss_mb(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.process.child.id())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// A seed-format `sms.received` body.
pub fn event(number: &str, id: &str, body: &str) -> String {
    serde_json::json!({
        "event": "sms.received", "timestamp": "2026-03-12T14:30:00Z",
        "data": { "message_id": id, "direction": "inbound", "from": "+15125551234", "to": number,
                  "body": body, "media_urls": [], "justcall_number": number, "contact_name": null, "agent_id": null }
    })
    .to_string()
}

/// Signed Standard Webhooks headers for a body.
pub fn signed(body: &str) -> [(&'static str, String); 3] {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = switchboard::intake::auth::standard_webhooks_signature(SECRET, &id, &ts, body.as_bytes());
    [("webhook-id", id), ("webhook-timestamp", ts), ("webhook-signature", sig)]
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Cores, CPU model and git commit.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "commit": commit,
    })
}
