//! The output tables: one Parquet file per granularity and window
//! (`<table>_profile_metrics/<1h>/<20261206T1000Z>.parquet`), so a refresh rewrites only the
//! windows it recomputed and readers glob `**/*.parquet`. Column names follow the upstream
//! monitoring tables.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use serde_json::{Value, json};
use sluice_crds::CustomMetric;

use crate::MonitorError;
use crate::drift::Comparison;
use crate::profile::ProfileRow;

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn window(name: &str) -> Field {
    Field::new(
        name,
        DataType::Struct(Fields::from(vec![
            Field::new("start", timestamp(), false),
            Field::new("end", timestamp(), false),
        ])),
        true,
    )
}

fn test(name: &str) -> Field {
    Field::new(
        name,
        DataType::Struct(Fields::from(vec![
            Field::new("statistic", DataType::Float64, true),
            Field::new("pvalue", DataType::Float64, true),
        ])),
        true,
    )
}

/// `{one_vs_all: map<class, value>, macro, weighted}`: precision, recall or F1.
fn averaged(name: &str) -> Field {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Float64, true),
        ])),
        false,
    );
    Field::new(
        name,
        DataType::Struct(Fields::from(vec![
            Field::new("one_vs_all", DataType::Map(Arc::new(entries), false), true),
            Field::new("macro", DataType::Float64, true),
            Field::new("weighted", DataType::Float64, true),
        ])),
        true,
    )
}

fn averaged_value(averaged: Option<&crate::classification::Averaged>) -> Value {
    match averaged {
        None => Value::Null,
        Some(a) => {
            json!({"one_vs_all": a.one_vs_all, "macro": a.macro_avg, "weighted": a.weighted})
        }
    }
}

fn float(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn key_fields() -> Vec<Field> {
    vec![
        window("window"),
        text("granularity", false),
        text("slice_key", true),
        text("slice_value", true),
        text("column_name", false),
        text("data_type", false),
    ]
}

/// The schema of `<table>_profile_metrics`.
pub fn profile_schema(custom: &[CustomMetric]) -> SchemaRef {
    let mut fields = key_fields();
    fields.push(text("log_type", false));
    fields.extend([
        int("count"),
        int("num_nulls"),
        float("percent_null"),
        int("num_zeros"),
        float("percent_zeros"),
        int("num_nan"),
        float("percent_nan"),
    ]);
    fields.extend([
        int("distinct_count"),
        float("percent_distinct"),
        float("avg"),
        float("stddev"),
        float("min"),
        float("max"),
        float("median"),
    ]);
    fields.push(Field::new(
        "quantiles",
        DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        true,
    ));
    fields.extend([int("min_length"), int("max_length"), float("avg_length")]);
    fields.push(Field::new(
        "frequent_items",
        DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(Fields::from(vec![text("item", true), int("count")])),
            true,
        ))),
        true,
    ));
    fields.extend([float("accuracy_score"), float("rmse"), float("mae")]);
    fields.extend([
        averaged("precision"),
        averaged("recall"),
        averaged("f1_score"),
    ]);
    fields.extend(custom.iter().map(|metric| float(&metric.name)));
    fields.push(Field::new("refreshed_at", timestamp(), false));
    Arc::new(Schema::new(fields))
}

/// The schema of `<table>_drift_metrics`.
pub fn drift_schema() -> SchemaRef {
    let mut fields = key_fields();
    fields.push(window("window_cmp"));
    fields.push(text("drift_type", false));
    fields.extend([
        float("count_delta"),
        float("avg_delta"),
        float("percent_null_delta"),
        float("percent_zeros_delta"),
        float("percent_distinct_delta"),
    ]);
    fields.extend([
        test("ks_test"),
        float("wasserstein_distance"),
        float("population_stability_index"),
    ]);
    fields.extend([
        test("chi_squared_test"),
        float("tv_distance"),
        float("l_infinity_distance"),
        float("js_distance"),
    ]);
    fields.push(Field::new("refreshed_at", timestamp(), false));
    Arc::new(Schema::new(fields))
}

fn percent(part: Option<i64>, whole: i64) -> Option<f64> {
    part.filter(|_| whole > 0)
        .map(|part| 100.0 * part as f64 / whole as f64)
}

/// Percentages of a profile row (null, zeros, distinct), as the table holds them (0–100).
pub struct Percents {
    /// Of values that are null.
    pub null: Option<f64>,
    /// Of values that are zero.
    pub zeros: Option<f64>,
    /// Of distinct values among the present ones.
    pub distinct: Option<f64>,
}

impl Percents {
    /// The percentages of `row`.
    pub fn of(row: &ProfileRow) -> Self {
        let present = row.count - row.num_nulls;
        Self {
            null: percent(Some(row.num_nulls), row.count),
            zeros: percent(row.num_zeros, row.count),
            distinct: percent(row.distinct_count, present),
        }
    }
}

fn keys(
    row_window: (i64, i64),
    granularity: &str,
    row: &ProfileRow,
) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    out.insert(
        "window".into(),
        json!({"start": row_window.0, "end": row_window.1}),
    );
    out.insert("granularity".into(), json!(granularity));
    out.insert("slice_key".into(), json!(row.slice_key));
    out.insert("slice_value".into(), json!(row.slice_value));
    out.insert("column_name".into(), json!(row.column_name));
    out.insert("data_type".into(), json!(row.data_type));
    out
}

/// A profile row as the table holds it.
pub fn profile_record(
    granularity: &str,
    log_type: &str,
    row: &ProfileRow,
    custom: &[CustomMetric],
    refreshed_at: i64,
) -> Value {
    let mut out = keys((row.window_start, row.window_end), granularity, row);
    let percents = Percents::of(row);
    let fields = json!({
        "log_type": log_type,
        "count": row.count,
        "num_nulls": row.num_nulls,
        "percent_null": percents.null,
        "num_zeros": row.num_zeros,
        "percent_zeros": percents.zeros,
        "num_nan": row.num_nan,
        "percent_nan": percent(row.num_nan, row.count),
        "distinct_count": row.distinct_count,
        "percent_distinct": percents.distinct,
        "avg": row.avg,
        "stddev": row.stddev,
        "min": row.min,
        "max": row.max,
        "median": row.median,
        "quantiles": row.quantiles,
        "min_length": row.min_length,
        "max_length": row.max_length,
        "avg_length": row.avg_length,
        "frequent_items": row.frequent_items.as_ref().map(|items| items.iter().map(|(item, count)| json!({"item": item, "count": count})).collect::<Vec<_>>()),
        "accuracy_score": row.accuracy_score,
        "rmse": row.rmse,
        "mae": row.mae,
        "precision": averaged_value(row.classification.as_ref().map(|s| &s.precision)),
        "recall": averaged_value(row.classification.as_ref().map(|s| &s.recall)),
        "f1_score": averaged_value(row.classification.as_ref().map(|s| &s.f1_score)),
        "refreshed_at": refreshed_at,
    });
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    for (metric, value) in custom.iter().zip(&row.custom) {
        out.insert(metric.name.clone(), json!(value));
    }
    Value::Object(out)
}

/// What one drift row says.
pub struct DriftRecord<'a> {
    /// The window's profile row (keys, counts, moments).
    pub current: &'a ProfileRow,
    /// The profile row it is compared with.
    pub reference: Option<&'a ProfileRow>,
    /// `(start, end)` of what it is compared with.
    pub window_cmp: (i64, i64),
    /// `CONSECUTIVE` or `BASELINE`.
    pub drift_type: &'static str,
    /// The distribution comparisons.
    pub comparison: Option<&'a Comparison>,
}

/// A drift row as the table holds it.
pub fn drift_record(granularity: &str, record: &DriftRecord<'_>, refreshed_at: i64) -> Value {
    let row = record.current;
    let mut out = keys((row.window_start, row.window_end), granularity, row);
    let delta =
        |current: Option<f64>, reference: Option<f64>| current.zip(reference).map(|(a, b)| a - b);
    let (now, then) = (Percents::of(row), record.reference.map(Percents::of));
    let comparison = record.comparison.cloned().unwrap_or_default();
    let test = |test: Option<crate::stats::Test>| {
        test.map(|test| json!({"statistic": test.statistic, "pvalue": test.pvalue}))
    };
    let fields = json!({
        "window_cmp": {"start": record.window_cmp.0, "end": record.window_cmp.1},
        "drift_type": record.drift_type,
        "count_delta": record.reference.map(|reference| (row.count - reference.count) as f64),
        "avg_delta": delta(row.avg, record.reference.and_then(|reference| reference.avg)),
        "percent_null_delta": delta(now.null, then.as_ref().and_then(|then| then.null)),
        "percent_zeros_delta": delta(now.zeros, then.as_ref().and_then(|then| then.zeros)),
        "percent_distinct_delta": delta(now.distinct, then.as_ref().and_then(|then| then.distinct)),
        "ks_test": test(comparison.ks_test),
        "wasserstein_distance": comparison.wasserstein_distance,
        "population_stability_index": comparison.population_stability_index,
        "chi_squared_test": test(comparison.chi_squared_test),
        "tv_distance": comparison.tv_distance,
        "l_infinity_distance": comparison.l_infinity_distance,
        "js_distance": comparison.js_distance,
        "refreshed_at": refreshed_at,
    });
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

/// Encodes records into one Parquet file of `schema`.
pub fn parquet(schema: &SchemaRef, records: &[Value]) -> Result<Bytes, MonitorError> {
    let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(records)?;
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema.clone(), None)?;
    while let Some(batch) = decoder.flush()? {
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(Bytes::from(buffer))
}
