//! The inference table: the rows the capture sidecar records, for anyone to read.
//!
//! - [`record`]: one row ([`PayloadRecord`]), the Arrow schema, rows → Arrow batches.
//! - [`usage`]: one row of the usage table beside it ([`usage::UsageRecord`]).
//! - [`feedback`]: one row of the feedback table beside it ([`feedback::FeedbackRecord`]).
//! - [`parquet`]: rows → one Parquet file.
//! - [`delta`]: the optional Delta Lake log over the Parquet files.
//! - [`spool`]: the capped on-disk log of rows waiting for the table.
//!
//! The table location (local folder / PVC, S3 with a custom endpoint, GCS, Azure) is a
//! [`TableStore`] of the `sluice-store` crate.
//!
//! Layout: Hive-partitioned Parquet, `<table>/date=YYYY-MM-DD/part-<instance>-<seq>.parquet`.
//! `<instance>` is the writing sidecar's stable spool id and `<seq>` the spool segment the rows
//! came from, so many sidecars write side by side without coordination and a retried upload
//! replaces its own file instead of adding a second copy. DuckDB
//! (`read_parquet('<table>/*/*.parquet', hive_partitioning = true)`), Spark, Polars and
//! pyarrow read the folder as is.

pub mod delta;
pub mod feedback;
pub mod parquet;
pub mod record;
pub mod spool;
pub mod usage;

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use chrono::NaiveDate;
use sluice_store::{StoreError, TableStore};

use self::feedback::FeedbackRecord;
use self::usage::UsageRecord;

/// The rows of one kind of table: its schema and how rows become Arrow batches.
pub trait TableRow: Sized {
    /// The table's name in its Delta log.
    const NAME: &'static str;
    /// The table's description in its Delta log.
    const COMMENT: &'static str;
    /// Columns of large, unique values (bodies): no dictionary and no statistics.
    const BODY_COLUMNS: &'static [&'static str];
    /// The Arrow schema.
    fn schema() -> SchemaRef;
    /// `rows` as one batch in [`Self::schema`] order.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
    /// The UTC day of the row: its `date` column and partition.
    fn date(&self) -> NaiveDate;
}

/// What a Delta log needs to know of its table's rows.
#[derive(Clone, Copy, Debug)]
pub struct TableKind {
    /// [`TableRow::NAME`].
    pub name: &'static str,
    /// [`TableRow::COMMENT`].
    pub comment: &'static str,
    /// [`TableRow::schema`].
    pub schema: fn() -> SchemaRef,
}

impl TableKind {
    /// The kind of table `R` rows make.
    pub fn of<R: TableRow>() -> Self {
        Self {
            name: R::NAME,
            comment: R::COMMENT,
            schema: R::schema,
        }
    }
}

pub use record::PayloadRecord;

/// Why rows could not be added to the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Encoding the rows failed (a bug or a row the schema cannot hold); retrying will not help.
    #[error(transparent)]
    Encode(#[from] parquet::EncodeError),
    /// The store failed; retrying may help.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Delta log could not be read or committed to; retrying may help.
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
}

impl TableError {
    /// Whether retrying the same rows later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Delta(_))
    }
}

/// What writing a segment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The segment was in the Delta table already (committed before a restart): nothing was
    /// written again.
    pub already_committed: bool,
    /// The Delta commit, when the table has a Delta log.
    pub commit: Option<delta::Committed>,
}

/// The object name of the rows of spool segment `seq` of `instance` dated `date`.
pub fn part_path(date: NaiveDate, instance: &str, seq: u64) -> String {
    format!("date={date}/part-{instance}-{seq:012}.parquet")
}

/// Splits rows by their `date` partition, keeping their order within a day.
pub fn by_date<R: TableRow>(records: Vec<R>) -> BTreeMap<NaiveDate, Vec<R>> {
    let mut days: BTreeMap<NaiveDate, Vec<R>> = BTreeMap::new();
    for record in records {
        days.entry(record.date()).or_default().push(record);
    }
    days
}

/// One Parquet file ready to write: its path under the table and its bytes.
#[derive(Clone, Debug)]
pub struct PartFile {
    /// Path under the table root, such as `date=2026-11-26/part-….parquet`.
    pub path: String,
    /// Rows in the file.
    pub rows: usize,
    /// The encoded file.
    pub bytes: bytes::Bytes,
}

/// The files of one spool segment, per table.
#[derive(Clone, Debug, Default)]
pub struct SegmentFiles {
    /// Files of the payload table (the sampled exchanges).
    pub payload: Vec<PartFile>,
    /// Files of the usage table (every tracked exchange).
    pub usage: Vec<PartFile>,
    /// Files of the feedback table (every feedback).
    pub feedback: Vec<PartFile>,
}

impl SegmentFiles {
    /// Files of every table.
    pub fn count(&self) -> usize {
        self.payload.len() + self.usage.len() + self.feedback.len()
    }
}

/// Which tables a sidecar writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSet {
    /// The payload table.
    pub payload: bool,
    /// The usage table.
    pub usage: bool,
    /// The feedback table.
    pub feedback: bool,
}

/// Encodes `records` (one spool segment) as one file per day they span.
fn encode_days<R: TableRow>(
    instance: &str,
    seq: u64,
    records: Vec<R>,
) -> Result<Vec<PartFile>, parquet::EncodeError> {
    by_date(records)
        .into_iter()
        .map(|(date, rows)| {
            Ok(PartFile {
                path: part_path(date, instance, seq),
                rows: rows.len(),
                bytes: parquet::encode(&rows)?,
            })
        })
        .collect()
}

/// Encodes the rows of spool segment `seq` of `instance` for the tables written: the sampled
/// exchanges for the payload table, the usage rows of every tracked exchange for the usage
/// table, the feedback for the feedback table; one file per day each spans. CPU work; callers
/// on an async runtime run it on a blocking thread.
pub fn encode_segment(
    instance: &str,
    seq: u64,
    records: Vec<PayloadRecord>,
    tables: TableSet,
) -> Result<SegmentFiles, parquet::EncodeError> {
    let usage_rows: Vec<UsageRecord> = if tables.usage {
        records.iter().filter_map(UsageRecord::of).collect()
    } else {
        Vec::new()
    };
    let feedback_rows: Vec<FeedbackRecord> = if tables.feedback {
        records.iter().filter_map(FeedbackRecord::of).collect()
    } else {
        Vec::new()
    };
    let sampled: Vec<PayloadRecord> = if tables.payload {
        records
            .into_iter()
            .filter(|r| !r.usage_only && r.feedback.is_none())
            .collect()
    } else {
        Vec::new()
    };
    Ok(SegmentFiles {
        payload: encode_days(instance, seq, sampled)?,
        usage: encode_days(instance, seq, usage_rows)?,
        feedback: encode_days(instance, seq, feedback_rows)?,
    })
}

/// A table of Hive-partitioned Parquet files, optionally with a Delta log over them.
#[derive(Clone, Debug)]
pub struct ParquetTable {
    store: TableStore,
    kind: TableKind,
    delta: Option<std::sync::Arc<delta::DeltaLog>>,
}

impl ParquetTable {
    /// The table of `kind` at `store`.
    pub fn new(store: TableStore, kind: TableKind) -> Self {
        Self {
            store,
            kind,
            delta: None,
        }
    }

    /// Where the table is.
    pub fn uri(&self) -> &str {
        self.store.uri()
    }

    /// The same table, each segment also committed to a Delta log as application `app_id`.
    pub fn with_delta(self, app_id: &str) -> Result<Self, TableError> {
        let log = delta::DeltaLog::new(&self.store, app_id, self.kind)?;
        Ok(Self {
            delta: Some(std::sync::Arc::new(log)),
            ..self
        })
    }

    /// The same table for the segments of another sidecar instance (an adopted spool): with
    /// a Delta log, its commits carry that instance's application id, so a segment it
    /// committed before it died is recognised and skipped.
    pub fn for_instance(&self, app_id: &str) -> Result<Self, TableError> {
        match &self.delta {
            Some(_) => Self::new(self.store.clone(), self.kind).with_delta(app_id),
            None => Ok(self.clone()),
        }
    }

    /// Writes the encoded files of spool segment `seq`, then (with a Delta log) commits them.
    /// Idempotent: writing the same segment again replaces the same files, and a segment the
    /// Delta log holds already is skipped, so a retry never duplicates rows.
    #[tracing::instrument(level = "debug", skip_all, fields(seq, files = files.len()))]
    pub async fn write(&self, seq: u64, files: &[PartFile]) -> Result<Written, TableError> {
        if files.is_empty() {
            // No row of the segment belongs to this table: nothing to write or commit.
            return Ok(Written::default());
        }
        if let Some(log) = &self.delta
            && log.has_segment(seq).await?
        {
            return Ok(Written {
                already_committed: true,
                commit: None,
            });
        }
        for file in files {
            self.store.put(&file.path, file.bytes.clone()).await?;
        }
        let commit = match &self.delta {
            Some(log) => Some(log.commit(seq, files).await?),
            None => None,
        };
        Ok(Written {
            already_committed: false,
            commit,
        })
    }
}

/// The tables a sidecar writes: the payload table, the usage table, the feedback table.
#[derive(Clone, Debug)]
pub struct Tables {
    /// The payload table (`--table`).
    pub payload: Option<ParquetTable>,
    /// The usage table (`--usage-table`).
    pub usage: Option<ParquetTable>,
    /// The feedback table (`--feedback-table`).
    pub feedback: Option<ParquetTable>,
}

impl Tables {
    /// Which tables rows are encoded for.
    pub fn written(&self) -> TableSet {
        TableSet {
            payload: self.payload.is_some(),
            usage: self.usage.is_some(),
            feedback: self.feedback.is_some(),
        }
    }

    /// The same tables for the segments of another sidecar instance (see
    /// [`ParquetTable::for_instance`]).
    pub fn for_instance(&self, app_id: &str) -> Result<Self, TableError> {
        Ok(Self {
            payload: self
                .payload
                .as_ref()
                .map(|t| t.for_instance(app_id))
                .transpose()?,
            usage: self
                .usage
                .as_ref()
                .map(|t| t.for_instance(app_id))
                .transpose()?,
            feedback: self
                .feedback
                .as_ref()
                .map(|t| t.for_instance(app_id))
                .transpose()?,
        })
    }

    /// Writes segment `seq`'s files to each table (payload first). Idempotent like
    /// [`ParquetTable::write`]: after a failure the whole segment is written again, and what
    /// one table already has is replaced or skipped, never doubled.
    pub async fn write(&self, seq: u64, files: &SegmentFiles) -> Result<[Written; 3], TableError> {
        let mut written = [Written::default(); 3];
        if let Some(table) = &self.payload {
            written[0] = table.write(seq, &files.payload).await?;
        }
        if let Some(table) = &self.usage {
            written[1] = table.write(seq, &files.usage).await?;
        }
        if let Some(table) = &self.feedback {
            written[2] = table.write(seq, &files.feedback).await?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_paths_are_hive_partitions() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        assert_eq!(
            part_path(date, "ab12", 7),
            "date=2026-11-26/part-ab12-000000000007.parquet"
        );
    }

    #[test]
    fn a_feedback_record_becomes_a_feedback_row_only() {
        let exchange = PayloadRecord {
            request_id: "r-1".into(),
            request: Some("{}".into()),
            usage: Some(Default::default()),
            ..Default::default()
        };
        let feedback = PayloadRecord {
            request_id: "fb-1".into(),
            feedback: Some(sluice_contract::feedback::Feedback {
                request_id: "r-1".into(),
                label: Some("1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let all = TableSet {
            payload: true,
            usage: true,
            feedback: true,
        };
        let files = encode_segment("i", 1, vec![exchange, feedback], all).unwrap();
        let rows = |files: &[PartFile]| files.iter().map(|f| f.rows).sum::<usize>();
        assert_eq!(
            (
                rows(&files.payload),
                rows(&files.usage),
                rows(&files.feedback)
            ),
            (1, 1, 1)
        );
        let none = encode_segment("i", 2, Vec::new(), all).unwrap();
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn rows_split_by_day() {
        let row = |ts| PayloadRecord {
            timestamp_ms: ts,
            ..Default::default()
        };
        let days = by_date(vec![row(0), row(86_400_000), row(1)]);
        assert_eq!(days.len(), 2);
        assert_eq!(days.values().next().unwrap().len(), 2);
    }
}
