//! switchboard-bench: the benchmark suite. One command runs everything,
//! prints a table and writes the same figures to `target/bench/report.json`:
//!
//! ```sh
//! cargo bench --bench suite              # all
//! cargo bench --bench suite -- reload    # one part: dispatch | ingest | full-path | reload | neighbour | fairness | storage | search | author | deploy | timers
//! ```
//!
//! The server under test is the real release binary on loopback over a real
//! data dir; load comes from this binary re-run as a separate client process.

mod author;
mod common;
mod deploy;
mod dispatch;
mod fairness;
mod ingest;
mod neighbour;
#[path = "../../../tests/support/process.rs"]
mod process;
mod reload;
mod search;
#[path = "../../../tests/support/sign_in.rs"]
mod sign_in;
mod storage;
mod timers;

use serde_json::{Map, Value, json};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some(ingest::CLIENT_ARG) {
        ingest::client_main(&args[1..]).await;
        return;
    }
    let only = args.first().cloned();
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part || o == "all");
    let guests = common::build_guests();
    let mut report = Map::new();
    if wants("dispatch") {
        report.extend(dispatch::run(&guests).await);
    }
    if wants("ingest") {
        report.extend(ingest::run_ingest(&guests).await);
    }
    if wants("full-path") {
        report.extend(ingest::run_full_path(&guests).await);
    }
    if wants("reload") {
        // Blocking HTTP polling: keep it off the async workers.
        let g = guests.clone();
        report.extend(
            tokio::task::spawn_blocking(move || reload::run(&g))
                .await
                .expect("reload benchmark"),
        );
    }
    if wants("neighbour") {
        report.extend(neighbour::run(&guests).await);
    }
    if wants("fairness") {
        report.extend(fairness::run(&guests).await);
    }
    if wants("author") {
        let g = guests.clone();
        report.extend(
            tokio::task::spawn_blocking(move || author::run(&g))
                .await
                .expect("author benchmark"),
        );
    }
    if wants("storage") {
        report.extend(storage::run().await);
    }
    if wants("search") {
        report.extend(search::run(&guests).await);
    }
    if wants("deploy") {
        report.extend(deploy::run(&guests).await);
    }
    if wants("timers") {
        report.extend(timers::run(&guests).await);
    }
    report.insert("machine".into(), common::machine());
    print_table(&report);
    let dir = common::target_dir().join("bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(report)).unwrap()).expect("write report");
    println!("\nwrote {}", path.display());
}

fn print_table(report: &Map<String, Value>) {
    let targets = json!({
        "dispatch_us_p50": "<= 20", "dispatch_ratio": "<= 1.2", "ingest_eps": ">= 5000", "ack_ms_p99": "<= 5",
        "full_path_eps": ">= 2000", "reload_ms": "<= 250", "reload_cached_ms": "<= 20", "rss_mb_1000x4": "<= 300",
        "neighbour_p99_ratio": "<= 1.1", "plugin_test_warm_ms_js": "< 1000", "plugin_test_warm_ms_python": "< 1000",
        "fair_victim_p99_ms": "<= fair_alone_p99_ms + 100", "burst_rss_mb": "<= 512 + idle + overhead",
        "shadow_overhead_pct": "<= 5", "timer_fire_lag_ms_p99": "<= 1000",
    });
    println!("\n{:<28} {:>14}  target", "figure", "value");
    for (k, v) in report {
        if k == "machine" {
            continue;
        }
        let shown = match v {
            Value::Number(n) => format!("{:.2}", n.as_f64().unwrap_or(f64::NAN)),
            other => other.to_string(),
        };
        println!("{:<28} {:>14}  {}", k, shown, targets[k].as_str().unwrap_or(""));
    }
    println!("machine: {}", report["machine"]);
}
