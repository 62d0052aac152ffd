//! Plugin KV: small values in a (tenant, plugin) namespace, and its usage for
//! quotas.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Db, DbError};

/// The quotas a KV write must fit: the plugin's namespace and the tenant's
/// total across all its plugins (including plugins no longer loaded, until
/// their KV is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Keys per (tenant, plugin).
    pub plugin_keys: u64,
    /// Bytes of keys and values per (tenant, plugin).
    pub plugin_bytes: u64,
    /// Keys per tenant.
    pub tenant_keys: u64,
    /// Bytes of keys and values per tenant.
    pub tenant_bytes: u64,
}

/// Why a KV write was refused; the message is for the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvRefusal {
    /// The plugin's namespace holds its maximum of keys.
    #[error("the store holds its maximum of {0} keys")]
    PluginKeys(u64),
    /// The plugin's namespace would exceed its bytes.
    #[error("the store would exceed {0} bytes")]
    PluginBytes(u64),
    /// The tenant's KV holds its maximum of keys.
    #[error("the tenant's stores hold their maximum of {0} keys")]
    TenantKeys(u64),
    /// The tenant's KV would exceed its bytes.
    #[error("the tenant's stores would exceed {0} bytes")]
    TenantBytes(u64),
}

/// Keys and bytes (keys + values) of the rows `filter` selects, leaving out
/// the one (plugin, key) about to be replaced.
fn usage(conn: &Connection, tenant: &str, plugin: Option<&str>, except: (&str, &str)) -> Result<(u64, u64), DbError> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) FROM kv
         WHERE tenant = ?1 AND (?2 IS NULL OR plugin = ?2) AND NOT (plugin = ?3 AND key = ?4)",
        params![tenant, plugin, except.0, except.1],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?)
}

impl Db {
    /// Writes one KV value if it fits `quota`: the check and the write are one
    /// step on the writer thread, so concurrent writes cannot both pass a
    /// check that only one of them fits.
    pub async fn kv_set(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        quota: KvQuota,
    ) -> Result<Result<(), KvRefusal>, DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.write(move |conn| {
            let size = (k.len() + value.len()) as u64;
            let (keys, bytes) = usage(conn, &t, Some(&p), (&p, &k))?;
            if keys + 1 > quota.plugin_keys {
                return Ok(Err(KvRefusal::PluginKeys(quota.plugin_keys)));
            }
            if bytes + size > quota.plugin_bytes {
                return Ok(Err(KvRefusal::PluginBytes(quota.plugin_bytes)));
            }
            let (keys, bytes) = usage(conn, &t, None, (&p, &k))?;
            if keys + 1 > quota.tenant_keys {
                return Ok(Err(KvRefusal::TenantKeys(quota.tenant_keys)));
            }
            if bytes + size > quota.tenant_bytes {
                return Ok(Err(KvRefusal::TenantBytes(quota.tenant_bytes)));
            }
            conn.execute(
                "INSERT INTO kv (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
                params![t, p, k, value],
            )?;
            Ok(Ok(()))
        })
        .await
    }

    /// Records which of the tenant's plugins are deployed: KV of any other
    /// plugin becomes orphaned from now (if it was not already), and a
    /// deployed plugin's KV is orphaned no longer. The writer deletes KV
    /// orphaned for longer than the grace period.
    pub async fn kv_track_deployed(&self, tenant: &str, deployed: Vec<String>) -> Result<(), DbError> {
        let t = tenant.to_string();
        self.write(move |conn| {
            let names = serde_json::to_string(&deployed).expect("strings serialize");
            conn.execute(
                "DELETE FROM kv_orphans WHERE tenant = ?1 AND plugin IN (SELECT value FROM json_each(?2))",
                params![t, names],
            )?;
            conn.execute(
                "INSERT OR IGNORE INTO kv_orphans (tenant, plugin, since_ms)
                 SELECT DISTINCT tenant, plugin, ?3 FROM kv
                 WHERE tenant = ?1 AND plugin NOT IN (SELECT value FROM json_each(?2))",
                params![t, names, super::now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Reads one KV value.
    pub async fn kv_get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                    params![t, p, k],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Keys with a prefix, in order.
    pub async fn kv_keys(&self, tenant: &str, plugin: &str, prefix: &str) -> Result<Vec<String>, DbError> {
        let (t, p, pre) = (tenant.to_string(), plugin.to_string(), prefix.to_string());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare("SELECT key FROM kv WHERE tenant = ?1 AND plugin = ?2 AND substr(key, 1, length(?3)) = ?3 ORDER BY key")?;
            let rows = stmt.query_map(params![t, p, pre], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Up to `limit` entries with a prefix, in key order, starting after
    /// `after` (for paging): what operators and `plugin test` show.
    pub async fn kv_entries(
        &self,
        tenant: &str,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        let (t, p, pre, after) = (
            tenant.to_string(),
            plugin.to_string(),
            prefix.to_string(),
            after.map(str::to_string),
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT key, value FROM kv WHERE tenant = ?1 AND plugin = ?2 AND substr(key, 1, length(?3)) = ?3
                 AND (?4 IS NULL OR key > ?4) ORDER BY key LIMIT ?5",
            )?;
            let rows = stmt.query_map(params![t, p, pre, after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Writes (`Some`) or deletes (`None`) one KV value.
    pub async fn kv_put(&self, tenant: &str, plugin: &str, key: &str, value: Option<Vec<u8>>) -> Result<(), DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), key.to_string());
        self.write(move |conn| {
            match value {
                Some(v) => conn.execute(
                    "INSERT INTO kv (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
                    params![t, p, k, v],
                )?,
                None => conn.execute("DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3", params![t, p, k])?,
            };
            Ok(())
        })
        .await
    }
}
