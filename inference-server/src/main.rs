//! `inference-server`: the Sluice data plane, one binary with one subcommand per role. Each role
//! is a library crate; this binary parses the command line, sets up logging, TLS and the async
//! runtime, and runs the chosen role until it ends or the process is told to stop.
//!
//! - `serve`: the builtin model server of every entity pod ([`sluice_serve`]).
//! - `fetch`: the init step that copies a model artifact into the pod's model folder
//!   ([`sluice_fetch`], over the object-store locations of `sluice-store`).
//! - `gateway`: the entry point users call ([`sluice_gateway`]).
//! - `capture`: the sidecar that records requests and responses in the inference table
//!   ([`sluice_capture`], with the table it writes).
//! - `api-key`: mint, list and revoke API keys ([`sluice_gateway::api_key`]).
//! - `monitor`: one refresh of the profile and drift tables over an inference table
//!   ([`sluice_monitor`]).
//! - `check`: what the chart's `helm test` pod runs against a release ([`sluice_gateway::check`]).
//!
//! The roles share their wire formats and flag parsers through `sluice-protocol`.

use std::process::ExitCode;

// The allocator stays glibc's, by measurement (docs/benchmarks/speed.md): mimalloc took 5–11 %
// fewer instructions per gateway request but held the capture sidecar's resident memory above
// its bound under 4 MiB bodies (tests/capture_memory.rs).

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The Sluice data plane.
#[derive(Debug, Parser)]
#[command(name = "inference-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one model directory over HTTP (MLflow scoring protocol and OpenAI routes).
    Serve(sluice_serve::ServeArgs),
    /// Copy a model artifact from its URI into the model folder (the entity pod's init step).
    Fetch(sluice_fetch::FetchCommand),
    /// The entry point users call: weighted routing, shadow traffic, hold-while-waking.
    Gateway(Box<sluice_gateway::GatewayArgs>),
    /// The auto-capture sidecar: proxies to the model and records every exchange in the
    /// inference table.
    Capture(Box<sluice_capture::CaptureArgs>),
    /// Check that a release works: its operator and gateway pods answer `/readyz` and, when
    /// named, a ServingEndpoint answers one query (what the chart's `helm test` runs).
    Check(Box<sluice_gateway::CheckArgs>),
    /// Mint, list and revoke the API keys the gateway accepts (Secrets in its namespace, or a
    /// standalone gateway's keys file).
    ApiKey(sluice_gateway::ApiKeyArgs),
    /// Print the ServingEndpoints of an MLflow AI Gateway config (its endpoints, traffic routes
    /// and limits; keys as references to one Secret).
    ImportMlflowGateway(sluice_gateway::ImportArgs),
    /// Refresh an inference table's monitoring: profile and drift tables of the windows with
    /// new rows.
    Monitor(Box<sluice_monitor::MonitorArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Both rustls backends are linked into this binary (the gateway's kube client uses ring,
    // sluice-capture's deltalake-core brings reqwest with aws-lc-rs), so rustls cannot pick a
    // process default by itself and every TLS client would panic: choose ring, as the kube
    // client does. (sluice-gateway alone links ring only.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("inference-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => runtime
            .block_on(sluice_serve::run(args, shutdown_signal()))
            .map_err(Into::into),
        Command::Fetch(args) => runtime
            .block_on(sluice_fetch::run_command(args))
            .map_err(Into::into),
        Command::Gateway(args) => runtime
            .block_on(sluice_gateway::run(*args, shutdown_signal()))
            .map_err(Into::into),
        Command::Capture(args) => runtime
            .block_on(sluice_capture::run(*args, shutdown_signal()))
            .map_err(Into::into),
        Command::Check(args) => runtime
            .block_on(sluice_gateway::check(*args))
            .map_err(Into::into),
        Command::ApiKey(args) => runtime
            .block_on(sluice_gateway::api_key(args))
            .map_err(Into::into),
        Command::ImportMlflowGateway(args) => {
            sluice_gateway::import_mlflow(&args).map_err(Into::into)
        }
        Command::Monitor(args) => runtime
            .block_on(sluice_monitor::run(*args))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "inference-server exits");
            eprintln!("inference-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes' stop signal) or Ctrl-C: the stop signal every long-running
/// role gets.
async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a Ctrl-C handler the role still stops on SIGTERM.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
