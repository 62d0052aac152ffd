//! `switchboard admin`: the admin API's commands (each a mirror of one
//! endpoint, printing its JSON), and `admin tail`, which follows the live
//! tail's Server-Sent Events and prints each attempt as it ends.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin API's base URL (the config's `admin_listen`).
    #[arg(long, env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// The bearer token: the config's `admin_token`, or a tenant's API
    /// token (default: `switchboard dev`'s, so trying it needs none).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true, default_value = crate::tools::dev::DEV_ADMIN_TOKEN)]
    token: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// A tenant's plugins: serving version, status (active, paused,
    /// rejected), failure counts and last error.
    Plugins {
        /// Tenant id.
        tenant: String,
    },
    /// Reactivate a paused plugin; its held deliveries run in arrival order.
    Resume {
        /// Tenant id.
        tenant: String,
        /// Plugin name.
        plugin: String,
    },
    /// Search a tenant's deliveries, newest first (every filter given must
    /// match); the answer's `next` goes to `--before` for the next page.
    Deliveries {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        filter: DeliveryFilter,
    },
    /// One delivery: its event and every attempt, with the plugin's log
    /// lines and host calls.
    Delivery {
        /// Tenant id.
        tenant: String,
        /// Delivery id (from `deliveries`).
        id: i64,
    },
    /// Follow a tenant's delivery attempts as they end, with their log lines
    /// and host calls (until interrupted, or the server stops).
    Tail {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// Only `done` or only `failed` attempts.
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Run a stored event again through the tenant's current plugins.
    Replay {
        /// Tenant id.
        tenant: String,
        /// Event id (as returned when the webhook was accepted).
        event: String,
    },
    /// Events checked with JustCall (justcall-v1 tenants): refused ones with
    /// the reason, or those still pending or verified.
    Verifications {
        /// Tenant id.
        tenant: String,
        /// refused, pending or verified.
        #[arg(long, default_value = "refused")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Tenants' API tokens: create (printed once), list, revoke. The
    /// operator's admin token only.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Who did what to a tenant (resumes, replays, token changes), newest first.
    Audit {
        /// Tenant id.
        tenant: String,
        /// Only entries older than this id (the previous page's `next`).
        #[arg(long)]
        before: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A plugin's kept versions (the newest 20), which one serves, and
    /// where each came from.
    Versions {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
    },
    /// Serve a kept version again (at once: its compiled code is cached).
    Rollback {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
        /// The version id (from `versions`); default: the one that served
        /// before the current one.
        #[arg(long)]
        version: Option<String>,
    },
    /// The version on trial (canary or shadow) and how it compares with
    /// the serving version: a canary's failure rate and p99 beside the
    /// serving version's; a shadow's agreement rate and its first differing
    /// events, side by side. Or how the last trial ended.
    #[command(visible_aliases = ["shadow", "canary"])]
    Trial {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
    },
    /// Make the version on trial serve everything.
    Promote {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
    },
    /// End the trial; the serving version keeps serving everything.
    StopTrial {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
    },
    /// A tenant's pending timers and schedules, soonest first.
    Timers {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A plugin's KV entries, in key order.
    Kv {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Plugin name.
        #[arg(long)]
        plugin: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys after this one (the previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `switchboard admin token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A new token for one tenant, with its scopes; its text is printed
    /// once and never again (only its hash is kept).
    Create {
        /// The tenant it opens (and no other).
        #[arg(long)]
        tenant: String,
        /// read (see plugins, deliveries, the tail, KV, the audit log),
        /// operate (resume, replay) or deploy; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// What to call it.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The tenant's tokens (ids, scopes, labels; never secrets).
    List {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a token at once.
    Revoke {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// The token's id (from `list`).
        id: String,
    },
}

/// The deliveries search's filters.
#[derive(Debug, clap::Args)]
pub struct DeliveryFilter {
    /// The contact's (or the tenant's) number, as sender or recipient.
    #[arg(long)]
    number: Option<String>,
    /// Words in the message body (each matches as a word prefix, any case).
    #[arg(long)]
    text: Option<String>,
    /// The event kind: sms.received, sms.sent, sms.delivered, sms.failed,
    /// sms.optout or sms.optin (or received, opt-out, …).
    #[arg(long)]
    kind: Option<String>,
    /// Only this plugin's.
    #[arg(long)]
    plugin: Option<String>,
    /// Only this status: verifying, pending, running, done, failed, held or
    /// refused.
    #[arg(long, visible_alias = "outcome")]
    status: Option<String>,
    /// Created at or after: an RFC 3339 time, or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Created before: an RFC 3339 time, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Only deliveries older than this id (the previous page's `next`).
    #[arg(long)]
    before: Option<i64>,
    /// At most this many (up to 500).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

impl From<&DeliveryFilter> for crate::admin::SearchParams {
    fn from(f: &DeliveryFilter) -> Self {
        crate::admin::SearchParams {
            number: f.number.clone(),
            text: f.text.clone(),
            kind: f.kind.clone(),
            plugin: f.plugin.clone(),
            status: f.status.clone(),
            since: f.since.clone(),
            until: f.until.clone(),
            before: f.before.map(|b| b.to_string()),
            limit: Some(f.limit),
        }
    }
}

impl AdminCommand {
    fn request(&self, client: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        let seg = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        match self {
            AdminCommand::Plugins { tenant } => client.get(format!("{base}/admin/tenants/{}/plugins", seg(tenant))),
            AdminCommand::Resume { tenant, plugin } => {
                client.post(format!("{base}/admin/tenants/{}/plugins/{}/resume", seg(tenant), seg(plugin)))
            }
            AdminCommand::Deliveries { tenant, filter } => client
                .get(format!("{base}/admin/tenants/{}/deliveries", seg(tenant)))
                .query(&crate::admin::SearchParams::from(filter)),
            AdminCommand::Delivery { tenant, id } => client.get(format!("{base}/admin/tenants/{}/deliveries/{id}", seg(tenant))),
            AdminCommand::Tail { tenant, plugin, outcome } => {
                let mut q = Vec::new();
                if let Some(p) = plugin {
                    q.push(("plugin", p.clone()));
                }
                if let Some(o) = outcome {
                    q.push(("outcome", o.clone()));
                }
                client.get(format!("{base}/admin/tenants/{}/tail", seg(tenant))).query(&q)
            }
            AdminCommand::Replay { tenant, event } => {
                client.post(format!("{base}/admin/tenants/{}/events/{}/replay", seg(tenant), seg(event)))
            }
            AdminCommand::Verifications { tenant, state, limit } => client
                .get(format!("{base}/admin/tenants/{}/verifications", seg(tenant)))
                .query(&[("state", state.clone()), ("limit", limit.to_string())]),
            AdminCommand::Token { command } => match command {
                TokenCommand::Create { tenant, scopes, label } => client
                    .post(format!("{base}/admin/tenants/{}/tokens", seg(tenant)))
                    .json(&serde_json::json!({ "scopes": scopes, "label": label })),
                TokenCommand::List { tenant } => client.get(format!("{base}/admin/tenants/{}/tokens", seg(tenant))),
                TokenCommand::Revoke { tenant, id } => client.delete(format!("{base}/admin/tenants/{}/tokens/{}", seg(tenant), seg(id))),
            },
            AdminCommand::Audit { tenant, before, limit } => {
                let mut q = vec![("limit", limit.to_string())];
                if let Some(b) = before {
                    q.push(("before", b.to_string()));
                }
                client.get(format!("{base}/admin/tenants/{}/audit", seg(tenant))).query(&q)
            }
            AdminCommand::Versions { tenant, plugin } => {
                client.get(format!("{base}/admin/tenants/{}/plugins/{}/versions", seg(tenant), seg(plugin)))
            }
            AdminCommand::Rollback { tenant, plugin, version } => client
                .post(format!("{base}/admin/tenants/{}/plugins/{}/rollback", seg(tenant), seg(plugin)))
                .json(&serde_json::json!({ "version": version })),
            AdminCommand::Trial { tenant, plugin, .. } => {
                client.get(format!("{base}/admin/tenants/{}/plugins/{}/trial", seg(tenant), seg(plugin)))
            }
            AdminCommand::Promote { tenant, plugin } => {
                client.post(format!("{base}/admin/tenants/{}/plugins/{}/promote", seg(tenant), seg(plugin)))
            }
            AdminCommand::StopTrial { tenant, plugin } => {
                client.post(format!("{base}/admin/tenants/{}/plugins/{}/trial/stop", seg(tenant), seg(plugin)))
            }
            AdminCommand::Timers { tenant, plugin, limit, .. } => {
                let mut q = vec![("limit", limit.to_string())];
                if let Some(p) = plugin {
                    q.push(("plugin", p.clone()));
                }
                client.get(format!("{base}/admin/tenants/{}/timers", seg(tenant))).query(&q)
            }
            AdminCommand::Kv {
                tenant,
                plugin,
                prefix,
                after,
                limit,
            } => {
                let mut q = vec![("prefix", prefix.clone()), ("limit", limit.to_string())];
                if let Some(a) = after {
                    q.push(("after", a.clone()));
                }
                client
                    .get(format!("{base}/admin/tenants/{}/plugins/{}/kv", seg(tenant), seg(plugin)))
                    .query(&q)
            }
        }
    }
}

/// Runs one admin command against a running server.
pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let base = args.url.trim_end_matches('/');
    let resp = args
        .command
        .request(&reqwest::Client::new(), base)
        .bearer_auth(&args.token)
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    if status.is_success() && matches!(args.command, AdminCommand::Tail { .. }) {
        return follow(resp).await;
    }
    let text = resp.text().await.context("reading the answer")?;
    let shown = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        match (&args.command, serde_json::from_str::<serde_json::Value>(&shown)) {
            (AdminCommand::Trial { json: false, .. }, Ok(v)) => print!("{}", crate::tools::deploy::describe_trial(&v["trial"])),
            (AdminCommand::Rollback { .. }, Ok(v)) => print!("{}", crate::tools::deploy::describe_switch("rolled back", &v)),
            (AdminCommand::Promote { .. }, Ok(v)) => print!("{}", crate::tools::deploy::describe_switch("promoted", &v)),
            (AdminCommand::Timers { json: false, .. }, Ok(v)) => print!("{}", describe_timers(&v)),
            _ => println!("{shown}"),
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {status}: {shown}");
        Ok(ExitCode::FAILURE)
    }
}

/// A table of pending timers: plugin, key, when due and how soon (on the
/// server's clock, which `--time-scale` may run fast).
fn describe_timers(v: &serde_json::Value) -> String {
    let timers = v["timers"].as_array().cloned().unwrap_or_default();
    if timers.is_empty() {
        return format!("no pending timers for {}\n", v["tenant"].as_str().unwrap_or_default());
    }
    let s = |t: &serde_json::Value, k: &str| crate::domain::escape_controls(t[k].as_str().unwrap_or_default()).into_owned();
    let mut out = format!("{:<24} {:<32} {:<26} {}\n", "PLUGIN", "KEY", "DUE (UTC)", "IN");
    for t in &timers {
        let ms = t["due_in_ms"].as_i64().unwrap_or_default();
        let due_in = if ms <= 0 {
            "due now".to_string()
        } else {
            humantime::format_duration(std::time::Duration::from_secs((ms as u64).div_ceil(1000))).to_string()
        };
        let key = match t["schedule"].as_str() {
            Some(spec) => format!("{} (schedule {spec})", s(t, "key")),
            None => s(t, "key"),
        };
        out.push_str(&format!("{:<24} {:<32} {:<26} {due_in}\n", s(t, "plugin"), key, s(t, "due_at")));
    }
    out
}

/// Prints the tail's events as they arrive: a line per attempt, then its
/// log lines and host calls, indented. A `dropped` notice goes to stderr and
/// ends with failure; the server ending the stream ends with success.
async fn follow(mut resp: reqwest::Response) -> anyhow::Result<ExitCode> {
    let mut pending = String::new();
    while let Some(chunk) = resp.chunk().await.context("reading the tail")? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let (mut kind, mut data) = ("message", Vec::new());
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = if k.trim() == "dropped" { "dropped" } else { "delivery" };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            let data = data.join("\n");
            match kind {
                "dropped" => {
                    eprintln!("error: {data}");
                    return Ok(ExitCode::FAILURE);
                }
                "delivery" => print_attempt(&data),
                _ => {}
            }
        }
    }
    eprintln!("the server ended the tail");
    Ok(ExitCode::SUCCESS)
}

fn print_attempt(data: &str) {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(data) else {
        println!("{data}");
        return;
    };
    // Plugin text reaches a terminal here: control characters are escaped.
    let s = |k: &str| crate::domain::escape_controls(e[k].as_str().unwrap_or_default()).into_owned();
    let time = s("at").get(11..19).unwrap_or_default().to_string();
    let event = s("event_id");
    let short = &event[event.len().saturating_sub(8)..];
    let outcome = if e["outcome"] == "done" { "done" } else { "FAIL" };
    let ms = e["ms"].as_f64().unwrap_or_default();
    let mut line = format!(
        "{time} {}/{} {outcome:<4} delivery {} event …{short} in {ms:.1} ms",
        s("tenant"),
        s("plugin"),
        e["delivery_id"]
    );
    if let Some(err) = e["error"].as_str() {
        line.push_str(&format!(": {}", crate::domain::escape_controls(err)));
    }
    println!("{line}");
    for l in e["logs"].as_array().into_iter().flatten() {
        let level = l["level"].as_str().unwrap_or_default();
        let message = crate::domain::escape_controls(l["message"].as_str().unwrap_or_default());
        println!("    log.{level:<6} {message}");
    }
    for c in e["calls"].as_array().into_iter().flatten() {
        let get = |k: &str| crate::domain::escape_controls(c[k].as_str().unwrap_or_default()).into_owned();
        println!("    {:<16} {} → {}", get("call"), get("args"), get("result"));
    }
}
