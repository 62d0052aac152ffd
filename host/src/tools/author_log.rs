//! What `switchboard dev --plugin DIR` shows its author on stdout: for the
//! plugins being developed only, each line they log or print and one line
//! per invocation with its outcome, readable at a glance; the server's own
//! log stays on stderr.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The plugins whose lines are shown (none until `dev --plugin` adds them).
fn watched() -> &'static RwLock<HashSet<String>> {
    static WATCHED: OnceLock<RwLock<HashSet<String>>> = OnceLock::new();
    WATCHED.get_or_init(Default::default)
}

/// Shows `plugin`'s lines from now on.
pub fn watch(plugin: &str) {
    crate::sync::write(watched()).insert(plugin.to_string());
}

/// The fields of one event that a line is made of.
#[derive(Default)]
struct Fields {
    message: String,
    plugin: Option<String>,
    event: Option<String>,
    us: Option<u64>,
    error: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "us" {
            self.us = Some(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "us" {
            self.us = u64::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

impl Fields {
    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "plugin" => self.plugin = Some(value),
            "event" => self.event = Some(value),
            "error" => self.error = Some(value),
            _ => {}
        }
    }
}

/// The tracing layer that prints the watched plugins' lines.
#[derive(Debug, Default)]
pub struct AuthorLog;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuthorLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let from_plugin = meta.target() == "plugin";
        if !from_plugin && meta.target() != "switchboard::engine::dispatch" {
            return;
        }
        if crate::sync::read(watched()).is_empty() {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(plugin) = f.plugin.as_deref().filter(|p| crate::sync::read(watched()).contains(*p)) else {
            return;
        };
        let time = chrono::Local::now().format("%H:%M:%S");
        let event_id = f.event.as_deref().map(|e| &e[e.len().saturating_sub(8)..]).unwrap_or("");
        let mut line = String::new();
        if from_plugin {
            let level = meta.level().as_str().to_ascii_lowercase();
            let _ = write!(line, "{time} {plugin} {level:<5} {}", f.message);
        } else {
            let ms = f.us.map(|us| us as f64 / 1e3).unwrap_or(0.0);
            match (f.message.as_str(), &f.error) {
                ("delivery done", _) => {
                    let _ = write!(line, "{time} {plugin} ok    event …{event_id} in {ms:.1} ms");
                }
                ("delivery failed", Some(error)) => {
                    let _ = write!(line, "{time} {plugin} FAIL  event …{event_id} in {ms:.1} ms: {error}");
                }
                _ => return,
            }
        }
        println!("{line}");
    }
}
