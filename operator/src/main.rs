//! `sluice-operator`: runs the Sluice controllers against the cluster it finds (in-cluster
//! service account, or KUBECONFIG).

use std::path::PathBuf;

use clap::Parser;
use kube::{Client, runtime::events::Reporter};
use sluice_operator::{CONTROLLER_NAME, config::OperatorConfig, endpoint, model_version};

#[derive(Parser)]
#[command(
    version,
    about = "The Sluice operator: ServingEndpoint and ModelVersion controllers"
)]
struct Args {
    /// Operator configuration (workload table, images, lake root); defaults when absent.
    #[arg(long, env = "SLUICE_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Identity reported on events (usually the pod name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: args.instance,
    };
    tokio::join!(
        model_version::run(client.clone(), reporter.clone()),
        endpoint::controller::run(client, config, reporter),
    );
    Ok(())
}
