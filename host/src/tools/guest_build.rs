//! Building guest plugins from source: makes sure the `wasm32-wasip2` target is
//! installed, builds every Rust guest in `plugins/` with one cargo invocation
//! into `<target>/wasm`, installs the pinned npm toolchain (`npm ci`) and
//! Python tools (`requirements.txt` into `plugins/.venv`), and runs
//! each non-Rust plugin's `[build] command` from its `plugin.toml`, skipping
//! those whose output is newer than their sources.

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
    /// For non-Rust plugins, the `[build] command` from `plugin.toml`.
    pub build_command: Option<String>,
    /// Pinned tools its build command needs, as `crate@version` (from
    /// `[build] requires`), installed with `cargo install` into
    /// `<target>/tools`.
    pub requires: Vec<String>,
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

    /// Where non-Rust plugins' build commands write (`$OUT_DIR`).
    pub fn script_out_dir(&self) -> PathBuf {
        self.target_dir.join("plugins")
    }

    /// Every plugin in the workspace: folders with a `cdylib` crate, and
    /// folders whose `plugin.toml` has a `[build] command`.
    pub fn packages(&self) -> anyhow::Result<Vec<BuiltPlugin>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
            {
                let path = entry.path();
                if !path.is_dir()
                    || path
                        .file_name()
                        .is_some_and(|n| n == "target" || n == "node_modules" || n == ".venv")
                {
                    continue;
                }
                let manifest = path.join("Cargo.toml");
                let plugin_toml = path.join("plugin.toml");
                if !manifest.is_file() && plugin_toml.is_file() {
                    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&plugin_toml)?)
                        .with_context(|| format!("parsing {}", plugin_toml.display()))?;
                    if let Some(command) = doc.get("build").and_then(|b| b.get("command")).and_then(|c| c.as_str()) {
                        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                        out.push(BuiltPlugin {
                            wasm: self.script_out_dir().join(format!("{name}.wasm")),
                            name,
                            source_dir: path.clone(),
                            manifest: Some(plugin_toml),
                            build_command: Some(command.to_string()),
                            requires: required_tools(&doc),
                        });
                        continue;
                    }
                }
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
                            build_command: None,
                            requires: Vec::new(),
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

    /// Builds the workspace's Rust guests with one cargo call. With `quiet`,
    /// cargo's output is shown only if the build fails.
    fn cargo_build(&self, quiet: bool) -> anyhow::Result<()> {
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
        Ok(())
    }

    /// Builds every guest (incrementally) and returns them; any failure
    /// fails the whole build. With `quiet`, tools' output is shown only on
    /// failure.
    pub fn build(&self, quiet: bool) -> anyhow::Result<Vec<BuiltPlugin>> {
        self.cargo_build(quiet)?;
        let packages = self.packages()?;
        let failures = self.build_scripted(&packages, quiet);
        if let Some((name, e)) = failures.into_iter().next() {
            return Err(e.context(format!("building plugin {name}")));
        }
        for p in &packages {
            if !p.wasm.is_file() {
                bail!("cargo succeeded but {} is missing", p.wasm.display());
            }
        }
        Ok(packages)
    }

    /// Like [`GuestWorkspace::build`], but a non-Rust plugin that fails to
    /// build (say, its toolchain is missing) is left out and reported rather
    /// than failing the rest: what `switchboard dev` uses.
    pub fn build_lenient(&self, quiet: bool) -> anyhow::Result<(Vec<BuiltPlugin>, Vec<BuildFailure>)> {
        self.cargo_build(quiet)?;
        let packages = self.packages()?;
        let failures = self.build_scripted(&packages, quiet);
        let built = packages
            .into_iter()
            .filter(|p| !failures.iter().any(|(name, _)| *name == p.name) && p.wasm.is_file())
            .collect();
        Ok((built, failures))
    }

    /// Runs the `[build] command` of every non-Rust plugin that is out of
    /// date; returns the ones that failed.
    fn build_scripted(&self, packages: &[BuiltPlugin], quiet: bool) -> Vec<BuildFailure> {
        let scripted: Vec<&BuiltPlugin> = packages.iter().filter(|p| p.build_command.is_some()).collect();
        if scripted.is_empty() {
            return Vec::new();
        }
        let setup = (|| -> anyhow::Result<(PathBuf, std::ffi::OsString)> {
            self.install_tools(quiet)?;
            std::fs::create_dir_all(self.script_out_dir())?;
            Ok((self.wasi_adapter()?, self.tool_path()?))
        })();
        let (adapter, path) = match setup {
            Ok(x) => x,
            Err(e) => {
                let message = format!("{e:#}");
                return scripted.iter().map(|p| (p.name.clone(), anyhow::anyhow!("{message}"))).collect();
            }
        };
        // The examples import the helper modules in plugin-sdk/.
        let (wit, sdk) = (self.root.join("../wit"), self.root.join("../plugin-sdk"));
        let mut failures = Vec::new();
        for p in scripted {
            if up_to_date(&p.wasm, &[&p.source_dir, &wit, &sdk]) {
                continue;
            }
            let result = (|| -> anyhow::Result<()> {
                for tool in &p.requires {
                    self.cargo_install(tool, quiet)?;
                }
                let command = p.build_command.as_deref().unwrap_or_default();
                tracing::info!(plugin = %p.name, "building: {command}");
                let mut cmd = shell(command, &p.source_dir, &self.script_out_dir());
                self.with_tools(&mut cmd, &path, &adapter);
                run(cmd, quiet, &format!("`{command}`"))
            })();
            if let Err(e) = result {
                failures.push((p.name.clone(), e));
            }
        }
        failures
    }
}

/// `sh -c COMMAND` in `dir`, writing into `out_dir` (`OUT_DIR`).
fn shell(command: &str, dir: &Path, out_dir: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("OUT_DIR", out_dir)
        .stdin(Stdio::null());
    cmd
}

/// A plugin that failed to build: its name and why.
pub type BuildFailure = (String, anyhow::Error);

/// The `[build] requires` list of a plugin.toml.
fn required_tools(doc: &toml::Table) -> Vec<String> {
    doc.get("build")
        .and_then(|b| b.get("requires"))
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Builds one plugin folder by its `plugin.toml` `[build] command`, with the
/// pinned tools of `tools` (the checkout's `plugins/` workspace) on PATH and
/// `SWITCHBOARD_WIT` set; returns `<dir>/target/<folder name>.wasm`.
pub fn build_one(dir: &Path, tools: Option<&GuestWorkspace>, quiet: bool) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    // The whole manifest is checked before anything is built: a misspelt
    // key is named with its line now, not when the server loads it.
    crate::config::Manifest::parse(&manifest, &text)?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let Some(command) = doc.get("build").and_then(|b| b.get("command")).and_then(|c| c.as_str()) else {
        bail!("{}: no [build] command", manifest.display());
    };
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)?;
    let mut cmd = shell(command, &dir, &out_dir);
    if let Some(ws) = tools {
        ws.install_tools(quiet)?;
        for tool in required_tools(&doc) {
            ws.cargo_install(&tool, quiet)?;
        }
        ws.with_tools(&mut cmd, &ws.tool_path()?, &ws.wasi_adapter()?);
    } else if std::env::var_os("SWITCHBOARD_WIT").is_none() {
        bail!("no Switchboard checkout found for the pinned tools and wit/; set SWITCHBOARD_WIT to its wit/ folder");
    }
    ensure_wasm_target()?;
    run(cmd, quiet, &format!("building plugin {name} (`{command}`)"))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    if !wasm.is_file() {
        bail!("`{command}` succeeded but did not write {}", wasm.display());
    }
    Ok(wasm)
}

impl GuestWorkspace {
    /// The one `wit/` folder every binding is generated from.
    pub fn wit_dir(&self) -> PathBuf {
        let wit = self.root.join("../wit");
        wit.canonicalize().unwrap_or(wit)
    }

    /// Installs the pinned npm and Python tools, if not already current.
    pub fn install_tools(&self, quiet: bool) -> anyhow::Result<()> {
        self.npm_ci(quiet)?;
        self.pip_install(quiet)
    }

    /// A pinned npm tool (`jco`, `tsc`), installing the npm tools first if
    /// they are not current.
    pub fn js_tool(&self, name: &str, quiet: bool) -> anyhow::Result<PathBuf> {
        self.npm_ci(quiet)?;
        Ok(self.root.join("node_modules/.bin").join(name))
    }

    /// Gives a build command the pinned tools (`path`), the `wit/` folder
    /// and the preview1 adapter.
    fn with_tools(&self, cmd: &mut Command, path: &std::ffi::OsStr, adapter: &Path) {
        cmd.env("PATH", path)
            .env("SWITCHBOARD_WIT", self.wit_dir())
            .env("SWITCHBOARD_WASI_ADAPTER", adapter);
    }

    /// Where `[build] requires` tools are installed.
    pub fn tools_root(&self) -> PathBuf {
        self.target_dir.join("tools")
    }

    /// Installs a pinned `crate@version` with `cargo install --locked` into
    /// [`GuestWorkspace::tools_root`], unless that version is there already.
    pub fn cargo_install(&self, tool: &str, quiet: bool) -> anyhow::Result<()> {
        let Some((krate, version)) = tool.split_once('@') else {
            bail!("[build] requires: `{tool}` is not `crate@version`");
        };
        let root = self.tools_root();
        let marker = root.join(format!(".installed-{krate}-{version}"));
        if marker.is_file() {
            return Ok(());
        }
        tracing::info!("installing {krate} {version} into {} (once; a few minutes)", root.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["install", "--locked", "--quiet", "--root"])
            .arg(&root)
            .arg(format!("{krate}@{version}"))
            .stdin(Stdio::null());
        run(cmd, quiet, &format!("`cargo install {krate}@{version}`"))?;
        std::fs::write(&marker, b"")?;
        Ok(())
    }

    /// Writes wasmtime's WASI preview1 → preview2 reactor adapter (for
    /// `wasm-tools component new --adapt`) and returns its path.
    pub fn wasi_adapter(&self) -> anyhow::Result<PathBuf> {
        let path = self.target_dir.join("wasi_snapshot_preview1.reactor.wasm");
        let bytes = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            std::fs::create_dir_all(&self.target_dir)?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(path)
    }

    /// PATH with the pinned tools first.
    pub fn tool_path(&self) -> anyhow::Result<std::ffi::OsString> {
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
        path.insert(0, self.tools_root().join("bin"));
        path.insert(0, self.root.join("node_modules/.bin"));
        path.insert(0, self.venv().join("bin"));
        std::env::join_paths(path).context("building PATH for plugin build commands")
    }

    /// The project-local Python environment holding the pinned Python tools.
    pub fn venv(&self) -> PathBuf {
        self.root.join(".venv")
    }

    /// Installs `requirements.txt` (exact pins) into [`GuestWorkspace::venv`]
    /// unless the installed copy is already current; offline after that.
    fn pip_install(&self, quiet: bool) -> anyhow::Result<()> {
        let requirements = self.root.join("requirements.txt");
        if !requirements.is_file() {
            return Ok(());
        }
        let venv = self.venv();
        let installed = venv.join("installed-requirements.txt");
        if up_to_date(&installed, &[&requirements]) {
            return Ok(());
        }
        tracing::info!("installing the pinned Python toolchain into {}", venv.display());
        let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        let mut cmd = Command::new(python);
        cmd.args(["-m", "venv"]).arg(&venv).stdin(Stdio::null());
        run(cmd, quiet, "creating the Python venv for plugin tools")?;
        let mut cmd = Command::new(venv.join("bin/pip"));
        cmd.args(["install", "--disable-pip-version-check", "--no-input", "-r"])
            .arg(&requirements)
            .stdin(Stdio::null());
        run(cmd, quiet, "`pip install -r requirements.txt` in the plugins folder")?;
        std::fs::copy(&requirements, &installed).context("recording the installed Python requirements")?;
        Ok(())
    }

    /// Installs the pinned npm tools (`npm ci`) unless `node_modules` is
    /// already up to date with `package-lock.json`.
    fn npm_ci(&self, quiet: bool) -> anyhow::Result<()> {
        let lock = self.root.join("package-lock.json");
        if !lock.is_file() {
            return Ok(());
        }
        let installed = self.root.join("node_modules/.package-lock.json");
        if up_to_date(&installed, &[&lock]) {
            return Ok(());
        }
        tracing::info!("installing the pinned JavaScript toolchain (npm ci)");
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&self.root)
            .stdin(Stdio::null());
        run(cmd, quiet, "`npm ci` in the plugins folder")
    }
}

fn run(mut cmd: Command, quiet: bool, what: &str) -> anyhow::Result<()> {
    if quiet {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        let status = cmd.status().with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
    }
    Ok(())
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if entry.file_name() == "node_modules" || entry.file_name() == "target" || entry.file_name() == "__pycache__" {
                continue;
            }
            if let Some(t) = newest_mtime(&entry.path()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

/// Whether `output` exists and is newer than everything under `inputs`.
fn up_to_date(output: &Path, inputs: &[&Path]) -> bool {
    let Some(built) = std::fs::metadata(output).and_then(|m| m.modified()).ok() else {
        return false;
    };
    inputs.iter().all(|i| newest_mtime(i).is_none_or(|t| t <= built))
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
