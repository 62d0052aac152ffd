//! What one delivery attempt did, as the host saw it: the plugin's log lines
//! (within its log cap), each host call summarised (what, its result, how
//! long), the wasm time and the peak linear memory. `capabilities` and the
//! HTTP gate add to a [`Tracer`] as calls happen; the dispatcher hands the
//! finished [`Trace`] to storage, off the critical path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::domain::cap;

/// Longest summary of one host call's arguments or result, bytes.
pub const MAX_SUMMARY: usize = 300;

/// One host call, summarised.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TracedCall {
    /// Which call: `sms.send`, `http.send`, `wasi:http`, `kv.set`, ….
    pub call: String,
    /// Its arguments, summarised (`to +1512… "body"`, `POST https://…`, a key).
    pub args: String,
    /// `ok` with what came back (an id, a status), or the error.
    pub result: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// When it started, ms from the attempt's start.
    pub at_ms: f64,
    /// How long it took, ms.
    pub ms: f64,
}

/// One line the plugin logged (or printed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TracedLog {
    /// `trace` … `error`.
    pub level: String,
    /// The line, as logged (capped).
    pub message: String,
    /// When, ms from the attempt's start.
    pub at_ms: f64,
}

/// What an attempt did, once it has ended.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trace {
    /// Log lines, in order.
    pub logs: Vec<TracedLog>,
    /// Host calls, in the order they started.
    pub calls: Vec<TracedCall>,
    /// Time spent running wasm, µs.
    pub wasm_us: u64,
    /// The largest linear memory the instance asked for, bytes.
    pub peak_memory_bytes: u64,
}

#[derive(Debug, Default)]
struct Lines {
    logs: Vec<TracedLog>,
    calls: Vec<TracedCall>,
}

/// Collects one attempt's trace as it runs. Shared by the store data and
/// the HTTP gate (a wasi:http request runs as its own task).
#[derive(Debug)]
pub struct Tracer {
    started: Instant,
    lines: Mutex<Lines>,
    peak_memory: AtomicUsize,
    wasm_us: AtomicU64,
    /// The delivery's span, parent of the host calls' (when traces are exported).
    span: std::sync::OnceLock<tracing::Span>,
    /// Values never recorded: the plugin's secrets.
    hidden: std::sync::OnceLock<crate::engine::secrets::PluginSecrets>,
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::new()
    }
}

/// A host call in progress; [`Tracer::end`] records it.
#[derive(Debug)]
pub struct CallStart {
    call: &'static str,
    args: String,
    at: Instant,
    /// Its span, when traces are exported; ends with the call.
    _span: tracing::Span,
}

impl Tracer {
    /// A tracer whose clock starts now.
    pub fn new() -> Tracer {
        Tracer {
            started: Instant::now(),
            lines: Mutex::new(Lines::default()),
            peak_memory: AtomicUsize::new(0),
            wasm_us: AtomicU64::new(0),
            span: std::sync::OnceLock::new(),
            hidden: std::sync::OnceLock::new(),
        }
    }

    /// Never records these values (the plugin's secrets): each becomes
    /// `[secret]` in call arguments, results and log lines.
    pub fn hide(&self, secrets: crate::engine::secrets::PluginSecrets) {
        let _ = self.hidden.set(secrets);
    }

    fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match self.hidden.get() {
            Some(s) if !s.is_empty() => crate::engine::secrets::scrub(s, text),
            _ => std::borrow::Cow::Borrowed(text),
        }
    }

    /// Makes host calls' spans children of `span` (the delivery's), wherever
    /// the plugin runs.
    pub fn within(&self, span: &tracing::Span) {
        let _ = self.span.set(span.clone());
    }

    fn ms_since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64() * 1e3
    }

    /// Records a log line (already within the plugin's log cap).
    pub fn log(&self, level: &str, message: &str) {
        let line = TracedLog {
            level: level.to_string(),
            message: self.scrub(message).into_owned(),
            at_ms: self.ms_since_start(Instant::now()),
        };
        crate::sync::lock(&self.lines).logs.push(line);
    }

    /// Starts timing a host call with these arguments (summarised).
    pub fn begin(&self, call: &'static str, args: &str) -> CallStart {
        let args = self.scrub(args);
        let args = args.as_ref();
        CallStart {
            _span: crate::telemetry::span(|| match self.span.get() {
                Some(parent) => tracing::info_span!(parent: parent, "host_call", otel.name = call, args = %cap(args, MAX_SUMMARY)),
                None => tracing::info_span!("host_call", otel.name = call, args = %cap(args, MAX_SUMMARY)),
            }),
            call,
            args: cap(args, MAX_SUMMARY).into_owned(),
            at: Instant::now(),
        }
    }

    /// Records how a call started with [`Tracer::begin`] ended.
    pub fn end(&self, start: CallStart, result: Result<String, String>) {
        let (ok, text) = match result {
            Ok(t) if t.is_empty() => (true, "ok".to_string()),
            Ok(t) => (true, format!("ok: {t}")),
            Err(e) => (false, e),
        };
        let call = TracedCall {
            call: start.call.to_string(),
            args: start.args,
            result: cap(&self.scrub(&text), MAX_SUMMARY).into_owned(),
            ok,
            at_ms: self.ms_since_start(start.at),
            ms: start.at.elapsed().as_secs_f64() * 1e3,
        };
        crate::sync::lock(&self.lines).calls.push(call);
    }

    /// Notes a linear-memory size the instance asked for.
    pub fn memory(&self, bytes: usize) {
        self.peak_memory.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Sets the attempt's wasm time.
    pub fn wasm_time(&self, wasm: std::time::Duration) {
        self.wasm_us.store(wasm.as_micros() as u64, Ordering::Relaxed);
    }

    /// The wasm time set so far, µs.
    pub fn wasm_us(&self) -> u64 {
        self.wasm_us.load(Ordering::Relaxed)
    }

    /// Hands the ended attempt's trace to storage, not awaited: it is queued
    /// behind the delivery's start on the writer. Returns the trace.
    pub fn record(
        &self,
        db: &crate::storage::Db,
        delivery_id: i64,
        plugin_hash: Option<String>,
        (started_ms, ended_ms): (i64, i64),
        error: Option<String>,
    ) -> Trace {
        let t = self.finish();
        db.record_attempt(crate::storage::NewAttempt {
            delivery_id,
            plugin_hash,
            started_ms,
            ended_ms,
            error,
            wasm_us: t.wasm_us,
            peak_memory_bytes: t.peak_memory_bytes,
            logs_json: serde_json::to_string(&t.logs).unwrap_or_else(|_| "[]".into()),
            calls_json: serde_json::to_string(&t.calls).unwrap_or_else(|_| "[]".into()),
        });
        t
    }

    /// The trace so far (calls in start order).
    pub fn finish(&self) -> Trace {
        let mut lines = std::mem::take(&mut *crate::sync::lock(&self.lines));
        lines.calls.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        Trace {
            logs: lines.logs,
            calls: lines.calls,
            wasm_us: self.wasm_us.load(Ordering::Relaxed),
            peak_memory_bytes: self.peak_memory.load(Ordering::Relaxed) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_summarised_capped_and_ordered_by_start() {
        let t = Tracer::new();
        let first = t.begin("http.send", "POST https://crm.example.com/leads");
        let second = t.begin("kv.set", &"k".repeat(1000));
        t.end(second, Ok(String::new()));
        t.end(first, Err("not-allowed: crm.example.com is not in allowed_hosts".into()));
        t.log("info", "hello");
        t.memory(1 << 20);
        t.memory(1 << 16);
        let trace = t.finish();
        assert_eq!(trace.calls[0].call, "http.send");
        assert!(!trace.calls[0].ok);
        assert_eq!(trace.calls[1].result, "ok");
        assert!(trace.calls[1].args.len() < MAX_SUMMARY + 40, "{}", trace.calls[1].args);
        assert_eq!((trace.logs[0].message.as_str(), trace.peak_memory_bytes), ("hello", 1 << 20));
        assert!(t.finish().calls.is_empty(), "finish takes what was recorded");
    }
}
