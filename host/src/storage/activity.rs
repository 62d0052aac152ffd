//! Recent activity, from what is stored: per tenant, events a minute and the
//! share of attempts that failed (the console's overview), and per minute
//! over a window, events per second, the ack-to-done latency of deliveries
//! (p50, p99: from the delivery's creation, in the event's own transaction,
//! to its `done`) and failed attempts per plugin (the console's charts).

use std::collections::BTreeMap;

use rusqlite::params;

use super::search::first_id_at;
use super::{Db, DbError};
use crate::domain::clock::rfc3339_ms;

/// A tenant's recent activity at a glance.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TenantActivity {
    /// Events in the last ten minutes.
    pub events_10m: u64,
    /// Attempts of deliveries created in the last hour.
    pub attempts_1h: u64,
    /// How many of those failed.
    pub failures_1h: u64,
}

/// One minute of a tenant's activity.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Minute {
    /// The minute's start, unix seconds.
    pub at: i64,
    /// Events that arrived in it.
    pub events: u64,
    /// Median ack-to-done latency of deliveries done in it, ms.
    pub p50_ms: Option<f64>,
    /// Its 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Failed attempts in it, by plugin.
    pub failures: BTreeMap<String, u64>,
}

fn parse_ms(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at).ok().map(|t| t.timestamp_millis())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

impl Db {
    /// Each tenant's activity (of those given), as of `now_ms`.
    pub async fn tenant_activity(&self, tenants: Vec<String>, now_ms: i64) -> Result<BTreeMap<String, TenantActivity>, DbError> {
        self.browse(move |conn| {
            let ten_minutes = rfc3339_ms(now_ms - 600_000).unwrap_or_default();
            let hour_ids = first_id_at(conn, now_ms - 3_600_000)?;
            let mut events = conn.prepare_cached("SELECT count(*) FROM events WHERE tenant = ?1 AND received_at >= ?2")?;
            let mut attempts = conn.prepare_cached(
                "SELECT coalesce(sum(attempts), 0), coalesce(sum(failures), 0) FROM deliveries WHERE tenant = ?1 AND id >= ?2",
            )?;
            let mut out = BTreeMap::new();
            for t in tenants {
                let events_10m: i64 = events.query_row(params![t, ten_minutes], |r| r.get(0))?;
                let (a, f): (i64, i64) = attempts.query_row(params![t, hour_ids], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let activity = TenantActivity {
                    events_10m: events_10m as u64,
                    attempts_1h: a as u64,
                    failures_1h: f as u64,
                };
                out.insert(t, activity);
            }
            Ok(out)
        })
        .await
    }

    /// The tenant's activity per minute from `since_ms` to `now_ms`, oldest first.
    pub async fn minutes(&self, tenant: &str, since_ms: i64, now_ms: i64) -> Result<Vec<Minute>, DbError> {
        let t = tenant.to_string();
        self.browse(move |conn| {
            let first = since_ms / 60_000;
            let count = (now_ms / 60_000 - first + 1).max(0) as usize;
            let mut minutes: Vec<Minute> = (0..count)
                .map(|i| Minute {
                    at: (first + i as i64) * 60,
                    ..Minute::default()
                })
                .collect();
            let slot = |ms: i64| usize::try_from(ms / 60_000 - first).ok().filter(|i| *i < count);
            let since = rfc3339_ms(since_ms).unwrap_or_default();

            let mut stmt = conn.prepare_cached(
                "SELECT substr(received_at, 1, 16), count(*) FROM events WHERE tenant = ?1 AND received_at >= ?2 GROUP BY 1",
            )?;
            let rows = stmt.query_map(params![t, since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (minute, n) = row?;
                if let Some(i) = parse_ms(&format!("{minute}:00Z")).and_then(slot) {
                    minutes[i].events += n as u64;
                }
            }

            let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); count];
            let mut stmt = conn.prepare_cached(
                "SELECT created_at, updated_at FROM deliveries WHERE tenant = ?1 AND id >= ?2 AND status = 'done' AND updated_at >= ?3",
            )?;
            let lo = first_id_at(conn, since_ms - 3_600_000)?;
            let rows = stmt.query_map(params![t, lo, since], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (created, done) = row?;
                let (Some(created), Some(done)) = (created.as_deref().and_then(parse_ms), parse_ms(&done)) else {
                    continue;
                };
                if let Some(i) = slot(done) {
                    latencies[i].push((done - created) as f64);
                }
            }
            for (m, mut l) in minutes.iter_mut().zip(latencies) {
                l.sort_by(f64::total_cmp);
                m.p50_ms = percentile(&l, 0.50);
                m.p99_ms = percentile(&l, 0.99);
            }

            let mut stmt = conn.prepare_cached(
                "SELECT a.ended_ms, d.plugin FROM attempts a INDEXED BY attempts_failed_by_end
                 CROSS JOIN deliveries d ON d.id = a.delivery_id
                 WHERE a.error IS NOT NULL AND a.ended_ms >= ?2 AND d.tenant = ?1",
            )?;
            let rows = stmt.query_map(params![t, since_ms], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (ended, plugin) = row?;
                if let Some(i) = slot(ended) {
                    *minutes[i].failures.entry(plugin).or_default() += 1;
                }
            }
            Ok(minutes)
        })
        .await
    }
}
