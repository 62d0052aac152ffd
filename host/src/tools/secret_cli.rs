//! `switchboard secret set|list|delete --tenant T --plugin P KEY`: a plugin's
//! secrets through the admin API (`deploy` scope). `set` reads the value
//! from stdin, so it never sits in shell history or a process listing.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

/// `switchboard secret`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    /// The admin API's base URL.
    #[arg(
        long = "server",
        env = "SWITCHBOARD_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    server: String,
    /// A token with the `deploy` scope (or the operator's admin token).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: SecretCommand,
}

/// What to do with a secret.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set KEY to the value read from stdin (one trailing newline dropped).
    Set {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
        /// The secret's name, as the plugin's `config.get` asks for it.
        key: String,
    },
    /// The plugin's secret names (never values), and those its serving
    /// version requires but lacks.
    List {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
    },
    /// Delete KEY (refused while the serving version requires it).
    Delete {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
        /// The secret's name.
        key: String,
    },
}

/// Runs `switchboard secret`.
pub async fn run(args: SecretArgs) -> anyhow::Result<ExitCode> {
    let token = args.token.context("no token: pass --token or set SWITCHBOARD_ADMIN_TOKEN")?;
    let seg = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let base = args.server.trim_end_matches('/');
    let at = |tenant: &str, plugin: &str| format!("{base}/admin/tenants/{}/plugins/{}/secrets", seg(tenant), seg(plugin));
    let client = reqwest::Client::new();
    let request = match &args.command {
        SecretCommand::Set { tenant, plugin, key } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value)
                .to_string();
            client.put(format!("{}/{}", at(tenant, plugin), seg(key))).body(value)
        }
        SecretCommand::List { tenant, plugin } => client.get(at(tenant, plugin)),
        SecretCommand::Delete { tenant, plugin, key } => client.delete(format!("{}/{}", at(tenant, plugin), seg(key))),
    };
    let resp = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let why = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        eprintln!("error: {status}: {why}");
        return Ok(ExitCode::FAILURE);
    }
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    };
    match &args.command {
        SecretCommand::Set { key, .. } => println!("set {key}"),
        SecretCommand::Delete { key, .. } => println!("deleted {key}"),
        SecretCommand::List { .. } => {
            for k in list(&body["keys"]) {
                println!("{k}");
            }
            for k in list(&body["missing"]) {
                println!("{k} (required by the serving version, not set)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
