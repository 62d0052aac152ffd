//! The `timers` host calls: a delivery's schedules and cancels are checked
//! against the plugin's limits (key, payload, delay, pending count) and
//! staged in its [`TimerStage`](crate::engine::timer_stage::TimerStage), which the dispatcher commits with the
//! delivery's success.

use crate::config::Limits;
use crate::domain::clock::ms_to_rfc3339;
use crate::engine::bindings::timers::{self, Due, Timer, TimerError};
use crate::engine::capabilities::{Invocation, PluginCtx};
use crate::engine::timer_stage::Staged;
use crate::storage::DbError;

/// Longest timer key, bytes.
pub const MAX_TIMER_KEY: usize = 256;

fn storage(e: DbError) -> TimerError {
    TimerError::Storage(e.to_string())
}

/// The key's staged state, reading the store the first time the delivery
/// touches it.
async fn staged(inv: &Invocation, key: &str) -> Result<Staged, TimerError> {
    if let Some(s) = inv.timers.get(key) {
        return Ok(s.clone());
    }
    let stored = inv.db.timer(&inv.tenant.config.id, &inv.plugin, key).await.map_err(storage)?;
    Ok(Staged {
        existed: stored.is_some(),
        state: stored.map(|t| (t.due_ms, t.payload, 0)),
    })
}

async fn schedule(inv: &Invocation, limits: Limits, key: String, when: Due, payload: Vec<u8>) -> Result<i64, TimerError> {
    if key.is_empty() || key.len() > MAX_TIMER_KEY || key.contains('\0') {
        return Err(TimerError::Invalid(format!("a key is 1..={MAX_TIMER_KEY} bytes, without NUL")));
    }
    if payload.len() > limits.timer_payload_bytes {
        return Err(TimerError::QuotaExceeded(format!(
            "timer_payload_kb: the payload is {} bytes, over {}",
            payload.len(),
            limits.timer_payload_bytes
        )));
    }
    let stage = &inv.timers;
    let now = stage.clock().now_ms();
    let due_ms = match &when {
        Due::AfterMs(ms) => now.saturating_add(i64::try_from(*ms).unwrap_or(i64::MAX)),
        Due::At(at) => chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| TimerError::Invalid(format!("`{at}` is not an RFC 3339 time: {e}")))?
            .timestamp_millis(),
    };
    let max = limits.timer_max_delay.as_millis() as i64;
    if due_ms.saturating_sub(now) > max {
        return Err(TimerError::QuotaExceeded(format!(
            "timer_max_days: due {} is more than {} days ahead",
            ms_to_rfc3339(due_ms),
            max / 86_400_000
        )));
    }
    let mut staged = staged(inv, &key).await?;
    if staged.state.is_none() {
        // Counted once per delivery; its own changes are added to it.
        let pending = stage
            .stored(|| inv.db.timer_count(&inv.tenant.config.id, &inv.plugin))
            .await
            .map_err(storage)?;
        if pending as i64 + stage.net_added() >= limits.timers as i64 {
            return Err(TimerError::QuotaExceeded(format!(
                "timers: {} timers are already pending",
                limits.timers
            )));
        }
    }
    let seq = stage.next_seq();
    staged.state = Some((due_ms, payload, seq));
    stage.put(key, staged);
    Ok(due_ms)
}

async fn cancel(inv: &Invocation, key: String) -> Result<bool, TimerError> {
    let mut staged = staged(inv, &key).await?;
    let was = staged.state.take().is_some();
    inv.timers.put(key, staged);
    Ok(was)
}

impl timers::Host for PluginCtx {
    async fn schedule(&mut self, key: String, when: Due, payload: Vec<u8>) -> wasmtime::Result<Result<(), TimerError>> {
        let what = match &when {
            Due::AfterMs(ms) => format!("{key} in {ms} ms ({} bytes)", payload.len()),
            Due::At(at) => format!("{key} at {at} ({} bytes)", payload.len()),
        };
        let traced = self.invocation().trace.begin("timers.schedule", &what);
        let limits = *self.limits();
        let result = schedule(self.invocation(), limits, key, when, payload).await;
        let summary = match &result {
            Ok(due) => Ok(format!("due {}", ms_to_rfc3339(*due))),
            Err(e) => Err(describe(e)),
        };
        self.invocation().trace.end(traced, summary);
        Ok(result.map(|_| ()))
    }

    async fn cancel(&mut self, key: String) -> wasmtime::Result<Result<bool, TimerError>> {
        let traced = self.invocation().trace.begin("timers.cancel", &key);
        let result = cancel(self.invocation(), key).await;
        let summary = match &result {
            Ok(was) => Ok(if *was { "cancelled".into() } else { "none pending".into() }),
            Err(e) => Err(describe(e)),
        };
        self.invocation().trace.end(traced, summary);
        Ok(result)
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Timer>, TimerError>> {
        let traced = self.invocation().trace.begin("timers.get", &key);
        let result = staged(self.invocation(), &key).await.map(|s| {
            s.state.map(|(due, payload, _)| Timer {
                key: key.clone(),
                due_at: ms_to_rfc3339(due),
                payload,
            })
        });
        let summary = match &result {
            Ok(Some(t)) => Ok(format!("due {}", t.due_at)),
            Ok(None) => Ok("none pending".into()),
            Err(e) => Err(describe(e)),
        };
        self.invocation().trace.end(traced, summary);
        Ok(result)
    }
}

/// A one-line description of a timer error.
pub fn describe(e: &TimerError) -> String {
    match e {
        TimerError::QuotaExceeded(m) => format!("quota exceeded: {m}"),
        TimerError::Invalid(m) => format!("invalid: {m}"),
        TimerError::Storage(m) => format!("storage: {m}"),
    }
}
