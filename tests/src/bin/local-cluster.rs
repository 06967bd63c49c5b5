//! `local-cluster up --state-dir DIR`: the test control plane and the test kubelet's nodes (one
//! CPU node, one GPU node) in the foreground, for people and tools to use with kubectl. Images
//! on the loopback registry (ours, pushed by digest) run as real containers on their pods' own
//! 127.x addresses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use sluice_tests::{
    cluster::ControlPlane,
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
        /// Also run the operator and the gateway, apply examples/quickstart.yaml (its model
        /// read from examples/models/iris), wait until the endpoint is READY and print the curl
        /// that calls it through the gateway.
        #[arg(long, conflicts_with_all = ["no_crds", "no_kubelet"])]
        quickstart: bool,
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
        quickstart,
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
        Some(Kubelet::start(client.clone(), config).await?)
    };
    println!(
        "local cluster ready in {:.1}s: export KUBECONFIG={} (server {})",
        cp.startup.as_secs_f64(),
        cp.kubeconfig.display(),
        cp.server
    );
    let running = if quickstart {
        Some(quickstart::run(&cp, &client).await?)
    } else {
        None
    };
    wait_for_signal().await?;
    drop(running);
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

/// The project's main job on the local cluster: operator + gateway + the quickstart endpoint.
mod quickstart {
    use std::time::Duration;

    use kube::api::{Patch, PatchParams};
    use kube::{Api, Client};
    use sluice_crds::ServingEndpoint;
    use sluice_tests::cluster::{ControlPlane, OperatorOptions, OperatorProcess};
    use sluice_tests::gateway::GatewayProcess;
    use sluice_tests::{apply, manifests, models, repo_root};

    /// What keeps running until the cluster stops.
    pub struct Running {
        _operator: OperatorProcess,
        _gateway: GatewayProcess,
    }

    pub async fn run(cp: &ControlPlane, client: &Client) -> anyhow::Result<Running> {
        // Callers are checked as on a real cluster: API keys are Secrets in `default`.
        let gateway = GatewayProcess::start_with(
            cp,
            &cp.kubeconfig,
            "default",
            &["--api-keys-namespace", "default"],
        )
        .await;
        let operator = cp.start_operator_with(&OperatorOptions {
            args: vec!["--gateway-admin-url".into(), gateway.admin.clone()],
            ..OperatorOptions::default()
        });
        // The model where the manifest points (`pvc://models/iris`): on the claim `models`,
        // as a user would copy it there.
        let uri = models::iris_on_claim(client, "default").await;
        let docs = manifests::read_documents(&repo_root().join("examples/quickstart.yaml"))?;
        let params = PatchParams::apply("local-cluster").force();
        for doc in docs {
            if doc["kind"] == "ModelVersion" {
                anyhow::ensure!(
                    doc["spec"]["source"]["uri"] == uri.as_str(),
                    "examples/quickstart.yaml no longer names {uri}"
                );
            }
            let resource = apply::api_resource(&doc)?;
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(client.clone(), "default", &resource);
            api.patch(&name, &params, &Patch::Apply(&doc)).await?;
        }
        let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), "default");
        eprintln!("applied examples/quickstart.yaml; waiting for the endpoint to be READY");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let ready = endpoints
                .get("iris")
                .await
                .ok()
                .and_then(|e| e.status?.state)
                .is_some_and(|s| format!("{:?}", s.ready) == "READY");
            if ready {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the quickstart endpoint was not READY within 5 minutes; see {}",
                operator.log.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A key for the user, minted as an admin would (`inference-server api-key create`).
        let minted = std::process::Command::new(sluice_tests::binaries::built(
            "inference-server",
            "inference-server",
        ))
        .args(["api-key", "create", "--namespace", "default"])
        .args(["--principal", "quickstart-user", "--endpoint", "iris"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()?;
        anyhow::ensure!(
            minted.status.success(),
            "minting an API key failed: {}",
            String::from_utf8_lossy(&minted.stderr)
        );
        let key = String::from_utf8_lossy(&minted.stdout).trim().to_string();
        println!(
            "READY: curl -s {}/serving-endpoints/iris/invocations -H 'content-type: application/json' \\\n  -H 'Authorization: Bearer {key}' \\\n  -d '{{\"dataframe_split\": {{\"columns\": [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"], \"data\": [[6.7, 3.0, 5.2, 2.3]]}}}}'",
            gateway.base
        );
        Ok(Running {
            _operator: operator,
            _gateway: gateway,
        })
    }
}
