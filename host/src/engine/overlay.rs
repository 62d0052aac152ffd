//! An invocation's view of its plugin's KV: the live store, or, for a shadow
//! run, the live store under an overlay of the run's own writes, which are
//! never stored (reads see live values the run has not overwritten).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::storage::{Db, DbError, KvQuota, KvRefusal};
use crate::sync::lock;

/// Where an invocation's KV reads and writes go.
#[derive(Debug, Default)]
pub struct KvView {
    /// A shadow run's writes (`None`: deleted), over the live store.
    overlay: Option<Mutex<BTreeMap<String, Option<Vec<u8>>>>>,
}

impl KvView {
    /// The live store: reads and writes go to the database.
    pub fn live() -> KvView {
        KvView::default()
    }

    /// A shadow run's: writes stay in memory; reads see them over the live store.
    pub fn overlay() -> KvView {
        KvView {
            overlay: Some(Mutex::default()),
        }
    }

    /// `key`'s value.
    pub async fn get(&self, db: &Db, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        if let Some(o) = &self.overlay
            && let Some(v) = lock(o).get(key)
        {
            return Ok(v.clone());
        }
        db.kv_get(tenant, plugin, key).await
    }

    /// Sets `key`, within `quota` when live.
    pub async fn set(
        &self,
        db: &Db,
        tenant: &str,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        quota: KvQuota,
    ) -> Result<Result<(), KvRefusal>, DbError> {
        match &self.overlay {
            Some(o) => {
                lock(o).insert(key.to_string(), Some(value));
                Ok(Ok(()))
            }
            None => db.kv_set(tenant, plugin, key, value, quota).await,
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, db: &Db, tenant: &str, plugin: &str, key: &str) -> Result<(), DbError> {
        match &self.overlay {
            Some(o) => {
                lock(o).insert(key.to_string(), None);
                Ok(())
            }
            None => db.kv_put(tenant, plugin, key, None).await,
        }
    }

    /// The keys starting with `prefix`, in order.
    pub async fn keys(&self, db: &Db, tenant: &str, plugin: &str, prefix: &str) -> Result<Vec<String>, DbError> {
        let mut keys = db.kv_keys(tenant, plugin, prefix).await?;
        if let Some(o) = &self.overlay {
            let o = lock(o);
            keys.retain(|k| !matches!(o.get(k), Some(None)));
            keys.extend(
                o.iter()
                    .filter(|(k, v)| v.is_some() && k.starts_with(prefix))
                    .map(|(k, _)| k.clone()),
            );
            keys.sort();
            keys.dedup();
        }
        Ok(keys)
    }
}
