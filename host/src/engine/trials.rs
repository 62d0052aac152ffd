//! Trials of a new plugin version beside the serving one, at most one per
//! (tenant, plugin): a **canary** serves a share of contacts (sticky by
//! contact number) and is compared with the serving version over a window —
//! failure rate and p99 — and rolled back past its margins; a **shadow**
//! runs on every event after the serving version, its effects noted and not
//! made, and the two versions' footprints are compared. Here is the state
//! and the verdicts (trials are stored as they start and end, and resumed
//! at start, their tallies afresh); `dispatch` picks versions and reports
//! outcomes, and `shadow` runs shadows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::domain::{Direction, Event};
use crate::engine::effects::Footprint;
use crate::engine::plugins::LoadedPlugin;
use crate::sync::{lock, read, write};

/// When a canary is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CanaryPolicy {
    /// The share of contacts it serves, 1–99 %.
    pub percent: u8,
    /// Rolled back when its failure rate is more than this many percentage
    /// points above the serving version's.
    pub failure_margin_pct: f64,
    /// Rolled back when its p99 is more than this much (%) above the
    /// serving version's (and at least 5 ms more).
    pub latency_margin_pct: f64,
    /// Judged only once it has run this many times in the window.
    pub min_runs: usize,
    /// The window both versions are compared over, seconds.
    pub window_secs: u64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            percent: 10,
            failure_margin_pct: 5.0,
            latency_margin_pct: 50.0,
            min_runs: 20,
            window_secs: 600,
        }
    }
}

/// What kind of trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrialKind {
    /// A share of traffic, judged by outcomes.
    Canary(CanaryPolicy),
    /// Every event, effects noted, judged by agreement.
    Shadow,
}

/// Which version ran a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The serving version, while a canary is deployed.
    Serving,
    /// The canary.
    Canary,
}

/// Runs in a window: when, whether it failed, how long.
#[derive(Debug, Default)]
struct Runs(VecDeque<(Instant, bool, u64)>);

/// At most this many runs are kept per arm.
const RUNS_KEPT: usize = 10_000;

impl Runs {
    fn push(&mut self, ok: bool, micros: u64, window: Duration) {
        let now = Instant::now();
        self.0.push_back((now, ok, micros));
        while self.0.len() > RUNS_KEPT || self.0.front().is_some_and(|r| now.duration_since(r.0) > window) {
            self.0.pop_front();
        }
    }

    /// (runs, failure rate %, p99 ms).
    fn summary(&self) -> (usize, f64, f64) {
        let n = self.0.len();
        if n == 0 {
            return (0, 0.0, 0.0);
        }
        let failed = self.0.iter().filter(|r| !r.1).count();
        let mut us: Vec<u64> = self.0.iter().map(|r| r.2).collect();
        us.sort_unstable();
        let p99 = us[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
        (n, failed as f64 * 100.0 / n as f64, p99)
    }
}

/// The first differing events a shadow keeps.
pub const DIFFERENCES_KEPT: usize = 20;

/// One event the two versions handled differently.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    /// The event.
    pub event_id: String,
    /// What the serving version did.
    pub serving: Footprint,
    /// What the shadow would have done.
    pub shadow: Footprint,
}

#[derive(Debug, Default)]
struct State {
    serving: Runs,
    canary: Runs,
    compared: u64,
    agreed: u64,
    skipped: u64,
    differences: Vec<Difference>,
}

/// A version on trial.
#[derive(Debug)]
pub struct Trial {
    /// The version.
    pub plugin: Arc<LoadedPlugin>,
    /// Canary or shadow.
    pub kind: TrialKind,
    /// The version serving when it started.
    pub against: Option<String>,
    /// Who started it.
    pub actor: String,
    /// When.
    pub started_at: chrono::DateTime<chrono::Utc>,
    state: Mutex<State>,
}

impl Trial {
    /// A trial of `plugin` against the version now serving.
    pub fn new(plugin: Arc<LoadedPlugin>, kind: TrialKind, against: Option<String>, actor: String) -> Trial {
        Trial {
            plugin,
            kind,
            against,
            actor,
            started_at: chrono::Utc::now(),
            state: Mutex::default(),
        }
    }

    /// Its state, for the API.
    pub fn report(&self) -> Value {
        let s = lock(&self.state);
        let mut out = json!({
            "version": self.plugin.version,
            "hash": self.plugin.hash,
            "against": self.against,
            "actor": self.actor,
            "started_at": self.started_at,
        });
        match self.kind {
            TrialKind::Canary(policy) => {
                let arm = |r: &Runs| {
                    let (runs, failure_pct, p99_ms) = r.summary();
                    json!({ "runs": runs, "failure_pct": failure_pct, "p99_ms": p99_ms })
                };
                out["mode"] = json!("canary");
                out["policy"] = json!(policy);
                out["serving"] = arm(&s.serving);
                out["canary"] = arm(&s.canary);
            }
            TrialKind::Shadow => {
                out["mode"] = json!("shadow");
                out["compared"] = json!(s.compared);
                out["agreed"] = json!(s.agreed);
                out["skipped"] = json!(s.skipped);
                out["agreement_pct"] = json!((s.compared > 0).then(|| s.agreed as f64 * 100.0 / s.compared as f64));
                out["differences"] = json!(s.differences);
            }
        }
        out
    }

    /// The version to run `event` on, and its arm when this is a canary:
    /// the canary for its share of contacts, else `serving`.
    pub fn pick(&self, serving: Arc<LoadedPlugin>, event: &Event) -> (Arc<LoadedPlugin>, Option<Arm>) {
        match self.kind {
            TrialKind::Canary(policy) if bucket(&event.tenant, contact(event)) < policy.percent => (self.plugin.clone(), Some(Arm::Canary)),
            TrialKind::Canary(_) => (serving, Some(Arm::Serving)),
            TrialKind::Shadow => (serving, None),
        }
    }

    /// Notes one delivery's outcome on `arm`; the reason to roll the canary
    /// back, once it has run enough to judge and is past a margin.
    pub fn observe(&self, arm: Arm, ok: bool, micros: u64) -> Option<String> {
        let TrialKind::Canary(policy) = self.kind else { return None };
        let mut s = lock(&self.state);
        let window = Duration::from_secs(policy.window_secs);
        match arm {
            Arm::Serving => s.serving.push(ok, micros, window),
            Arm::Canary => s.canary.push(ok, micros, window),
        }
        if arm == Arm::Serving {
            return None;
        }
        let (runs, failure, p99) = s.canary.summary();
        let (base_runs, base_failure, base_p99) = s.serving.summary();
        if runs < policy.min_runs {
            return None;
        }
        if failure > base_failure + policy.failure_margin_pct {
            return Some(format!(
                "failure rate {failure:.1}% over {runs} runs vs the serving version's {base_failure:.1}% over {base_runs} (margin {} points)",
                policy.failure_margin_pct
            ));
        }
        let limit = base_p99 * (1.0 + policy.latency_margin_pct / 100.0);
        if base_runs >= policy.min_runs && p99 > limit && p99 - base_p99 >= 5.0 {
            return Some(format!(
                "p99 {p99:.1} ms over {runs} runs vs the serving version's {base_p99:.1} ms (margin {}%)",
                policy.latency_margin_pct
            ));
        }
        None
    }

    /// Compares a shadow run with the serving run of the same event; whether
    /// this was the first difference.
    pub fn compare(&self, event_id: &str, serving: Footprint, shadow: Footprint) -> bool {
        let mut s = lock(&self.state);
        s.compared += 1;
        if serving == shadow {
            s.agreed += 1;
            return false;
        }
        let first = s.compared - s.agreed == 1;
        if s.differences.len() < DIFFERENCES_KEPT {
            s.differences.push(Difference {
                event_id: event_id.to_string(),
                serving,
                shadow,
            });
        }
        first
    }

    /// Counts a shadow run not made (the shadow queue was full).
    pub fn skipped(&self) {
        lock(&self.state).skipped += 1;
    }
}

/// Every trial in progress, and how the last one of each plugin ended.
#[derive(Debug, Default)]
pub struct Trials {
    running: RwLock<HashMap<(String, String), Arc<Trial>>>,
    ended: Mutex<HashMap<(String, String), Value>>,
    /// Where trials are kept, so a restart resumes them.
    db: Option<crate::storage::Db>,
}

impl Trials {
    /// Trials kept in `db` as they start and end.
    pub fn persisted(db: crate::storage::Db) -> Trials {
        Trials {
            db: Some(db),
            ..Trials::default()
        }
    }

    /// Starts `trial` for the tenant's plugin, ending any before it.
    pub fn start(&self, tenant: &str, plugin: &str, trial: Trial) -> Arc<Trial> {
        let trial = Arc::new(trial);
        if let Some(db) = &self.db {
            let (kind, policy) = match trial.kind {
                TrialKind::Canary(p) => ("canary", serde_json::to_string(&p).ok()),
                TrialKind::Shadow => ("shadow", None),
            };
            db.keep_trial(crate::storage::StoredTrial {
                tenant: tenant.to_string(),
                plugin: plugin.to_string(),
                version: trial.plugin.version.clone(),
                kind: kind.to_string(),
                policy,
                against: trial.against.clone(),
                actor: trial.actor.clone(),
                started_at: trial.started_at.to_rfc3339(),
            });
        }
        write(&self.running).insert((tenant.to_string(), plugin.to_string()), trial.clone());
        trial
    }

    /// Resumes the stored trials: each version from its kept code, validated
    /// again (`prepare`); one that no longer loads is dropped, with a warning.
    pub async fn resume(&self, registry: &Arc<crate::engine::plugins::Registry>, plugins_dir: &std::path::Path) {
        let Some(db) = &self.db else { return };
        let stored = match db.stored_trials().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored trials; none resumed");
                return;
            }
        };
        for s in stored {
            let (tenant, plugin) = (s.tenant.clone(), s.plugin.clone());
            match restore(db, registry, plugins_dir, s).await {
                Ok(trial) => {
                    tracing::info!(%tenant, %plugin, version = %trial.plugin.version, "trial resumed");
                    write(&self.running).insert((tenant, plugin), Arc::new(trial));
                }
                Err(why) => {
                    tracing::warn!(%tenant, %plugin, "trial not resumed: {why}");
                    db.forget_trial(&tenant, &plugin);
                }
            }
        }
    }

    /// The trial of the tenant's plugin, if one runs.
    pub fn get(&self, tenant: &str, plugin: &str) -> Option<Arc<Trial>> {
        let running = read(&self.running);
        if running.is_empty() {
            return None;
        }
        running.get(&(tenant.to_string(), plugin.to_string())).cloned()
    }

    /// Ends the tenant's plugin's trial (`how`: promoted, rolled back and
    /// why, stopped), keeping its last report.
    pub fn end(&self, tenant: &str, plugin: &str, how: &str) -> Option<Arc<Trial>> {
        let key = (tenant.to_string(), plugin.to_string());
        let trial = write(&self.running).remove(&key)?;
        if let Some(db) = &self.db {
            db.forget_trial(tenant, plugin);
        }
        let mut report = trial.report();
        report["ended"] = json!(how);
        report["ended_at"] = json!(chrono::Utc::now());
        lock(&self.ended).insert(key, report);
        Some(trial)
    }

    /// How the tenant's plugin's last trial ended.
    pub fn last_ended(&self, tenant: &str, plugin: &str) -> Option<Value> {
        lock(&self.ended).get(&(tenant.to_string(), plugin.to_string())).cloned()
    }
}

/// A stored trial made whole again: its version from the kept code.
async fn restore(
    db: &crate::storage::Db,
    registry: &Arc<crate::engine::plugins::Registry>,
    plugins_dir: &std::path::Path,
    s: crate::storage::StoredTrial,
) -> Result<Trial, String> {
    let (kind, source) = match (s.kind.as_str(), &s.policy) {
        ("shadow", _) => (TrialKind::Shadow, "shadow"),
        ("canary", Some(p)) => (
            TrialKind::Canary(serde_json::from_str(p).map_err(|e| format!("its policy does not read: {e}"))?),
            "canary",
        ),
        (other, _) => return Err(format!("unknown kind `{other}`")),
    };
    let kept = db
        .version(&s.tenant, &s.plugin, &s.version)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("version {} is no longer kept", s.version))?;
    let code = db.kept_code(&kept).await.map_err(|e| e.to_string())?;
    let up = crate::engine::plugins::Upload {
        tenant: s.tenant.clone(),
        plugin: s.plugin.clone(),
        code,
        manifest: kept.manifest,
        source,
        actor: s.actor.clone(),
    };
    let (registry, dir) = (registry.clone(), plugins_dir.to_path_buf());
    let plugin = tokio::task::spawn_blocking(move || registry.prepare(&dir, &up))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let started_at = chrono::DateTime::parse_from_rfc3339(&s.started_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    Ok(Trial {
        plugin,
        kind,
        against: s.against,
        actor: s.actor,
        started_at,
        state: Mutex::default(),
    })
}

/// The customer's number on an event: the sender of what came in, the
/// recipient of what went out.
pub fn contact(event: &Event) -> &str {
    match event.direction {
        Direction::Inbound => &event.from,
        Direction::Outbound => &event.to,
    }
}

/// A contact's bucket, 0–99: the same for the tenant's contact whatever the
/// version or the process.
pub fn bucket(tenant: &str, contact: &str) -> u8 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(contact.as_bytes())
        .finalize();
    (u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_and_stick() {
        let mut counts = [0u32; 100];
        for i in 0..10_000 {
            counts[bucket("acme", &format!("+1512555{i:04}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (50..=150).contains(&c)), "{counts:?}");
        assert_eq!(bucket("acme", "+15125551234"), bucket("acme", "+15125551234"));
    }

    #[test]
    fn the_p99_is_the_99th_percentile() {
        let mut r = Runs::default();
        for us in 1..=100 {
            r.push(us != 100, us * 1000, Duration::from_secs(60));
        }
        assert_eq!(r.summary(), (100, 1.0, 99.0));
    }
}
