//! `switchboard deploy DIR|FILE --tenant T`: builds a plugin folder (or takes
//! a built `.wasm` and the manifest beside it), checks it as the server
//! would, uploads it through the admin API, and prints the new version and
//! what changed from the one it replaced.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// `switchboard deploy`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// A plugin folder (its plugin.toml's [build] command builds it), or a
    /// built `.wasm` (its manifest is the `.toml` beside it, if any).
    path: PathBuf,
    /// The tenant to deploy to.
    #[arg(long)]
    tenant: String,
    /// The plugin's name (default: the folder's, or the file's stem).
    #[arg(long)]
    name: Option<String>,
    /// The admin API's base URL.
    #[arg(long = "server", env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    server: String,
    /// A token with the `deploy` scope (or the operator's admin token).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Serve only this share of contacts (1–99 %, sticky by contact number)
    /// beside the serving version; rolled back automatically past the margins.
    #[arg(long, value_name = "PERCENT", conflicts_with = "shadow")]
    canary: Option<u8>,
    /// With --canary: roll back when its failure rate is this many points
    /// above the serving version's.
    #[arg(long, default_value_t = 5.0, requires = "canary")]
    failure_margin: f64,
    /// With --canary: roll back when its p99 is this much (%) above.
    #[arg(long, default_value_t = 50.0, requires = "canary")]
    latency_margin: f64,
    /// With --canary: judge it after this many of its runs in the window.
    #[arg(long, default_value_t = 20, requires = "canary")]
    min_runs: usize,
    /// With --canary: the window both versions are compared over.
    #[arg(long, default_value = "10m", requires = "canary")]
    window: String,
    /// Run on every event beside the serving version with its SMS, HTTP
    /// writes and KV writes noted, not made; compare with `admin shadow`.
    #[arg(long)]
    shadow: bool,
}

/// What is uploaded: the component, its manifest, and the plugin's name.
#[derive(Debug)]
struct Artifact {
    wasm: PathBuf,
    manifest: Option<PathBuf>,
    name: String,
}

fn artifact(path: &Path, name: Option<String>) -> anyhow::Result<Artifact> {
    if path.is_dir() {
        let tools = crate::tools::guest_build::GuestWorkspace::from_source_checkout();
        let wasm = crate::tools::guest_build::build_one(path, tools.as_ref(), false)?;
        let stem = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Artifact {
            wasm,
            manifest: Some(path.join("plugin.toml")),
            name: name.unwrap_or(stem),
        });
    }
    if path.extension().is_none_or(|e| e != "wasm") {
        bail!("{}: give a plugin folder or a .wasm file", path.display());
    }
    let beside = path.with_extension("toml");
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Artifact {
        wasm: path.to_path_buf(),
        manifest: beside.is_file().then_some(beside),
        name: name.unwrap_or(stem),
    })
}

/// Runs `switchboard deploy`.
pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let (path, name) = (args.path.clone(), args.name.clone());
    let art = tokio::task::spawn_blocking(move || artifact(&path, name)).await??;
    // Checked here first, as the server will: a refusal is named before
    // anything is sent.
    let wasm = art.wasm.clone();
    let report = tokio::task::spawn_blocking(move || crate::tools::author::check(&wasm)).await??;
    if let Some(reason) = report.refusal {
        eprintln!("error: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    let code = std::fs::read(&art.wasm).with_context(|| format!("reading {}", art.wasm.display()))?;
    let mut form = reqwest::multipart::Form::new().part(
        "wasm",
        reqwest::multipart::Part::bytes(code).file_name(format!("{}.wasm", art.name)),
    );
    if let Some(m) = &art.manifest {
        let text = std::fs::read_to_string(m).with_context(|| format!("reading {}", m.display()))?;
        form = form.text("manifest", text);
    }
    let seg = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let base = args.server.trim_end_matches('/');
    let url = format!("{base}/admin/tenants/{}/plugins/{}/versions", seg(&args.tenant), seg(&art.name));
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(percent) = args.canary {
        query.extend([
            ("canary", percent.to_string()),
            ("failure_margin", args.failure_margin.to_string()),
            ("latency_margin", args.latency_margin.to_string()),
            ("min_runs", args.min_runs.to_string()),
            ("window", args.window.clone()),
        ]);
    }
    if args.shadow {
        query.push(("shadow", "true".into()));
    }
    let resp = reqwest::Client::new()
        .post(&url)
        .query(&query)
        .bearer_auth(&args.token)
        .multipart(form)
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let why = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        eprintln!("error: {status}: {why}");
        return Ok(ExitCode::FAILURE);
    }
    if body["mode"].is_string() {
        print!("{}", describe_trial(&body));
        print!("{}", describe_changes(&body["changes"], &body["limits_clamped"]));
    } else {
        print!("{}", describe(&body));
    }
    Ok(ExitCode::SUCCESS)
}

/// A trial's report for a person: what is on trial against what, then a
/// canary's arms or a shadow's agreement and differing events side by side.
pub fn describe_trial(t: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let mode = s(&t["mode"]);
    let mut out = format!("{mode} version {} beside serving version {}", s(&t["version"]), s(&t["against"]));
    match t["ended"].as_str() {
        Some(how) => out.push_str(&format!(" — ended: {how}\n")),
        None => out.push_str(&format!(" (since {})\n", s(&t["started_at"]))),
    }
    if mode == "canary" {
        let p = &t["policy"];
        out.push_str(&format!(
            "  {}% of contacts; rolled back at +{} failure points or +{}% p99 after {} runs\n",
            p["percent"], p["failure_margin_pct"], p["latency_margin_pct"], p["min_runs"]
        ));
        for arm in ["serving", "canary"] {
            let a = &t[arm];
            let pct = a["failure_pct"].as_f64().unwrap_or_default();
            let p99 = a["p99_ms"].as_f64().unwrap_or_default();
            out.push_str(&format!("  {arm:<8} {:>6} runs  {pct:5.1}% failed  p99 {p99:.1} ms\n", a["runs"]));
        }
        return out;
    }
    let pct = t["agreement_pct"].as_f64().map_or("-".into(), |p| format!("{p:.1}%"));
    out.push_str(&format!(
        "  agreement {pct} over {} events ({} differ, {} skipped)\n",
        t["compared"],
        t["compared"]
            .as_u64()
            .unwrap_or_default()
            .saturating_sub(t["agreed"].as_u64().unwrap_or_default()),
        t["skipped"]
    ));
    let side = |f: &serde_json::Value| -> Vec<String> {
        let mut lines: Vec<String> = f["acts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| match a["call"].as_str() {
                Some("sms") => format!("sms to {}: {:?}", s(&a["to"]), s(&a["body"])),
                _ => format!(
                    "{} {} (body {}…)",
                    s(&a["method"]),
                    s(&a["url"]),
                    &s(&a["body_sha256"])[..8.min(s(&a["body_sha256"]).len())]
                ),
            })
            .map(|l| crate::domain::escape_controls(&l).into_owned())
            .collect();
        lines.push(format!("→ {}", crate::domain::escape_controls(&s(&f["outcome"]))));
        lines
    };
    for d in t["differences"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  event {}\n", s(&d["event_id"])));
        let (left, right) = (side(&d["serving"]), side(&d["shadow"]));
        out.push_str(&format!("    {:<48} │ {}\n", "serving", "shadow"));
        for i in 0..left.len().max(right.len()) {
            let l = left.get(i).map(String::as_str).unwrap_or("");
            let r = right.get(i).map(String::as_str).unwrap_or("");
            out.push_str(&format!("    {l:<48} │ {r}\n"));
        }
    }
    out
}

/// The deploy answer for a person: the version, then each kind of change.
pub fn describe(v: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let mut out = format!("deployed {}/{} version {}", s(&v["tenant"]), s(&v["plugin"]), s(&v["version"]));
    match v["previous"].as_str() {
        Some(p) => out.push_str(&format!(" (was {p})\n")),
        None => out.push_str(" (first version)\n"),
    }
    out.push_str(&describe_changes(&v["changes"], &v["limits_clamped"]));
    out
}

/// A rollback's or a promotion's answer for a person (`verb`: what
/// happened): the version that serves now, the one before, what changed.
pub fn describe_switch(verb: &str, v: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let mut out = format!(
        "{verb} {}/{}: version {} serves",
        s(&v["tenant"]),
        s(&v["plugin"]),
        s(&v["version"])
    );
    if let Some(p) = v["previous"].as_str() {
        out.push_str(&format!(" (was {p})"));
    }
    out.push('\n');
    out.push_str(&describe_changes(&v["changes"], &v["limits_clamped"]));
    out
}

/// What changed, a line each.
fn describe_changes(c: &serde_json::Value, clamped: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    if c["code"] == false {
        out.push_str("  code       unchanged\n");
    }
    let list = |x: &serde_json::Value| -> Vec<String> { x.as_array().into_iter().flatten().map(s).collect() };
    for (label, key) in [
        ("imports", "imports"),
        ("events", "events"),
        ("hosts", "allowed_hosts"),
        ("config", "config_keys"),
    ] {
        for a in list(&c[key]["added"]) {
            out.push_str(&format!("  {label:<10} + {a}\n"));
        }
        for r in list(&c[key]["removed"]) {
            out.push_str(&format!("  {label:<10} - {r}\n"));
        }
    }
    for k in list(&c["config_keys"]["changed"]) {
        out.push_str(&format!("  config     ~ {k} (value changed)\n"));
    }
    for l in c["limits"].as_array().into_iter().flatten() {
        let show = |x: &serde_json::Value| match x.as_u64() {
            Some(n) => n.to_string(),
            None => format!("default ({})", l["default"]),
        };
        out.push_str(&format!(
            "  limits     {}: {} → {}\n",
            s(&l["limit"]),
            show(&l["from"]),
            show(&l["to"])
        ));
    }
    for cut in list(clamped) {
        out.push_str(&format!("warning  limits: {cut}\n"));
    }
    out
}
