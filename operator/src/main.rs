//! `sluice-operator`: runs the Sluice controllers against the cluster it finds (in-cluster
//! service account, or KUBECONFIG).

use clap::Parser;
use kube::{Client, runtime::events::Reporter};
use sluice_operator::{CONTROLLER_NAME, model_version};

#[derive(Parser)]
#[command(
    version,
    about = "The Sluice operator: ServingEndpoint and ModelVersion controllers"
)]
struct Args {
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
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: args.instance,
    };
    model_version::run(client, reporter).await;
    Ok(())
}
