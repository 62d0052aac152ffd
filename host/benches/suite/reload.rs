//! Hot reload against the real binary: file write → new version serving,
//! compiled and from the cache (small Rust and 12 MB JS components), and
//! resident memory with 1,000 tenants × 4 plugins loaded from identical files.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard::engine::runtime::Runtime;

use crate::common::{Guests, Server, TOKEN, Tenant, start};

fn serving_hash(client: &reqwest::blocking::Client, server: &Server, tenant: &str, name: &str) -> Option<String> {
    let v: Value = client
        .get(format!("{}/admin/tenants/{tenant}/plugins", server.admin_url()))
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

fn time_until_serving(server: &Server, path: &Path, bytes: &[u8]) -> f64 {
    thread_local! {
        static CLIENT: reqwest::blocking::Client = reqwest::blocking::Client::new();
    }
    let want = Runtime::content_hash(bytes);
    let tmp = path.with_file_name(".bench.tmp");
    let t = Instant::now();
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    while CLIENT.with(|c| serving_hash(c, server, "t0", "p")).as_deref() != Some(want.as_str()) {
        assert!(t.elapsed() < Duration::from_secs(120), "new version never served");
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

pub fn run(guests: &Guests) -> Map<String, Value> {
    let mut m = Map::new();
    let server = start(
        guests,
        &[Tenant {
            id: "t0".into(),
            number: "+15125550100".into(),
            plugins: vec![("p", "answer-a", "")],
        }],
        "http://127.0.0.1:9",
    );
    let target = server.plugin_dir("t0").join("p.wasm");
    let rust = std::fs::read(&guests["answer-a"]).unwrap();
    let compiled: Vec<f64> = (1..=10).map(|n| time_until_serving(&server, &target, &variant(&rust, n))).collect();
    // Versions 1..=10 are in the disk cache now and no longer in memory.
    let cached: Vec<f64> = (1..=10)
        .rev()
        .map(|n| time_until_serving(&server, &target, &variant(&rust, n)))
        .collect();
    let js = std::fs::read(&guests["appointment-confirm-js"]).unwrap();
    let js_compiled: Vec<f64> = (1..=2).map(|n| time_until_serving(&server, &target, &variant(&js, n))).collect();
    let js_cached: Vec<f64> = (1..=2)
        .rev()
        .map(|n| time_until_serving(&server, &target, &variant(&js, n)))
        .collect();
    drop(server);
    let (r, rc, j, jc) = (median(compiled), median(cached), median(js_compiled), median(js_cached));
    println!(
        "reload: Rust {r:.1} ms compiled, {rc:.1} ms cached; {:.1} MB JS {j:.0} ms compiled, {jc:.1} ms cached",
        js.len() as f64 / 1e6
    );
    m.insert("reload_ms".into(), json!(r));
    m.insert("reload_cached_ms".into(), json!(rc));
    m.insert("reload_js_ms".into(), json!(j));
    m.insert("reload_js_cached_ms".into(), json!(jc));

    let four = [
        ("appointment-confirm", "appointment-confirm", ""),
        ("crm-logger", "crm-logger", ""),
        ("answer-a", "answer-a", ""),
        ("noop", "noop", ""),
    ];
    let tenants: Vec<Tenant<'_>> = (0..1000)
        .map(|i| Tenant {
            id: format!("t{i}"),
            number: format!("+1512555{i:04}"),
            plugins: four.to_vec(),
        })
        .collect();
    let t = Instant::now();
    let server = start(guests, &tenants, "http://127.0.0.1:9");
    let startup = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mb(server.process.child.id());
    println!(
        "resident memory, 1000 tenants × 4 plugins: {rss:.0} MB (started in {:.1} s)",
        startup.as_secs_f64()
    );
    m.insert("rss_mb_1000x4".into(), json!(rss));
    m
}
