//! Parquet encoding of inference-table rows: one file per (segment, date), Snappy-compressed,
//! with the Arrow schema embedded so that every reader sees the same column types.

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::TableRow;

/// Rows per Arrow batch handed to the writer (bounds the memory of one encode step).
const BATCH_ROWS: usize = 1024;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Why rows could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Building the Arrow batch failed.
    #[error("building an Arrow batch of {rows} inference-table rows: {source}")]
    Arrow {
        /// Rows in the batch.
        rows: usize,
        /// The Arrow error.
        source: arrow_schema::ArrowError,
    },
    /// Writing Parquet failed.
    #[error("writing {rows} inference-table rows as Parquet: {source}")]
    Parquet {
        /// Rows being written.
        rows: usize,
        /// The Parquet error.
        source: ParquetError,
    },
}

/// Encodes `records` as one Parquet file in memory.
pub fn encode<R: TableRow>(records: &[R]) -> Result<Bytes, EncodeError> {
    let rows = records.len();
    let parquet_error = |source| EncodeError::Parquet { rows, source };
    let mut properties = WriterProperties::builder();
    // Bodies are large and unique: a dictionary or min/max statistics of them cost CPU and
    // buy nothing.
    for &column in R::BODY_COLUMNS {
        properties = properties
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    let properties = properties
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("sluice capture {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), R::schema(), Some(properties)).map_err(parquet_error)?;
    for chunk in records.chunks(BATCH_ROWS) {
        let batch = R::to_batch(chunk).map_err(|source| EncodeError::Arrow {
            rows: chunk.len(),
            source,
        })?;
        writer.write(&batch).map_err(parquet_error)?;
    }
    let buffer = writer.into_inner().map_err(parquet_error)?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::table::PayloadRecord;
    use crate::table::record::COLUMNS;

    #[test]
    fn encoded_files_read_back_with_every_row() {
        let records: Vec<_> = (0..2500)
            .map(|i| PayloadRecord {
                request_id: format!("r{i}"),
                timestamp_ms: 1_795_737_600_000 + i,
                status_code: 200,
                ..Default::default()
            })
            .collect();
        let bytes = encode(&records).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = 0;
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.schema().fields().len(), COLUMNS.len());
            rows += batch.num_rows();
        }
        assert_eq!(rows, 2500);
    }
}
