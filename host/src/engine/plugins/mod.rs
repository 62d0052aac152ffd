//! The plugin registry: which plugin versions each tenant runs, loaded from
//! `<plugins_dir>/<tenant>/<name>.wasm` (+ `<name>.toml`), reloaded per tenant
//! and swapped atomically; a rejected new version leaves the old one serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::{ConfigError, Manifest};
use crate::domain::EventKind;
use crate::engine::contract::PluginPre;
use crate::engine::runtime::{LoadError, Prepared, Runtime};

mod versions;
pub use versions::{Installed, KEEP_VERSIONS, Upload, version_id};

/// One loaded plugin version.
pub struct LoadedPlugin {
    /// The file stem, e.g. `crm-logger`.
    pub name: String,
    /// SHA-256 of the `.wasm`: identifies the code.
    pub hash: String,
    /// The version id: the code and the manifest it serves with ([`version_id`]).
    pub version: String,
    /// Its manifest (defaults when there is no `.toml`).
    pub manifest: Arc<Manifest>,
    /// Pre-instantiated component, ready for a fresh instance per event.
    pub pre: PluginPre,
    /// Its engine's epoch ticker, kept running while an invocation runs.
    pub ticker: crate::engine::runtime::TickerHandle,
    /// The manifest's text, to notice manifest-only changes.
    pub manifest_src: Option<String>,
    /// When this version was loaded.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
}

/// A version that failed to load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// Content hash of the rejected `.wasm`, if it could be read.
    pub hash: Option<String>,
    /// The precise reason.
    pub error: String,
    /// When it was rejected.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The manifest text it was tried with.
    #[serde(skip)]
    pub manifest_src: Option<String>,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Plugins loaded or replaced.
    pub loaded: Vec<String>,
    /// Plugins removed.
    pub removed: Vec<String>,
    /// Plugins whose new version was rejected.
    pub rejected: Vec<String>,
    /// Files still being written: reload again after this long.
    pub retry_after: Option<Duration>,
}

/// A file is loaded only once it has not been written for this long.
pub const SETTLE: Duration = Duration::from_millis(300);

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
    /// A secret its manifest requires is not set.
    #[error(
        "{path}: config.{key} is declared {{ secret = true }} but not set for this plugin: switchboard secret set --tenant {tenant} --plugin {plugin} {key}"
    )]
    SecretMissing {
        /// The file.
        path: PathBuf,
        /// The secret's name.
        key: String,
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
    /// Its memory limit is more than the host lets all invocations hold.
    #[error("{path}: memory_mb = {mb} is more than the host's max_wasm_memory_mb = {budget_mb}")]
    OverBudget {
        /// The file.
        path: PathBuf,
        /// The plugin's memory limit, MiB.
        mb: usize,
        /// The host's budget, MiB.
        budget_mb: usize,
    },
    /// Its manifest has `[[schedule]]`s but its component targets a
    /// contract without timers.
    #[error("{path}: [[schedule]] needs a plugin built against {needs}; this one targets {has}")]
    ContractTooOld {
        /// The file.
        path: PathBuf,
        /// What the component targets.
        has: crate::engine::contract::Contract,
        /// The oldest version with timers.
        needs: crate::engine::contract::Contract,
    },
}

/// A tenant's plugin set, in name order.
pub type PluginSet = Arc<Vec<Arc<LoadedPlugin>>>;

/// Every tenant's current plugin set.
#[derive(Debug)]
pub struct Registry {
    runtime: Arc<Runtime>,
    tenant_limits: HashMap<String, crate::config::LimitOverrides>,
    memory_budget: usize,
    tenants: RwLock<HashMap<String, PluginSet>>,
    rejected: Mutex<HashMap<String, BTreeMap<String, Rejection>>>,
    /// Versions loaded and rejected since start.
    loads: std::sync::atomic::AtomicU64,
    rejections_total: std::sync::atomic::AtomicU64,
    /// Where a rejected version is reported to the operator.
    notices: crate::engine::notify::Notices,
    /// Where each version that starts serving is kept, with its code.
    history: Option<crate::storage::Db>,
    /// Plugins' secrets: a version whose manifest requires one not set is refused.
    vault: Option<Arc<crate::engine::secrets::Vault>>,
    /// Held by whatever changes a tenant's set (a reload, an install), so
    /// two changes never interleave.
    changing: Mutex<()>,
}

impl Registry {
    /// An empty registry; `tenant_limits` are the ceilings of each manifest's `[limits]`.
    pub fn new(runtime: Arc<Runtime>, tenant_limits: HashMap<String, crate::config::LimitOverrides>) -> Registry {
        Registry {
            runtime,
            tenant_limits,
            memory_budget: usize::MAX,
            tenants: RwLock::new(HashMap::new()),
            rejected: Mutex::new(HashMap::new()),
            loads: Default::default(),
            rejections_total: Default::default(),
            notices: Default::default(),
            history: None,
            vault: None,
            changing: Mutex::new(()),
        }
    }

    /// Refuses versions whose manifest requires a secret `vault` has not.
    pub fn with_vault(mut self, vault: Arc<crate::engine::secrets::Vault>) -> Registry {
        self.vault = Some(vault);
        self
    }

    /// Forgets the plugin's rejected version, so the next reload tries it
    /// again (after what it lacked, a secret, was set).
    pub fn retry_rejected(&self, tenant: &str, name: &str) -> bool {
        crate::sync::lock(&self.rejected)
            .get_mut(tenant)
            .and_then(|r| r.remove(name))
            .is_some()
    }

    /// Reports each rejected version to the operator through `notices`.
    pub fn with_notices(mut self, notices: crate::engine::notify::Notices) -> Registry {
        self.notices = notices;
        self
    }

    /// Plugin versions loaded, and rejected, since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.loads.load(Relaxed), self.rejections_total.load(Relaxed))
    }

    /// Refuses plugins whose memory limit is over `bytes`, the wasm memory
    /// all running invocations may hold (one over it could never be admitted).
    pub fn with_memory_budget(mut self, bytes: usize) -> Registry {
        self.memory_budget = bytes;
        self
    }

    /// The tenant's rejected versions, by plugin name.
    pub fn rejections(&self, tenant: &str) -> BTreeMap<String, Rejection> {
        crate::sync::lock(&self.rejected).get(tenant).cloned().unwrap_or_default()
    }

    /// The runtime plugins are compiled with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The tenant's current plugin set (empty if none).
    pub fn plugins(&self, tenant: &str) -> PluginSet {
        crate::sync::read(&self.tenants).get(tenant).cloned().unwrap_or_default()
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
        crate::sync::write(&self.tenants).insert(tenant.to_string(), Arc::new(plugins));
    }

    /// Loads one plugin file and its manifest.
    pub fn load_file(&self, wasm: &Path) -> Result<LoadedPlugin, PluginLoadError> {
        let bytes = std::fs::read(wasm).map_err(|source| PluginLoadError::Read {
            path: wasm.to_path_buf(),
            source,
        })?;
        let manifest_path = wasm.with_extension("toml");
        let manifest_src = std::fs::read_to_string(&manifest_path).ok();
        self.load_bytes(wasm, &bytes, Runtime::content_hash(&bytes), manifest_src)
    }

    fn load_bytes(&self, wasm: &Path, bytes: &[u8], hash: String, manifest_src: Option<String>) -> Result<LoadedPlugin, PluginLoadError> {
        let name = plugin_name(wasm).ok_or_else(|| PluginLoadError::BadName(wasm.to_path_buf()))?;
        let manifest = match &manifest_src {
            Some(src) => Manifest::parse(&wasm.with_extension("toml"), src)?,
            None => Manifest::default(),
        };
        // The tenant is the plugin's folder.
        let tenant = wasm
            .parent()
            .and_then(|p| p.file_name())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = manifest.with_tenant_limits(&self.tenant_limits.get(&tenant).copied().unwrap_or_default());
        for cut in &manifest.limits_clamped {
            tracing::warn!(%tenant, plugin = %name, "manifest limit above the tenant's: {cut}");
        }
        if let Some(vault) = &self.vault {
            let set = vault.for_plugin(&tenant, &name);
            if let Some(key) = manifest.secret_keys.iter().find(|k| !set.contains_key(*k)) {
                return Err(PluginLoadError::SecretMissing {
                    path: wasm.to_path_buf(),
                    key: key.clone(),
                    tenant,
                    plugin: name,
                });
            }
        }
        if manifest.limits.memory_bytes > self.memory_budget {
            return Err(PluginLoadError::OverBudget {
                path: wasm.to_path_buf(),
                mb: manifest.limits.memory_bytes >> 20,
                budget_mb: self.memory_budget >> 20,
            });
        }
        let Prepared { pre, ticker } = self
            .runtime
            .load_with_stack(bytes, &hash, manifest.limits.wasm_stack_bytes)
            .map_err(|source| PluginLoadError::Component {
                path: wasm.to_path_buf(),
                source,
            })?;
        if !manifest.schedules.is_empty() && !pre.contract().has_timers() {
            return Err(PluginLoadError::ContractTooOld {
                path: wasm.to_path_buf(),
                has: pre.contract(),
                needs: crate::engine::contract::Contract::CURRENT,
            });
        }
        Ok(LoadedPlugin {
            version: version_id(&hash, manifest_src.as_deref()),
            name,
            hash,
            manifest: Arc::new(manifest),
            pre,
            ticker,
            manifest_src,
            loaded_at: chrono::Utc::now(),
        })
    }

    /// Brings one tenant's plugin set in line with its folder: new and changed
    /// files are loaded, unchanged ones kept, deleted ones dropped. A file that
    /// fails to load is recorded as rejected and the version it would have
    /// replaced keeps serving. Files in `complete` (renamed into place, or
    /// closed after writing) are read at once; other files written less than
    /// `settle` ago are left for a later pass (`retry_after`), so a copy in
    /// progress is never read. The new set is swapped in at once.
    pub fn reload_tenant(&self, plugins_dir: &Path, tenant: &str, complete: &HashSet<PathBuf>, settle: Duration) -> ReloadReport {
        let _changing = crate::sync::lock(&self.changing);
        let folder = plugins_dir.join(tenant);
        let mut report = ReloadReport::default();
        let current = self.plugins(tenant);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&folder) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        let mut next: Vec<Arc<LoadedPlugin>> = Vec::new();
        let mut rejections = self.rejections(tenant);
        let mut seen = HashSet::new();
        for wasm in files {
            let Some(name) = plugin_name(&wasm) else {
                if !wasm.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                    tracing::warn!(file = %wasm.display(), "ignoring plugin file: names use only a-z, 0-9, '-' and '_'");
                }
                continue;
            };
            seen.insert(name.clone());
            let old = current.iter().find(|p| p.name == name).cloned();
            let manifest_path = wasm.with_extension("toml");
            let fresh = [&wasm, &manifest_path].iter().any(|p| {
                !complete.contains(*p)
                    && std::fs::metadata(p)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < settle)
            });
            if fresh {
                // Still being written: keep what serves now and look again later.
                report.retry_after = Some(settle);
                next.extend(old);
                continue;
            }
            let bytes = match std::fs::read(&wasm) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %wasm.display(), error = %e, "cannot read plugin file");
                    next.extend(old);
                    continue;
                }
            };
            let manifest_src = std::fs::read_to_string(&manifest_path).ok();
            let hash = Runtime::content_hash(&bytes);
            if let Some(old) = &old
                && old.hash == hash
                && old.manifest_src == manifest_src
            {
                // Unchanged, or put back to the version serving: nothing is rejected.
                rejections.remove(&name);
                next.push(old.clone());
                continue;
            }
            if rejections
                .get(&name)
                .is_some_and(|r| r.hash.as_deref() == Some(hash.as_str()) && r.manifest_src == manifest_src)
            {
                // Rejected before, unchanged since: don't try again.
                next.extend(old);
                continue;
            }
            let manifest_src_copy = manifest_src.clone();
            match self.load_bytes(&wasm, &bytes, hash.clone(), manifest_src) {
                Ok(p) => {
                    tracing::info!(%tenant, plugin = %p.name, hash = %&p.hash[..12], replaced = old.as_ref().map(|o| &o.hash[..12]), "loaded plugin");
                    rejections.remove(&name);
                    self.keep(tenant, &p, &bytes, "folder", "folder");
                    report.loaded.push(name);
                    next.push(Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(%tenant, plugin = %name, serving = old.as_ref().map(|o| &o.hash[..12]), error = %e, "plugin version rejected");
                    self.notices.file(
                        "version.rejected",
                        serde_json::json!({ "tenant": tenant, "plugin": name, "hash": hash, "error": e.to_string(),
                                            "serving": old.as_ref().map(|o| o.hash.clone()) }),
                    );
                    rejections.insert(
                        name.clone(),
                        Rejection {
                            hash: Some(hash),
                            error: e.to_string(),
                            at: chrono::Utc::now(),
                            manifest_src: manifest_src_copy,
                        },
                    );
                    report.rejected.push(name);
                    next.extend(old);
                }
            }
        }
        for p in current.iter().filter(|p| !seen.contains(&p.name)) {
            tracing::info!(%tenant, plugin = %p.name, "unloaded plugin (file removed)");
            report.removed.push(p.name.clone());
        }
        rejections.retain(|name, _| seen.contains(name));
        crate::sync::lock(&self.rejected).insert(tenant.to_string(), rejections);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.loads.fetch_add(report.loaded.len() as u64, relaxed);
        self.rejections_total.fetch_add(report.rejected.len() as u64, relaxed);
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            self.replace(tenant, next);
        }
        report
    }

    /// Loads every known tenant's folder under `dir`, warning about folders of
    /// unknown tenants. A plugin that fails to load never stops the others.
    pub fn load_all(&self, dir: &Path, tenants: &BTreeMap<String, crate::config::TenantConfig>) -> usize {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !tenants.contains_key(&name) {
                    tracing::warn!(folder = %entry.path().display(), "ignoring plugin folder for unknown tenant `{name}`");
                }
            }
        }
        let mut rejected = 0;
        for tenant in tenants.keys() {
            // At start-up, load what is there; the watcher catches later writes.
            rejected += self.reload_tenant(dir, tenant, &HashSet::new(), Duration::ZERO).rejected.len();
        }
        rejected
    }

    /// Drops in-memory compiled code that no tenant's plugin uses.
    pub fn collect_garbage(&self) {
        let live: HashSet<String> = crate::sync::read(&self.tenants)
            .values()
            .flat_map(|s| s.iter().map(|p| p.hash.clone()))
            .collect();
        self.runtime.retain_compiled(&live);
    }
}

/// The plugin name a `.wasm` path stands for, if it is a valid one.
pub fn plugin_name(wasm: &Path) -> Option<String> {
    let name = wasm.file_stem()?.to_str()?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then(|| name.to_string())
}
