//! Building guest plugins from source: makes sure the `wasm32-wasip2` target is
//! installed, then builds the whole guest workspace in `plugins/` with one
//! cargo invocation into `<target>/wasm`, so every caller shares one build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The guest target.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// One built plugin.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// The package name, e.g. `appointment-confirm`; also the deployed file stem.
    pub name: String,
    /// The package's folder.
    pub source_dir: PathBuf,
    /// The built component.
    pub wasm: PathBuf,
    /// The package's `plugin.toml`, if it has one.
    pub manifest: Option<PathBuf>,
}

/// The guest workspace and where it builds to.
#[derive(Debug, Clone)]
pub struct GuestWorkspace {
    /// The folder holding the guest workspace's `Cargo.toml`.
    pub root: PathBuf,
    /// The cargo target dir for guests.
    pub target_dir: PathBuf,
}

impl GuestWorkspace {
    /// The `plugins/` workspace of the source checkout this binary was built
    /// from, if it is still there.
    pub fn from_source_checkout() -> Option<GuestWorkspace> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
        Self::at(&repo.join("plugins"), &repo)
    }

    /// The guest workspace at `root`, building into the repository's shared
    /// target dir (`$CARGO_TARGET_DIR` or `<repo>/target`) under `wasm/`.
    pub fn at(root: &Path, repo: &Path) -> Option<GuestWorkspace> {
        if !root.join("Cargo.toml").is_file() {
            return None;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target"));
        Some(GuestWorkspace {
            root: root.to_path_buf(),
            target_dir: target.join("wasm"),
        })
    }

    /// Every plugin package in the workspace (folders with a `cdylib` crate).
    pub fn packages(&self) -> anyhow::Result<Vec<BuiltPlugin>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
            {
                let path = entry.path();
                if !path.is_dir() || path.file_name().is_some_and(|n| n == "target" || n == "node_modules") {
                    continue;
                }
                let manifest = path.join("Cargo.toml");
                if manifest.is_file() {
                    let text = std::fs::read_to_string(&manifest)?;
                    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
                    let name = doc.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str());
                    let cdylib = doc
                        .get("lib")
                        .and_then(|l| l.get("crate-type"))
                        .and_then(|c| c.as_array())
                        .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("cdylib")));
                    if let (Some(name), true) = (name, cdylib) {
                        let wasm = self
                            .target_dir
                            .join(WASM_TARGET)
                            .join("release")
                            .join(format!("{}.wasm", name.replace('-', "_")));
                        let plugin_toml = path.join("plugin.toml");
                        out.push(BuiltPlugin {
                            name: name.to_string(),
                            source_dir: path.clone(),
                            wasm,
                            manifest: plugin_toml.is_file().then_some(plugin_toml),
                        });
                    }
                } else {
                    dirs.push(path);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Builds every guest (incrementally) and returns them. With `quiet`,
    /// cargo's output is shown only if the build fails.
    pub fn build(&self, quiet: bool) -> anyhow::Result<Vec<BuiltPlugin>> {
        ensure_wasm_target()?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root)
            .args(["build", "--release", "--target", WASM_TARGET, "--target-dir"])
            .arg(&self.target_dir)
            .stdin(Stdio::null());
        let status = if quiet {
            let out = cmd.output().context("running cargo to build the guest plugins")?;
            if !out.status.success() {
                bail!(
                    "building the guest plugins in {} failed:\n{}",
                    self.root.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            out.status
        } else {
            cmd.status().context("running cargo to build the guest plugins")?
        };
        if !status.success() {
            bail!("building the guest plugins in {} failed ({status})", self.root.display());
        }
        let packages = self.packages()?;
        for p in &packages {
            if !p.wasm.is_file() {
                bail!("cargo succeeded but {} is missing", p.wasm.display());
            }
        }
        Ok(packages)
    }
}

/// Installs the `wasm32-wasip2` target with rustup if it is missing.
pub fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stdin(Stdio::null())
        .output();
    match installed {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
                return Ok(());
            }
            tracing::info!("installing the {WASM_TARGET} target with rustup");
            let status = Command::new("rustup")
                .args(["target", "add", WASM_TARGET])
                .stdin(Stdio::null())
                .status()
                .context("running rustup")?;
            if !status.success() {
                bail!("`rustup target add {WASM_TARGET}` failed ({status})");
            }
            Ok(())
        }
        // No rustup: let cargo report a missing target itself.
        _ => Ok(()),
    }
}
