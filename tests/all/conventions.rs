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
        } else if name == "run" || path.extension().is_some_and(|e| EXTS.iter().any(|x| e == *x)) {
            if name != "package-lock.json" && name != "Cargo.lock" {
                out.push(path);
            }
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
        // A relative path may be resolved against the file's folder or its
        // package's (Cargo.toml, package.json, plugin.toml): it must stay
        // inside the repository from either.
        let package = dir
            .ancestors()
            .take_while(|a| a.starts_with(root))
            .find(|a| ["Cargo.toml", "package.json", "plugin.toml"].iter().any(|m| a.join(m).exists()))
            .unwrap_or(root);
        let allowed = depth(root, dir).min(depth(root, package));
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("../") {
                let run = &rest[at..];
                let ups = run.as_bytes().chunks(3).take_while(|c| *c == b"../").count();
                let preceded_by_dot = at > 0 && rest.as_bytes()[at - 1] == b'.';
                if !preceded_by_dot && ups > allowed {
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
