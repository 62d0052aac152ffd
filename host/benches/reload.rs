//! Hot-reload figures against the real release binary (`switchboard serve`):
//! file write → new version serving, compiled and from the cache, and resident
//! memory with 1,000 tenants × 4 plugins loaded from identical files.
//!
//! Run with `cargo bench --bench reload`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::guest_build::GuestWorkspace;
use switchboard::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "bench-admin";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(port: u16, tenants: usize) -> String {
    let mut s = format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nplugins_dir = \"plugins.d\"\nadmin_token = \"{TOKEN}\"\n");
    for i in 0..tenants {
        s.push_str(&format!(
            "[tenants.t{i}]\nnumbers = [\"+1512555{:04}\"]\nwebhook_auth = \"justcall-v1\"\nwebhook_secret = \"s{i}\"\njustcall_base_url = \"http://127.0.0.1:9\"\njustcall_api_key = \"k\"\njustcall_api_secret = \"s\"\n",
            i % 10_000
        ));
    }
    s
}

fn start(dir: &Path, port: u16) -> Server {
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("switchboard.toml"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start switchboard");
    let server = Server(child);
    let started = Instant::now();
    while reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).is_err() {
        assert!(started.elapsed() < Duration::from_secs(300), "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn serving_hash(port: u16, tenant: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/admin/tenants/{tenant}/plugins"))
        .bearer_auth(TOKEN)
        .send()
        .ok()?
        .json()
        .ok()?;
    v["plugins"].as_array()?.iter().find(|p| p["name"] == name)?["hash"]
        .as_str()
        .map(str::to_string)
}

/// A distinct but equivalent component: the original plus a custom section.
fn variant(bytes: &[u8], n: u32) -> Vec<u8> {
    let name = b"switchboard-bench";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn write_then_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".bench.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn time_until_serving(port: u16, path: &Path, bytes: &[u8]) -> f64 {
    let want = Runtime::content_hash(bytes);
    let t = Instant::now();
    write_then_rename(path, bytes);
    while serving_hash(port, "t0", "p").as_deref() != Some(want.as_str()) {
        assert!(t.elapsed() < Duration::from_secs(60), "new version never served");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let built = GuestWorkspace::from_source_checkout()
        .expect("plugins/")
        .build(true)
        .expect("build guests");
    let wasm = |n: &str| -> PathBuf { built.iter().find(|p| p.name == n).unwrap().wasm.clone() };

    // Reload latency, one tenant.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("switchboard.toml"), config(port, 1)).unwrap();
    let plugin_dir = dir.path().join("plugins.d/t0");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let base = std::fs::read(wasm("answer-a")).unwrap();
    std::fs::write(plugin_dir.join("p.wasm"), variant(&base, 0)).unwrap();
    let server = start(dir.path(), port);
    let target = plugin_dir.join("p.wasm");
    let compiled: Vec<f64> = (1..=10).map(|n| time_until_serving(port, &target, &variant(&base, n))).collect();
    // Versions 1..=10 are in the disk cache now and no longer in memory.
    let cached: Vec<f64> = (1..=10)
        .rev()
        .map(|n| time_until_serving(port, &target, &variant(&base, n)))
        .collect();
    // A 12 MB JavaScript component (StarlingMonkey), same path.
    let js = std::fs::read(wasm("confirm-js")).unwrap();
    let js_compiled: Vec<f64> = (1..=3).map(|n| time_until_serving(port, &target, &variant(&js, n))).collect();
    let js_cached: Vec<f64> = (1..=3).rev().map(|n| time_until_serving(port, &target, &variant(&js, n))).collect();
    drop(server);
    println!(
        "reload (write → serving), {:.1} MB JS plugin: compiled median {:.0} ms; from cache median {:.1} ms",
        js.len() as f64 / 1e6,
        median(js_compiled),
        median(js_cached)
    );
    println!(
        "reload (write → serving), small Rust plugin: compiled median {:.1} ms (max {:.1}); from cache median {:.1} ms (max {:.1})",
        median(compiled.clone()),
        compiled.iter().cloned().fold(0.0, f64::max),
        median(cached.clone()),
        cached.iter().cloned().fold(0.0, f64::max),
    );

    // Resident memory: 1,000 tenants × 4 plugins from identical files.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("switchboard.toml"), config(port, 1000)).unwrap();
    let four = ["appointment-confirm", "crm-logger", "answer-a", "noop"];
    for i in 0..1000 {
        let d = dir.path().join(format!("plugins.d/t{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for name in four {
            std::fs::copy(wasm(name), d.join(format!("{name}.wasm"))).unwrap();
        }
    }
    let t = Instant::now();
    let server = start(dir.path(), port);
    let startup = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "resident memory, 1000 tenants × 4 plugins (identical files): {:.0} MB (started in {:.1} s)",
        rss_mb(server.0.id()),
        startup.as_secs_f64()
    );
}
