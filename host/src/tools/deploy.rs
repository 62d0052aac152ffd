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
    let resp = reqwest::Client::new()
        .post(&url)
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
    print!("{}", describe(&body));
    Ok(ExitCode::SUCCESS)
}

/// The deploy answer for a person: the version, then each kind of change.
pub fn describe(v: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let mut out = format!("deployed {}/{} version {}", s(&v["tenant"]), s(&v["plugin"]), s(&v["version"]));
    match v["previous"].as_str() {
        Some(p) => out.push_str(&format!(" (was {p})\n")),
        None => out.push_str(" (first version)\n"),
    }
    let c = &v["changes"];
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
    for cut in list(&v["limits_clamped"]) {
        out.push_str(&format!("warning  limits: {cut}\n"));
    }
    out
}
