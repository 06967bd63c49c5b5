//! One row of the inference table ([`PayloadRecord`]), its Arrow schema and the conversion of
//! records into an Arrow [`RecordBatch`].
//!
//! The columns follow the upstream payload table (DESIGN.md §3) plus the serving identity
//! (`endpoint`, `model`, `model_version`) and token counts. Every reader (DuckDB, Spark,
//! Polars, pandas/pyarrow) reads them as is: strings are UTF-8, `date` is a `DATE`,
//! `request_metadata` a `MAP<STRING, STRING>` and `logging_error_codes` an `ARRAY<STRING>`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    Date32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, MapBuilder,
    StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::TableRow;
use super::usage::UsageFacts;

/// A `logging_error_codes` entry: the request body was longer than the capture cap.
pub const REQUEST_TRUNCATED: &str = "REQUEST_PAYLOAD_TRUNCATED";
/// A `logging_error_codes` entry: the response body was longer than the capture cap.
pub const RESPONSE_TRUNCATED: &str = "RESPONSE_PAYLOAD_TRUNCATED";
/// A `logging_error_codes` entry: the sidecar's memory budget for captured copies was spent,
/// so (part of) a body was not copied.
pub const CAPTURE_MEMORY_LIMIT: &str = "CAPTURE_MEMORY_LIMIT";
/// A `logging_error_codes` entry: the client went away before the response ended.
pub const RESPONSE_INCOMPLETE: &str = "RESPONSE_INCOMPLETE";
/// A `logging_error_codes` entry: the client (or the gateway in front) went away before the
/// model's response head; the row has the request, status 499 and no response.
pub const CLIENT_DISCONNECTED: &str = "CLIENT_DISCONNECTED";
/// The status recorded for [`CLIENT_DISCONNECTED`] (nginx's "client closed request").
pub const CLIENT_CLOSED_STATUS: u16 = 499;
/// A `logging_error_codes` entry: the exchange was still open when the sidecar's drain time
/// after SIGTERM ran out, and the sidecar closed it; the row has what was copied until then
/// (with [`RESPONSE_INCOMPLETE`] when the response had started, else status
/// [`SHUTDOWN_STATUS`] and no response).
pub const SHUTDOWN: &str = "SHUTDOWN";
/// The status recorded for an exchange cut by [`SHUTDOWN`] before the model's response head.
pub const SHUTDOWN_STATUS: u16 = 503;
/// A `logging_error_codes` entry: the model could not be reached (the sidecar answered).
pub const UPSTREAM_UNAVAILABLE: &str = "UPSTREAM_UNAVAILABLE";
/// A `logging_error_codes` entry: a body was not valid UTF-8 and was stored lossily.
pub const PAYLOAD_NOT_UTF8: &str = "PAYLOAD_NOT_UTF8";
/// A `logging_error_codes` entry: a streamed response could not be reassembled, the raw
/// event stream is stored instead.
pub const STREAM_NOT_REASSEMBLED: &str = "STREAM_NOT_REASSEMBLED";

/// One request and its response, as stored in the inference table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadRecord {
    /// The id the sidecar assigned or propagated (`x-request-id`).
    pub request_id: String,
    /// The id the client chose (`x-client-request-id` header or `client_request_id` in the
    /// body), if any.
    pub client_request_id: Option<String>,
    /// When the request arrived, in milliseconds since the Unix epoch (UTC). The `date`
    /// column and partition are derived from it.
    pub timestamp_ms: i64,
    /// The HTTP status answered to the client.
    pub status_code: i32,
    /// From the first request byte to the last response byte.
    pub execution_time_ms: i64,
    /// The request body (possibly truncated; see `logging_error_codes`).
    pub request: Option<String>,
    /// The response body; a streamed chat is stored as one reassembled `chat.completion`.
    pub response: Option<String>,
    /// Method, path, content types and other request facts.
    pub request_metadata: BTreeMap<String, String>,
    /// The ServingEndpoint.
    pub endpoint: String,
    /// The served entity (`servedEntities[].name`).
    pub served_entity: String,
    /// The registered model name.
    pub model: String,
    /// The model version.
    pub model_version: String,
    /// The caller's identity, as the gateway asserted it.
    pub requester: Option<String>,
    /// Prompt tokens, where the response reports them.
    pub input_token_count: Option<i64>,
    /// Generated tokens, where the response reports them.
    pub output_token_count: Option<i64>,
    /// The fraction of requests captured when this one was.
    pub sampling_fraction: f64,
    /// Why the row is not a faithful copy, if it is not (truncation, lossy UTF-8, ...).
    pub logging_error_codes: Vec<String>,
    /// The exchange was not sampled for the payload table: it is spooled only for its usage
    /// row, without bodies. Not a column.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_only: bool,
    /// What its usage row adds, when usage is tracked. Not a column of the payload table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageFacts>,
    /// A feedback on an earlier request: the record is a row of the feedback table only
    /// (`request_id` is the feedback call's own). Not a column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<sluice_contract::feedback::Feedback>,
}

impl PayloadRecord {
    /// The UTC calendar date of `timestamp_ms`: the `date` column and the partition.
    pub fn date(&self) -> NaiveDate {
        date_of(self.timestamp_ms)
    }
}

/// The UTC calendar date of a time in ms since the epoch.
pub fn date_of(timestamp_ms: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(timestamp_ms)
        .unwrap_or_default()
        .date_naive()
}

/// `date` as an Arrow `Date32` value (days since 1970-01-01).
pub fn days_since_epoch(date: NaiveDate) -> i32 {
    chrono::Datelike::num_days_from_ce(&date) - UNIX_EPOCH_DAYS_FROM_CE
}

/// A nullable `MAP<STRING, STRING>` column named `name`.
pub fn map_field(name: &str) -> Field {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ]
            .into(),
        ),
        false,
    );
    Field::new(name, DataType::Map(Arc::new(entries), false), true)
}

impl TableRow for PayloadRecord {
    const NAME: &'static str = "payload";
    const COMMENT: &'static str = "Sluice inference table: one row per captured request";
    const BODY_COLUMNS: &'static [&'static str] = &["request", "response"];

    fn schema() -> SchemaRef {
        schema()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        to_batch(rows)
    }

    fn date(&self) -> NaiveDate {
        self.date()
    }
}

/// The column names, in schema order.
#[cfg(test)]
pub const COLUMNS: &[&str] = &[
    "request_id",
    "client_request_id",
    "date",
    "timestamp_ms",
    "status_code",
    "execution_time_ms",
    "request",
    "response",
    "request_metadata",
    "endpoint",
    "served_entity",
    "model",
    "model_version",
    "requester",
    "input_token_count",
    "output_token_count",
    "sampling_fraction",
    "logging_error_codes",
];

/// The Arrow schema of the inference table.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                utf8("request_id", false),
                utf8("client_request_id", true),
                Field::new("date", DataType::Date32, false),
                Field::new("timestamp_ms", DataType::Int64, false),
                Field::new("status_code", DataType::Int32, false),
                Field::new("execution_time_ms", DataType::Int64, false),
                utf8("request", true),
                utf8("response", true),
                map_field("request_metadata"),
                utf8("endpoint", false),
                utf8("served_entity", false),
                utf8("model", false),
                utf8("model_version", false),
                utf8("requester", true),
                Field::new("input_token_count", DataType::Int64, true),
                Field::new("output_token_count", DataType::Int64, true),
                Field::new("sampling_fraction", DataType::Float64, false),
                Field::new(
                    "logging_error_codes",
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    true,
                ),
            ]))
        })
        .clone()
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// A string column: `pick` of each row.
pub fn string_column<R>(rows: &[R], pick: impl Fn(&R) -> Option<&str>) -> ArrayRef {
    // Sized first: growing the value buffer by doubling copies every body again.
    let bytes = rows.iter().filter_map(&pick).map(str::len).sum();
    let mut builder = StringBuilder::with_capacity(rows.len(), bytes);
    for row in rows {
        builder.append_option(pick(row));
    }
    Arc::new(builder.finish())
}

/// An `Int64` column: `pick` of each row.
pub fn int64_column<R>(rows: &[R], pick: impl Fn(&R) -> Option<i64>) -> ArrayRef {
    let mut builder = Int64Builder::with_capacity(rows.len());
    for row in rows {
        builder.append_option(pick(row));
    }
    Arc::new(builder.finish())
}

/// Appends one row's `MAP<STRING, STRING>` value.
pub fn append_map(
    builder: &mut MapBuilder<StringBuilder, StringBuilder>,
    map: &BTreeMap<String, String>,
) -> Result<(), ArrowError> {
    for (key, value) in map {
        builder.keys().append_value(key);
        builder.values().append_value(value);
    }
    builder.append(true)
}

/// Builds one Arrow batch of `records` in [`schema`] order.
pub fn to_batch(records: &[PayloadRecord]) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let mut dates = Date32Builder::with_capacity(n);
    let mut statuses = Int32Builder::with_capacity(n);
    let mut fractions = Float64Builder::with_capacity(n);
    let mut metadata = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut codes = ListBuilder::new(StringBuilder::new());
    for record in records {
        dates.append_value(days_since_epoch(record.date()));
        statuses.append_value(record.status_code);
        fractions.append_value(record.sampling_fraction);
        append_map(&mut metadata, &record.request_metadata)?;
        for code in &record.logging_error_codes {
            codes.values().append_value(code);
        }
        codes.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        string_column(records, |r| Some(r.request_id.as_str())),
        string_column(records, |r| r.client_request_id.as_deref()),
        Arc::new(dates.finish()),
        int64_column(records, |r| Some(r.timestamp_ms)),
        Arc::new(statuses.finish()),
        int64_column(records, |r| Some(r.execution_time_ms)),
        string_column(records, |r| r.request.as_deref()),
        string_column(records, |r| r.response.as_deref()),
        Arc::new(metadata.finish()),
        string_column(records, |r| Some(r.endpoint.as_str())),
        string_column(records, |r| Some(r.served_entity.as_str())),
        string_column(records, |r| Some(r.model.as_str())),
        string_column(records, |r| Some(r.model_version.as_str())),
        string_column(records, |r| r.requester.as_deref()),
        int64_column(records, |r| r.input_token_count),
        int64_column(records, |r| r.output_token_count),
        Arc::new(fractions.finish()),
        Arc::new(codes.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(request_id: &str, timestamp_ms: i64) -> PayloadRecord {
        PayloadRecord {
            request_id: request_id.into(),
            timestamp_ms,
            status_code: 200,
            request: Some("{}".into()),
            request_metadata: BTreeMap::from([("path".into(), "/invocations".into())]),
            endpoint: "fraud".into(),
            served_entity: "fraud-3".into(),
            model: "fraud".into(),
            model_version: "3".into(),
            sampling_fraction: 1.0,
            logging_error_codes: vec![REQUEST_TRUNCATED.into()],
            ..Default::default()
        }
    }

    #[test]
    fn date_is_the_utc_day_of_the_timestamp() {
        // 2026-11-26T23:59:59.999Z and one millisecond later.
        let before = sample("a", 1_795_737_599_999);
        let after = sample("b", 1_795_737_600_000);
        assert_eq!(before.date().to_string(), "2026-11-26");
        assert_eq!(after.date().to_string(), "2026-11-27");
    }

    #[test]
    fn batches_follow_the_schema() {
        let batch = to_batch(&[sample("a", 0), sample("b", 86_400_000)]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, COLUMNS);
        let dates = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow_array::Date32Array>()
            .unwrap();
        assert_eq!(dates.value(0), 0);
        assert_eq!(dates.value(1), 1);
    }
}
