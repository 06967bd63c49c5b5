//! `inference-server capture`: the auto-capture sidecar of an entity pod.
//!
//! It listens on the pod's port in front of the model container, streams every request and
//! response through unchanged (adding `x-request-id`), and records sampled exchanges in the
//! inference table without ever making a request wait on the table:
//!
//! - [`proxy`]: the reverse proxy, the body taps and the sidecar's own routes;
//! - [`exchange`]: a captured exchange and its conversion into a row;
//! - [`sse`]: streamed responses reassembled into one body;
//! - [`queue`] and [`pipeline`]: memory queue → disk spool → table, with backoff;
//! - [`metrics`]: what is captured, dropped, spooled, failed and how far behind.
//!
//! The table format and storage live in the shared [`crate::table`] module.

mod args;
mod exchange;
mod metrics;
mod pipeline;
mod proxy;
mod queue;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

pub use args::CaptureArgs;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

use self::exchange::Identity;
use self::metrics::CaptureMetrics;
use self::pipeline::{Pipeline, PipelineConfig};
use self::proxy::{Limits, Proxy, ProxyConfig};
use self::queue::Queue;
use crate::table::spool::{Spool, SpoolError};
use crate::table::store::StoreError;
use crate::table::{ParquetTable, TableStore};

/// Why the sidecar could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The limits contradict each other.
    #[error("capture settings: {0}")]
    Settings(String),
    /// The table location is unusable.
    #[error(transparent)]
    Table(#[from] StoreError),
    /// The spool folder is unusable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The listen address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spool writer thread could not start.
    #[error("starting the spool writer: {0}")]
    Thread(std::io::Error),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

fn check(args: &CaptureArgs) -> Result<(), CaptureError> {
    if args.spool_max_bytes < 2 * args.rotate_bytes {
        return Err(CaptureError::Settings(format!(
            "--spool-max-bytes ({}) must be at least twice --rotate-bytes ({})",
            args.spool_max_bytes, args.rotate_bytes
        )));
    }
    if args.rotate_bytes == 0 || args.rotate_seconds.is_zero() {
        return Err(CaptureError::Settings(
            "--rotate-bytes and --rotate-seconds must be positive".into(),
        ));
    }
    Ok(())
}

/// Runs the sidecar until SIGTERM, then drains: `/health` turns 503, requests in flight
/// finish, queued rows are spooled, and spooled rows are written for up to
/// `--shutdown-seconds`.
pub async fn run(args: CaptureArgs) -> Result<(), CaptureError> {
    check(&args)?;
    let store = TableStore::open(&args.table, &args.table_options)?;
    // Rows of the last two segments stay in memory too, so the uploader need not parse them.
    let (spool, waiting) =
        Spool::open(&args.spool_dir, args.spool_max_bytes, 2 * args.rotate_bytes)?;
    let spool = Arc::new(spool);
    let mut registry = Registry::with_prefix("sluice_capture");
    let metrics = CaptureMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    tracing::info!(
        table = store.uri(),
        spool = %args.spool_dir.display(),
        instance = spool.instance(),
        waiting,
        "capture table opened; spooled rows from an earlier run are replayed"
    );

    let mut table = ParquetTable::new(store);
    if args.table_format == args::TableFormat::Delta {
        table = table
            .with_delta(spool.instance())
            .map_err(|e| CaptureError::Settings(e.to_string()))?;
    }
    let queue = Arc::new(Queue::new(args.queue_max_bytes));
    let pipeline = Pipeline::start(
        queue.clone(),
        spool,
        table,
        metrics.clone(),
        PipelineConfig {
            identity: Identity {
                endpoint: args.endpoint.clone(),
                entity: args.entity.clone(),
                model: args.model.clone(),
                model_version: args.model_version.clone(),
                sampling_fraction: args.sampling_fraction,
            },
            rotate_bytes: args.rotate_bytes,
            rotate_age: args.rotate_seconds,
            retry_max: args.retry_max_seconds,
        },
    )
    .map_err(CaptureError::Thread)?;

    let proxy = Arc::new(Proxy::new(
        ProxyConfig {
            upstream: args.upstream,
            health_path: args.upstream_health_path.clone(),
            upstream_timeout: args.upstream_timeout_seconds,
            sampling_fraction: args.sampling_fraction,
            limits: Limits {
                max_payload_bytes: args.max_payload_bytes,
                memory_bytes: args.capture_memory_bytes,
            },
        },
        queue,
        metrics,
        registry,
    ));
    if let Some(address) = args.metrics_listen {
        let listener = bind(address).await?;
        let router = proxy.clone().metrics_router();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let listener = bind(args.listen).await?;
    tracing::info!(listen = %args.listen, upstream = %args.upstream, "capture sidecar listening");
    let draining = proxy.clone();
    let served = axum::serve(listener, proxy.router())
        .with_graceful_shutdown(async move {
            crate::serve::shutdown_signal().await;
            draining.drain();
        })
        .await;
    pipeline.shutdown(args.shutdown_seconds).await;
    served.map_err(CaptureError::Serve)
}

/// A listener whose connections have `TCP_NODELAY` (small SSE frames leave at once).
type Listener = axum::serve::TapIo<TcpListener, fn(&mut TcpStream)>;

fn no_delay(stream: &mut TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

async fn bind(address: SocketAddr) -> Result<Listener, CaptureError> {
    use axum::serve::ListenerExt;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| CaptureError::Bind { address, source })?;
    Ok(listener.tap_io(no_delay as fn(&mut TcpStream)))
}
