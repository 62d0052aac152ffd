//! Plugin KV: small values in a (tenant, plugin) namespace, and its usage for
//! quotas.

use rusqlite::{OptionalExtension, params};

use super::{Db, DbError};

impl Db {
    /// How many keys, and how many bytes of keys and values, a (tenant,
    /// plugin) namespace holds, not counting `except_key`.
    pub async fn kv_usage(&self, tenant: &str, plugin: &str, except_key: &str) -> Result<(u64, u64), DbError> {
        let (t, p, k) = (tenant.to_string(), plugin.to_string(), except_key.to_string());
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key != ?3",
                params![t, p, k],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
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
