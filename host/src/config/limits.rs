//! Plugin limits, defined once in [`LIMITS`]: each limit's key in a
//! `[limits]` table, default, floor, ceiling and unit. From the table come
//! the overrides a tenant or a manifest writes ([`LimitOverrides`], checked
//! against the ceilings with file, line and key) and a plugin's effective,
//! typed [`Limits`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// A plugin limit, as `[limits]` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Wall-clock deadline per event.
    TimeoutMs,
    /// Linear memory.
    MemoryMb,
    /// `sms.send` calls per event.
    SmsPerEvent,
    /// `http.send` calls per event.
    HttpPerEvent,
    /// HTTP response bytes a plugin may read.
    HttpResponseKb,
    /// KV keys stored per (tenant, plugin).
    KvKeys,
    /// KV bytes (keys + values) per (tenant, plugin).
    KvKb,
    /// Log bytes per event before the rest is dropped.
    LogKb,
    /// The event handed to the plugin.
    EventKb,
    /// Elements per table.
    TableElements,
    /// Wasm stack (rounded up to a power of two).
    StackKb,
    /// `http.send` / `fetch()` request body bytes.
    HttpRequestKb,
    /// Pending timers per (tenant, plugin).
    Timers,
    /// Bytes of payload one timer carries.
    TimerPayloadKb,
    /// The longest a timer may be scheduled ahead.
    TimerMaxDays,
}

/// What a limit's value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Milliseconds,
    /// MiB.
    Mebibytes,
    /// KiB.
    Kibibytes,
    /// A plain count.
    Count,
    /// Days.
    Days,
}

/// One row of the limits table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Which limit.
    pub limit: Limit,
    /// Its key in `[limits]`.
    pub key: &'static str,
    /// Its value when neither the tenant nor the manifest sets it.
    pub default: u64,
    /// The smallest value allowed.
    pub min: u64,
    /// The ceiling of a tenant whose operator sets none: a manifest may
    /// ask up to it.
    pub ceiling: u64,
    /// The host ceiling: no tenant or manifest may go above it.
    pub max: u64,
    /// What the value counts.
    pub unit: Unit,
}

const fn row(limit: Limit, key: &'static str, [default, min, ceiling, max]: [u64; 4], unit: Unit) -> LimitSpec {
    LimitSpec {
        limit,
        key,
        default,
        min,
        ceiling,
        max,
        unit,
    }
}

/// Every limit: the one place keys, defaults, floors, ceilings and units
/// are written, as `[default, min, tenant ceiling when unset, host max]`.
/// In [`Limit`] order.
pub const LIMITS: [LimitSpec; 15] = [
    row(Limit::TimeoutMs, "timeout_ms", [1_000, 1, 10_000, 30_000], Unit::Milliseconds),
    row(Limit::MemoryMb, "memory_mb", [64, 1, 128, 512], Unit::Mebibytes),
    row(Limit::SmsPerEvent, "sms_per_event", [5, 1, 20, 100], Unit::Count),
    row(Limit::HttpPerEvent, "http_per_event", [10, 1, 20, 100], Unit::Count),
    row(
        Limit::HttpResponseKb,
        "http_response_kb",
        [1 << 10, 1, 4 << 10, 16 << 10],
        Unit::Kibibytes,
    ),
    row(Limit::KvKeys, "kv_keys", [1_000, 1, 10_000, 100_000], Unit::Count),
    row(Limit::KvKb, "kv_kb", [1 << 10, 1, 4 << 10, 64 << 10], Unit::Kibibytes),
    row(Limit::LogKb, "log_kb", [64, 1, 256, 1024], Unit::Kibibytes),
    // The webhook body cap: a bigger event cannot arrive.
    row(Limit::EventKb, "event_kb", [256, 1, 256, 256], Unit::Kibibytes),
    // Also the pooling allocator's table size.
    row(Limit::TableElements, "table_elements", [100_000, 1, 100_000, 100_000], Unit::Count),
    row(Limit::StackKb, "stack_kb", [512, 64, 1024, 1024], Unit::Kibibytes),
    row(
        Limit::HttpRequestKb,
        "http_request_kb",
        [256, 1, 1 << 10, 16 << 10],
        Unit::Kibibytes,
    ),
    row(Limit::Timers, "timers", [1_000, 1, 10_000, 1_000_000], Unit::Count),
    row(Limit::TimerPayloadKb, "timer_payload_kb", [4, 1, 16, 64], Unit::Kibibytes),
    row(Limit::TimerMaxDays, "timer_max_days", [90, 1, 366, 3_660], Unit::Days),
];

impl Limit {
    /// This limit's row of [`LIMITS`].
    pub const fn spec(self) -> &'static LimitSpec {
        &LIMITS[self as usize]
    }

    /// The limit a `[limits]` key names.
    pub fn from_key(key: &str) -> Option<Limit> {
        LIMITS.iter().find(|s| s.key == key).map(|s| s.limit)
    }
}

/// Limits as a tenant's `[tenants.x.limits]` or a manifest's `[limits]`
/// writes them: each one optional, each within its floor and ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides([Option<u64>; LIMITS.len()]);

impl LimitOverrides {
    /// The value written for `limit`, if any.
    pub fn get(&self, limit: Limit) -> Option<u64> {
        self.0[limit as usize]
    }

    /// Sets `limit` (callers keep it within the table's range; config files
    /// are checked by [`RawLimits::validate`]).
    pub fn set(&mut self, limit: Limit, value: u64) {
        self.0[limit as usize] = Some(value);
    }
}

/// A `[limits]` table as written: keys checked against [`LIMITS`].
#[derive(Deserialize)]
#[serde(transparent)]
pub(super) struct RawLimits(BTreeMap<String, Spanned<u64>>);

impl RawLimits {
    /// Checks every key and value against the table; `prefix` is the key
    /// path of the table (`limits`, `tenants.acme.limits`).
    pub(super) fn validate(&self, path: &Path, src: &str, prefix: &str) -> Result<LimitOverrides, ConfigError> {
        let mut out = LimitOverrides::default();
        for (key, value) in &self.0 {
            let at = |message: String| ConfigError::new(path, src, Some(value.span()), format!("{prefix}.{key}"), message);
            let Some(limit) = Limit::from_key(key) else {
                let keys: Vec<&str> = LIMITS.iter().map(|s| s.key).collect();
                return Err(at(format!("unknown limit; expected one of {}", keys.join(", "))));
            };
            let spec = limit.spec();
            let v = *value.get_ref();
            if !(spec.min..=spec.max).contains(&v) {
                return Err(at(format!("must be {}..={}", spec.min, spec.max)));
            }
            out.set(limit, v);
        }
        Ok(out)
    }
}

/// A plugin's effective limits, typed for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline for one event.
    pub timeout: Duration,
    /// Linear memory cap, bytes.
    pub memory_bytes: usize,
    /// SMS sends allowed per event.
    pub sms_per_event: u32,
    /// Outbound HTTP requests allowed per event.
    pub http_per_event: u32,
    /// Largest HTTP response body a plugin may read.
    pub http_response_bytes: usize,
    /// Largest HTTP request body a plugin may send.
    pub http_request_bytes: usize,
    /// KV keys per (tenant, plugin).
    pub kv_keys: u64,
    /// KV bytes (keys + values) per (tenant, plugin).
    pub kv_bytes: u64,
    /// Log bytes per event; the rest is dropped after a marker.
    pub log_bytes: usize,
    /// Largest event handed to the plugin.
    pub event_bytes: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// Wasm stack, bytes (a power of two).
    pub wasm_stack_bytes: usize,
    /// Pending timers per (tenant, plugin).
    pub timers: u64,
    /// Largest timer payload, bytes.
    pub timer_payload_bytes: usize,
    /// Longest delay a timer may be scheduled with.
    pub timer_max_delay: Duration,
}

/// `value` of a limit in its unit, in the engine's unit (bytes, or as is).
fn in_engine_units(limit: Limit, value: u64) -> u64 {
    match limit.spec().unit {
        Unit::Mebibytes => value << 20,
        Unit::Kibibytes => value << 10,
        Unit::Days => value * 86_400_000,
        Unit::Milliseconds | Unit::Count => value,
    }
}

impl Limits {
    /// Limits from a value for each limit, in the table's units.
    fn from_values(value: impl Fn(Limit) -> u64) -> Limits {
        let v = |l: Limit| in_engine_units(l, value(l));
        Limits {
            timeout: Duration::from_millis(v(Limit::TimeoutMs)),
            memory_bytes: v(Limit::MemoryMb) as usize,
            sms_per_event: v(Limit::SmsPerEvent) as u32,
            http_per_event: v(Limit::HttpPerEvent) as u32,
            http_response_bytes: v(Limit::HttpResponseKb) as usize,
            http_request_bytes: v(Limit::HttpRequestKb) as usize,
            kv_keys: v(Limit::KvKeys),
            kv_bytes: v(Limit::KvKb),
            log_bytes: v(Limit::LogKb) as usize,
            event_bytes: v(Limit::EventKb) as usize,
            table_elements: v(Limit::TableElements) as usize,
            // Each distinct stack size is an engine: round up to a power of two.
            wasm_stack_bytes: (v(Limit::StackKb) as usize).next_power_of_two().min(Limits::max_stack_bytes()),
            timers: v(Limit::Timers),
            timer_payload_bytes: v(Limit::TimerPayloadKb) as usize,
            timer_max_delay: Duration::from_millis(v(Limit::TimerMaxDays)),
        }
    }

    /// The effective limits: the manifest's value, else the tenant's, else
    /// the default, and never above the tenant's ceiling. Limits are a
    /// hierarchy of ceilings: the host's (`max`) ≥ the tenant's (its value,
    /// else the table's `ceiling`) ≥ the manifest's. A manifest may lower a
    /// limit; a value above its tenant's is cut to it ([`Limits::clamped`]).
    pub fn resolve(tenant: &LimitOverrides, manifest: &LimitOverrides) -> Limits {
        Limits::from_values(|l| {
            let asked = manifest.get(l).or(tenant.get(l)).unwrap_or(l.spec().default);
            asked.min(Self::tenant_ceiling(tenant, l))
        })
    }

    /// A tenant's ceiling for `limit`: its own value, else the table's.
    fn tenant_ceiling(tenant: &LimitOverrides, limit: Limit) -> u64 {
        tenant.get(limit).unwrap_or(limit.spec().ceiling)
    }

    /// The manifest values [`Limits::resolve`] cut to the tenant's ceiling,
    /// one line each (`memory_mb = 512 exceeds the tenant's 64; runs at 64`),
    /// for load warnings, `plugin check` and the admin status.
    pub fn clamped(tenant: &LimitOverrides, manifest: &LimitOverrides) -> Vec<String> {
        LIMITS
            .iter()
            .filter_map(|spec| {
                let asked = manifest.get(spec.limit)?;
                let ceiling = Self::tenant_ceiling(tenant, spec.limit);
                (asked > ceiling).then(|| format!("{} = {asked} exceeds the tenant's {ceiling}; runs at {ceiling}", spec.key))
            })
            .collect()
    }

    /// The largest linear memory any plugin may have, bytes.
    pub fn max_memory_bytes() -> usize {
        in_engine_units(Limit::MemoryMb, Limit::MemoryMb.spec().max) as usize
    }

    /// The most table elements any plugin may have.
    pub fn max_table_elements() -> usize {
        Limit::TableElements.spec().max as usize
    }

    /// The largest wasm stack any plugin may have, bytes.
    pub fn max_stack_bytes() -> usize {
        in_engine_units(Limit::StackKb, Limit::StackKb.spec().max) as usize
    }
}

/// The default wasm memory budget: half the machine's memory (from
/// `/proc/meminfo`), or 4 GiB where that cannot be read; at least 512 MiB.
pub fn default_wasm_memory_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kb.map_or(4 << 10, |kb| kb / 1024 / 2).max(512)
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_values(|l| l.spec().default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_limit_order_with_defaults_in_range() {
        for (i, spec) in LIMITS.iter().enumerate() {
            assert_eq!(spec.limit as usize, i, "{} is out of order", spec.key);
            assert!(
                spec.min <= spec.default && spec.default <= spec.ceiling && spec.ceiling <= spec.max,
                "{}",
                spec.key
            );
            assert_eq!(Limit::from_key(spec.key), Some(spec.limit));
        }
        assert_eq!(Limit::from_key("timeout"), None);
    }

    #[test]
    fn defaults_in_engine_units() {
        let d = Limits::default();
        assert_eq!(d.timeout, Duration::from_secs(1));
        assert_eq!(d.memory_bytes, 64 << 20);
        assert_eq!((d.sms_per_event, d.http_per_event), (5, 10));
        assert_eq!((d.http_response_bytes, d.kv_bytes, d.log_bytes), (1 << 20, 1 << 20, 64 << 10));
        assert_eq!((d.kv_keys, d.event_bytes, d.table_elements), (1_000, 256 << 10, 100_000));
        assert_eq!(d.wasm_stack_bytes, 512 << 10);
        assert_eq!(Limits::max_memory_bytes(), 512 << 20);
    }

    #[test]
    fn tenant_limits_are_ceilings_a_manifest_may_only_lower_and_stacks_round_up() {
        let mut tenant = LimitOverrides::default();
        tenant.set(Limit::SmsPerEvent, 2);
        tenant.set(Limit::TimeoutMs, 300);
        tenant.set(Limit::MemoryMb, 64);
        let mut manifest = LimitOverrides::default();
        manifest.set(Limit::TimeoutMs, 500);
        manifest.set(Limit::MemoryMb, 512);
        manifest.set(Limit::StackKb, 200);
        manifest.set(Limit::HttpPerEvent, 3);
        let l = Limits::resolve(&tenant, &manifest);
        assert_eq!((l.timeout, l.sms_per_event), (Duration::from_millis(300), 2));
        assert_eq!((l.memory_bytes, l.http_per_event), (64 << 20, 3));
        assert_eq!(l.wasm_stack_bytes, 256 << 10);
        // A tenant that sets nothing has the table's ceiling: a manifest may
        // ask above the default up to it, and is cut there.
        let mut greedy = LimitOverrides::default();
        greedy.set(Limit::KvKeys, 50_000);
        greedy.set(Limit::MemoryMb, 128);
        let unset = LimitOverrides::default();
        let g = Limits::resolve(&unset, &greedy);
        assert_eq!((g.kv_keys, g.memory_bytes), (10_000, 128 << 20));
        assert_eq!(
            Limits::clamped(&unset, &greedy),
            ["kv_keys = 50000 exceeds the tenant's 10000; runs at 10000"]
        );
        assert_eq!(
            Limits::clamped(&tenant, &manifest),
            [
                "timeout_ms = 500 exceeds the tenant's 300; runs at 300",
                "memory_mb = 512 exceeds the tenant's 64; runs at 64",
            ]
        );
        assert!(Limits::clamped(&tenant, &LimitOverrides::default()).is_empty());
    }
}
