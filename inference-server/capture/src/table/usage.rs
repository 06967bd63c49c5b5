//! The usage table (`<prefix>_usage`, beside the payload table): one row per request that
//! reached the model, sampled for the payload table or not, with who asked, what it used and
//! what it cost ([`UsageRecord`]).
//!
//! The column names follow the upstream usage system table (`system.serving.endpoint_usage`
//! and `served_entities`: `client_request_id`, `request_time`, `status_code`, `requester`,
//! `input_token_count`, `output_token_count`, `usage_context`, `endpoint_name`,
//! `served_entity_name`, `entity_name`, `entity_version`), except `request_id`, which is
//! upstream's `databricks_request_id` and joins the payload table's `request_id`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::TableRow;
use super::record::{
    PayloadRecord, append_map, date_of, days_since_epoch, int64_column, map_field, string_column,
};

/// What a usage row adds to the exchange's payload row; carried in the spool beside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageFacts {
    /// The request's `usage_context` object (string values; others as JSON text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage_context: BTreeMap<String, String>,
    /// What the request cost at the entity's price; `None` when the entity has no price or
    /// a priced quantity is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The currency of `cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// One row of the usage table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRecord {
    /// The id the sidecar assigned or propagated (`x-request-id`); the payload table's.
    pub request_id: String,
    /// The id the client chose, if any.
    pub client_request_id: Option<String>,
    /// When the request arrived, ms since the epoch (UTC): `request_time` and `date`.
    pub timestamp_ms: i64,
    /// The HTTP status answered.
    pub status_code: i32,
    /// From the first request byte to the last response byte.
    pub execution_time_ms: i64,
    /// The caller, as the gateway verified it.
    pub requester: Option<String>,
    /// The caller's groups, comma-separated, as the gateway verified them.
    pub requester_groups: Option<String>,
    /// The Sluice API key the caller presented, if it used one.
    pub api_key_id: Option<String>,
    /// The ServingEndpoint.
    pub endpoint_name: String,
    /// The served entity.
    pub served_entity_name: String,
    /// The registered model.
    pub entity_name: String,
    /// The model version.
    pub entity_version: String,
    /// Prompt tokens, where the answer reported them.
    pub input_token_count: Option<i64>,
    /// Generated tokens, where the answer reported them.
    pub output_token_count: Option<i64>,
    /// The request's `usage_context`.
    pub usage_context: BTreeMap<String, String>,
    /// The cost at the entity's price.
    pub cost: Option<f64>,
    /// Its currency.
    pub currency: Option<String>,
    /// Whether the payload table has this request too.
    pub sampled: bool,
}

impl UsageRecord {
    /// The usage row of a spooled exchange; `None` when usage was not tracked for it.
    pub fn of(row: &PayloadRecord) -> Option<Self> {
        let usage = row.usage.as_ref()?;
        let meta = |key: &str| row.request_metadata.get(key).cloned();
        Some(Self {
            request_id: row.request_id.clone(),
            client_request_id: row.client_request_id.clone(),
            timestamp_ms: row.timestamp_ms,
            status_code: row.status_code,
            execution_time_ms: row.execution_time_ms,
            requester: row.requester.clone(),
            requester_groups: meta("requester_groups"),
            api_key_id: meta("api_key_id"),
            endpoint_name: row.endpoint.clone(),
            served_entity_name: row.served_entity.clone(),
            entity_name: row.model.clone(),
            entity_version: row.model_version.clone(),
            input_token_count: row.input_token_count,
            output_token_count: row.output_token_count,
            usage_context: usage.usage_context.clone(),
            cost: usage.cost,
            currency: usage.currency.clone(),
            sampled: !row.usage_only,
        })
    }
}

/// The column names, in schema order.
#[cfg(test)]
pub const COLUMNS: &[&str] = &[
    "request_id",
    "client_request_id",
    "request_time",
    "date",
    "status_code",
    "execution_time_ms",
    "requester",
    "requester_groups",
    "api_key_id",
    "endpoint_name",
    "served_entity_name",
    "entity_name",
    "entity_version",
    "input_token_count",
    "output_token_count",
    "usage_context",
    "cost",
    "currency",
    "sampled",
];

impl TableRow for UsageRecord {
    const NAME: &'static str = "usage";
    const COMMENT: &'static str = "Sluice usage table: one row per request served";
    const BODY_COLUMNS: &'static [&'static str] = &[];

    fn schema() -> SchemaRef {
        static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
                Arc::new(Schema::new(vec![
                    utf8("request_id", false),
                    utf8("client_request_id", true),
                    Field::new(
                        "request_time",
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        false,
                    ),
                    Field::new("date", DataType::Date32, false),
                    Field::new("status_code", DataType::Int32, false),
                    Field::new("execution_time_ms", DataType::Int64, false),
                    utf8("requester", true),
                    utf8("requester_groups", true),
                    utf8("api_key_id", true),
                    utf8("endpoint_name", false),
                    utf8("served_entity_name", false),
                    utf8("entity_name", false),
                    utf8("entity_version", false),
                    Field::new("input_token_count", DataType::Int64, true),
                    Field::new("output_token_count", DataType::Int64, true),
                    map_field("usage_context"),
                    Field::new("cost", DataType::Float64, true),
                    utf8("currency", true),
                    Field::new("sampled", DataType::Boolean, false),
                ]))
            })
            .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut times = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut dates = Date32Builder::with_capacity(n);
        let mut statuses = Int32Builder::with_capacity(n);
        let mut contexts = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let mut costs = Float64Builder::with_capacity(n);
        let mut sampled = BooleanBuilder::with_capacity(n);
        for row in rows {
            times.append_value(row.timestamp_ms.saturating_mul(1000));
            dates.append_value(days_since_epoch(row.date()));
            statuses.append_value(row.status_code);
            append_map(&mut contexts, &row.usage_context)?;
            costs.append_option(row.cost);
            sampled.append_value(row.sampled);
        }
        let columns: Vec<ArrayRef> = vec![
            string_column(rows, |r| Some(r.request_id.as_str())),
            string_column(rows, |r| r.client_request_id.as_deref()),
            Arc::new(times.finish()),
            Arc::new(dates.finish()),
            Arc::new(statuses.finish()),
            int64_column(rows, |r| Some(r.execution_time_ms)),
            string_column(rows, |r| r.requester.as_deref()),
            string_column(rows, |r| r.requester_groups.as_deref()),
            string_column(rows, |r| r.api_key_id.as_deref()),
            string_column(rows, |r| Some(r.endpoint_name.as_str())),
            string_column(rows, |r| Some(r.served_entity_name.as_str())),
            string_column(rows, |r| Some(r.entity_name.as_str())),
            string_column(rows, |r| Some(r.entity_version.as_str())),
            int64_column(rows, |r| r.input_token_count),
            int64_column(rows, |r| r.output_token_count),
            Arc::new(contexts.finish()),
            Arc::new(costs.finish()),
            string_column(rows, |r| r.currency.as_deref()),
            Arc::new(sampled.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }

    fn date(&self) -> NaiveDate {
        date_of(self.timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_rows_come_from_tracked_exchanges_only() {
        let mut row = PayloadRecord {
            request_id: "r1".into(),
            timestamp_ms: 1_795_737_600_123,
            status_code: 200,
            request_metadata: BTreeMap::from([
                ("api_key_id".to_string(), "k1".to_string()),
                (
                    "requester_groups".to_string(),
                    "team-a,system:authenticated".to_string(),
                ),
            ]),
            requester: Some("alice".into()),
            input_token_count: Some(3),
            usage_only: true,
            ..Default::default()
        };
        assert_eq!(UsageRecord::of(&row), None, "usage not tracked");
        row.usage = Some(UsageFacts {
            usage_context: BTreeMap::from([("project".to_string(), "x".to_string())]),
            cost: Some(0.25),
            currency: Some("USD".into()),
        });
        let usage = UsageRecord::of(&row).expect("tracked");
        assert_eq!(usage.api_key_id.as_deref(), Some("k1"));
        assert!(!usage.sampled);
        let batch = UsageRecord::to_batch(&[usage]).unwrap();
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, COLUMNS);
        let times = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(times.value(0), 1_795_737_600_123_000);
    }
}
