//! The inference table: the rows the capture sidecar records, for anyone to read.
//!
//! - [`record`]: one row ([`PayloadRecord`]), the Arrow schema, rows → Arrow batches.
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
pub mod parquet;
pub mod record;
pub mod spool;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sluice_store::{StoreError, TableStore};

pub use record::{PayloadRecord, schema};

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
pub fn by_date(records: Vec<PayloadRecord>) -> BTreeMap<NaiveDate, Vec<PayloadRecord>> {
    let mut days: BTreeMap<NaiveDate, Vec<PayloadRecord>> = BTreeMap::new();
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

/// Encodes the rows of spool segment `seq` of `instance`: one file per day they span. CPU
/// work; callers on an async runtime run it on a blocking thread.
pub fn encode_segment(
    instance: &str,
    seq: u64,
    records: Vec<PayloadRecord>,
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

/// A table of Hive-partitioned Parquet files, optionally with a Delta log over them.
#[derive(Clone, Debug)]
pub struct ParquetTable {
    store: TableStore,
    delta: Option<std::sync::Arc<delta::DeltaLog>>,
}

impl ParquetTable {
    /// The table at `store`.
    pub fn new(store: TableStore) -> Self {
        Self { store, delta: None }
    }

    /// The same table, each segment also committed to a Delta log as application `app_id`.
    pub fn with_delta(self, app_id: &str) -> Result<Self, TableError> {
        let log = delta::DeltaLog::new(&self.store, app_id)?;
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
            Some(_) => Self::new(self.store.clone()).with_delta(app_id),
            None => Ok(self.clone()),
        }
    }

    /// Writes the encoded files of spool segment `seq`, then (with a Delta log) commits them.
    /// Idempotent: writing the same segment again replaces the same files, and a segment the
    /// Delta log holds already is skipped, so a retry never duplicates rows.
    #[tracing::instrument(level = "debug", skip_all, fields(seq, files = files.len()))]
    pub async fn write(&self, seq: u64, files: &[PartFile]) -> Result<Written, TableError> {
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
