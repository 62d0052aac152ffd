//! The command line: `serve`, `dev`, `send`, `admin …` and `plugin
//! build|check|test`, each a thin layer over the library or the admin HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{AdminListen, Config};
use crate::domain::EventKind;
use crate::tools::send::{SendRequest, SignWith, WireFormat};

/// Switchboard runs tenants' WebAssembly plugins on JustCall SMS webhooks.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
pub struct Cli {
    /// How log lines are written to stderr: `text` for people (coloured only
    /// on a terminal), `json` for log pipelines (one object per line).
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line, span fields (tenant, plugin, event,
    /// delivery) included.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks with a config file.
    Serve {
        /// The TOML config file.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
        /// Override the config's `listen` address.
        #[arg(long, env = "SWITCHBOARD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Override the config's `admin_listen` (an address, or `public`).
        #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        #[command(flatten)]
        clock: ClockArgs,
    },
    /// Run on the embedded default: a demo tenant, the example plugins built
    /// from source, and a built-in JustCall simulator.
    Dev {
        /// Where to listen.
        #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where to keep the database and deployed plugins.
        #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = ".switchboard")]
        data_dir: PathBuf,
        /// Do not post `sms.sent` and delivered webhooks back after each
        /// SMS the simulator sends (JustCall does).
        #[arg(long)]
        no_status_webhooks: bool,
        /// Your plugin folder (with a plugin.toml and its [build] command):
        /// built, deployed to the demo tenant, rebuilt and reloaded on save,
        /// its log and outcomes shown on stdout. Repeatable.
        #[arg(long = "plugin", value_name = "DIR")]
        plugins: Vec<PathBuf>,
        #[command(flatten)]
        clock: ClockArgs,
    },
    /// Build a test SMS webhook, sign it, and post it to a running Switchboard.
    Send(SendArgs),
    /// Plugin author tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Operate a running Switchboard through its admin API.
    Admin(crate::tools::admin_cli::AdminArgs),
    /// Build (given a plugin folder), check and upload a plugin version to a
    /// tenant; prints the version id and what changed.
    Deploy(crate::tools::deploy::DeployArgs),
    /// A plugin's secrets: set (value from stdin), list names, delete.
    Secret(crate::tools::secret_cli::SecretArgs),
}

/// The clock timers and schedules run on.
#[derive(Debug, clap::Args)]
struct ClockArgs {
    /// Run timers and schedules this many times faster than real time (a
    /// reminder due in 24 h fires in 10 s at 8640). For trying plugins, not
    /// for production.
    #[arg(long, env = "SWITCHBOARD_TIME_SCALE", default_value_t = 1.0, value_parser = parse_scale)]
    time_scale: f64,
    /// Start timer time at this RFC 3339 instant instead of now (tests).
    #[arg(long, env = "SWITCHBOARD_CLOCK_START", hide = true)]
    clock_start: Option<chrono::DateTime<chrono::Utc>>,
}

impl ClockArgs {
    fn clock(&self) -> crate::domain::Clock {
        crate::domain::Clock::new(self.clock_start, self.time_scale)
    }
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=1e7).contains(&v) => Ok(v),
        _ => Err("expected a number from 1 to 10000000".into()),
    }
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// Switchboard's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Tenant id.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Event kind.
    #[arg(long, default_value = "received", value_parser = parse_kind)]
    kind: EventKind,
    /// Sender, E.164 (default: the customer for received, opt-out and
    /// opt-in; the tenant's line for sent, delivered and failed).
    #[arg(long)]
    from: Option<String>,
    /// Recipient, E.164 (default: the other of the two).
    #[arg(long)]
    to: Option<String>,
    /// Message text (default: a sample for the kind, CONFIRM for received).
    #[arg(long)]
    body: Option<String>,
    /// Print the event JSON instead of posting it.
    #[arg(long)]
    print: bool,
    /// Wire format.
    #[arg(long, value_enum, default_value = "seed")]
    format: WireFormat,
    /// Signing secret; with it, the webhook is signed using --auth.
    #[arg(long, env = "SWITCHBOARD_SEND_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Signature scheme.
    #[arg(long, value_enum, default_value = "justcall-v1")]
    auth: SignWith,
    /// The webhook URL JustCall signs (the server's `public_url` + /webhooks/TENANT).
    #[arg(long)]
    webhook_url: Option<String>,
}

impl From<SendArgs> for SendRequest {
    fn from(a: SendArgs) -> SendRequest {
        let sample = crate::tools::send::Sample::of(a.kind);
        SendRequest {
            url: a.url,
            tenant: a.tenant,
            kind: a.kind,
            from: a.from.unwrap_or(sample.from),
            to: a.to.unwrap_or(sample.to),
            body: a.body.unwrap_or(sample.body),
            format: a.format,
            sign: a.secret.map(|s| (a.auth, s)),
            webhook_url: a.webhook_url,
            message_id: None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Build one plugin (a folder whose plugin.toml has a [build] command),
    /// or every plugin of a guest workspace (default: this checkout's
    /// plugins/); prints each .wasm and its size.
    Build {
        /// A plugin folder or a guest workspace folder.
        dir: Option<PathBuf>,
    },
    /// Create a working starter plugin: source, manifest with its build
    /// command, README.
    New {
        /// The plugin's name (a-z, 0-9, '-'); also its folder and .wasm name.
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: crate::tools::scaffold::Lang,
        /// Where to create the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a component against Switchboard's world without running it:
    /// imports (provided, warned, refused), exports, size and compile time.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Run a plugin once on one event, recording (not making) its SMS, HTTP
    /// requests, KV writes and logs, and print them.
    Test {
        /// The `.wasm` file.
        file: PathBuf,
        /// A webhook payload file (seed or v2.1 JSON), an event kind for
        /// its built-in sample (received, sent, delivered, failed, optout,
        /// optin), or `timer:KEY` for the firing of the plugin's timer KEY.
        #[arg(long, default_value = "received")]
        event: String,
        /// With `--event timer:KEY`: the timer's payload (text).
        #[arg(long, value_name = "TEXT")]
        timer_payload: Option<String>,
        /// The manifest (default: FILE with a .toml extension, if present).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// A `[config]` value, overriding the manifest's; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_kv)]
        config: Vec<(String, String)>,
        /// A KV entry the plugin finds when it starts; repeatable.
        #[arg(long = "kv", value_name = "KEY=VALUE", value_parser = parse_kv)]
        kv: Vec<(String, String)>,
        /// A JSON object of KV entries the plugin finds when it starts.
        #[arg(long = "kv-file", value_name = "FILE")]
        kv_file: Option<PathBuf>,
    },
}

/// Whether `dir/Cargo.toml` declares a workspace with members.
fn is_workspace(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|d| d.get("workspace")?.get("members").cloned())
        .is_some()
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    EventKind::from_name(s)
        .filter(|k| *k != EventKind::Timer)
        .ok_or_else(|| format!("expected one of: {}", EventKind::ALL.map(EventKind::as_str).join(", ")))
}

/// Sets up logging from `RUST_LOG` (default: `info`, or `warn` for the
/// commands whose output is the point), in `format`. Lines go to stderr
/// through a writer thread, so a thread that logs never waits on stderr (nor
/// holds its lock while a low-priority long runner is descheduled); keep the
/// returned guard alive until exit, when it flushes.
pub fn init_tracing(default: &str, format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    init_tracing_with(default, format, None)
}

/// [`init_tracing`], also sending Switchboard's spans to `traces` (OTLP).
fn init_tracing_with(
    default: &str,
    format: LogFormat,
    traces: Option<crate::telemetry::TraceLayer>,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},wasmtime=warn,cranelift_codegen=warn")));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let server_log = tracing_subscriber::fmt::layer().with_writer(writer);
    let server_log = match format {
        LogFormat::Text => server_log.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => server_log
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .boxed(),
    };
    // `dev --plugin`'s readable stream of the author's plugins, on stdout.
    let author = tracing_subscriber::filter::Targets::new()
        .with_target("plugin", tracing::Level::TRACE)
        .with_target("switchboard::engine::dispatch", tracing::Level::INFO);
    let _ = tracing_subscriber::registry()
        .with(traces.map(|t| t.with_filter(crate::telemetry::filter())))
        .with(server_log.with_filter(filter))
        .with(crate::tools::author_log::AuthorLog.with_filter(author))
        .try_init();
    guard
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    let quiet = matches!(
        cli.command,
        Command::Plugin {
            command: PluginCommand::Check { .. } | PluginCommand::Test { .. }
        } | Command::Admin(_)
            | Command::Send(_)
            | Command::Deploy(_)
            | Command::Secret(_)
    );
    // Output-first commands print the plugin's log lines and refused calls
    // themselves.
    let quiet_filter = "warn,plugin=off,switchboard::engine::capabilities=error,switchboard::engine::wasi_http=error";
    // With `dev --plugin`, stdout is the author's stream; the server says less.
    let authoring = matches!(&cli.command, Command::Dev { plugins, .. } if !plugins.is_empty());
    let default = match (quiet, authoring) {
        (true, _) => quiet_filter,
        (false, true) => "warn,switchboard::tools=info",
        (false, false) => "info",
    };
    // `serve` reads its config once, here: with `otlp_endpoint` it also
    // exports traces, set up with the logs before the runtime (the
    // exporter's client blocks). A config that does not load is reported by
    // the command itself, after logging is set up.
    let serve_config = match &cli.command {
        Command::Serve { config, .. } => Some(Config::load(config)),
        _ => None,
    };
    let otlp = serve_config
        .as_ref()
        .and_then(|c| c.as_ref().ok())
        .and_then(|c| c.otlp_endpoint.clone());
    let (telemetry, traces) = match otlp.as_deref().map(crate::telemetry::start) {
        Some(Ok((t, layer))) => (Some(t), Some(layer)),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => (None, None),
    };
    let _log = init_tracing_with(default, cli.log_format, traces);
    if let Some(endpoint) = &otlp {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    // Flushes queued spans when the command ends.
    let _telemetry = telemetry;
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cli.command, serve_config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`; `serve` takes `serve_config` (already read) when given.
async fn execute(command: Command, serve_config: Option<Result<Config, crate::config::ConfigError>>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            clock,
        } => {
            let mut cfg = match serve_config {
                Some(loaded) => loaded?,
                None => Config::load(&config)?,
            };
            if let Some(l) = listen {
                // A defaulted admin address follows the webhook address.
                if cfg.admin_listen == AdminListen::default_for(cfg.listen) {
                    cfg.admin_listen = AdminListen::default_for(l);
                }
                cfg.listen = l;
            }
            match admin_listen.as_deref() {
                None => {}
                Some("public") => cfg.admin_listen = AdminListen::Public,
                Some(a) => {
                    let addr = a
                        .parse()
                        .with_context(|| format!("--admin-listen: `{a}` is neither an address nor \"public\""))?;
                    cfg.admin_listen = AdminListen::Separate(addr);
                }
            }
            cfg.clock = clock.clock();
            let listeners = crate::server::Listeners::bind(&cfg).await?;
            crate::server::run(cfg, listeners, crate::server::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            listen,
            data_dir,
            no_status_webhooks,
            plugins,
            clock,
        } => {
            crate::tools::dev::run(listen, data_dir, !no_status_webhooks, plugins, clock.clock()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) if args.print => {
            let req = SendRequest::from(args);
            let webhook_url = req.webhook_url.clone().unwrap_or_else(|| req.target());
            let (payload, _) = crate::tools::send::build_payload(&req, &webhook_url);
            println!("{}", serde_json::to_string_pretty(&payload)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => {
            let req = SendRequest::from(args);
            let resp = crate::tools::send::send(&req).await?;
            println!("{} {}", resp.status, resp.body);
            Ok(if (200..300).contains(&resp.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Admin(args) => crate::tools::admin_cli::run(args).await,
        Command::Deploy(args) => crate::tools::deploy::run(args).await,
        Command::Secret(args) => crate::tools::secret_cli::run(args).await,
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            let report = tokio::task::spawn_blocking(move || crate::tools::author::check(&file)).await??;
            match report.contract {
                Some(c) => println!("contract {c}"),
                None => println!("contract none (neither 0.2.0 nor 0.1.0)"),
            }
            println!("size     {} bytes", report.size);
            println!("compile  {:.1} ms", report.compile_ms);
            println!("exports");
            for e in &report.exports {
                println!("  {e}");
            }
            println!("imports");
            for (name, verdict) in &report.imports {
                match verdict {
                    crate::tools::author::ImportVerdict::Provided => println!("  ok       {name}"),
                    crate::tools::author::ImportVerdict::Warning(w) => println!("  warning  {name}: {w}"),
                    crate::tools::author::ImportVerdict::Error(e) => println!("  error    {name}: {e}"),
                }
            }
            for cut in &report.limits_clamped {
                println!("warning  limits: {cut} (a tenant's limits are ceilings; the operator may raise them)");
            }
            match report.refusal {
                None => {
                    let v = report.contract.unwrap_or(crate::engine::contract::Contract::CURRENT).as_str();
                    println!("ok: implements switchboard:plugin/plugin@{v} and loads in Switchboard");
                    Ok(ExitCode::SUCCESS)
                }
                Some(reason) => {
                    eprintln!("error: {reason}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    event,
                    timer_payload,
                    manifest,
                    config,
                    kv,
                    kv_file,
                },
        } => {
            let mut prefill = match &kv_file {
                Some(path) => crate::tools::author::read_kv_file(path)?,
                None => vec![],
            };
            prefill.extend(kv);
            let input = crate::tools::author::TestInput {
                wasm: file,
                event,
                timer_payload,
                manifest,
                config,
                kv: prefill,
            };
            let run = crate::tools::author::test_run(&input).await?;
            for call in &run.calls {
                println!("{call}");
            }
            for change in &run.timers {
                match change {
                    crate::storage::TimerChange::Schedule { key, due_ms, payload, .. } => println!(
                        "timers.schedule {key} due {} ({} bytes)",
                        crate::domain::clock::ms_to_rfc3339(*due_ms),
                        payload.len()
                    ),
                    crate::storage::TimerChange::Cancel { key } => println!("timers.cancel   {key}"),
                }
            }
            if !run.kv.is_empty() {
                println!("kv after the run:");
                for (key, value) in &run.kv {
                    println!("  {key} = {:?}", String::from_utf8_lossy(value));
                }
            }
            match run.result {
                Ok(()) => {
                    println!("ok ({:.1} ms; nothing was sent)", run.elapsed_ms);
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    eprintln!("error: {reason} ({:.1} ms)", run.elapsed_ms);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => {
            let created = crate::tools::scaffold::new_plugin(&dir, &name, lang)?;
            println!("created {}", created.display());
            println!("build it with: switchboard plugin build {}", created.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Build { dir: Some(dir) },
        } if dir.join("plugin.toml").is_file() && !is_workspace(&dir) => {
            let tools = crate::tools::guest_build::GuestWorkspace::from_source_checkout();
            let wasm = tokio::task::spawn_blocking(move || crate::tools::guest_build::build_one(&dir, tools.as_ref(), false)).await??;
            let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
            println!("{:>9} bytes  {}", size, wasm.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Build { dir },
        } => {
            let ws = match dir {
                Some(d) => {
                    let repo = d.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."));
                    crate::tools::guest_build::GuestWorkspace::at(&d, &repo)
                        .with_context(|| format!("{} has no Cargo.toml", d.display()))?
                }
                None => crate::tools::guest_build::GuestWorkspace::from_source_checkout()
                    .context("no plugins/ workspace next to this binary's source; pass DIR")?,
            };
            let built = tokio::task::spawn_blocking(move || ws.build(false)).await??;
            for p in built {
                let size = std::fs::metadata(&p.wasm).map(|m| m.len()).unwrap_or(0);
                println!("{:<24} {:>9} bytes  {}", p.name, size, p.wasm.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
