//! From captured exchanges to table files, off the request path:
//!
//! ```text
//! proxy ──push──▶ Queue (memory, bytes-capped; drop-oldest, or block: requests wait for room)
//!                   │  spool writer thread: exchanges → rows → binary frames
//!                   ▼
//!                 Spool (disk, bytes-capped; drop-oldest segment, or block: the writer waits
//!                   │    for the uploader; sealed by size or age)
//!                   │  uploader task: segment → Parquet per day → table; retried with backoff
//!                   ▼
//!                 table (object store)
//! ```
//!
//! A row leaves the spool only after its file is written, so an outage of the store costs
//! spool space, not rows, until the spool cap is reached.
//!
//! The spool is this sidecar's folder under the spool root; folders of sidecars that are gone
//! (a root shared by the endpoint's pods on a persistent claim) are adopted by the uploader
//! and written under their own instance id. On SIGTERM ([`Pipeline::flush`]) everything
//! spooled is sealed and written at once, and rows of exchanges still finishing follow within
//! [`FLUSH_AGE`]; [`Pipeline::shutdown`] then writes what is left until a deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::exchange::{Identity, RawExchange};
use super::metrics::{CaptureMetrics, DropReason};
use super::queue::{Overflow, Popped, Queue};
use crate::table::spool::{Appended, Segment, Spool, SpoolError, SpoolRoot, SpoolStats};
use crate::table::{self, SegmentFiles, TableError, Tables};

/// First wait after a failed upload; it doubles up to the configured maximum.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Most bytes of exchanges the spool writer converts at once (bounds its working memory).
const WRITE_BATCH_BYTES: usize = 2 << 20;
/// How often gauges are refreshed and rotation by age is checked, at most.
const TICK: Duration = Duration::from_secs(1);
/// Once flushing (after SIGTERM), the open segment is sealed, and so written, when it is this
/// old: rows of exchanges that finish during the drain reach the table about this soon.
const FLUSH_AGE: Duration = Duration::from_millis(200);
/// After spooling a small batch with little more waiting, the writer lets this long pass before
/// it takes the next: under a steady trickle rows then reach the spool a moment later, in
/// batches, with one write and no wake-up per row.
const LINGER: Duration = Duration::from_millis(2);
/// How often a writer waiting for room in a full spool (`block`) tries again.
const SPOOL_FULL_RETRY: Duration = Duration::from_millis(20);

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
    /// How often to look for spool folders of gone sidecars to adopt.
    pub adopt_every: Duration,
    /// What a full spool does (the queue's own policy is the same).
    pub overflow: Overflow,
}

/// Where the pipeline is in the sidecar's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Segments are sealed by size and age; gone siblings' spools are adopted.
    Running,
    /// SIGTERM: everything spooled is written now, new rows within [`FLUSH_AGE`].
    Flushing,
    /// No more rows come: the uploader stops once every segment is written.
    Closing,
}

/// A spool and the tables its segments go to (with a Delta log, as its own application).
#[derive(Clone, Debug)]
struct Source {
    spool: Arc<Spool>,
    tables: Tables,
}

/// The spools the uploader writes from: this sidecar's own, and those adopted from gone
/// siblings sharing the spool root (written first: their rows are older).
#[derive(Debug)]
struct Spools {
    own: Source,
    adopted: Mutex<Vec<Source>>,
}

impl Spools {
    fn adopted(&self) -> MutexGuard<'_, Vec<Source>> {
        self.adopted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn all(&self) -> Vec<Source> {
        let mut all = self.adopted().clone();
        all.push(self.own.clone());
        all
    }

    /// Claims the oldest sealed segment of the first spool that has one.
    fn claim(&self) -> Option<(Source, Segment)> {
        self.all()
            .into_iter()
            .find_map(|source| source.spool.claim().map(|segment| (source, segment)))
    }

    fn has_sealed(&self) -> bool {
        self.all().iter().any(|source| source.spool.has_sealed())
    }

    /// Bytes, rows and the oldest row waiting, all spools together.
    fn stats(&self) -> SpoolStats {
        self.all().iter().map(|source| source.spool.stats()).fold(
            SpoolStats::default(),
            |total, one| SpoolStats {
                bytes: total.bytes + one.bytes,
                records: total.records + one.records,
                oldest_timestamp_ms: match (total.oldest_timestamp_ms, one.oldest_timestamp_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
        )
    }

    /// Drops the adopted spools that are fully written, removing their folders.
    fn retire_written(&self) {
        self.adopted().retain(|source| match source.spool.retire() {
            Ok(false) => true,
            Ok(true) => {
                tracing::info!(
                    instance = source.spool.instance(),
                    "the adopted spool is written; its folder is removed"
                );
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot remove an adopted spool folder");
                false
            }
        });
    }
}

/// The running writer thread and uploader task.
#[derive(Debug)]
pub struct Pipeline {
    queue: Arc<Queue>,
    /// Answers when the writer thread has spooled the closed queue and stopped.
    writer_done: oneshot::Receiver<()>,
    flushing: Arc<AtomicBool>,
    /// Rows the writer took from the queue and has not spooled yet.
    holding: Arc<AtomicU64>,
    metrics: CaptureMetrics,
    uploader: tokio::task::JoinHandle<()>,
    phase: watch::Sender<Phase>,
}

impl Pipeline {
    /// Starts the writer thread and the uploader task (on the current runtime): rows go
    /// to `spool`, this sidecar's folder under `root`, and from there to `tables`; the spools
    /// of gone siblings under `root` are adopted and written too.
    pub fn start(
        queue: Arc<Queue>,
        root: SpoolRoot,
        spool: Spool,
        tables: Tables,
        metrics: CaptureMetrics,
        config: PipelineConfig,
    ) -> std::io::Result<Self> {
        let spools = Arc::new(Spools {
            own: Source {
                spool: Arc::new(spool),
                tables,
            },
            adopted: Mutex::default(),
        });
        let sealed = Arc::new(Notify::new());
        let flushing = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(AtomicU64::new(0));
        let (done, writer_done) = oneshot::channel();
        {
            let writer = Writer {
                queue: queue.clone(),
                spools: spools.clone(),
                metrics: metrics.clone(),
                sealed: sealed.clone(),
                config: config.clone(),
                flushing: flushing.clone(),
                holding: holding.clone(),
            };
            // Detached: the writer says it is done through `done` (dropped unsent if it
            // panics), so a shutdown never waits on it past its deadline.
            std::thread::Builder::new()
                .name("capture-spool".into())
                .spawn(move || {
                    writer.run();
                    let _ = done.send(());
                })?;
        }
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let uploader = tokio::spawn(upload_loop(
            spools.clone(),
            Arc::new(root),
            metrics.clone(),
            sealed,
            (config.retry_max, config.adopt_every),
            phase_rx,
        ));
        Ok(Self {
            queue,
            writer_done,
            flushing,
            holding,
            metrics,
            uploader,
            phase,
        })
    }

    /// SIGTERM: seals what is spooled and writes it at once, without waiting for rotation or
    /// for a retry's backoff; rows that keep coming (exchanges finishing) are sealed and
    /// written within [`FLUSH_AGE`].
    pub fn flush(&self) {
        self.flushing.store(true, Ordering::Relaxed);
        self.queue.wake();
        let _ = self.phase.send(Phase::Flushing);
    }

    /// Stops taking exchanges, spools everything queued, then keeps writing until
    /// `deadline`; what is still spooled then waits in the spool folder for the next start (or
    /// a sibling's adoption). The folder stays, empty or not, so that a restarted container
    /// keeps its instance id (siblings sharing the root remove an empty one).
    pub async fn shutdown(mut self, deadline: Instant) {
        self.queue.close();
        match tokio::time::timeout_at(deadline, &mut self.writer_done).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the spool writer thread failed"),
            Err(_) => {
                self.uploader.abort();
                let lost = self.queue.len() as u64 + self.holding.load(Ordering::Relaxed);
                self.metrics.drop_records(DropReason::Shutdown, lost);
                tracing::warn!(lost, "queued rows not spooled in time; they are lost");
                return;
            }
        }
        let _ = self.phase.send(Phase::Closing);
        match tokio::time::timeout_at(deadline, &mut self.uploader).await {
            Ok(_) => tracing::info!("capture pipeline drained"),
            Err(_) => {
                self.uploader.abort();
                tracing::warn!("capture pipeline not drained in time; rows stay in the spool");
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sets the spool gauges and the lag from the spools' state.
fn refresh(spools: &Spools, metrics: &CaptureMetrics) {
    let stats = spools.stats();
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

/// The spool writer thread's share of the pipeline.
struct Writer {
    queue: Arc<Queue>,
    spools: Arc<Spools>,
    metrics: CaptureMetrics,
    sealed: Arc<Notify>,
    config: PipelineConfig,
    flushing: Arc<AtomicBool>,
    holding: Arc<AtomicU64>,
}

impl Writer {
    /// Queue → rows → own spool, sealing segments by size and age (by [`FLUSH_AGE`] once
    /// flushing), until the queue is closed and empty.
    fn run(&self) {
        let spool = &self.spools.own.spool;
        loop {
            let age = if self.flushing.load(Ordering::Relaxed) {
                self.config.rotate_age.min(FLUSH_AGE)
            } else {
                self.config.rotate_age
            };
            let wait = age.clamp(Duration::from_millis(10), TICK);
            let closed = match self.queue.pop(WRITE_BATCH_BYTES, wait) {
                Popped::Closed => true,
                Popped::Items(items) => {
                    self.metrics
                        .queue_bytes
                        .set(i64::try_from(self.queue.bytes()).unwrap_or(i64::MAX));
                    let bytes: usize = items.iter().map(RawExchange::size).sum();
                    if !items.is_empty() {
                        self.holding.store(items.len() as u64, Ordering::Relaxed);
                        let records: Vec<_> = items
                            .into_iter()
                            .map(|exchange| exchange.finish(&self.config.identity))
                            .collect();
                        match self.config.overflow {
                            Overflow::DropOldest => self.spool_or_drop(records),
                            Overflow::Block => self.spool_when_room(records),
                        }
                        self.holding.store(0, Ordering::Relaxed);
                    }
                    // Little came and little waits: let rows gather (a busy writer never
                    // sleeps here).
                    if (1..WRITE_BATCH_BYTES).contains(&bytes)
                        && self.queue.bytes() < WRITE_BATCH_BYTES / 2
                    {
                        std::thread::sleep(LINGER);
                    }
                    false
                }
            };
            match spool.seal_if_due(self.config.rotate_bytes, age, closed) {
                Ok(true) => self.sealed.notify_one(),
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot seal the spool segment"),
            }
            refresh(&self.spools, &self.metrics);
            if closed {
                return;
            }
        }
    }

    /// `drop-oldest`: spools the rows, evicting the oldest segments past the cap (counted).
    fn spool_or_drop(&self, records: Vec<table::PayloadRecord>) {
        let rows = records.len();
        match self.spools.own.spool.append(records) {
            Ok(outcome) => {
                self.metrics
                    .drop_records(DropReason::SpoolFull, outcome.evicted + outcome.refused);
            }
            Err(error) => {
                tracing::error!(%error, rows, "cannot write to the spool");
                self.metrics
                    .drop_records(DropReason::SpoolError, rows as u64);
            }
        }
    }

    /// `block`: spools the rows once they fit, waiting for the uploader to write segments
    /// meanwhile (the queue fills behind, and the proxy holds new requests at the door).
    fn spool_when_room(&self, mut records: Vec<table::PayloadRecord>) {
        let spool = &self.spools.own.spool;
        let mut waited = false;
        loop {
            let rows = records.len() as u64;
            match spool.append_without_evicting(records) {
                Ok(Appended::Done(_)) => break,
                Ok(Appended::NoRoom(back)) => {
                    records = back;
                    if !waited {
                        waited = true;
                        self.metrics.spool_blocked.set(1);
                        tracing::warn!(
                            rows = records.len(),
                            "spool full: waiting for the table to take segments (overflow block)"
                        );
                    }
                    // The open segment may be what fills the spool: sealed, it can be written.
                    match spool.seal_if_due(0, Duration::ZERO, true) {
                        Ok(true) => self.sealed.notify_one(),
                        Ok(false) => {}
                        Err(error) => tracing::error!(%error, "cannot seal the spool segment"),
                    }
                    refresh(&self.spools, &self.metrics);
                    std::thread::sleep(SPOOL_FULL_RETRY);
                }
                Err(error) => {
                    tracing::error!(%error, rows, "cannot write to the spool");
                    self.metrics.drop_records(DropReason::SpoolError, rows);
                    break;
                }
            }
        }
        if waited {
            self.metrics.spool_blocked.set(0);
            tracing::info!("the spool has room again");
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

/// Reads and encodes a segment for `tables` on a blocking thread.
async fn prepare(
    spool: &Arc<Spool>,
    segment: &Segment,
    tables: table::TableSet,
) -> Result<(SegmentFiles, u64), UploadError> {
    let (spool, segment) = (spool.clone(), segment.clone());
    tokio::task::spawn_blocking(move || {
        let (records, corrupt) = spool.read(&segment)?;
        let files = table::encode_segment(spool.instance(), segment.seq, records, tables)
            .map_err(TableError::from)?;
        Ok((files, corrupt))
    })
    .await?
}

/// Locks the spool folders of gone siblings under `root` and adds them to `spools`.
async fn adopt(root: &Arc<SpoolRoot>, spools: &Spools, metrics: &CaptureMetrics) {
    let scan = root.clone();
    let found = tokio::task::spawn_blocking(move || {
        scan.orphans().map(|folders| {
            folders
                .into_iter()
                .map(|folder| Spool::open(folder, u64::MAX, 0))
                .collect::<Vec<_>>()
        })
    })
    .await;
    let opened = match found {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot look for spools to adopt");
            return;
        }
        Err(error) => {
            tracing::error!(%error, "the spool scan failed");
            return;
        }
    };
    for spool in opened {
        let (spool, waiting) = match spool {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, "cannot open a spool to adopt");
                continue;
            }
        };
        if waiting == 0 {
            // A sibling that stopped with everything written: only its folder is left.
            match spool.retire() {
                Ok(_) => tracing::debug!(instance = spool.instance(), "empty spool folder removed"),
                Err(error) => tracing::warn!(%error, "cannot remove an empty spool folder"),
            }
            continue;
        }
        let tables = match spools.own.tables.for_instance(spool.instance()) {
            Ok(tables) => tables,
            Err(error) => {
                tracing::error!(%error, "cannot write an adopted spool's rows");
                continue;
            }
        };
        tracing::info!(
            instance = spool.instance(),
            waiting,
            "adopted the spool of a sidecar that is gone; its rows are written from here"
        );
        metrics.spools_adopted.inc();
        spools.adopted().push(Source {
            spool: Arc::new(spool),
            tables,
        });
    }
}

/// The uploader: sealed segments → table files, adopted spools first, oldest first, with
/// backoff on failure (cut short when the flush starts).
async fn upload_loop(
    spools: Arc<Spools>,
    root: Arc<SpoolRoot>,
    metrics: CaptureMetrics,
    sealed: Arc<Notify>,
    (retry_max, adopt_every): (Duration, Duration),
    mut phase: watch::Receiver<Phase>,
) {
    let mut backoff = FIRST_RETRY;
    // Files encoded for a segment whose write failed, kept for the retry.
    let mut encoded: Option<(String, u64, SegmentFiles)> = None;
    let mut next_adoption = Instant::now();
    loop {
        let running = *phase.borrow() == Phase::Running;
        if running && Instant::now() >= next_adoption {
            adopt(&root, &spools, &metrics).await;
            next_adoption = Instant::now() + adopt_every;
            refresh(&spools, &metrics);
        }
        while let Some((source, segment)) = spools.claim() {
            let (spool, instance) = (&source.spool, source.spool.instance());
            let span = tracing::info_span!(
                "upload",
                instance,
                seq = segment.seq,
                rows = segment.records
            );
            let result = async {
                let files = match encoded.take() {
                    Some((of, seq, files)) if of == instance && seq == segment.seq => files,
                    _ => {
                        let (files, corrupt) =
                            prepare(spool, &segment, source.tables.written()).await?;
                        metrics.drop_records(DropReason::Corrupt, corrupt);
                        files
                    }
                };
                match source.tables.write(segment.seq, &files).await {
                    Ok(written) => Ok((files, written)),
                    Err(error) => {
                        encoded = Some((instance.to_string(), segment.seq, files));
                        Err(UploadError::from(error))
                    }
                }
            }
            .instrument(span)
            .await;
            match result {
                Ok((files, written)) => {
                    if let Err(error) = spool.complete(segment.seq) {
                        tracing::error!(%error, "cannot remove an uploaded spool segment");
                    }
                    metrics.segment_written(&files, &written);
                    tracing::debug!(
                        files = files.count(),
                        ?written,
                        "segment written to the tables"
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
                    refresh(&spools, &metrics);
                    tokio::select! {
                        () = tokio::time::sleep(jitter(backoff)) => {
                            backoff = (backoff * 2).min(retry_max);
                        }
                        // The flush starts (or the shutdown): try again now.
                        changed = phase.changed() => match changed {
                            Ok(()) => backoff = FIRST_RETRY,
                            Err(_) => return,
                        },
                    }
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
            refresh(&spools, &metrics);
        }
        spools.retire_written();
        if *phase.borrow() == Phase::Closing && !spools.has_sealed() {
            return;
        }
        if spools.has_sealed() {
            // A failed upload broke out of the loop after its backoff: try again now.
            continue;
        }
        let wait = if running {
            TICK.min(next_adoption.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(10))
        } else {
            TICK
        };
        tokio::select! {
            () = sealed.notified() => {}
            () = tokio::time::sleep(wait) => refresh(&spools, &metrics),
            changed = phase.changed() => if changed.is_err() {
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
