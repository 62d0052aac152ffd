//! Plugin secrets as stored: sealed values only (nonce + ciphertext, and the
//! id of the key that sealed them); sealing and opening are the engine's.

use rusqlite::params;

use super::schema::NOW;
use super::{Db, DbError};

/// One sealed secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// Its name (what `config.get` asks for).
    pub key: String,
    /// The id of the key that sealed it.
    pub key_id: String,
    /// The cipher's nonce.
    pub nonce: Vec<u8>,
    /// The sealed value.
    pub sealed: Vec<u8>,
    /// When it was last set.
    pub updated_at: String,
}

fn sealed(r: &rusqlite::Row<'_>) -> rusqlite::Result<SealedSecret> {
    Ok(SealedSecret {
        tenant: r.get(0)?,
        plugin: r.get(1)?,
        key: r.get(2)?,
        key_id: r.get(3)?,
        nonce: r.get(4)?,
        sealed: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

impl Db {
    /// Stores sealed secrets (new, replaced or re-sealed), durably, in one
    /// transaction.
    pub async fn put_secrets(&self, secrets: Vec<SealedSecret>) -> Result<(), DbError> {
        self.write(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "INSERT INTO secrets (tenant, plugin, key, key_id, nonce, sealed, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW})
                 ON CONFLICT (tenant, plugin, key) DO UPDATE SET
                   key_id = excluded.key_id, nonce = excluded.nonce, sealed = excluded.sealed, updated_at = excluded.updated_at"
            ))?;
            for s in &secrets {
                stmt.execute(params![s.tenant, s.plugin, s.key, s.key_id, s.nonce, s.sealed])?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes a secret; whether there was one.
    pub async fn delete_secret(&self, tenant: &str, plugin: &str, key: &str) -> Result<bool, DbError> {
        let v = [tenant, plugin, key].map(str::to_string);
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM secrets WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                params![v[0], v[1], v[2]],
            )? == 1)
        })
        .await
    }

    /// Every sealed secret, in (tenant, plugin, key) order.
    pub async fn sealed_secrets(&self) -> Result<Vec<SealedSecret>, DbError> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare("SELECT tenant, plugin, key, key_id, nonce, sealed, updated_at FROM secrets ORDER BY tenant, plugin, key")?;
            let rows = stmt.query_map([], sealed)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
