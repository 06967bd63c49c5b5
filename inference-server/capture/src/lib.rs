//! The auto-capture sidecar of an entity pod (`inference-server capture`) and the inference
//! table it writes (the [`table`] module: Parquet files, optionally with a Delta log).
//!
//! It listens on the pod's port in front of the model container, streams every request and
//! response through unchanged (adding `x-request-id`), and records sampled exchanges in the
//! inference table without ever making a request wait on the table:
//!
//! - [`proxy`]: the reverse proxy, the body taps and the sidecar's own routes;
//! - [`exchange`]: a captured exchange and its conversion into a row;
//! - [`sse`](sluice_protocol::sse): streamed responses reassembled into one body;
//! - [`queue`] and [`pipeline`]: memory queue → disk spool → table, with backoff;
//! - [`server`]: the HTTP server and its two-step stop (drain, then cut);
//! - [`metrics`]: what is captured, dropped, spooled, failed and how far behind.
//!
//! The table format lives in [`table`]; its storage locations in `sluice-store`.

// The map above names private modules: they are documented with `cargo doc
// --document-private-items`; the public API is only what the binary calls.
#![allow(rustdoc::private_intra_doc_links)]

mod args;
mod exchange;
mod metrics;
mod pipeline;
mod proxy;
mod queue;
mod server;
mod table;

#[cfg(test)]
mod in_process_tests;

use std::net::SocketAddr;
use std::sync::Arc;

pub use args::CaptureArgs;
use prometheus_client::registry::Registry;
use sluice_store::{StoreError, TableStore};
use tokio::net::TcpListener;
use tokio::time::Instant;

use self::exchange::Identity;
use self::metrics::{CaptureMetrics, UsageLabels};
use self::pipeline::{Pipeline, PipelineConfig};
use self::proxy::{Limits, Proxy, ProxyConfig, UsageTracking};
use self::queue::Queue;
use self::server::Connections;
use self::table::spool::{Spool, SpoolError, SpoolRoot};
use self::table::usage::UsageRecord;
use self::table::{ParquetTable, PayloadRecord, TableKind, Tables};

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
}

fn check(args: &CaptureArgs) -> Result<(), CaptureError> {
    if args.table.is_none() && args.usage_table.is_none() {
        return Err(CaptureError::Settings(
            "nothing to write: give --table (the payload table), --usage-table, or both".into(),
        ));
    }
    if args.spool_max_bytes < 2 * args.rotate_bytes {
        return Err(CaptureError::Settings(format!(
            "--spool-max-bytes ({}) must be at least twice --rotate-bytes ({})",
            args.spool_max_bytes, args.rotate_bytes
        )));
    }
    if args.rotate_bytes == 0 || args.rotate_seconds.is_zero() || args.spool_adopt_seconds.is_zero()
    {
        return Err(CaptureError::Settings(
            "--rotate-bytes, --rotate-seconds and --spool-adopt-seconds must be positive".into(),
        ));
    }
    if args.drain_timeout >= args.shutdown_seconds {
        return Err(CaptureError::Settings(format!(
            "--drain-timeout ({:?}) must be shorter than --shutdown-seconds ({:?}): the rest is \
             the time to write the last rows",
            args.drain_timeout, args.shutdown_seconds
        )));
    }
    Ok(())
}

/// Runs the sidecar until `shutdown` resolves (the binary passes SIGTERM or Ctrl-C), then stops within `--shutdown-seconds`: `/health` turns
/// 503 and no connection is accepted; everything spooled is written at once, and rows of the
/// exchanges still in flight as they finish; exchanges still open after `--drain-timeout` are
/// cut and recorded with `SHUTDOWN`; then the last rows are written until `--shutdown-seconds`
/// after the signal, and what is left stays in the spool.
pub async fn run(
    args: CaptureArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CaptureError> {
    check(&args)?;
    let root = SpoolRoot::open(&args.spool_dir)?;
    // Rows of the last two segments stay in memory too, so the uploader need not parse them.
    let (spool, waiting) = Spool::open(
        root.take_own()?,
        args.spool_max_bytes,
        2 * args.rotate_bytes,
    )?;
    let mut registry = Registry::with_prefix("sluice_capture");
    let metrics = CaptureMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    let open =
        |uri: &Option<String>, kind: TableKind| -> Result<Option<ParquetTable>, CaptureError> {
            let Some(uri) = uri else {
                return Ok(None);
            };
            let table = ParquetTable::new(TableStore::open(uri, &args.table_options)?, kind);
            Ok(Some(match args.table_format {
                args::TableFormat::Delta => table
                    .with_delta(spool.instance())
                    .map_err(|e| CaptureError::Settings(e.to_string()))?,
                args::TableFormat::Parquet => table,
            }))
        };
    let tables = Tables {
        payload: open(&args.table, TableKind::of::<PayloadRecord>())?,
        usage: open(&args.usage_table, TableKind::of::<UsageRecord>())?,
        feedback: open(
            &args.feedback_table,
            TableKind::of::<table::feedback::FeedbackRecord>(),
        )?,
    };
    tracing::info!(
        table = tables.payload.as_ref().map(ParquetTable::uri),
        usage_table = tables.usage.as_ref().map(ParquetTable::uri),
        feedback_table = tables.feedback.as_ref().map(ParquetTable::uri),
        spool = %args.spool_dir.display(),
        instance = spool.instance(),
        waiting,
        "capture tables opened; spooled rows from an earlier run are replayed"
    );
    let sampling_fraction = if tables.payload.is_some() {
        args.sampling_fraction
    } else {
        0.0
    };
    let queue = Arc::new(Queue::new(args.queue_max_bytes, args.overflow));
    let pipeline = Pipeline::start(
        queue.clone(),
        root,
        spool,
        tables,
        metrics.clone(),
        PipelineConfig {
            identity: Identity {
                endpoint: args.endpoint.clone(),
                entity: args.entity.clone(),
                model: args.model.clone(),
                model_version: args.model_version.clone(),
                sampling_fraction,
                currency: args.usage_price.as_ref().map(|p| p.currency.clone()),
            },
            rotate_bytes: args.rotate_bytes,
            rotate_age: args.rotate_seconds,
            retry_max: args.retry_max_seconds,
            adopt_every: args.spool_adopt_seconds,
            overflow: args.overflow,
        },
    )
    .map_err(CaptureError::Thread)?;

    let proxy = Arc::new(Proxy::new(
        ProxyConfig {
            upstream: args.upstream,
            health_path: args.upstream_health_path.clone(),
            upstream_timeout: args.upstream_timeout_seconds,
            block_timeout: args.block_timeout,
            sampling_fraction,
            limits: Limits {
                max_payload_bytes: args.max_payload_bytes,
                memory_bytes: args.capture_memory_bytes,
            },
            feedback: args.feedback_table.is_some(),
            usage: args.usage_table.is_some().then(|| UsageTracking {
                labels: UsageLabels {
                    endpoint: args.endpoint.clone(),
                    entity: args.entity.clone(),
                    currency: args
                        .usage_price
                        .as_ref()
                        .map(|p| p.currency.clone())
                        .unwrap_or_default(),
                },
                price: args.usage_price.clone(),
            }),
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
    let listen = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%listen, upstream = ?args.upstream, "capture sidecar listening");
    sluice_protocol::process::announce("capture", listen);
    let mut connections = Connections::new(proxy.clone().router());
    tokio::select! {
        () = connections.accept(&listener) => {}
        () = shutdown => {}
    }
    let signalled = Instant::now();
    drop(listener);
    proxy.drain();
    pipeline.flush();
    connections.finish_in_flight();
    let drain_deadline = signalled + args.drain_timeout;
    if tokio::time::timeout_at(drain_deadline, connections.closed())
        .await
        .is_err()
    {
        let exchanges = proxy.cut_in_flight();
        let connections = connections.close_all().await;
        tracing::warn!(
            exchanges,
            connections,
            drain_timeout = ?args.drain_timeout,
            "still open at the drain deadline: closed, and the exchanges recorded as SHUTDOWN"
        );
    }
    pipeline.shutdown(signalled + args.shutdown_seconds).await;
    Ok(())
}

async fn bind(address: SocketAddr) -> Result<TcpListener, CaptureError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| CaptureError::Bind { address, source })
}
