//! The builtin model server of an entity pod (`inference-server serve`), with its runtimes
//! (ONNX through tract; embeddings and causal language models through candle and tokenizers;
//! prompt templates through minijinja) and its metrics.
//!
//! Startup reads the model directory contract ([`model_dir`]), with the format, task and
//! signature the ModelVersion declares (`--declared-*`); a directory that breaks it ends the
//! process with a non-zero status and the reason. Otherwise the server listens at once and
//! loads the weights in the background: `/ping` answers as soon as the process is up, `/health`
//! only once the model is loaded (before that, and for good if loading fails, it answers 503
//! with the reason).
//!
//! On the shutdown signal (SIGTERM or Ctrl-C: the future the binary passes to [`run`]) the
//! server stops accepting connections and lets in-flight requests, streams included, finish for
//! up to `--drain-timeout`, then exits 0.
//!
//! - [`args`]: flags and their `SLUICE_*` variables.
//! - [`http`]: routes, deadlines and request metrics.
//! - [`body`]: content types, size limit, slow clients.
//! - [`batcher`]: micro-batching of concurrent requests.
//! - [`signature`]: checking requests against the model signature.
//! - [`state`]: the model slot (loading, ready, failed).
//! - [`runtime`]: the runtimes (ONNX, embeddings, causal language models, prompt).
//! - [`metrics`]: the Prometheus metrics (`sluice_serve_*`).

// The map above names private modules: they are documented with `cargo doc
// --document-private-items`; the public API is only what the binary calls.
#![allow(rustdoc::private_intra_doc_links)]

mod args;
mod batcher;
mod body;
mod http;
mod metrics;
mod model_dir;
mod runtime;
mod signature;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use args::ServeArgs;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use self::batcher::BatchPolicy;
use self::model_dir::{ModelDirError, ModelSpec};
use self::runtime::LoadContext;
use self::state::ModelSlot;
use crate::metrics::ServeMetrics;

/// Why `serve` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model directory breaks the contract.
    #[error("model directory: {0}")]
    ModelDir(#[from] ModelDirError),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the server until `shutdown` resolves (the binary passes SIGTERM or Ctrl-C) or the
/// parent named by `--parent-pid` is gone, then drains.
pub async fn run(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let declared = args.declared();
    let spec = model_dir::read(&args.model_dir, &declared)?;
    if let Some(task) = declared.task.filter(|task| *task != spec.task) {
        tracing::warn!(
            declared = ?task,
            manifest = ?spec.task,
            "the manifest's task differs from the declared one; the manifest's wins"
        );
    }
    let mut registry = Registry::with_prefix("sluice_serve");
    let metrics = ServeMetrics::register(&mut registry);
    let address = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    let address = listener.local_addr().unwrap_or(address);
    tracing::info!(%address, model = %spec.name, runtime = ?spec.runtime, "listening; loading the model");
    sluice_protocol::process::announce("serve", address);

    let slot = Arc::new(ModelSlot::loading(spec.name.clone()));
    let context = LoadContext {
        batch: BatchPolicy {
            window: Duration::from_millis(args.batch_window_ms),
            max_items: args.max_batch as usize,
        },
        metrics: metrics.clone(),
        request_timeout: args.request_timeout,
    };
    tokio::spawn(load_in_background(spec, context, Arc::clone(&slot)));

    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let router = http::router(http::AppState {
        model: slot,
        metrics,
        registry: Arc::new(registry),
        max_body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout,
        draining: draining.clone(),
    });
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    // Streamed tokens are small writes: send each at once rather than waiting for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let (parent, delay) = (args.parent_pid, args.drain_delay);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        tokio::select! {
            () = shutdown => {}
            () = parent_gone(parent) => tracing::warn!(?parent, "the parent process is gone; shutting down"),
        }
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(?delay, "not ready any more; still answering until the routing layer has noticed");
            tokio::time::sleep(delay).await;
        }
        let _ = signalled.send(());
    });
    let drain = args.drain_timeout;
    tokio::select! {
        served = server => served.map_err(ServeError::Serve),
        () = async move {
            // Only a signal starts the clock; a dropped sender never resolves.
            if on_signal.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(?drain, "in-flight requests did not finish within the drain timeout; exiting");
            Ok(())
        }
    }
}

/// Loads the model into `slot`; a failure, or a panic inside a runtime, marks it failed.
async fn load_in_background(spec: ModelSpec, context: LoadContext, slot: Arc<ModelSlot>) {
    let started = Instant::now();
    let metrics = context.metrics.clone();
    let loading = tokio::spawn(async move { runtime::load(&spec, &context).await });
    match loading.await {
        Ok(Ok(runtime)) => {
            let elapsed = started.elapsed();
            metrics.model_loaded(elapsed);
            tracing::info!(
                runtime = runtime.name(),
                seconds = elapsed.as_secs_f64(),
                "model loaded"
            );
            slot.set_ready(runtime);
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "model failed to load");
            slot.set_failed(error.to_string());
        }
        Err(panic) => {
            tracing::error!(%panic, "model loader panicked");
            slot.set_failed(format!("the loader crashed: {panic}"));
        }
    }
}

/// Resolves once the parent process is no longer `pid` (checked every second); never without a
/// pid.
async fn parent_gone(pid: Option<u32>) {
    let Some(pid) = pid else {
        return std::future::pending().await;
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while std::os::unix::process::parent_id() == pid {
        ticker.tick().await;
    }
}
