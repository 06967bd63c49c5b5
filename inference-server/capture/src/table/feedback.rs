//! The feedback table (`<prefix>_feedback`, beside the payload table): one row per feedback a
//! person posted about an earlier request ([`sluice_contract::feedback`]), joinable with the
//! payload and usage tables on `request_id`. The monitor reads its latest `label` per request
//! as the truth of the quality metrics.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Date32Builder, Float64Builder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;

use super::TableRow;
use super::record::{PayloadRecord, date_of, days_since_epoch, string_column};

/// One row of the feedback table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedbackRecord {
    /// The request the feedback is about (the payload table's `request_id`).
    pub request_id: String,
    /// The feedback call's own request id.
    pub feedback_id: String,
    /// When the feedback arrived, ms since the epoch (UTC): `feedback_time` and `date`.
    pub timestamp_ms: i64,
    /// Who sent it, as the gateway verified them.
    pub requester: Option<String>,
    /// The ServingEndpoint.
    pub endpoint_name: String,
    /// The served entity whose sidecar wrote the row.
    pub served_entity_name: String,
    /// The true answer, as text.
    pub label: Option<String>,
    /// A score.
    pub rating: Option<f64>,
    /// Free text.
    pub comment: Option<String>,
}

impl FeedbackRecord {
    /// The feedback row of a spooled record; `None` unless it is a feedback.
    pub fn of(row: &PayloadRecord) -> Option<Self> {
        let feedback = row.feedback.as_ref()?;
        Some(Self {
            request_id: feedback.request_id.clone(),
            feedback_id: row.request_id.clone(),
            timestamp_ms: row.timestamp_ms,
            requester: row.requester.clone(),
            endpoint_name: row.endpoint.clone(),
            served_entity_name: row.served_entity.clone(),
            label: feedback.label.clone(),
            rating: feedback.rating,
            comment: feedback.comment.clone(),
        })
    }
}

/// The column names, in schema order.
#[cfg(test)]
pub const COLUMNS: &[&str] = &[
    "request_id",
    "feedback_id",
    "feedback_time",
    "date",
    "requester",
    "endpoint_name",
    "served_entity_name",
    "label",
    "rating",
    "comment",
];

impl TableRow for FeedbackRecord {
    const NAME: &'static str = "feedback";
    const COMMENT: &'static str = "Sluice feedback table: one row per feedback on a request";
    const BODY_COLUMNS: &'static [&'static str] = &["comment"];

    fn schema() -> SchemaRef {
        static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
                Arc::new(Schema::new(vec![
                    utf8("request_id", false),
                    utf8("feedback_id", false),
                    Field::new(
                        "feedback_time",
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        false,
                    ),
                    Field::new("date", DataType::Date32, false),
                    utf8("requester", true),
                    utf8("endpoint_name", false),
                    utf8("served_entity_name", false),
                    utf8("label", true),
                    Field::new("rating", DataType::Float64, true),
                    utf8("comment", true),
                ]))
            })
            .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut times = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut dates = Date32Builder::with_capacity(n);
        let mut ratings = Float64Builder::with_capacity(n);
        for row in rows {
            times.append_value(row.timestamp_ms.saturating_mul(1000));
            dates.append_value(days_since_epoch(row.date()));
            ratings.append_option(row.rating);
        }
        let columns: Vec<ArrayRef> = vec![
            string_column(rows, |r| Some(r.request_id.as_str())),
            string_column(rows, |r| Some(r.feedback_id.as_str())),
            Arc::new(times.finish()),
            Arc::new(dates.finish()),
            string_column(rows, |r| r.requester.as_deref()),
            string_column(rows, |r| Some(r.endpoint_name.as_str())),
            string_column(rows, |r| Some(r.served_entity_name.as_str())),
            string_column(rows, |r| r.label.as_deref()),
            Arc::new(ratings.finish()),
            string_column(rows, |r| r.comment.as_deref()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }

    fn date(&self) -> NaiveDate {
        date_of(self.timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use sluice_contract::feedback::Feedback;

    use super::*;

    #[test]
    fn feedback_rows_come_from_feedback_records_only() {
        let mut row = PayloadRecord {
            request_id: "fb-1".into(),
            timestamp_ms: 1_795_737_600_123,
            endpoint: "fraud".into(),
            served_entity: "fraud-1".into(),
            requester: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(FeedbackRecord::of(&row), None);
        row.feedback = Some(Feedback {
            request_id: "r-9".into(),
            label: Some("1".into()),
            rating: Some(-1.0),
            comment: None,
        });
        let feedback = FeedbackRecord::of(&row).expect("a feedback");
        assert_eq!(
            (feedback.request_id.as_str(), feedback.feedback_id.as_str()),
            ("r-9", "fb-1")
        );
        let batch = FeedbackRecord::to_batch(&[feedback]).unwrap();
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, COLUMNS);
        assert_eq!(batch.num_rows(), 1);
    }
}
