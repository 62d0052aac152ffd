//! The plugin registry: which plugin versions each tenant runs, loaded from
//! `<plugins_dir>/<tenant>/<name>.wasm` (+ `<name>.toml`), swapped atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::bindings::PluginPre;
use crate::capabilities::PluginCtx;
use crate::config::{ConfigError, Manifest};
use crate::event::EventKind;
use crate::runtime::{LoadError, Runtime};

/// One loaded plugin version.
pub struct LoadedPlugin {
    /// The file stem, e.g. `crm-logger`.
    pub name: String,
    /// SHA-256 of the `.wasm`: identifies the version.
    pub hash: String,
    /// Its manifest (defaults when there is no `.toml`).
    pub manifest: Arc<Manifest>,
    /// Pre-instantiated component, ready for a fresh instance per event.
    pub pre: PluginPre<PluginCtx>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish()
    }
}

/// Why a plugin file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The `.wasm` could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component was rejected.
    #[error("{path}: {source}")]
    Component {
        /// The file.
        path: PathBuf,
        /// Why.
        source: LoadError,
    },
    /// The manifest was rejected.
    #[error(transparent)]
    Manifest(#[from] ConfigError),
    /// The file name cannot name a plugin.
    #[error("{0}: plugin names use only a-z, 0-9, '-' and '_'")]
    BadName(PathBuf),
}

/// A tenant's plugin set, in name order.
pub type PluginSet = Arc<Vec<Arc<LoadedPlugin>>>;

/// Every tenant's current plugin set.
#[derive(Debug)]
pub struct Registry {
    runtime: Arc<Runtime>,
    tenants: RwLock<HashMap<String, PluginSet>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(runtime: Arc<Runtime>) -> Registry {
        Registry {
            runtime,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// The runtime plugins are compiled with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The tenant's current plugin set (empty if none).
    pub fn plugins(&self, tenant: &str) -> PluginSet {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// The current version of one plugin.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins(tenant).iter().find(|p| p.name == name).cloned()
    }

    /// The tenant's plugins that subscribe to `kind`.
    pub fn subscribers(&self, tenant: &str, kind: EventKind) -> Vec<Arc<LoadedPlugin>> {
        self.plugins(tenant)
            .iter()
            .filter(|p| p.manifest.subscribes(kind))
            .cloned()
            .collect()
    }

    /// Replaces a tenant's plugin set in one step: events already running keep
    /// the versions they started with.
    pub fn replace(&self, tenant: &str, plugins: Vec<Arc<LoadedPlugin>>) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), Arc::new(plugins));
    }

    /// Loads one plugin file and its manifest.
    pub fn load_file(&self, wasm: &Path) -> Result<LoadedPlugin, PluginLoadError> {
        let name = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(PluginLoadError::BadName(wasm.to_path_buf()));
        }
        let manifest_path = wasm.with_extension("toml");
        let manifest = if manifest_path.exists() {
            Manifest::load(&manifest_path)?
        } else {
            Manifest::default()
        };
        let bytes = std::fs::read(wasm).map_err(|source| PluginLoadError::Read {
            path: wasm.to_path_buf(),
            source,
        })?;
        let (hash, pre) = self.runtime.load(&bytes).map_err(|source| PluginLoadError::Component {
            path: wasm.to_path_buf(),
            source,
        })?;
        Ok(LoadedPlugin {
            name,
            hash,
            manifest: Arc::new(manifest),
            pre,
        })
    }

    /// Loads every tenant folder under `dir`. A plugin that fails to load is
    /// reported and skipped; it never stops the others.
    pub fn load_all(&self, dir: &Path, tenants: &BTreeMap<String, crate::config::TenantConfig>) -> Vec<PluginLoadError> {
        let mut errors = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !tenants.contains_key(&name) {
                    tracing::warn!(folder = %entry.path().display(), "ignoring plugin folder for unknown tenant `{name}`");
                }
            }
        }
        for tenant in tenants.keys() {
            let folder = dir.join(tenant);
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&folder) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            files.sort();
            let mut set = Vec::new();
            for f in files {
                match self.load_file(&f) {
                    Ok(p) => {
                        tracing::info!(%tenant, plugin = %p.name, hash = %&p.hash[..12], "loaded plugin");
                        set.push(Arc::new(p));
                    }
                    Err(e) => {
                        tracing::error!(%tenant, error = %e, "plugin rejected");
                        errors.push(e);
                    }
                }
            }
            self.replace(tenant, set);
        }
        errors
    }
}
