//! Repository conventions that code review would otherwise have to catch.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "node_modules" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_line_saying_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["host", "plugin-sdk", "plugins", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//! "))
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(missing.is_empty(), "modules without a leading `//!` line: {missing:?}");
}

/// Every file a build, test, bench or tool reads: sources, manifests and scripts.
fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    const EXTS: [&str; 9] = ["rs", "toml", "json", "py", "js", "c", "h", "sh", "wit"];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | "node_modules" | ".git" | ".venv") {
                source_files(&path, out);
            }
        } else if (name == "run" || path.extension().is_some_and(|e| EXTS.iter().any(|x| e == *x)))
            && name != "package-lock.json"
            && name != "Cargo.lock"
        {
            out.push(path);
        }
    }
}

/// How many directories below `root` `dir` is.
fn depth(root: &Path, dir: &Path) -> usize {
    dir.strip_prefix(root).map(|p| p.components().count()).unwrap_or(0)
}

#[test]
fn no_source_reaches_above_the_repository_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    source_files(root, &mut files);
    assert!(files.iter().any(|f| f.ends_with(".ci/run")), "the scan missed .ci/run");
    let sibling = format!("../{}", "shared");
    let mut escapes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let dir = file.parent().unwrap();
        // A path joined to `CARGO_MANIFEST_DIR` starts at the file's package
        // (the integration tests under `tests/` are the host package's);
        // any other relative path (`#[path]`, a script's, a build command's)
        // at the file's own folder.
        let package = if file.starts_with(root.join("tests")) {
            root.join("host")
        } else {
            dir.ancestors()
                .take_while(|a| a.starts_with(root))
                .find(|a| a.join("Cargo.toml").exists())
                .unwrap_or(root)
                .to_path_buf()
        };
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("../") {
                let run = &rest[at..];
                let ups = run.as_bytes().chunks(3).take_while(|c| *c == b"../").count();
                let preceded_by_dot = at > 0 && rest.as_bytes()[at - 1] == b'.';
                let base = if line.contains("CARGO_MANIFEST_DIR") { &package } else { dir };
                let limit = depth(root, base);
                if !preceded_by_dot && ups > limit {
                    escapes.push(format!("{}:{}: {}", file.strip_prefix(root).unwrap().display(), n + 1, line.trim()));
                }
                rest = &rest[at + 3 * ups.max(1)..];
            }
            if line.contains(&sibling) {
                escapes.push(format!("{}:{}: {}", file.strip_prefix(root).unwrap().display(), n + 1, line.trim()));
            }
        }
    }
    escapes.dedup();
    assert!(escapes.is_empty(), "paths that leave the repository:\n{}", escapes.join("\n"));
}

/// The layers of `host/src`, lowest first. A module may use only modules of
/// lower layers and its own top-level module; modules of one layer (intake
/// and admin) never use each other. ARCHITECTURE.md gives the same order.
const LAYERS: &[&[&str]] = &[
    &["domain", "sync", "throttle"],
    &["metrics", "telemetry"],
    &["config"],
    &["storage"],
    &["engine"],
    &["intake", "admin"],
    &["console"],
    &["server"],
    &["tools"],
    &["lib", "main"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// `(module path, source)` of every file under `host/src`: `engine/dispatch.rs`
/// is `["engine", "dispatch"]`, `storage/mod.rs` is `["storage"]`.
fn host_modules() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            (path, std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// Every `crate::a::b` path a source uses outside comments, as `[a, b]`
/// (`b` only when it is a lower-case module name).
fn crate_paths(source: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let preceded = at > 0 && {
                let c = rest.as_bytes()[at - 1];
                c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
            };
            rest = &rest[at + "crate::".len()..];
            if preceded {
                continue;
            }
            let segs: Vec<String> = rest
                .split("::")
                .take(2)
                .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
                .take_while(|s| !s.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .collect();
            if !segs.is_empty() {
                out.push((n + 1, segs));
            }
        }
    }
    out
}

#[test]
fn host_imports_only_point_down_the_layers() {
    let modules = host_modules();
    assert!(modules.len() > 30, "found only {} modules", modules.len());
    let mut wrong = Vec::new();
    for (path, source) in &modules {
        let top = path[0].as_str();
        let own = layer_of(top).unwrap_or_else(|| panic!("host/src/{top} is in no layer: add it to LAYERS and ARCHITECTURE.md"));
        for (line, used) in crate_paths(source) {
            let target = used[0].as_str();
            let Some(theirs) = layer_of(target) else { continue };
            if target != top && theirs >= own {
                wrong.push(format!(
                    "{}:{line}: `{top}` (layer {own}) uses `{target}` (layer {theirs})",
                    path.join("/")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn host_modules_have_no_import_cycles() {
    use std::collections::{BTreeMap, BTreeSet};
    // Nodes are modules at the depth the code map lists: `engine::dispatch`,
    // `storage`, `admin`.
    let modules = host_modules();
    let folders: BTreeSet<String> = modules.iter().filter(|(p, _)| p.len() > 1).map(|(p, _)| p[0].clone()).collect();
    let node = |segs: &[String]| -> String {
        if folders.contains(&segs[0]) && segs.len() > 1 && segs[0] != "storage" {
            format!("{}::{}", segs[0], segs[1])
        } else {
            segs[0].clone()
        }
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, source) in &modules {
        let from = node(path);
        for (_, used) in crate_paths(source) {
            let to = node(&used);
            if to != from && modules.iter().any(|(p, _)| node(p) == to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(cycle) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    assert!(edges.len() > 10, "the scan found too few edges: {edges:?}");
}

#[test]
fn no_host_module_is_over_600_lines_outside_tests() {
    let big: Vec<String> = host_modules()
        .into_iter()
        .filter(|(path, _)| path.last().is_none_or(|l| l != "tests"))
        .filter_map(|(path, source)| {
            let code = source.split("\n#[cfg(test)]\nmod tests {").next().unwrap_or("");
            let n = code.lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", path.join("/")))
        })
        .collect();
    assert!(big.is_empty(), "split these by concern: {big:?}");
}
