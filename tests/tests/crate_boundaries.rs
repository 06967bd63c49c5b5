//! The crate boundaries docs/architecture.md draws, checked on the resolved dependency graph:
//! the gateway links no ML or Delta crate (a proxy that pulled in candle, tract and deltalake
//! once panicked over two rustls backends), and the operator/data-plane contract stays
//! Kubernetes-light (no client, no runtime).

use std::process::Command;

/// The normal (non-dev, non-build) dependencies of `package`, one crate name per line.
fn dependencies(package: &str) -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn linked(package: &str, forbidden: &[&str]) -> Vec<String> {
    dependencies(package)
        .into_iter()
        .filter(|name| forbidden.iter().any(|f| name.starts_with(f)))
        .collect()
}

#[test]
fn the_gateway_links_no_model_runtime_and_no_delta() {
    let forbidden = ["candle", "tract", "tokenizers", "deltalake", "minijinja"];
    let found = linked("sluice-gateway", &forbidden);
    assert!(found.is_empty(), "sluice-gateway links {found:?}");
    // The check itself sees what it looks for: the model server does link them.
    assert!(!linked("sluice-serve", &forbidden).is_empty());
}

#[test]
fn the_contract_has_no_kubernetes_client() {
    // sluice-crds derives its types with kube's macros; the client must not come with them.
    for package in ["sluice-contract", "sluice-crds"] {
        let found = linked(
            package,
            &["kube-client", "kube-runtime", "tokio", "hyper", "reqwest"],
        );
        assert!(found.is_empty(), "{package} links {found:?}");
    }
}
