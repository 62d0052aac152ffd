//! Plugin secrets: [`Vault`] seals each value with XChaCha20-Poly1305 under
//! the config's `secrets_key` (a random 24-byte nonce; the tenant, plugin
//! and name bound in as associated data, so a sealed value cannot be moved
//! to another slot), keeps the opened values in memory for `config.get`,
//! and at start re-seals under the current key whatever a previous key
//! sealed. Nothing ever reads a value back out over the API; [`scrub`]
//! keeps values out of what plugins write (logs, errors, traces, diffs).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::config::{Secret, SecretsKey, SecretsKeys};
use crate::storage::{Db, DbError, SealedSecret};
use crate::sync::{read, write};

/// One plugin's secrets, opened.
pub type PluginSecrets = Arc<BTreeMap<String, Secret>>;

/// The longest secret value, bytes.
pub const MAX_SECRET: usize = 16 << 10;

/// Why a secret could not be sealed, opened or stored.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The config has no `secrets_key`.
    #[error("no secrets_key is configured: secrets cannot be set (see the README's Deploying plugins)")]
    NoKey,
    /// A stored value was sealed by a key the config does not have.
    #[error(
        "secret `{key}` of {tenant}/{plugin} was sealed by key {key_id}, which is neither secrets_key nor one of secrets_previous_keys"
    )]
    UnknownKey {
        /// Tenant.
        tenant: String,
        /// Plugin.
        plugin: String,
        /// Secret name.
        key: String,
        /// The sealing key's id.
        key_id: String,
    },
    /// A stored value does not open under its key (tampered, or moved).
    #[error("secret `{key}` of {tenant}/{plugin} does not open under key {key_id}: it was altered")]
    Corrupt {
        /// Tenant.
        tenant: String,
        /// Plugin.
        plugin: String,
        /// Secret name.
        key: String,
        /// The key's id.
        key_id: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The secrets of every tenant's plugins.
#[derive(Debug)]
pub struct Vault {
    keys: SecretsKeys,
    db: Db,
    open: RwLock<HashMap<(String, String), PluginSecrets>>,
}

fn aad(tenant: &str, plugin: &str, key: &str) -> Vec<u8> {
    [tenant, plugin, key].join("\0").into_bytes()
}

fn cipher(key: &SecretsKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.bytes().into())
}

impl Vault {
    /// Opens every stored secret (re-sealing under `keys.current` what a
    /// previous key sealed, in one transaction) and keeps them in memory. A
    /// value no configured key opens stops the start: it names the secret
    /// and the key id it needs.
    pub async fn open(db: Db, keys: SecretsKeys) -> Result<Vault, VaultError> {
        let mut open: HashMap<(String, String), BTreeMap<String, Secret>> = HashMap::new();
        let mut resealed = Vec::new();
        for s in db.sealed_secrets().await? {
            let all = keys.current.iter().chain(&keys.previous);
            let Some(key) = all.into_iter().find(|k| k.id() == s.key_id) else {
                return Err(VaultError::UnknownKey {
                    tenant: s.tenant,
                    plugin: s.plugin,
                    key: s.key,
                    key_id: s.key_id,
                });
            };
            let value = cipher(key)
                .decrypt(
                    XNonce::from_slice(&s.nonce),
                    Payload {
                        msg: &s.sealed,
                        aad: &aad(&s.tenant, &s.plugin, &s.key),
                    },
                )
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| VaultError::Corrupt {
                    tenant: s.tenant.clone(),
                    plugin: s.plugin.clone(),
                    key: s.key.clone(),
                    key_id: s.key_id.clone(),
                })?;
            if let Some(current) = &keys.current
                && current.id() != s.key_id
            {
                resealed.push(seal(current, &s.tenant, &s.plugin, &s.key, &value));
            }
            open.entry((s.tenant, s.plugin)).or_default().insert(s.key, Secret::new(value));
        }
        if !resealed.is_empty() {
            let n = resealed.len();
            db.put_secrets(resealed).await?;
            tracing::info!(count = n, key = %keys.current.as_ref().map(|k| k.id()).unwrap_or_default(), "secrets re-sealed under the current secrets_key");
        }
        Ok(Vault {
            keys,
            db,
            open: RwLock::new(open.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
        })
    }

    /// The plugin's secrets (none: empty).
    pub fn for_plugin(&self, tenant: &str, plugin: &str) -> PluginSecrets {
        let open = read(&self.open);
        if open.is_empty() {
            return PluginSecrets::default();
        }
        open.get(&(tenant.to_string(), plugin.to_string())).cloned().unwrap_or_default()
    }

    /// The names of the plugin's secrets.
    pub fn names(&self, tenant: &str, plugin: &str) -> Vec<String> {
        self.for_plugin(tenant, plugin).keys().cloned().collect()
    }

    /// Seals and stores `value` as the plugin's secret `key`, durably, then
    /// serves it to the plugin's next invocations.
    pub async fn set(&self, tenant: &str, plugin: &str, key: &str, value: String) -> Result<(), VaultError> {
        let current = self.keys.current.as_ref().ok_or(VaultError::NoKey)?;
        self.db.put_secrets(vec![seal(current, tenant, plugin, key, &value)]).await?;
        let mut open = write(&self.open);
        let slot = open.entry((tenant.to_string(), plugin.to_string())).or_default();
        let mut next = BTreeMap::clone(slot);
        next.insert(key.to_string(), Secret::new(value));
        *slot = Arc::new(next);
        Ok(())
    }

    /// Deletes the plugin's secret `key`; whether there was one.
    pub async fn delete(&self, tenant: &str, plugin: &str, key: &str) -> Result<bool, VaultError> {
        let existed = self.db.delete_secret(tenant, plugin, key).await?;
        let mut open = write(&self.open);
        if let Some(slot) = open.get_mut(&(tenant.to_string(), plugin.to_string())) {
            let mut next = BTreeMap::clone(slot);
            next.remove(key);
            *slot = Arc::new(next);
        }
        Ok(existed)
    }
}

fn seal(key: &SecretsKey, tenant: &str, plugin: &str, name: &str, value: &str) -> SealedSecret {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).expect("the OS random number generator");
    let sealed = cipher(key)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: &aad(tenant, plugin, name),
            },
        )
        .expect("sealing in memory cannot fail");
    SealedSecret {
        tenant: tenant.to_string(),
        plugin: plugin.to_string(),
        key: name.to_string(),
        key_id: key.id(),
        nonce: nonce.to_vec(),
        sealed,
        updated_at: String::new(),
    }
}

/// The shortest value [`scrub`] hides (shorter ones would mangle text).
pub const SCRUB_MIN: usize = 4;

/// `text` with every value of `secrets` (of [`SCRUB_MIN`] bytes or more)
/// replaced by `[secret]`.
pub fn scrub<'a>(secrets: &BTreeMap<String, Secret>, text: &'a str) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for s in secrets.values() {
        let v = s.expose();
        if v.len() >= SCRUB_MIN && out.contains(v) {
            out = Cow::Owned(out.replace(v, "[secret]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_are_sealed_at_rest_reopened_and_resealed_on_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let (a, b) = (SecretsKey::generate(), SecretsKey::generate());
        let keys = |current: &SecretsKey, previous: Vec<SecretsKey>| SecretsKeys {
            current: Some(current.clone()),
            previous,
        };
        let vault = Vault::open(db.clone(), keys(&a, vec![])).await.unwrap();
        vault.set("acme", "crm", "token", "sk_live_0123456789".into()).await.unwrap();
        let stored = db.sealed_secrets().await.unwrap();
        assert_eq!(stored[0].key_id, a.id());
        assert!(!String::from_utf8_lossy(&stored[0].sealed).contains("sk_live"));

        // Rotation: b seals, a still opens; the start re-seals under b.
        let vault = Vault::open(db.clone(), keys(&b, vec![a.clone()])).await.unwrap();
        assert_eq!(vault.for_plugin("acme", "crm")["token"].expose(), "sk_live_0123456789");
        assert_eq!(db.sealed_secrets().await.unwrap()[0].key_id, b.id());
        let vault = Vault::open(db.clone(), keys(&b, vec![])).await.unwrap();
        assert_eq!(vault.names("acme", "crm"), ["token"]);

        // Without the key that sealed it, the start stops and says which.
        let err = Vault::open(db.clone(), keys(&a, vec![])).await.unwrap_err();
        assert!(err.to_string().contains(&format!("sealed by key {}", b.id())), "{err}");
        // A value moved to another slot does not open.
        let mut moved = db.sealed_secrets().await.unwrap().remove(0);
        moved.plugin = "other".into();
        db.put_secrets(vec![moved]).await.unwrap();
        let err = Vault::open(db.clone(), keys(&b, vec![])).await.unwrap_err();
        assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");

        assert!(vault.delete("acme", "crm", "token").await.unwrap());
        assert!(vault.for_plugin("acme", "crm").is_empty());
    }

    #[test]
    fn scrub_hides_every_value() {
        let secrets = BTreeMap::from([("t".to_string(), Secret::new("hunter22")), ("s".to_string(), Secret::new("ab"))]);
        assert_eq!(scrub(&secrets, "token=hunter22&x=ab, hunter22"), "token=[secret]&x=ab, [secret]");
        assert!(matches!(scrub(&secrets, "nothing"), Cow::Borrowed(_)));
    }
}
