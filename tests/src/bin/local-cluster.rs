//! `local-cluster up --state-dir DIR`: the test control plane and the test kubelet's nodes (one
//! CPU node, one GPU node) in the foreground, for people and tools to use with kubectl. Pods of
//! Sluice's images run as local processes on their own 127.x addresses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use std::collections::BTreeMap;

use sluice_tests::{
    binaries::built,
    cluster::{ControlPlane, images},
    kubelet::{Kubelet, KubeletConfig},
    repo_root,
};

#[derive(Parser)]
#[command(about = "A local Kubernetes control plane built from Kubernetes' own Go modules")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the control plane in the foreground; stop with Ctrl-C (SIGINT) or SIGTERM.
    Up {
        /// Folder for certificates, etcd data, logs and the admin kubeconfig (DIR/kubeconfig).
        #[arg(long, default_value = ".state/local-cluster")]
        state_dir: PathBuf,
        /// Do not install the Sluice CRDs.
        #[arg(long)]
        no_crds: bool,
        /// Do not start the test kubelet (its CPU and GPU nodes); pods then stay Pending.
        #[arg(long)]
        no_kubelet: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Up {
        state_dir,
        no_crds,
        no_kubelet,
    } = Cli::parse().command;
    let state_dir = std::path::absolute(&state_dir)?;
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&state_dir, false)).await??;
    let client = cp.client().await?;
    if !no_crds {
        sluice_tests::cluster::install_crds(&client, &repo_root().join("crds/generated")).await?;
    }
    let kubelet = if no_kubelet {
        None
    } else {
        let mut config =
            KubeletConfig::standard("local", cp.state_dir.join("kubelet"), cp.apiserver_port());
        config.restart_backoff_base = std::time::Duration::from_secs(10);
        config.images = BTreeMap::from([
            (
                images::INFERENCE_SERVER.to_string(),
                built("inference-server", "inference-server"),
            ),
            (
                images::OPERATOR.to_string(),
                built("sluice-operator", "sluice-operator"),
            ),
        ]);
        Some(Kubelet::start(client.clone(), config).await?)
    };
    println!(
        "local cluster ready in {:.1}s: export KUBECONFIG={} (server {})",
        cp.startup.as_secs_f64(),
        cp.kubeconfig.display(),
        cp.server
    );
    wait_for_signal().await?;
    eprintln!("stopping the local cluster");
    if let Some(kubelet) = kubelet {
        kubelet.shutdown().await;
    }
    tokio::task::spawn_blocking(move || cp.stop()).await??;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
