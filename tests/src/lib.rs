//! Test support for Sluice: offline schema validation, manifest fixtures, and (in later
//! modules) the local control plane harness.

pub mod apply;
pub mod binaries;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod images;
pub mod kubelet;
pub mod lake;
pub mod load;
pub mod manifests;
pub mod mlflow;
pub mod models;
pub mod object_store;
pub mod process;
pub mod providers;
pub mod pvc;
pub mod rbac;
pub mod schema;
pub mod tiny_llm;
pub mod wait;

use std::path::PathBuf;

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A tool `.ci/setup` installed under `${SLUICE_CACHE:-~/.cache/sluice}` (e.g.
/// `fake-gcs-server/fake-gcs-server`). Panics with the fix when the tool is missing.
pub fn cached_tool(relative: &str) -> PathBuf {
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice")
        });
    let tool = cache.join(relative);
    assert!(
        tool.exists(),
        "{} not found: run `bash .ci/setup` first",
        tool.display()
    );
    tool
}

/// A Python tool from the project's virtual environment (`.venv`, made by `.ci/setup`), or
/// `SLUICE_VENV` when set. Panics with the fix when the tool is missing.
pub fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} not found: run `bash .ci/setup` first",
        tool.display()
    );
    tool
}

/// The last `lines` lines of a log file under a `==== path` header (empty when unreadable).
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    let mut out = format!("==== {} (last {} lines)\n", path.display(), tail.len());
    for line in tail.into_iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}
