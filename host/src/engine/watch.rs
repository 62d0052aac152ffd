//! Hot reload: a debounced file watcher on the plugins folder that only sends
//! "tenant changed" messages, and a reloader task that applies them one at a
//! time through the registry. If the watcher fails, periodic rescans take over.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;

use crate::engine::plugins::Registry;

/// How long the watcher batches events before passing them on. Short: whether
/// a file is complete is decided per file (see [`Reload::Tenant`]), not by
/// waiting for quiet.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// How often the folder is rescanned when the watcher is not working.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// A message to the reloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Something under this tenant's folder changed. `complete` lists files
    /// known to be whole: renamed into place, or closed after writing. Other
    /// changed files are loaded only once they have stopped changing.
    Tenant {
        /// Tenant id.
        tenant: String,
        /// Files known to be complete.
        complete: Vec<PathBuf>,
    },
    /// The watcher failed: rescan everything, and keep rescanning.
    WatcherFailed(String),
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _debouncer: Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>>,
    reloader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.reloader.abort();
    }
}

/// The tenant a changed path belongs to (its first component under `root`).
fn tenant_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let first = rel.components().next()?;
    Some(first.as_os_str().to_string_lossy().into_owned())
}

/// Starts watching `plugins_dir` and reloading the given tenants' plugin sets.
pub fn start(registry: Arc<Registry>, plugins_dir: PathBuf, tenants: BTreeSet<String>) -> WatchHandle {
    let _ = std::fs::create_dir_all(&plugins_dir);
    let plugins_dir = plugins_dir.canonicalize().unwrap_or(plugins_dir);
    let (tx, rx) = mpsc::unbounded_channel();
    let root = plugins_dir.clone();
    let sender = tx.clone();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let mut changed: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
            for ev in events {
                let complete = match ev.kind {
                    EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                    | EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => false,
                    _ => continue,
                };
                for path in &ev.paths {
                    if path == &root && matches!(ev.kind, EventKind::Remove(_)) {
                        let _ = sender.send(Reload::WatcherFailed(format!("{} was removed", root.display())));
                        continue;
                    }
                    if let Some(t) = tenant_of(&root, path) {
                        let entry = changed.entry(t).or_default();
                        if complete {
                            entry.push(path.clone());
                        }
                    }
                }
            }
            for (tenant, complete) in changed {
                let _ = sender.send(Reload::Tenant { tenant, complete });
            }
        }
        Err(errors) => {
            let msg = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
            let _ = sender.send(Reload::WatcherFailed(msg));
        }
    };
    let debouncer = match new_debouncer(DEBOUNCE, None, handler) {
        Ok(mut d) => match d.watch(&plugins_dir, RecursiveMode::Recursive) {
            Ok(()) => Some(d),
            Err(e) => {
                let _ = tx.send(Reload::WatcherFailed(e.to_string()));
                None
            }
        },
        Err(e) => {
            let _ = tx.send(Reload::WatcherFailed(e.to_string()));
            None
        }
    };
    let reloader = tokio::spawn(run_reloader(registry, plugins_dir, tenants, tx, rx));
    WatchHandle {
        _debouncer: debouncer,
        reloader,
    }
}

async fn reload(registry: &Arc<Registry>, dir: &Path, tenant: &str, complete: HashSet<PathBuf>, tx: &mpsc::UnboundedSender<Reload>) {
    let (registry2, dir2, t2) = (registry.clone(), dir.to_path_buf(), tenant.to_string());
    let report =
        match tokio::task::spawn_blocking(move || registry2.reload_tenant(&dir2, &t2, &complete, crate::engine::plugins::SETTLE)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%tenant, error = %e, "reload panicked");
                return;
            }
        };
    if !report.removed.is_empty() || !report.loaded.is_empty() {
        registry.collect_garbage();
    }
    if let Some(after) = report.retry_after {
        let tx = tx.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Reload::Tenant {
                tenant,
                complete: Vec::new(),
            });
        });
    }
}

async fn run_reloader(
    registry: Arc<Registry>,
    dir: PathBuf,
    tenants: BTreeSet<String>,
    tx: mpsc::UnboundedSender<Reload>,
    mut rx: mpsc::UnboundedReceiver<Reload>,
) {
    let mut warned = HashSet::new();
    let mut rescanning = false;
    loop {
        let msg = if rescanning {
            match tokio::time::timeout(RESCAN_EVERY, rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => return,
                Err(_) => None,
            }
        } else {
            match rx.recv().await {
                Some(m) => Some(m),
                None => return,
            }
        };
        // Coalesce whatever else is queued: one reload per tenant per round.
        let mut round: std::collections::BTreeMap<String, HashSet<PathBuf>> = Default::default();
        let mut queue: Vec<Reload> = msg.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            queue.push(m);
        }
        if queue.is_empty() && rescanning {
            round.extend(tenants.iter().map(|t| (t.clone(), HashSet::new())));
        }
        for m in queue {
            match m {
                Reload::Tenant { tenant, complete } => {
                    round.entry(tenant).or_default().extend(complete);
                }
                Reload::WatcherFailed(why) => {
                    if !rescanning {
                        tracing::error!(error = %why, every = ?RESCAN_EVERY, "PLUGIN WATCHER FAILED: falling back to periodic rescans of {}", dir.display());
                        rescanning = true;
                    }
                    for t in &tenants {
                        round.entry(t.clone()).or_default();
                    }
                }
            }
        }
        for (t, complete) in round {
            if !tenants.contains(&t) {
                if warned.insert(t.clone()) {
                    tracing::warn!(folder = %dir.join(&t).display(), "ignoring plugin folder for unknown tenant `{t}`");
                }
                continue;
            }
            reload(&registry, &dir, &t, complete, &tx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_the_first_component_under_the_root() {
        let root = Path::new("/srv/plugins.d");
        assert_eq!(tenant_of(root, Path::new("/srv/plugins.d/acme/crm.wasm")).as_deref(), Some("acme"));
        assert_eq!(tenant_of(root, Path::new("/srv/plugins.d/acme")).as_deref(), Some("acme"));
        assert_eq!(tenant_of(root, Path::new("/srv/other/acme/crm.wasm")), None);
        assert_eq!(tenant_of(root, root), None);
    }
}
