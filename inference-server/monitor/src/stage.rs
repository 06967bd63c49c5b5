//! Staging: the rows of a time range of the inference table, unpacked once into instances
//! (one row per item of a batch request, one column per monitored field, the window of each
//! granularity precomputed) and written to a local Parquet file that every later query reads.
//! The table is streamed batch by batch, so memory stays bounded whatever its size.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Array, Int64Builder, RecordBatch,
    StringArray, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sluice_contract::metadata as row_keys;
use sluice_crds::{FieldKind, Granularity};

use crate::MonitorError;
use crate::fields::{Cell, Field, instances};
use crate::window;

/// The request-level columns copied from the inference table into every instance.
pub const REQUEST_COLUMNS: [(&str, DataType); 10] = [
    ("request_id", DataType::Utf8),
    ("served_entity", DataType::Utf8),
    ("model_version", DataType::Utf8),
    ("status_code", DataType::Int32),
    ("execution_time_ms", DataType::Int64),
    ("input_token_count", DataType::Int64),
    ("output_token_count", DataType::Int64),
    (row_keys::TIME_TO_FIRST_BYTE_MS, DataType::Int64),
    (row_keys::GUARDRAILS, DataType::Utf8),
    (row_keys::COST, DataType::Float64),
];

/// The newest feedback's fields a staging query may join to each request, read by
/// `feedback.` paths; the query names them with [`feedback_column`].
pub const FEEDBACK_FIELDS: [&str; 3] = ["label", "rating", "comment"];

/// The staging query's column of feedback field `name`.
pub fn feedback_column(name: &str) -> String {
    format!("__feedback_{name}")
}

/// Timestamp (ms) column of the staged rows.
pub const TS: &str = "__ts";
/// True on the first instance of each request (request-level metrics count requests).
pub const FIRST: &str = "__first";

/// Column of window starts of the granularity at index `i`.
pub fn window_column(i: usize) -> String {
    format!("__w{i}")
}

/// Column of the starts of the windows after those of `window_column(i)`.
pub fn next_column(i: usize) -> String {
    format!("__n{i}")
}

/// The schema of staged rows.
pub fn schema(fields: &[Field], granularities: &[Granularity]) -> SchemaRef {
    let mut columns = vec![
        ArrowField::new(TS, DataType::Int64, false),
        ArrowField::new(FIRST, DataType::Boolean, false),
    ];
    for i in 0..granularities.len() {
        columns.push(ArrowField::new(window_column(i), DataType::Int64, false));
        columns.push(ArrowField::new(next_column(i), DataType::Int64, false));
    }
    columns.extend(
        REQUEST_COLUMNS
            .iter()
            .map(|(name, kind)| ArrowField::new(*name, kind.clone(), true)),
    );
    columns.extend(fields.iter().map(|field| {
        let kind = match field.kind {
            FieldKind::Numeric => DataType::Float64,
            FieldKind::Categorical => DataType::Utf8,
        };
        ArrowField::new(&field.name, kind, true)
    }));
    Arc::new(Schema::new(columns))
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    owned: &'a mut Vec<ArrayRef>,
    as_type: &DataType,
) -> Result<Option<&'a T>, MonitorError> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    owned.push(cast(array, as_type)?);
    Ok(owned
        .last()
        .and_then(|array| array.as_any().downcast_ref::<T>()))
}

/// Rows of a row group of the staged file. A row group is buffered whole while it is written,
/// and each query fetches a group's column chunks whole while it reads them, both outside
/// DataFusion's memory pool: small groups keep that memory small whatever the table's size
/// (Parquet's default, a million rows, took hundreds of MB).
const STAGE_ROW_GROUP_ROWS: usize = 64 * 1024;

/// What one staging pass read and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Staged {
    /// Rows (requests) read from the table.
    pub requests: u64,
    /// Instances written.
    pub instances: u64,
}

/// Streams `query` (which must select the table's `timestamp_ms`, `request`, `response` and
/// the [`REQUEST_COLUMNS`] it has) into the Parquet file at `out`.
pub async fn stage(
    ctx: &SessionContext,
    query: &str,
    fields: &[Field],
    granularities: &[Granularity],
    out: &Path,
) -> Result<Staged, MonitorError> {
    let schema = schema(fields, granularities);
    let file = File::create(out).map_err(|source| MonitorError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(STAGE_ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
    let mut stream = ctx.sql(query).await?.execute_stream().await?;
    let mut staged = Staged::default();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let unpacked = unpack(&batch, &schema, fields, granularities)?;
        staged.requests += batch.num_rows() as u64;
        staged.instances += unpacked.num_rows() as u64;
        writer.write(&unpacked)?;
    }
    writer.close()?;
    Ok(staged)
}

fn text(array: &Option<StringArray>, row: usize) -> Option<&str> {
    array
        .as_ref()
        .filter(|array| array.is_valid(row))
        .map(|array| array.value(row))
}

fn unpack(
    batch: &RecordBatch,
    schema: &SchemaRef,
    fields: &[Field],
    granularities: &[Granularity],
) -> Result<RecordBatch, MonitorError> {
    let mut owned = Vec::new();
    let ts = column::<Int64Array>(batch, "timestamp_ms", &mut owned, &DataType::Int64)?.cloned();
    let request = column::<StringArray>(batch, "request", &mut owned, &DataType::Utf8)?.cloned();
    let response = column::<StringArray>(batch, "response", &mut owned, &DataType::Utf8)?.cloned();
    let feedback_label = column::<StringArray>(
        batch,
        &feedback_column("label"),
        &mut owned,
        &DataType::Utf8,
    )?
    .cloned();
    let feedback_rating = column::<datafusion::arrow::array::Float64Array>(
        batch,
        &feedback_column("rating"),
        &mut owned,
        &DataType::Float64,
    )?
    .cloned();
    let feedback_comment = column::<StringArray>(
        batch,
        &feedback_column("comment"),
        &mut owned,
        &DataType::Utf8,
    )?
    .cloned();
    let joined = feedback_label.is_some() || feedback_rating.is_some();
    let Some(ts) = ts else {
        return Err(MonitorError::Schema(
            "the table has no `timestamp_ms` column".into(),
        ));
    };
    let mut request_columns: Vec<Option<ArrayRef>> = Vec::new();
    for (name, kind) in &REQUEST_COLUMNS {
        request_columns.push(match batch.column_by_name(name) {
            Some(array) => Some(cast(array, kind)?),
            None => None,
        });
    }
    let rows = batch.num_rows();
    let mut ts_out = Int64Builder::with_capacity(rows);
    let mut first = BooleanBuilder::with_capacity(rows);
    let mut windows: Vec<(Int64Builder, Int64Builder)> = granularities
        .iter()
        .map(|_| {
            (
                Int64Builder::with_capacity(rows),
                Int64Builder::with_capacity(rows),
            )
        })
        .collect();
    let mut taken: Vec<u32> = Vec::with_capacity(rows);
    let mut numbers: Vec<Float64Builder> = Vec::new();
    let mut texts: Vec<StringBuilder> = Vec::new();
    for field in fields {
        match field.kind {
            FieldKind::Numeric => numbers.push(Float64Builder::with_capacity(rows)),
            FieldKind::Categorical => texts.push(StringBuilder::with_capacity(rows, rows * 8)),
        }
    }
    for row in 0..rows {
        if ts.is_null(row) {
            continue;
        }
        let at = ts.value(row);
        // The newest feedback on the request, when the query joined it and there is one.
        let feedback = joined.then(|| {
            let rating = feedback_rating
                .as_ref()
                .filter(|array| array.is_valid(row))
                .map(|array| array.value(row));
            serde_json::json!({
                "label": text(&feedback_label, row),
                "rating": rating,
                "comment": text(&feedback_comment, row),
            })
        });
        let cells = instances(
            fields,
            text(&request, row),
            text(&response, row),
            feedback.as_ref(),
        );
        let count = cells.first().map_or(1, Vec::len);
        for instance in 0..count {
            ts_out.append_value(at);
            first.append_value(instance == 0);
            for (granularity, (start, next)) in granularities.iter().zip(&mut windows) {
                let window = window::start(*granularity, at);
                start.append_value(window);
                next.append_value(window::next(*granularity, window));
            }
            taken.push(row as u32);
            let (mut n, mut t) = (0, 0);
            for (field, values) in fields.iter().zip(&cells) {
                let value = &values[instance];
                match field.kind {
                    FieldKind::Numeric => {
                        numbers[n].append_option(match value {
                            Cell::Number(number) => Some(*number),
                            _ => None,
                        });
                        n += 1;
                    }
                    FieldKind::Categorical => {
                        texts[t].append_option(match value {
                            Cell::Text(text) => Some(text.as_str()),
                            _ => None,
                        });
                        t += 1;
                    }
                }
            }
        }
    }
    let indices = datafusion::arrow::array::UInt32Array::from(taken);
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ts_out.finish()), Arc::new(first.finish())];
    for (mut start, mut next) in windows {
        columns.push(Arc::new(start.finish()));
        columns.push(Arc::new(next.finish()));
    }
    for ((_, kind), array) in REQUEST_COLUMNS.iter().zip(request_columns) {
        columns.push(match array {
            Some(array) => datafusion::arrow::compute::take(&array, &indices, None)?,
            None => datafusion::arrow::array::new_null_array(kind, indices.len()),
        });
    }
    let (mut numbers, mut texts) = (numbers.into_iter(), texts.into_iter());
    for field in fields {
        columns.push(match field.kind {
            FieldKind::Numeric => Arc::new(
                numbers
                    .next()
                    .map_or_else(|| Float64Builder::new().finish(), |mut b| b.finish()),
            ) as ArrayRef,
            FieldKind::Categorical => Arc::new(
                texts
                    .next()
                    .map(|mut b| b.finish())
                    .unwrap_or_else(|| StringBuilder::new().finish()),
            ),
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
