//! Config tests: parsing, locations of errors, defaults and the protections
//! that configuration cannot switch off.

use super::*;
use crate::domain::EventKind;

fn env(name: &str) -> Option<String> {
    (name == "SECRET").then(|| "s3cret-long-enough-to-sign".to_string())
}

const GOOD: &str = r#"
listen = "127.0.0.1:9000"
public_url = "https://hooks.example.com/"

[tenants.acme]
numbers = ["+15125550100"]
webhook_auth = "justcall-v1"
webhook_secret = "env:SECRET"
justcall_api = "v2.1"
justcall_base_url = "https://api.justcall.io/v2.1"
justcall_api_key = "key"
justcall_api_secret = "env:SECRET"
"#;

#[test]
fn parses_a_full_config() {
    let cfg = Config::parse(Path::new("/etc/sb.toml"), GOOD, &env).unwrap();
    let acme = &cfg.tenants["acme"];
    assert_eq!(acme.webhook_secret.as_ref().unwrap().expose(), "s3cret-long-enough-to-sign");
    assert_eq!(acme.justcall_api, ApiDialect::V21);
    assert_eq!(cfg.webhook_url("acme"), "https://hooks.example.com/webhooks/acme");
    assert_eq!(cfg.data_dir, Path::new("/etc/data"));
    assert!(!format!("{acme:?}").contains("s3cret"), "secrets must not appear in Debug output");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let src = GOOD.replace("webhook_auth = ", "webhok_auth = ");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.line, Some(7));
    assert_eq!(err.key, "tenants.acme.webhok_auth");
    assert!(
        err.to_string().starts_with("sb.toml:7: tenants.acme.webhok_auth: unknown field"),
        "{err}"
    );
}

#[test]
fn missing_env_var_names_the_key() {
    let src = GOOD.replace("webhook_secret = \"env:SECRET\"", "webhook_secret = \"env:NOPE\"");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "sb.toml:8: tenants.acme.webhook_secret: environment variable NOPE is not set"
    );
}

#[test]
fn bad_values_are_located() {
    let src = GOOD.replace("\"+15125550100\"", "\"call me\"");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.key, "tenants.acme.numbers");
    assert_eq!(err.line, Some(6));

    let src = GOOD.replace("\"justcall-v1\"", "\"hmac\"");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.line, Some(7), "{err}");
    assert!(err.message.contains("unknown variant `hmac`"), "{err}");
}

#[test]
fn national_numbers_need_a_default_country() {
    let src = GOOD.replace("\"+15125550100\"", "\"5125550100\"");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.key, "tenants.acme.numbers");
    assert!(err.message.contains("has no country code"), "{err}");

    let with_country = src.replace("numbers = ", "default_country = \"US\"\nnumbers = ");
    let cfg = Config::parse(Path::new("sb.toml"), &with_country, &env).unwrap();
    assert_eq!(cfg.tenants["acme"].numbers, ["+15125550100"]);

    let bad = GOOD.replace("numbers = ", "default_country = \"USA\"\nnumbers = ");
    let err = Config::parse(Path::new("sb.toml"), &bad, &env).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("tenants.acme.default_country", Some(6)), "{err}");
}

#[test]
fn justcall_v1_tenants_verify_events_unless_told_not_to() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    assert!(cfg.tenants["acme"].verify_events, "on by default for justcall-v1");
    let off = GOOD.replace("numbers = ", "verify_events = false\nnumbers = ");
    assert!(!Config::parse(Path::new("sb.toml"), &off, &env).unwrap().tenants["acme"].verify_events);
    let sw = GOOD.replace("\"justcall-v1\"", "\"standard-webhooks\"");
    assert!(!Config::parse(Path::new("sb.toml"), &sw, &env).unwrap().tenants["acme"].verify_events);
}

#[test]
fn tls_needs_both_files_and_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let path = dir.path().join("sb.toml");
    let only_cert = format!("tls_cert = \"cert.pem\"\n{GOOD}");
    let err = Config::parse(&path, &only_cert, &env).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("tls_key", Some(1)), "{err}");
    let missing = format!("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{GOOD}");
    let err = Config::parse(&path, &missing, &env).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("tls_key", Some(2)), "{err}");
    assert!(err.message.ends_with("key.pem` is not a readable file"), "{err}");
    std::fs::write(dir.path().join("key.pem"), "y").unwrap();
    let tls = Config::parse(&path, &missing, &env).unwrap().tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("cert.pem"));
}

#[test]
fn long_run_cpu_share_is_a_percentage() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    assert_eq!(cfg.long_run_cpu_percent, DEFAULT_LONG_RUN_CPU_PERCENT);
    let src = GOOD.replace("public_url", "long_run_cpu_percent = 40\npublic_url");
    assert_eq!(Config::parse(Path::new("sb.toml"), &src, &env).unwrap().long_run_cpu_percent, 40);
    for bad in ["0", "150"] {
        let src = GOOD.replace("public_url", &format!("long_run_cpu_percent = {bad}\npublic_url"));
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sb.toml:3: long_run_cpu_percent: must be from 1 to 100 (percent of one core)"
        );
    }
}

#[test]
fn front_door_limits_have_defaults_and_ranges() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    assert_eq!(cfg.front_door, FrontDoor::default());
    let src = GOOD.replace(
        "public_url",
        "header_timeout_secs = 5\nbody_timeout_secs = 7\nidle_timeout_secs = 30\nmax_connections = 200\nmax_inflight_body_kb = 1024\npublic_url",
    );
    let fd = Config::parse(Path::new("sb.toml"), &src, &env).unwrap().front_door;
    assert_eq!(
        (fd.header_timeout, fd.body_timeout, fd.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(7), Duration::from_secs(30))
    );
    assert_eq!((fd.max_connections, fd.max_inflight_body_bytes), (200, 1 << 20));
    for (key, bad, range) in [
        ("header_timeout_secs", "0", "1..=300"),
        ("max_connections", "3", "16..=1000000"),
        ("max_inflight_body_kb", "100", "256..=4194304"),
    ] {
        let src = GOOD.replace("public_url", &format!("{key} = {bad}\npublic_url"));
        let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
        assert_eq!(err.to_string(), format!("sb.toml:3: {key}: must be {range}"));
    }
}

#[test]
fn protections_cannot_be_configured_away() {
    let err = |src: &str| Config::parse(Path::new("sb.toml"), src, &env).unwrap_err().to_string();
    // Short secrets are refused by key and length, never shown.
    let short = GOOD.replace("webhook_secret = \"env:SECRET\"", "webhook_secret = \"tiny-secret\"");
    let e = err(&short);
    assert_eq!(
        e,
        "sb.toml:8: tenants.acme.webhook_secret: is 11 characters; use at least 16 (a random string)"
    );
    let token = GOOD.replace("public_url", "admin_token = \"0123456789abcdef\"\npublic_url");
    assert_eq!(
        err(&token),
        "sb.toml:3: admin_token: is 16 characters; use at least 32 (a random string)"
    );
    // A secret mistyped as a number is named by its key, its value never printed.
    let typed = GOOD.replace("webhook_secret = \"env:SECRET\"", "webhook_secret = 98127346519823");
    let e = err(&typed);
    assert!(e.starts_with("sb.toml:8: tenants.acme.webhook_secret: invalid type"), "{e}");
    assert!(!e.contains("98127346519823"), "{e}");
    // The signature window is capped; the dedupe window covers it and the retries.
    let window = GOOD.replace("public_url", "signature_tolerance_secs = 3600\npublic_url");
    assert_eq!(err(&window), "sb.toml:3: signature_tolerance_secs: must be 1..=900");
    let dedupe = GOOD.replace("public_url", "dedupe_window_secs = 60\npublic_url");
    assert!(
        err(&dedupe)
            .starts_with("sb.toml:3: dedupe_window_secs: the dedupe window (60 s) must be at least signature_tolerance_secs (300 s)")
    );
    let retries = GOOD.replace(
        "public_url",
        "dedupe_window_secs = 600\nretry_delays_ms = [300000, 300000]\npublic_url",
    );
    assert!(
        err(&retries).contains("must be longer than the whole retry schedule (600 s)"),
        "{}",
        err(&retries)
    );
    // Retention is bounded both ways.
    let keep = GOOD.replace("public_url", "retention_days = 7\npublic_url");
    assert_eq!(
        Config::parse(Path::new("sb.toml"), &keep, &env).unwrap().delivery.retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    let forever = GOOD.replace("public_url", "retention_days = 0\npublic_url");
    assert_eq!(err(&forever), "sb.toml:3: retention_days: must be 1..=3650");
    // Base URLs are http(s).
    let ftp = GOOD.replace("https://api.justcall.io/v2.1", "ftp://api.justcall.io");
    assert_eq!(err(&ftp), "sb.toml:10: tenants.acme.justcall_base_url: must be an http(s) URL");
    let public = GOOD.replace("https://hooks.example.com/", "file:///etc/passwd");
    assert_eq!(err(&public), "sb.toml:3: public_url: must be an http(s) URL");
}

#[test]
fn the_admin_api_has_its_own_loopback_address_unless_told_otherwise() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    assert_eq!(cfg.admin_listen, AdminListen::Separate("127.0.0.1:9001".parse().unwrap()));
    let public = GOOD.replace("public_url", "admin_listen = \"public\"\npublic_url");
    assert_eq!(
        Config::parse(Path::new("sb.toml"), &public, &env).unwrap().admin_listen,
        AdminListen::Public
    );
    let own = GOOD.replace("public_url", "admin_listen = \"10.0.0.5:7000\"\npublic_url");
    assert_eq!(
        Config::parse(Path::new("sb.toml"), &own, &env).unwrap().admin_listen,
        AdminListen::Separate("10.0.0.5:7000".parse().unwrap())
    );
    let bad = GOOD.replace("public_url", "admin_listen = \"everywhere\"\npublic_url");
    let err = Config::parse(Path::new("sb.toml"), &bad, &env).unwrap_err().to_string();
    assert!(
        err.starts_with("sb.toml:3: admin_listen: `everywhere` is neither an address nor \"public\""),
        "{err}"
    );
}

#[test]
fn auth_none_is_refused_outside_dev() {
    let src = GOOD.replace("\"justcall-v1\"", "\"none\"");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.key, "tenants.acme.webhook_auth");
    assert!(err.message.contains("dev mode"));
}

#[test]
fn manifest_limits_and_hosts() {
    let m = Manifest::parse(
        Path::new("p.toml"),
        "events = [\"received\"]\nallowed_hosts = [\"https://*.example.com\", \"http://127.0.0.1:9000\"]\n[config]\nurl = \"x\"\nn = 3\n[limits]\ntimeout_ms = 500\n",
    )
    .unwrap();
    assert!(m.subscribes(EventKind::Received) && !m.subscribes(EventKind::Sent));
    assert_eq!(m.config["n"], "3");
    assert_eq!(m.limits.timeout, Duration::from_millis(500));
    let ok = |u: &str| m.allowed_hosts.iter().any(|h| h.matches(&reqwest::Url::parse(u).unwrap()));
    assert!(ok("https://crm.example.com/x"));
    assert!(!ok("https://example.com/x"));
    assert!(!ok("https://evil-example.com/x"));
    assert!(!ok("http://crm.example.com/x"));
    assert!(ok("http://127.0.0.1:9000/hook"));
    assert!(!ok("http://127.0.0.1:9001/hook"));

    let err = Manifest::parse(Path::new("p.toml"), "[limits]\ntimeout_ms = 99999999\n").unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("limits.timeout_ms", Some(2)));
    let err = Manifest::parse(Path::new("p.toml"), "events = [\"recieved\"]\n").unwrap_err();
    assert!(err.message.contains("unknown variant `recieved`"), "{err}");
}

#[test]
fn unknown_build_keys_are_refused_with_file_line_and_key() {
    let src = "events = [\"received\"]\n[build]\ncommand = \"sh build.sh\"\nrequires = [\"wasm-tools@1\"]\ncomand = \"x\"\n";
    let err = Manifest::parse(std::path::Path::new("p.toml"), src).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:5: build.comand: unknown field `comand`"), "{err}");
    let ok = src.replace("comand = \"x\"\n", "");
    assert!(Manifest::parse(std::path::Path::new("p.toml"), &ok).is_ok());
}

#[test]
fn tenancy_shares_and_budgets_have_defaults_and_ranges() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    let acme = &cfg.tenants["acme"];
    assert_eq!((acme.max_concurrent, acme.weight), (None, 1));
    assert_eq!(acme.kv_total, KvTotal::default());
    assert!(cfg.max_wasm_memory_mb >= 512, "{}", cfg.max_wasm_memory_mb);
    assert_eq!(cfg.delivery.kv_grace, Duration::from_secs(30 * 24 * 3600));

    let tenant = |line: &str| GOOD.replace("justcall_api_key", &format!("{line}\njustcall_api_key"));
    let set = Config::parse(
        Path::new("sb.toml"),
        &tenant("max_concurrent = 3\nweight = 4\nkv_total_keys = 10\nkv_total_kb = 2"),
        &env,
    )
    .unwrap();
    let acme = &set.tenants["acme"];
    assert_eq!((acme.max_concurrent, acme.weight), (Some(3), 4));
    assert_eq!(acme.kv_total, KvTotal { keys: 10, bytes: 2048 });

    let err = |src: &str| Config::parse(Path::new("sb.toml"), src, &env).unwrap_err().to_string();
    assert_eq!(
        err(&tenant("max_concurrent = 0")),
        "sb.toml:11: tenants.acme.max_concurrent: must be at least 1"
    );
    assert_eq!(err(&tenant("weight = 0")), "sb.toml:11: tenants.acme.weight: must be 1..=100");
    assert_eq!(
        err(&tenant("kv_total_keys = 0")),
        "sb.toml:11: tenants.acme.kv_total_keys: must be at least 1"
    );
    let top = |line: &str| GOOD.replace("public_url", &format!("{line}\npublic_url"));
    assert_eq!(
        err(&top("max_wasm_memory_mb = 10")),
        "sb.toml:3: max_wasm_memory_mb: must be at least 64"
    );
    assert_eq!(err(&top("kv_grace_days = 5000")), "sb.toml:3: kv_grace_days: must be 0..=3650");
    let now = Config::parse(Path::new("sb.toml"), &top("kv_grace_days = 0\nmax_wasm_memory_mb = 256"), &env).unwrap();
    assert_eq!((now.delivery.kv_grace, now.max_wasm_memory_mb), (Duration::ZERO, 256));
}

#[test]
fn otlp_endpoint_is_an_http_url_when_given() {
    let cfg = Config::parse(Path::new("sb.toml"), GOOD, &env).unwrap();
    assert_eq!(cfg.otlp_endpoint, None);
    let src = GOOD.replace("public_url", "otlp_endpoint = \"http://collector:4318/\"\npublic_url");
    let cfg = Config::parse(Path::new("sb.toml"), &src, &env).unwrap();
    assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://collector:4318"));
    let src = GOOD.replace("public_url", "otlp_endpoint = \"grpc://collector:4317\"\npublic_url");
    let err = Config::parse(Path::new("sb.toml"), &src, &env).unwrap_err();
    assert_eq!(err.to_string(), "sb.toml:3: otlp_endpoint: must be an http(s) URL");
}

#[test]
fn operator_webhook_needs_its_url_and_a_strong_secret_together() {
    let with = |lines: &str| GOOD.replace("public_url", &format!("{lines}\npublic_url"));
    let parse = |src: &str| Config::parse(Path::new("sb.toml"), src, &env);
    let cfg = parse(&with(
        "operator_webhook_url = \"https://ops.example.com/hooks\"\noperator_webhook_secret = \"0123456789abcdef\"",
    ))
    .unwrap();
    let hook = cfg.operator_webhook.unwrap();
    assert_eq!(
        (hook.url.as_str(), hook.secret.expose()),
        ("https://ops.example.com/hooks", "0123456789abcdef")
    );
    let err = parse(&with("operator_webhook_url = \"https://ops.example.com/hooks\"")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "sb.toml:3: operator_webhook_url: needs operator_webhook_secret to sign the notices"
    );
    let err = parse(&with(
        "operator_webhook_url = \"https://ops.example.com/hooks\"\noperator_webhook_secret = \"short\"",
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sb.toml:4: operator_webhook_secret: is 5 characters; use at least 16 (a random string)"
    );
}
