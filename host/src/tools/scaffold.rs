//! `switchboard plugin new`: writes a working starter plugin in Rust,
//! JavaScript or Python (source, manifest with its build command, README,
//! sample events; for JS and Python the helper module, for JS TypeScript
//! declarations of `wit/`), built by `switchboard plugin build DIR` with the
//! checkout's pinned tools and the one `wit/` folder.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// A plugin language `plugin new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the Switchboard SDK.
    Rust,
    /// JavaScript, with componentize-js.
    Js,
    /// Python, with componentize-py.
    Python,
}

/// Whether `name` can name a plugin: it becomes `<name>.wasm` in a tenant
/// folder and (for Rust) a crate name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

const MANIFEST_TAIL: &str = r#"
[config]
reply = "Thanks! We got your message and will answer soon."

[limits]
timeout_ms = 2000
"#;

fn manifest(name: &str, lang: Lang, build: &str) -> String {
    let memory = match lang {
        Lang::Rust => "",
        Lang::Js | Lang::Python => "memory_mb = 128\n",
    };
    format!(
        "# {name}: a Switchboard plugin. Deploy {name}.wasm with this file beside it,\n\
         # renamed {name}.toml, into <plugins_dir>/<tenant>/.\n\
         events = [\"received\"]\n\
         # Hosts the plugin may call over HTTP, e.g. \"https://crm.example.com\".\n\
         allowed_hosts = []\n{MANIFEST_TAIL}{memory}\n\
         # `switchboard plugin build .` runs this here, with OUT_DIR set, SWITCHBOARD_WIT\n\
         # pointing at Switchboard's wit/ folder and the pinned tools on PATH.\n\
         [build]\ncommand = {build:?}\n"
    )
}

const RUST_LIB: &str = r#"//! NAME: replies to every message a customer sends with the `reply` from
//! config, from the number they wrote to.

use switchboard_plugin_sdk::{EventKind, Plugin, PluginError, SmsEvent, config, export_plugin, log, sms};

struct Component;

impl Plugin for Component {
    fn handle_event(event: SmsEvent) -> Result<(), PluginError> {
        if event.kind != EventKind::Received {
            return Ok(());
        }
        let reply = config::require("reply")?;
        let id = sms::send(&event.justcall_number, &event.from, &reply)?;
        log::info(&format!("replied to {} ({id})", event.from));
        Ok(())
    }
}

export_plugin!(Component);
"#;

const JS_SOURCE: &str = r#"// NAME: replies to every message a customer sends with the `reply` from
// config, from the number they wrote to. switchboard.js (beside this file)
// wraps the interfaces of Switchboard's WIT (types/ declares them for your
// editor); fetch() works for the hosts in allowed_hosts. A thrown Error fails
// the delivery with its message.
import { sms, config, log } from './switchboard.js';

/** @param {import('switchboard:plugin/types@0.2.0').SmsEvent} event */
export async function handleEvent(event) {
  if (event.kind !== 'received') {
    return;
  }
  const id = sms.reply(event, config.require('reply'));
  log.info(`replied to ${event.from} (${id})`);
}
"#;

/// The JavaScript helper module a starter gets a copy of.
const JS_HELPER: &str = include_str!("../../../plugin-sdk/js/switchboard.js");

/// Lets editors type-check plugin.js against the declarations in types/.
const JS_CONFIG: &str = r#"{
  "compilerOptions": {
    "checkJs": true,
    "noEmit": true,
    "target": "es2022",
    "module": "es2022",
    "moduleResolution": "bundler",
    "lib": ["es2022", "dom"]
  },
  "include": ["*.js", "types/**/*.d.ts"]
}
"#;

const PY_SOURCE: &str = r#""""NAME: replies to every message a customer sends with the `reply` from
config, from the number they wrote to. switchboard.py (beside this file)
wraps the interfaces of Switchboard's WIT; print() goes to the plugin's log,
and urllib.request reaches the hosts in allowed_hosts. An uncaught exception
fails the delivery with its message (`raise fail("...")` for a plain one).
"""

import wit_world
from switchboard import config, log, sms
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def handle_event(self, event: types.SmsEvent) -> None:
        if event.kind != types.EventKind.RECEIVED:
            return
        message_id = sms.reply(event, config.require("reply"))
        log.info(f"replied to {event.from_} ({message_id})")
"#;

/// The Python helper module a starter gets a copy of.
const PY_HELPER: &str = include_str!("../../../plugin-sdk/python/switchboard.py");

/// Writes TypeScript declarations of `wit/` into `dir/types` with the pinned
/// jco, so editors autocomplete the `switchboard:plugin/*` imports.
fn write_types(dir: &Path) -> anyhow::Result<()> {
    let ws = crate::tools::guest_build::GuestWorkspace::from_source_checkout().context("no Switchboard checkout found for jco and wit/")?;
    let jco = ws.js_tool("jco", true)?;
    let out = std::process::Command::new(&jco)
        .arg("guest-types")
        .arg(ws.wit_dir())
        .args(["-n", "plugin", "-q", "-o"])
        .arg(dir.join("types"))
        .output()
        .with_context(|| format!("running {}", jco.display()))?;
    if !out.status.success() {
        bail!("jco guest-types failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn readme(name: &str, lang: Lang) -> String {
    let (what, edit, helper) = match lang {
        Lang::Rust => ("Rust, with the Switchboard SDK", "src/lib.rs", ""),
        Lang::Js => (
            "JavaScript (componentize-js)",
            "plugin.js",
            "`switchboard.js` is a copy of Switchboard's thin helper module over the\n\
             generated bindings; `types/` declares the WIT for your editor (`jsconfig.json`).\n\
             `fetch()` reaches the hosts in `allowed_hosts`.\n\n",
        ),
        Lang::Python => (
            "Python (componentize-py)",
            "app.py",
            "`switchboard.py` is a copy of Switchboard's thin helper module over the\n\
             generated bindings; importing it makes `urllib.request` reach the hosts in\n\
             `allowed_hosts`. `print()` goes to the plugin's log.\n\n",
        ),
    };
    format!(
        "# {name}\n\nA Switchboard plugin in {what}. It answers every received SMS with the\n\
         `reply` from its config. Edit `{edit}`; the contract is `wit/plugin.wit` in the\n\
         Switchboard checkout.\n\n{helper}\
         ```sh\n\
         # the edit loop: built, served on the demo tenant, rebuilt and reloaded on\n\
         # save, with this plugin's log lines and outcomes on the terminal\n\
         switchboard dev --plugin .\n\n\
         switchboard plugin build .          # writes target/{name}.wasm and prints its size\n\
         switchboard plugin check target/{name}.wasm\n\
         # one event, side effects checked and recorded, not made; events/ holds a\n\
         # sample of each kind (or name one: --event sent); --kv KEY=VALUE pre-fills KV\n\
         switchboard plugin test target/{name}.wasm --manifest plugin.toml --event events/received.json\n\
         # deploy: hot-reloaded by a running server\n\
         cp plugin.toml <plugins_dir>/<tenant>/{name}.toml && cp target/{name}.wasm <plugins_dir>/<tenant>/\n\
         ```\n"
    )
}

/// Writes a new plugin `name` in `lang` under `parent/name`; returns its folder.
pub fn new_plugin(parent: &Path, name: &str, lang: Lang) -> anyhow::Result<PathBuf> {
    if !valid_name(name) {
        bail!("`{name}` is not a plugin name: use a-z, 0-9 and '-', starting with a letter (at most 64)");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let files: Vec<(&str, String)> = match lang {
        Lang::Rust => {
            let sdk = crate::tools::guest_build::GuestWorkspace::from_source_checkout()
                .map(|ws| ws.root.join("../plugin-sdk"))
                .and_then(|p| p.canonicalize().ok())
                .context("`plugin new --lang rust` needs the Switchboard checkout this binary was built from (for plugin-sdk)")?;
            let crate_file = name.replace('-', "_");
            let build = format!(
                "cargo build --release --target wasm32-wasip2 --target-dir \"${{CARGO_TARGET_DIR:-target}}\" && \
                 cp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{crate_file}.wasm\" \"$OUT_DIR/{name}.wasm\""
            );
            vec![
                (
                    "Cargo.toml",
                    format!(
                        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\nrust-version = \"1.95\"\npublish = false\n\n\
                         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nswitchboard-plugin-sdk = {{ path = {:?} }}\n\n\
                         [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\npanic = \"abort\"\n\n\
                         # A workspace of its own, wherever it is created.\n[workspace]\n",
                        sdk.display().to_string()
                    ),
                ),
                ("src/lib.rs", RUST_LIB.replace("NAME", name)),
                ("plugin.toml", manifest(name, lang, &build)),
                (".gitignore", "/target\n".into()),
            ]
        }
        Lang::Js => vec![
            ("plugin.js", JS_SOURCE.replace("NAME", name)),
            ("switchboard.js", JS_HELPER.to_string()),
            ("jsconfig.json", JS_CONFIG.to_string()),
            (
                "plugin.toml",
                manifest(
                    name,
                    lang,
                    &format!(
                        "componentize-js plugin.js --wit \"$SWITCHBOARD_WIT\" -n switchboard:plugin/plugin@0.2.0 -d fetch-event -o \"$OUT_DIR/{name}.wasm\""
                    ),
                ),
            ),
            (".gitignore", "/target\n".into()),
        ],
        Lang::Python => vec![
            ("app.py", PY_SOURCE.replace("NAME", name)),
            ("switchboard.py", PY_HELPER.to_string()),
            (
                "plugin.toml",
                manifest(
                    name,
                    lang,
                    &format!(
                        "componentize-py -d \"$SWITCHBOARD_WIT\" -w switchboard:plugin/plugin@0.2.0 componentize app -o \"$OUT_DIR/{name}.wasm\""
                    ),
                ),
            ),
            (".gitignore", "/target\n__pycache__/\n".into()),
        ],
    };
    let samples = crate::domain::EventKind::ALL.map(|k| (format!("events/{}.json", k.as_str()), crate::tools::send::Sample::payload(k)));
    for (rel, text) in files
        .iter()
        .map(|(r, t)| (r.to_string(), t.clone()))
        .chain([("README.md".to_string(), readme(name, lang))])
        .chain(samples)
    {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if lang == Lang::Js {
        // Editor support only: the plugin builds without it.
        if let Err(e) = write_types(&dir) {
            eprintln!("warning: no TypeScript declarations in {}/types: {e:#}", dir.display());
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_manifests() {
        assert!(valid_name("lead-router2"));
        assert!(!valid_name("Lead") && !valid_name("-x") && !valid_name("a b") && !valid_name(""));
        let m = manifest("hi", Lang::Js, "echo \"x\"");
        let parsed = crate::config::Manifest::parse(Path::new("hi.toml"), &m).unwrap();
        assert_eq!(parsed.config["reply"], "Thanks! We got your message and will answer soon.");
        let doc: toml::Table = toml::from_str(&m).unwrap();
        assert_eq!(doc["build"]["command"].as_str(), Some("echo \"x\""));
    }
}
