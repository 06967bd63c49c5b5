//! Prometheus metrics of the capture sidecar, registered in an explicit [`Registry`].
//!
//! Labels are bounded: `reason` is one of [`DropReason`], `body` is `request` or `response`,
//! `kind` one of the upstream failure kinds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Gives a label enum snake_case label values.
macro_rules! label_values {
    ($kind:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

/// Why rows were dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The in-memory queue was full (the spool writer fell behind): the oldest rows went.
    QueueFull,
    /// The spool was full (the table was unreachable for long): its oldest segment went.
    SpoolFull,
    /// The spool could not be written (disk error).
    SpoolError,
    /// A spooled line did not parse (torn by a crash).
    Corrupt,
    /// Rows the table format cannot hold (never retried).
    Unencodable,
    /// Rows still in memory when the shutdown deadline passed (the spool writer had not
    /// taken them, e.g. a `block` spool full while the table was unreachable).
    Shutdown,
}

label_values!(DropReason {
    QueueFull => "queue_full",
    SpoolFull => "spool_full",
    SpoolError => "spool_error",
    Corrupt => "corrupt",
    Unencodable => "unencodable",
    Shutdown => "shutdown",
});

/// The `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Why.
    pub reason: DropReason,
}

/// Which body was cut.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Body {
    /// The request body.
    Request,
    /// The response body.
    Response,
}

label_values!(Body {
    Request => "request",
    Response => "response",
});

/// The `body` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BodyLabels {
    /// Which body.
    pub body: Body,
}

/// How the model failed to answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection or a broken one.
    Unreachable,
    /// No response head within `--upstream-timeout-seconds`.
    Timeout,
}

label_values!(UpstreamFailure {
    Unreachable => "unreachable",
    Timeout => "timeout",
});

/// The `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// How it failed.
    pub kind: UpstreamFailure,
}

/// The labels of the usage counters: one sidecar serves one endpoint and entity, so they stay
/// bounded (never the caller: principals are unbounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    /// The ServingEndpoint.
    pub endpoint: String,
    /// The served entity.
    pub entity: String,
    /// The currency of the cost (empty without a price).
    pub currency: String,
}

/// The capture metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct CaptureMetrics {
    /// Requests proxied, captured or not.
    pub requests: Counter,
    /// Rows taken into the pipeline.
    pub captured: Counter,
    /// Rows in the payload table.
    pub written: Counter,
    /// Rows in the usage table.
    pub usage_written: Counter,
    /// Rows in the feedback table.
    pub feedback_written: Counter,
    /// Requests served, by endpoint and entity (usage tracking on).
    pub usage_requests: Family<UsageLabels, Counter>,
    /// Input tokens the answers reported, by endpoint and entity.
    pub usage_input_tokens: Family<UsageLabels, Counter>,
    /// Output tokens the answers reported, by endpoint and entity.
    pub usage_output_tokens: Family<UsageLabels, Counter>,
    /// Cost at the entity's price, by endpoint, entity and currency.
    pub usage_cost: Family<UsageLabels, Counter<f64, AtomicU64>>,
    /// Rows dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Bodies cut at `--max-payload-bytes` or by the memory budget.
    pub truncated: Family<BodyLabels, Counter>,
    /// Table files written.
    pub files: Counter,
    /// Failed attempts to write a table file.
    pub upload_failures: Counter,
    /// Segments committed to the Delta log.
    pub delta_commits: Counter,
    /// Delta commit attempts lost to another writer's commit (then retried).
    pub delta_conflicts: Counter,
    /// Failed Delta log reads or commits (the segment is retried with backoff).
    pub delta_failures: Counter,
    /// Segments found in the Delta log already (committed before a restart) and skipped.
    pub delta_skipped: Counter,
    /// Spool folders of gone sidecars adopted (their rows then written by this one).
    pub spools_adopted: Counter,
    /// The model could not answer.
    pub upstream_failures: Family<UpstreamLabels, Counter>,
    /// Requests answered 503 without reaching the model: the `block` policy found no room
    /// for their rows within `--block-timeout`.
    pub refused: Counter,
    /// 1 while the spool writer waits for room in a full spool (`block`), else 0.
    pub spool_blocked: Gauge,
    /// Bytes of rows in the in-memory queue.
    pub queue_bytes: Gauge,
    /// Bytes of body copies held by requests in flight.
    pub in_flight_bytes: Gauge,
    /// Bytes in the on-disk spool (adopted folders included).
    pub spool_bytes: Gauge,
    /// Rows in the on-disk spool (adopted folders included).
    pub spool_records: Gauge,
    /// Age of the oldest row not yet in the table, in seconds.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    epoch: Instant,
    last_drop_warning_ms: Arc<AtomicU64>,
}

impl Default for CaptureMetrics {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            captured: Counter::default(),
            written: Counter::default(),
            usage_written: Counter::default(),
            feedback_written: Counter::default(),
            usage_requests: Family::default(),
            usage_input_tokens: Family::default(),
            usage_output_tokens: Family::default(),
            usage_cost: Family::default(),
            dropped: Family::default(),
            truncated: Family::default(),
            files: Counter::default(),
            upload_failures: Counter::default(),
            delta_commits: Counter::default(),
            delta_conflicts: Counter::default(),
            delta_skipped: Counter::default(),
            delta_failures: Counter::default(),
            spools_adopted: Counter::default(),
            upstream_failures: Family::default(),
            refused: Counter::default(),
            spool_blocked: Gauge::default(),
            queue_bytes: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_records: Gauge::default(),
            lag_seconds: Gauge::default(),
            epoch: Instant::now(),
            last_drop_warning_ms: Arc::default(),
        }
    }
}

/// Least time between two warnings about dropped rows.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

impl CaptureMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "requests",
            "Requests proxied to the model",
            metrics.requests.clone(),
        );
        registry.register(
            "records_captured",
            "Rows taken into the capture pipeline",
            metrics.captured.clone(),
        );
        registry.register(
            "records_written",
            "Rows written to the inference table",
            metrics.written.clone(),
        );
        registry.register(
            "usage_records_written",
            "Rows written to the usage table",
            metrics.usage_written.clone(),
        );
        registry.register(
            "feedback_records_written",
            "Rows written to the feedback table",
            metrics.feedback_written.clone(),
        );
        registry.register(
            "usage_requests",
            "Requests served, by endpoint and entity (usage tracking)",
            metrics.usage_requests.clone(),
        );
        registry.register(
            "usage_input_tokens",
            "Input tokens the answers reported, by endpoint and entity (usage tracking)",
            metrics.usage_input_tokens.clone(),
        );
        registry.register(
            "usage_output_tokens",
            "Output tokens the answers reported, by endpoint and entity (usage tracking)",
            metrics.usage_output_tokens.clone(),
        );
        registry.register(
            "usage_cost",
            "Cost of the requests served at the entity's price, by endpoint, entity and currency",
            metrics.usage_cost.clone(),
        );
        registry.register(
            "records_dropped",
            "Rows dropped before reaching the table, by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "payloads_truncated",
            "Bodies recorded only in part",
            metrics.truncated.clone(),
        );
        registry.register(
            "files_written",
            "Parquet files written to the table",
            metrics.files.clone(),
        );
        registry.register(
            "upload_failures",
            "Failed attempts to write a table file or Delta commit (retried)",
            metrics.upload_failures.clone(),
        );
        registry.register(
            "delta_commits",
            "Spool segments committed to the Delta log",
            metrics.delta_commits.clone(),
        );
        registry.register(
            "delta_commit_conflicts",
            "Delta commit attempts lost to another writer's commit, then retried",
            metrics.delta_conflicts.clone(),
        );
        registry.register(
            "delta_commit_failures",
            "Failed Delta log reads or commits (the segment is retried with backoff)",
            metrics.delta_failures.clone(),
        );
        registry.register(
            "delta_segments_skipped",
            "Spool segments the Delta log held already (committed before a restart)",
            metrics.delta_skipped.clone(),
        );
        registry.register(
            "spools_adopted",
            "Spool folders of gone sidecars adopted; their rows are written by this one",
            metrics.spools_adopted.clone(),
        );
        registry.register(
            "upstream_failures",
            "Requests the model did not answer",
            metrics.upstream_failures.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests answered 503 without reaching the model because the table is behind \
             (overflow policy block: no room for their rows within --block-timeout)",
            metrics.refused.clone(),
        );
        registry.register(
            "spool_blocked",
            "1 while the spool writer waits for room in a full spool (overflow policy block)",
            metrics.spool_blocked.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes of rows waiting in memory",
            metrics.queue_bytes.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Bytes of body copies held by requests in flight",
            metrics.in_flight_bytes.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in the on-disk spool",
            metrics.spool_bytes.clone(),
        );
        registry.register(
            "spool_records",
            "Rows in the on-disk spool",
            metrics.spool_records.clone(),
        );
        registry.register(
            "lag_seconds",
            "Age of the oldest row not yet in the table",
            metrics.lag_seconds.clone(),
        );
        metrics
    }

    /// Counts a segment written to each table (rows, files and the Delta commit), or skipped
    /// in a table whose Delta log held it already.
    pub fn segment_written(
        &self,
        files: &crate::table::SegmentFiles,
        written: &[crate::table::Written; 3],
    ) {
        let rows = |files: &[crate::table::PartFile]| files.iter().map(|f| f.rows as u64).sum();
        for (files, written, counter) in [
            (&files.payload, &written[0], &self.written),
            (&files.usage, &written[1], &self.usage_written),
            (&files.feedback, &written[2], &self.feedback_written),
        ] {
            if written.already_committed {
                self.delta_skipped.inc();
                continue;
            }
            counter.inc_by(rows(files));
            self.files.inc_by(files.len() as u64);
            if let Some(commit) = written.commit {
                self.delta_commits.inc();
                self.delta_conflicts.inc_by(commit.conflicts);
            }
        }
    }

    /// Counts the usage of one finished exchange (by endpoint and entity, never by caller).
    pub fn count_usage(
        &self,
        labels: &UsageLabels,
        tokens: (Option<u64>, Option<u64>),
        cost: Option<f64>,
    ) {
        self.usage_requests.get_or_create(labels).inc();
        if let Some(n) = tokens.0 {
            self.usage_input_tokens.get_or_create(labels).inc_by(n);
        }
        if let Some(n) = tokens.1 {
            self.usage_output_tokens.get_or_create(labels).inc_by(n);
        }
        if let Some(cost) = cost {
            self.usage_cost.get_or_create(labels).inc_by(cost);
        }
    }

    /// Counts `n` rows dropped for `reason`; warns at most once per [`WARN_EVERY`] (an
    /// overloaded sidecar must not also flood its log).
    pub fn drop_records(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        let counter = self.dropped.get_or_create(&DropLabels { reason });
        counter.inc_by(n);
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_drop_warning_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64)
            && self
                .last_drop_warning_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                ?reason,
                records = n,
                total = counter.get(),
                "capture rows dropped (see sluice_capture_records_dropped_total)"
            );
        }
    }
}
