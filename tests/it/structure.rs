//! The shape docs/architecture.md promises, checked on the source: layers point one way (no import
//! cycle between top-level modules, `tls` never uses `http`, `policy` and `metrics` never use
//! `registry`), `unsafe` lives in `sys` alone, and no source file outgrows ~600 lines of code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MODULES: &[&str] = &[
    "action", "auth", "client", "config", "http", "metrics", "net", "oci", "policy", "registry",
    "reload", "server", "storage", "sys", "tls",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each `.rs` file under `src/` (unit-test files excluded) with its code before `#[cfg(test)]`.
fn code() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
            (p.strip_prefix(&src).unwrap().to_path_buf(), code)
        })
        .collect()
}

fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Top-level module → the top-level modules its code names as `crate::x`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in code() {
        let from = top_module(&rel);
        if !MODULES.contains(&from.as_str()) {
            continue;
        }
        let entry = deps.entry(from.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !code[at + 7..].starts_with('{'),
                "{}: write one `use crate::x::…` per module, so this check sees it",
                rel.display()
            );
            if name != from && MODULES.contains(&name.as_str()) {
                entry.insert(name);
            }
        }
    }
    deps
}

fn reaches(deps: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        for next in deps.get(&last).into_iter().flatten() {
            let mut p = path.clone();
            p.push(next.clone());
            if next == to {
                return Some(p);
            }
            if seen.insert(next.clone()) {
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let deps = dependencies();
    for m in MODULES {
        if let Some(cycle) = reaches(&deps, m, m) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn layers_point_one_way() {
    let deps = dependencies();
    for (from, to) in [
        ("tls", "http"),
        ("net", "http"),
        ("net", "tls"),
        ("policy", "registry"),
        ("metrics", "registry"),
        ("action", "registry"),
        ("storage", "http"),
        ("storage", "registry"),
        ("oci", "http"),
        ("client", "http"),
        ("client", "storage"),
        ("client", "oci"),
    ] {
        if let Some(path) = reaches(&deps, from, to) {
            panic!("{from} must not use {to}: {}", path.join(" → "));
        }
    }
}

#[test]
fn unsafe_code_lives_in_sys_alone() {
    for (rel, code) in code() {
        if rel == Path::new("sys.rs") {
            continue;
        }
        assert!(
            !code.contains("unsafe {")
                && !code.contains("unsafe impl")
                && !code.contains("unsafe fn"),
            "{}: unsafe outside src/sys.rs",
            rel.display()
        );
    }
}

#[test]
fn no_source_file_outgrows_600_lines_of_code() {
    for (rel, code) in code() {
        let lines = code.lines().count();
        assert!(
            lines <= 600,
            "{}: {lines} lines before its tests; split it by job",
            rel.display()
        );
    }
}

/// `cargo check` of `args` in the repository; fails with cargo's output.
fn cargo_check(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .arg("check")
        .args(args)
        .current_dir(root)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo check {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The benches and the fuzz targets are not built by `cargo test`: compiling them here keeps them
/// from rotting (the fuzz crate has its own lock file and target directory, fuzz/target).
#[test]
fn benches_and_fuzz_targets_compile() {
    cargo_check(&["--release", "--benches"]);
    cargo_check(&["--release", "--manifest-path", "fuzz/Cargo.toml", "--bins"]);
}
