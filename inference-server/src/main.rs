//! `inference-server`: the Sluice data plane, one binary with one subcommand per role.
//!
//! - `serve`: the builtin model server of every entity pod ([`serve`]).
//! - `fetch`: the init step that copies a model artifact into the pod's model folder ([`fetch`]).
//! - `capture`: the sidecar that records requests and responses in the inference table
//!   ([`capture`], over the shared [`table`] module).
//!
//! `capture`, `gateway` and `monitor` join as sibling modules over the shared
//! [`protocol`] module.

mod capture;
mod fetch;
mod gateway;
mod metrics;
mod protocol;
mod serve;
mod table;

use std::process::ExitCode;

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
    Serve(serve::ServeArgs),
    /// Copy a model artifact from its URI into the model folder (the entity pod's init step).
    Fetch(fetch::FetchCommand),
    /// The entry point users call: weighted routing, shadow traffic, hold-while-waking.
    Gateway(Box<gateway::GatewayArgs>),
    /// The auto-capture sidecar: proxies to the model and records every exchange in the
    /// inference table.
    Capture(Box<capture::CaptureArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Both rustls backends are linked (kube uses ring, deltalake-core's reqwest aws-lc-rs), so
    // rustls cannot pick a process default by itself and every TLS client (the gateway's and the
    // capture sidecar's Kubernetes clients) would panic: choose ring, as the kube client does.
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
        Command::Serve(args) => runtime.block_on(serve::run(args)).map_err(Into::into),
        Command::Fetch(args) => runtime
            .block_on(fetch::run_command(args))
            .map_err(Into::into),
        Command::Gateway(args) => runtime.block_on(gateway::run(*args)).map_err(Into::into),
        Command::Capture(args) => runtime.block_on(capture::run(*args)).map_err(Into::into),
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
