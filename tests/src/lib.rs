//! Test support for Sluice: offline schema validation, manifest fixtures, and (in later
//! modules) the local control plane harness.

pub mod manifests;
pub mod schema;

use std::path::PathBuf;

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
