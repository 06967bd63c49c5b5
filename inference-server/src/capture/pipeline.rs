//! From captured exchanges to table files, off the request path:
//!
//! ```text
//! proxy ──push──▶ Queue (memory, bytes-capped, drop-oldest)
//!                   │  spool writer thread: exchanges → rows → JSON lines
//!                   ▼
//!                 Spool (disk, bytes-capped, drop-oldest segment; sealed by size or age)
//!                   │  uploader task: segment → Parquet per day → table; retried with backoff
//!                   ▼
//!                 table (object store)
//! ```
//!
//! A row leaves the spool only after its file is written, so an outage of the store costs
//! spool space, not rows, until the spool cap is reached.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::exchange::Identity;
use super::metrics::{CaptureMetrics, DropReason};
use super::queue::{Popped, Queue};
use crate::table::spool::{Segment, Spool, SpoolError};
use crate::table::{self, ParquetTable, PartFile, TableError};

/// First wait after a failed upload; it doubles up to the configured maximum.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Most bytes of exchanges the spool writer converts at once (bounds its working memory).
const WRITE_BATCH_BYTES: usize = 2 << 20;
/// How often gauges are refreshed and rotation by age is checked, at most.
const TICK: Duration = Duration::from_secs(1);

/// Settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// What every row shares.
    pub identity: Identity,
    /// Seal a spool segment at this size...
    pub rotate_bytes: u64,
    /// ...or this age.
    pub rotate_age: Duration,
    /// Longest wait between upload attempts.
    pub retry_max: Duration,
}

/// The running writer thread and uploader task.
#[derive(Debug)]
pub struct Pipeline {
    queue: Arc<Queue>,
    writer: Option<JoinHandle<()>>,
    uploader: tokio::task::JoinHandle<()>,
    draining: watch::Sender<bool>,
}

impl Pipeline {
    /// Starts the writer thread and the uploader task (on the current runtime).
    pub fn start(
        queue: Arc<Queue>,
        spool: Arc<Spool>,
        table: ParquetTable,
        metrics: CaptureMetrics,
        config: PipelineConfig,
    ) -> std::io::Result<Self> {
        let sealed = Arc::new(Notify::new());
        let writer = {
            let (queue, spool, metrics, sealed, config) = (
                queue.clone(),
                spool.clone(),
                metrics.clone(),
                sealed.clone(),
                config.clone(),
            );
            std::thread::Builder::new()
                .name("capture-spool".into())
                .spawn(move || write_loop(&queue, &spool, &metrics, &sealed, &config))?
        };
        let (draining, drain_rx) = watch::channel(false);
        let uploader = tokio::spawn(upload_loop(
            spool,
            table,
            metrics,
            sealed,
            config.retry_max,
            drain_rx,
        ));
        Ok(Self {
            queue,
            writer: Some(writer),
            uploader,
            draining,
        })
    }

    /// Stops taking exchanges, spools everything queued, then keeps uploading for at most
    /// `grace`; what is still spooled then waits for the next start.
    pub async fn shutdown(mut self, grace: Duration) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            let joined = tokio::task::spawn_blocking(move || writer.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the spool writer thread failed");
            }
        }
        let _ = self.draining.send(true);
        match tokio::time::timeout(grace, &mut self.uploader).await {
            Ok(_) => tracing::info!("capture pipeline drained"),
            Err(_) => {
                self.uploader.abort();
                tracing::warn!(
                    ?grace,
                    "capture pipeline not drained in time; rows stay in the spool"
                );
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sets the spool gauges and the lag from the spool's state.
fn refresh(spool: &Spool, metrics: &CaptureMetrics) {
    let stats = spool.stats();
    metrics
        .spool_bytes
        .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    metrics
        .spool_records
        .set(i64::try_from(stats.records).unwrap_or(i64::MAX));
    let lag = stats
        .oldest_timestamp_ms
        .map_or(0.0, |oldest| (now_ms() - oldest).max(0) as f64 / 1000.0);
    metrics.lag_seconds.set(lag);
}

/// The spool writer: queue → rows → spool, sealing segments by size and age.
fn write_loop(
    queue: &Queue,
    spool: &Spool,
    metrics: &CaptureMetrics,
    sealed: &Notify,
    config: &PipelineConfig,
) {
    let wait = config.rotate_age.clamp(Duration::from_millis(10), TICK);
    loop {
        let closed = match queue.pop(WRITE_BATCH_BYTES, wait) {
            Popped::Closed => true,
            Popped::Items(items) => {
                metrics
                    .queue_bytes
                    .set(i64::try_from(queue.bytes()).unwrap_or(i64::MAX));
                if !items.is_empty() {
                    let records: Vec<_> = items
                        .into_iter()
                        .map(|exchange| exchange.finish(&config.identity))
                        .collect();
                    spool_records(spool, metrics, records);
                }
                false
            }
        };
        match spool.seal_if_due(config.rotate_bytes, config.rotate_age, closed) {
            Ok(true) => sealed.notify_one(),
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "cannot seal the spool segment"),
        }
        refresh(spool, metrics);
        if closed {
            return;
        }
    }
}

fn spool_records(spool: &Spool, metrics: &CaptureMetrics, records: Vec<table::PayloadRecord>) {
    let rows = records.len();
    match spool.append(records) {
        Ok(outcome) => {
            metrics.drop_records(DropReason::SpoolFull, outcome.evicted + outcome.refused);
        }
        Err(error) => {
            tracing::error!(%error, rows, "cannot write to the spool");
            metrics.drop_records(DropReason::SpoolError, rows as u64);
        }
    }
}

/// Why one segment could not be uploaded.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("the encoding thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl UploadError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Table(error) => error.is_retryable(),
            Self::Spool(_) | Self::Join(_) => true,
        }
    }
}

/// Reads and encodes a segment on a blocking thread.
async fn prepare(
    spool: &Arc<Spool>,
    segment: &Segment,
) -> Result<(Vec<PartFile>, u64), UploadError> {
    let (spool, segment) = (spool.clone(), segment.clone());
    tokio::task::spawn_blocking(move || {
        let (records, corrupt) = spool.read(&segment)?;
        let files = table::encode_segment(spool.instance(), segment.seq, records)
            .map_err(TableError::from)?;
        Ok((files, corrupt))
    })
    .await?
}

/// The uploader: sealed segments → table files, oldest first, with backoff on failure.
async fn upload_loop(
    spool: Arc<Spool>,
    table: ParquetTable,
    metrics: CaptureMetrics,
    sealed: Arc<Notify>,
    retry_max: Duration,
    mut draining: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_RETRY;
    // Files encoded for a segment whose write failed, kept for the retry.
    let mut encoded: Option<(u64, Vec<PartFile>)> = None;
    loop {
        while let Some(segment) = spool.claim() {
            let span = tracing::info_span!("upload", seq = segment.seq, rows = segment.records);
            let result = async {
                let files = match encoded.take() {
                    Some((seq, files)) if seq == segment.seq => files,
                    _ => {
                        let (files, corrupt) = prepare(&spool, &segment).await?;
                        metrics.drop_records(DropReason::Corrupt, corrupt);
                        files
                    }
                };
                match table.write(segment.seq, &files).await {
                    Ok(written) => Ok((files, written)),
                    Err(error) => {
                        encoded = Some((segment.seq, files));
                        Err(UploadError::from(error))
                    }
                }
            }
            .instrument(span)
            .await;
            match result {
                Ok((files, written)) => {
                    let rows: usize = files.iter().map(|f| f.rows).sum();
                    if let Err(error) = spool.complete(segment.seq) {
                        tracing::error!(%error, "cannot remove an uploaded spool segment");
                    }
                    metrics.table_written(&written, rows, files.len());
                    tracing::debug!(
                        files = files.len(),
                        rows,
                        ?written,
                        "segment written to the table"
                    );
                    backoff = FIRST_RETRY;
                }
                Err(error) if error.is_retryable() => {
                    metrics.upload_failures.inc();
                    if matches!(error, UploadError::Table(TableError::Delta(_))) {
                        metrics.delta_failures.inc();
                    }
                    spool.release(segment.seq);
                    tracing::warn!(%error, retry_in = ?backoff, "writing to the table failed");
                    refresh(&spool, &metrics);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(retry_max);
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "segment cannot be encoded; its rows are dropped");
                    metrics.drop_records(DropReason::Unencodable, segment.records);
                    if let Err(error) = spool.complete(segment.seq) {
                        tracing::error!(%error, "cannot remove a spool segment");
                    }
                }
            }
            refresh(&spool, &metrics);
        }
        if *draining.borrow() && !spool.has_sealed() {
            return;
        }
        if spool.has_sealed() {
            // A failed upload broke out of the loop after its backoff: try again now.
            continue;
        }
        tokio::select! {
            () = sealed.notified() => {}
            () = tokio::time::sleep(TICK) => refresh(&spool, &metrics),
            changed = draining.changed() => if changed.is_err() {
                // The pipeline was dropped without a shutdown.
                return;
            }
        }
    }
}

/// `wait` ± 20 %, so that many sidecars do not retry in step.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.8 + 0.4 * fastrand::f64())
}
