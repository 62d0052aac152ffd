//! The server's Prometheus metrics (`GET /metrics` on the admin listener),
//! one [`Metrics`] per server (no global recorder, so servers in one process
//! keep their own counts): webhooks by outcome, deliveries by outcome,
//! invocation and wasm time, and gauges read at scrape time (queues, held
//! deliveries, long runs, compiles). Tenant and plugin labels are capped at
//! [`Metrics::max_label_sets`] distinct pairs; past it, new pairs count under
//! `_other`, so a flood of names cannot grow the registry without bound.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label a tenant or plugin is counted under once the cap is reached.
pub const OTHER: &str = "_other";

/// Labels of a webhook outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    tenant: String,
    outcome: String,
}

/// Labels of a delivery outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    tenant: String,
    plugin: String,
    outcome: String,
}

/// Labels of a per-plugin histogram or gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    tenant: String,
    plugin: String,
}

/// Labels of a JustCall call's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JustCallLabels {
    tenant: String,
    result: String,
}

/// Labels of a per-tenant series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// Labels of a host-wide gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The histogram of database commit times (10 µs … ~5 s): the storage
/// writer observes it, [`Metrics::with_db_commits`] exposes it.
pub fn db_commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

fn seconds_histogram() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    invocation: Family<PluginLabels, Histogram, fn() -> Histogram>,
    wasm: Family<PluginLabels, Histogram, fn() -> Histogram>,
    queue: Family<KindLabels, Gauge>,
    held: Family<PluginLabels, Gauge>,
    host: Family<KindLabels, Gauge>,
    justcall: Family<JustCallLabels, Counter>,
    justcall_seconds: Family<TenantLabels, Histogram, fn() -> Histogram>,
    budget_waits: Family<JustCallLabels, Counter>,
    timers_fired: Family<PluginLabels, Counter>,
    timer_lag: Histogram,
    seen: Mutex<HashSet<(String, String)>>,
    max_label_sets: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("max_label_sets", &self.max_label_sets).finish()
    }
}

/// What the server reads at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Deliveries waiting in the tenants' queues.
    pub queued: u64,
    /// Deliveries running.
    pub running: u64,
    /// Wasm memory reserved by running deliveries, bytes.
    pub memory_bytes: u64,
    /// Held deliveries by (tenant, plugin).
    pub held: Vec<(String, String, u64)>,
    /// Invocations moved to the long-run lane since start.
    pub long_runs: u64,
    /// Components compiled since start.
    pub compiles: u64,
    /// Plugin versions rejected at load, now.
    pub rejected: u64,
    /// Plugin versions loaded since start (first loads and reloads).
    pub reloads: u64,
    /// Plugin versions rejected since start.
    pub rejections: u64,
    /// Timers and schedules pending, all tenants.
    pub timers_pending: u64,
}

impl Metrics {
    /// Empty metrics with at most `max_label_sets` distinct (tenant, plugin) labels.
    pub fn new(max_label_sets: usize) -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhooks by outcome: accepted, duplicate, or refused_<reason>",
            webhooks.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register("deliveries", "Delivery attempts by outcome: done or failed", deliveries.clone());
        let invocation = Family::<PluginLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register("invocation_seconds", "Wall time of a delivery attempt", invocation.clone());
        let wasm = Family::<PluginLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register("wasm_seconds", "Time a delivery attempt spent running wasm", wasm.clone());
        let queue = Family::<KindLabels, Gauge>::default();
        registry.register(
            "dispatch",
            "Deliveries queued and running, and wasm memory reserved (bytes)",
            queue.clone(),
        );
        let held = Family::<PluginLabels, Gauge>::default();
        registry.register("held_deliveries", "Deliveries held for a paused plugin", held.clone());
        let host = Family::<KindLabels, Gauge>::default();
        registry.register(
            "host",
            "Since start: long runs (moved to the low-priority lane), compiles, reloads (versions loaded) and rejections (versions refused); now: rejected plugin versions",
            host.clone(),
        );
        let justcall = Family::<JustCallLabels, Counter>::default();
        registry.register(
            "justcall_requests",
            "JustCall API requests by result: 2xx, 4xx, 429, 5xx or transport",
            justcall.clone(),
        );
        let justcall_seconds =
            Family::<TenantLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register("justcall_seconds", "Latency of a JustCall API request", justcall_seconds.clone());
        let budget_waits = Family::<JustCallLabels, Counter>::default();
        registry.register(
            "justcall_budget",
            "Requests that waited for the tenant's JustCall budget (waited) or found it spent past their deadline (exhausted)",
            budget_waits.clone(),
        );
        let timers_fired = Family::<PluginLabels, Counter>::default();
        registry.register(
            "timers_fired",
            "Timers and schedules fired (each a `timer` event with one delivery)",
            timers_fired.clone(),
        );
        let timer_lag = seconds_histogram();
        registry.register("timer_lag_seconds", "From when a timer was due to when it fired", timer_lag.clone());
        Metrics {
            timers_fired,
            timer_lag,
            registry,
            justcall,
            justcall_seconds,
            budget_waits,
            webhooks,
            deliveries,
            invocation,
            wasm,
            queue,
            held,
            host,
            seen: Mutex::new(HashSet::new()),
            max_label_sets,
        }
    }

    /// Exposes `commits` (observed by the storage writer) as `db_commit_seconds`.
    pub fn with_db_commits(mut self, commits: Histogram) -> Metrics {
        self.registry.register(
            "db_commit_seconds",
            "Time to commit one write batch (one transaction, one fsync)",
            commits,
        );
        self
    }

    /// The cap on distinct (tenant, plugin) label pairs.
    pub fn max_label_sets(&self) -> usize {
        self.max_label_sets
    }

    /// The labels a (tenant, plugin) pair is counted under: itself while
    /// under the cap (or already seen), else [`OTHER`].
    fn labels(&self, tenant: &str, plugin: &str) -> (String, String) {
        let key = (tenant.to_string(), plugin.to_string());
        let mut seen = crate::sync::lock(&self.seen);
        if seen.contains(&key) {
            return key;
        }
        if seen.len() < self.max_label_sets {
            seen.insert(key.clone());
            return key;
        }
        (OTHER.to_string(), OTHER.to_string())
    }

    /// Counts a webhook: `tenant` is `None` when it named no configured tenant.
    pub fn webhook(&self, tenant: Option<&str>, outcome: &str) {
        let tenant = match tenant {
            Some(t) => self.labels(t, "").0,
            None => OTHER.to_string(),
        };
        self.webhooks
            .get_or_create(&WebhookLabels {
                tenant,
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a delivery attempt's end and its times.
    pub fn delivery(&self, tenant: &str, plugin: &str, done: bool, seconds: f64, wasm_seconds: f64) {
        let (tenant, plugin) = self.labels(tenant, plugin);
        let outcome = if done { "done" } else { "failed" }.to_string();
        self.deliveries
            .get_or_create(&DeliveryLabels {
                tenant: tenant.clone(),
                plugin: plugin.clone(),
                outcome,
            })
            .inc();
        let labels = PluginLabels { tenant, plugin };
        self.invocation.get_or_create(&labels).observe(seconds);
        self.wasm.get_or_create(&labels).observe(wasm_seconds);
    }

    /// Counts a JustCall API request's result (`2xx`, `4xx`, `429`, `5xx`,
    /// `transport`) and latency.
    pub fn justcall(&self, tenant: &str, result: &str, seconds: f64) {
        let tenant = self.labels(tenant, "").0;
        self.justcall
            .get_or_create(&JustCallLabels {
                tenant: tenant.clone(),
                result: result.to_string(),
            })
            .inc();
        self.justcall_seconds.get_or_create(&TenantLabels { tenant }).observe(seconds);
    }

    /// Counts a request that `waited` for the tenant's JustCall budget, or
    /// found it spent past its deadline (`exhausted`).
    pub fn budget(&self, tenant: &str, result: &str) {
        let tenant = self.labels(tenant, "").0;
        self.budget_waits
            .get_or_create(&JustCallLabels {
                tenant,
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a timer's firing, `lag_seconds` after it was due.
    pub fn timer_fired(&self, tenant: &str, plugin: &str, lag_seconds: f64) {
        let (tenant, plugin) = self.labels(tenant, plugin);
        self.timers_fired.get_or_create(&PluginLabels { tenant, plugin }).inc();
        self.timer_lag.observe(lag_seconds.max(0.0));
    }

    /// The Prometheus text exposition, with the gauges set from `g`.
    pub fn render(&self, g: &Gauges) -> String {
        let set = |family: &Family<KindLabels, Gauge>, kind: &str, v: u64| {
            family.get_or_create(&KindLabels { kind: kind.into() }).set(v as i64);
        };
        set(&self.queue, "queued", g.queued);
        set(&self.queue, "running", g.running);
        set(&self.queue, "memory_bytes", g.memory_bytes);
        set(&self.host, "long_runs", g.long_runs);
        set(&self.host, "compiles", g.compiles);
        set(&self.host, "rejected_plugins", g.rejected);
        set(&self.host, "reloads", g.reloads);
        set(&self.host, "rejections", g.rejections);
        set(&self.host, "timers_pending", g.timers_pending);
        self.held.clear();
        for (tenant, plugin, n) in &g.held {
            let (tenant, plugin) = self.labels(tenant, plugin);
            self.held.get_or_create(&PluginLabels { tenant, plugin }).inc_by(*n as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text_and_labels_are_capped() {
        let m = Metrics::new(2);
        m.webhook(Some("acme"), "accepted");
        m.webhook(None, "refused_unknown_tenant");
        m.delivery("acme", "crm", true, 0.01, 0.0001);
        m.delivery("acme", "crm", false, 0.02, 0.0002);
        // A third pair is over the cap of 2 ("acme"/"" and "acme"/"crm").
        m.delivery("globex", "spam", true, 0.01, 0.0001);
        let text = m.render(&Gauges {
            queued: 3,
            held: vec![("acme".into(), "crm".into(), 2)],
            ..Gauges::default()
        });
        assert!(
            text.contains("switchboard_webhooks_total{tenant=\"acme\",outcome=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_webhooks_total{tenant=\"_other\",outcome=\"refused_unknown_tenant\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_deliveries_total{tenant=\"acme\",plugin=\"crm\",outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_deliveries_total{tenant=\"_other\",plugin=\"_other\",outcome=\"done\"} 1"),
            "{text}"
        );
        assert!(!text.contains("globex"), "{text}");
        assert!(
            text.contains("switchboard_invocation_seconds_count{tenant=\"acme\",plugin=\"crm\"} 2"),
            "{text}"
        );
        assert!(text.contains("switchboard_dispatch{kind=\"queued\"} 3"), "{text}");
        assert!(
            text.contains("switchboard_held_deliveries{tenant=\"acme\",plugin=\"crm\"} 2"),
            "{text}"
        );
        m.justcall("acme", "429", 0.05);
        m.budget("acme", "waited");
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("switchboard_justcall_requests_total{tenant=\"acme\",result=\"429\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchboard_justcall_seconds_count{tenant=\"acme\"} 1"), "{text}");
        assert!(
            text.contains("switchboard_justcall_budget_total{tenant=\"acme\",result=\"waited\"} 1"),
            "{text}"
        );
    }
}
