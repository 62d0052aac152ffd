//! Versions on trial as stored, so a restart resumes them: which version of
//! which plugin, canary (with its policy) or shadow, against what, by whom,
//! since when. Their tallies are not kept: a resumed trial counts afresh.

use rusqlite::params;

use super::{Db, DbError};

/// A trial as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTrial {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The version on trial (kept in `versions`).
    pub version: String,
    /// `canary` or `shadow`.
    pub kind: String,
    /// A canary's policy, as JSON.
    pub policy: Option<String>,
    /// The version serving when it started.
    pub against: Option<String>,
    /// Who started it.
    pub actor: String,
    /// When, RFC 3339.
    pub started_at: String,
}

impl Db {
    /// Stores the plugin's trial (replacing any), behind the writer's queue.
    pub fn keep_trial(&self, t: StoredTrial) {
        self.write_detached("keep a trial", move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO trials (tenant, plugin, version, kind, policy, against, actor, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![t.tenant, t.plugin, t.version, t.kind, t.policy, t.against, t.actor, t.started_at],
            )?;
            Ok(())
        });
    }

    /// Forgets the plugin's trial, behind the writer's queue.
    pub fn forget_trial(&self, tenant: &str, plugin: &str) {
        let (t, p) = (tenant.to_string(), plugin.to_string());
        self.write_detached("forget a trial", move |conn| {
            conn.execute("DELETE FROM trials WHERE tenant = ?1 AND plugin = ?2", params![t, p])?;
            Ok(())
        });
    }

    /// Every stored trial.
    pub async fn stored_trials(&self) -> Result<Vec<StoredTrial>, DbError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT tenant, plugin, version, kind, policy, against, actor, started_at FROM trials ORDER BY tenant, plugin")?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredTrial {
                    tenant: r.get(0)?,
                    plugin: r.get(1)?,
                    version: r.get(2)?,
                    kind: r.get(3)?,
                    policy: r.get(4)?,
                    against: r.get(5)?,
                    actor: r.get(6)?,
                    started_at: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
