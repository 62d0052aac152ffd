//! Plugin versions beyond the folder: the version id, keeping every version
//! that serves (with its code) for rollbacks, and installing or preparing
//! an uploaded version, validated exactly as the folder's files are.

use std::path::Path;
use std::sync::Arc;

use super::{LoadedPlugin, PluginLoadError, Registry};
use crate::engine::runtime::Runtime;

/// How many versions of each plugin are kept.
pub const KEEP_VERSIONS: usize = 20;

/// A version id: the first 16 hex digits of the SHA-256 of the code's hash
/// and the manifest text, so the same code with another manifest is another
/// version.
pub fn version_id(hash: &str, manifest_src: Option<&str>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(hash.as_bytes());
    h.update([0]);
    if let Some(m) = manifest_src {
        h.update([1]);
        h.update(m.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// A version to deploy: whose it is, its code and manifest, and where it
/// came from (for the history and the audit).
#[derive(Debug, Clone)]
pub struct Upload {
    /// The tenant.
    pub tenant: String,
    /// The plugin's name.
    pub plugin: String,
    /// The component.
    pub code: Vec<u8>,
    /// Its manifest text, if any.
    pub manifest: Option<String>,
    /// `api`, `rollback`, `promote`, `canary` or `shadow`.
    pub source: &'static str,
    /// Who: `operator` or `token:<id>`.
    pub actor: String,
}

/// A version installed by [`Registry::install`].
#[derive(Debug)]
pub struct Installed {
    /// What serves now.
    pub serving: Arc<LoadedPlugin>,
    /// What served before, if anything did.
    pub previous: Option<Arc<LoadedPlugin>>,
}

impl Registry {
    /// Validates `bytes` + `manifest_src` as the tenant's plugin `name`
    /// exactly as a file in its folder would be, without serving it (a
    /// version to put on trial); the code is kept. On failure the operator
    /// is told (`version.rejected`).
    pub fn prepare(&self, plugins_dir: &Path, up: &Upload) -> Result<Arc<LoadedPlugin>, PluginLoadError> {
        let loaded = self.validate(plugins_dir, up)?;
        self.keep(&up.tenant, &loaded, &up.code, up.source, &up.actor);
        Ok(loaded)
    }

    fn validate(&self, plugins_dir: &Path, up: &Upload) -> Result<Arc<LoadedPlugin>, PluginLoadError> {
        let (tenant, name, actor, source) = (&up.tenant, &up.plugin, &up.actor, up.source);
        let wasm = plugins_dir.join(tenant).join(format!("{name}.wasm"));
        let hash = Runtime::content_hash(&up.code);
        match self.load_bytes(&wasm, &up.code, hash.clone(), up.manifest.clone()) {
            Ok(p) => Ok(Arc::new(p)),
            Err(e) => {
                tracing::warn!(%tenant, plugin = %name, %actor, error = %e, "uploaded plugin version rejected");
                self.notices.file(
                    "version.rejected",
                    serde_json::json!({ "tenant": tenant, "plugin": name, "hash": hash, "error": e.to_string(), "source": source }),
                );
                Err(e)
            }
        }
    }

    /// Keeps every version that starts serving (its code and manifest) in
    /// `db`, the newest [`KEEP_VERSIONS`] of each plugin, for rollbacks.
    pub fn with_history(mut self, db: crate::storage::Db) -> Registry {
        self.history = Some(db);
        self
    }

    /// Keeps `p` (whose code is `bytes`) as the plugin's newest version.
    pub(super) fn keep(&self, tenant: &str, p: &LoadedPlugin, bytes: &[u8], source: &str, actor: &str) {
        let Some(db) = &self.history else { return };
        if let Err(e) = db.keep_code(&p.hash, bytes) {
            tracing::error!(%tenant, plugin = %p.name, error = %e, "cannot keep the plugin's code for rollbacks");
            return;
        }
        db.keep_version(
            crate::storage::NewVersion {
                tenant: tenant.to_string(),
                plugin: p.name.clone(),
                id: p.version.clone(),
                hash: p.hash.clone(),
                manifest: p.manifest_src.clone(),
                source: source.to_string(),
                actor: actor.to_string(),
            },
            KEEP_VERSIONS,
        );
    }

    /// Makes `up` the serving version of its tenant's plugin, validated
    /// exactly as a file in its folder would be. On
    /// success the files are written into `plugins_dir/<tenant>/` (beside,
    /// then renamed into place: the folder always holds what serves, so the
    /// watcher finds nothing new) and the set is swapped at once; on failure
    /// nothing changes and the operator is told (`version.rejected`).
    pub fn install(&self, plugins_dir: &Path, up: &Upload) -> Result<Installed, PluginLoadError> {
        let _changing = crate::sync::lock(&self.changing);
        let (tenant, name, bytes) = (up.tenant.as_str(), up.plugin.as_str(), up.code.as_slice());
        let folder = plugins_dir.join(tenant);
        let wasm = folder.join(format!("{name}.wasm"));
        let loaded = self.validate(plugins_dir, up)?;
        let write = |path: &Path, contents: Option<&[u8]>| -> std::io::Result<()> {
            match contents {
                Some(c) => {
                    let tmp = folder.join(format!(".{name}.{}.upload", std::process::id()));
                    std::fs::write(&tmp, c)?;
                    std::fs::rename(&tmp, path)
                }
                None => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            }
        };
        std::fs::create_dir_all(&folder)
            .and_then(|()| write(&wasm.with_extension("toml"), loaded.manifest_src.as_deref().map(str::as_bytes)))
            .and_then(|()| write(&wasm, Some(bytes)))
            .map_err(|source| PluginLoadError::Read {
                path: wasm.clone(),
                source,
            })?;
        let current = self.plugins(tenant);
        let previous = current.iter().find(|p| p.name == name).cloned();
        let mut next: Vec<Arc<LoadedPlugin>> = current.iter().filter(|p| p.name != name).cloned().collect();
        next.push(loaded.clone());
        next.sort_by(|a, b| a.name.cmp(&b.name));
        self.replace(tenant, next);
        if let Some(r) = crate::sync::lock(&self.rejected).get_mut(tenant) {
            r.remove(name);
        }
        self.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%tenant, plugin = %name, version = %loaded.version, replaced = previous.as_ref().map(|o| o.version.as_str()), source = up.source, actor = %up.actor, "installed plugin version");
        self.keep(tenant, &loaded, bytes, up.source, &up.actor);
        Ok(Installed { serving: loaded, previous })
    }
}
