//! The host side of every WIT import, called with guest-chosen arguments in
//! any order (as a hostile plugin would): no call panics, every quota holds
//! (SMS per event, HTTP calls, KV sizes, log bytes), and KV reads back what
//! was written. Side effects are recorded, not made (the `plugin test`
//! effects), so nothing leaves the process.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::config::{AllowedHost, ApiDialect, Manifest, Secret, TenantConfig, WebhookAuth};
use switchboard::engine::bindings::switchboard::plugin::{config, http, kv, log, sms};
use switchboard::engine::capabilities::{Invocation, PluginCtx};
use switchboard::engine::effects::{CallLog, HostCall, Recording};
use switchboard::engine::justcall::JustCallClient;
use switchboard::engine::tenant::Tenant;
use switchboard::storage::Db;

#[derive(Debug, Arbitrary)]
enum Call {
    Send {
        from: String,
        to: String,
        body: String,
        media: Vec<String>,
        tenant_number: bool,
    },
    GetMessage(String),
    ListMessages(u32, u32),
    Http {
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        allowed: bool,
    },
    KvGet(String),
    KvSet(String, Vec<u8>),
    KvDelete(String),
    KvList(String),
    ConfigGet(String),
    ConfigAll,
    Log(u8, String),
}

struct World {
    rt: tokio::runtime::Runtime,
    db: Db,
    tenant: Arc<Tenant>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = rt.block_on(async { Db::open(dir.path(), Default::default()).unwrap() });
        let config = TenantConfig {
            id: "fuzz".into(),
            numbers: vec!["+15125550100".into()],
            default_country: None,
            webhook_auth: WebhookAuth::None,
            webhook_secret: None,
            justcall_api: ApiDialect::Seed,
            justcall_base_url: reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
            justcall_api_key: Secret::new("k"),
            justcall_api_secret: Secret::new("s"),
            limits: Default::default(),
            justcall_rate_per_minute: 30,
            verify_events: false,
        };
        let justcall = JustCallClient::new(&config, reqwest::Client::new());
        World {
            rt,
            db,
            tenant: Arc::new(Tenant { config, justcall }),
            _dir: dir,
        }
    })
}

fuzz_target!(|calls: Vec<Call>| {
    let w = world();
    let mut manifest = Manifest::default();
    manifest.allowed_hosts = vec![AllowedHost::parse("https://crm.example.com").unwrap()];
    manifest.config = BTreeMap::from([("sink".to_string(), "https://crm.example.com/x".to_string())]);
    let limits = manifest.limits;
    let log_cap = CallLog::default();
    let mut ctx = PluginCtx::new(Invocation {
        tenant: w.tenant.clone(),
        plugin: Arc::from("fuzz"),
        manifest: Arc::new(manifest),
        db: w.db.clone(),
        event_id: Arc::from("fuzz-event"),
        effects: Box::new(Recording::new(log_cap.clone())),
    });
    ctx.deadline = Instant::now() + std::time::Duration::from_secs(5);
    let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    w.rt.block_on(async {
        for call in calls.into_iter().take(64) {
            match call {
                Call::Send {
                    from,
                    to,
                    body,
                    media,
                    tenant_number,
                } => {
                    let from = if tenant_number { "+15125550100".to_string() } else { from };
                    let _ = sms::Host::send(
                        &mut ctx,
                        sms::OutgoingSms {
                            from,
                            to,
                            body,
                            media_urls: media,
                        },
                    )
                    .await;
                }
                Call::GetMessage(id) => {
                    let _ = sms::Host::get_message(&mut ctx, id).await;
                }
                Call::ListMessages(page, per) => {
                    let _ = sms::Host::list_messages(&mut ctx, page, per).await;
                }
                Call::Http {
                    method,
                    url,
                    headers,
                    body,
                    allowed,
                } => {
                    let url = if allowed { format!("https://crm.example.com/{url}") } else { url };
                    let _ = http::Host::send(
                        &mut ctx,
                        http::Request {
                            method,
                            url,
                            headers,
                            body,
                        },
                    )
                    .await;
                }
                Call::KvGet(key) => {
                    if let Ok(Ok(value)) = kv::Host::get(&mut ctx, key.clone()).await
                        && let Some(expected) = written.get(&key)
                    {
                        assert_eq!(value.as_ref(), Some(expected), "KV reads back what was written");
                    }
                }
                Call::KvSet(key, value) => {
                    if let Ok(Ok(())) = kv::Host::set(&mut ctx, key.clone(), value.clone()).await {
                        written.insert(key, value);
                    }
                }
                Call::KvDelete(key) => {
                    if let Ok(Ok(())) = kv::Host::delete(&mut ctx, key.clone()).await {
                        written.remove(&key);
                    }
                }
                Call::KvList(prefix) => {
                    let _ = kv::Host::list_keys(&mut ctx, prefix).await;
                }
                Call::ConfigGet(key) => {
                    let _ = config::Host::get(&mut ctx, key).await;
                }
                Call::ConfigAll => {
                    let _ = config::Host::get_all(&mut ctx).await;
                }
                Call::Log(level, message) => {
                    let level = [
                        log::Level::Trace,
                        log::Level::Debug,
                        log::Level::Info,
                        log::Level::Warn,
                        log::Level::Error,
                    ][usize::from(level % 5)];
                    let _ = log::Host::log(&mut ctx, level, message).await;
                }
            }
        }
    });
    // Whatever the plugin asked, the recorded effects stay within its quotas.
    let recorded = log_cap.calls();
    let sends = recorded.iter().filter(|c| matches!(c, HostCall::SmsSend { .. })).count();
    let posts = recorded.iter().filter(|c| matches!(c, HostCall::Http { .. })).count();
    assert!(sends <= limits.sms_per_event as usize, "{sends} SMS recorded");
    assert!(posts <= limits.http_per_event as usize, "{posts} HTTP calls recorded");
});
