//! The author loop against the real release binary: `plugin test` of each
//! language's example (first run compiles, later runs read the compiled-code
//! cache) and `switchboard dev` start-up until its banner, with an empty
//! compiled-code cache (cold) and a filled one (warm).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::common::{BIN, Guests};
use crate::process::free_port_and_next;

/// Each language's example, by the name its figures carry.
const EXAMPLES: [(&str, &str); 4] = [
    ("rust", "appointment-confirm"),
    ("js", "appointment-confirm-js"),
    ("python", "lead-router"),
    ("c", "analytics-pipeline"),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One `plugin test` run, in milliseconds.
fn plugin_test(wasm: &Path, manifest: &Path, cache: &Path) -> f64 {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(wasm)
        .arg("--manifest")
        .arg(manifest)
        .env("SWITCHBOARD_CACHE", cache)
        .output()
        .expect("run switchboard plugin test");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "plugin test {}: {}{}",
        wasm.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

/// `switchboard dev` from spawn to its "Try it:" banner (printed once the
/// port answers), in milliseconds.
fn dev_start(cache: &Path) -> f64 {
    let data = tempfile::tempdir().unwrap();
    let port = free_port_and_next();
    let t = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--no-status-webhooks",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("SWITCHBOARD_CACHE", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run switchboard dev");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ms = None;
    for line in stdout.lines().map_while(Result::ok) {
        if line.starts_with("Try it:") {
            ms = Some(t.elapsed().as_secs_f64() * 1e3);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "dev never printed its banner");
    }
    let _ = child.kill();
    let _ = child.wait();
    ms.expect("dev exited before its banner")
}

pub fn run(guests: &Guests) -> Map<String, Value> {
    let mut m = Map::new();
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let cache = tempfile::tempdir().unwrap();
    for (lang, name) in EXAMPLES {
        let (wasm, manifest) = (&guests[name], plugins.join(name).join("plugin.toml"));
        m.insert(
            format!("plugin_test_cold_ms_{lang}"),
            json!(plugin_test(wasm, &manifest, cache.path())),
        );
        let warm = (0..5).map(|_| plugin_test(wasm, &manifest, cache.path())).collect();
        m.insert(format!("plugin_test_warm_ms_{lang}"), json!(median(warm)));
    }
    let cache = tempfile::tempdir().unwrap();
    m.insert("dev_start_cold_ms".into(), json!(dev_start(cache.path())));
    let warm = (0..3).map(|_| dev_start(cache.path())).collect();
    m.insert("dev_start_warm_ms".into(), json!(median(warm)));
    m
}
