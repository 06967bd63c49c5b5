//! Monitoring: what `inference-server monitor` computes over an endpoint's inference table.
//!
//! One type for both ends: the operator renders it (as JSON) into the monitor's command line,
//! and the monitor parses it back; the field names are those of the resource.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most fields one monitor profiles (features plus prediction, probability and label).
pub const MAX_MONITORED_FIELDS: usize = 64;

/// How the inference table is analysed into a profile table and a drift table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringConfig {
    /// Time windows the metrics are computed over; each window of each granularity is one
    /// set of rows in the output tables. Defaults to `["1 day"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub granularities: Vec<Granularity>,
    /// What the model does, which decides the default kind of the prediction and the quality
    /// metrics computed when labels exist. Defaults to `classification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// The model's inputs to profile, one value per instance of a request. Without a `path`,
    /// a feature is the column of that name in any MLflow request format
    /// (`dataframe_records`, `dataframe_split`, `instances`, `inputs` as records or columns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 60))]
    pub features: Vec<MonitoredField>,
    /// The model's answer per instance. Without a `path`: `response.predictions[*]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<MonitoredField>,
    /// The probability the model gave its prediction, when it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<MonitoredField>,
    /// The true answer, where requests carry it (a replayed evaluation set, for example);
    /// with it the profile also holds the model quality (accuracy, precision, recall and F1
    /// for classification; RMSE and MAE for regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<MonitoredField>,
    /// Expressions the metrics are also computed per value of: a monitored field's name, a
    /// column of the table (`served_entity`, `model_version`, `status_code`, …) or a SQL
    /// expression over them (`amount > 100`). Each keeps its 100 most frequent values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub slicing_exprs: Vec<String>,
    /// What each window is also compared with (drift type `BASELINE`); without it only
    /// consecutive windows are compared (`CONSECUTIVE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Extra aggregate metrics, each a SQL aggregate expression over the monitored fields
    /// and the table's columns, written as a column of the profile table on its `:table` rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub custom_metrics: Vec<CustomMetric>,
}

/// The length of the time windows metrics are computed over, in the upstream spelling.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Granularity {
    /// Five minutes.
    #[serde(rename = "5 minutes")]
    FiveMinutes,
    /// Thirty minutes.
    #[serde(rename = "30 minutes")]
    ThirtyMinutes,
    /// One hour.
    #[serde(rename = "1 hour")]
    Hour,
    /// One day (UTC).
    #[serde(rename = "1 day")]
    Day,
    /// One week, starting on Monday (UTC).
    #[serde(rename = "1 week")]
    Week,
    /// One calendar month (UTC).
    #[serde(rename = "1 month")]
    Month,
}

impl Granularity {
    /// Every granularity, shortest first.
    pub const ALL: [Self; 6] = [
        Self::FiveMinutes,
        Self::ThirtyMinutes,
        Self::Hour,
        Self::Day,
        Self::Week,
        Self::Month,
    ];

    /// The upstream spelling (`"5 minutes"`), as written in the output tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5 minutes",
            Self::ThirtyMinutes => "30 minutes",
            Self::Hour => "1 hour",
            Self::Day => "1 day",
            Self::Week => "1 week",
            Self::Month => "1 month",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a monitored model does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProblemType {
    /// Predicts a class: the prediction and label are categorical.
    #[default]
    Classification,
    /// Predicts a number: the prediction and label are numeric.
    Regression,
    /// Generates text (completions, chat): the profile holds the input and output lengths
    /// and token counts.
    TextGeneration,
    /// Returns embeddings: the profile holds the input lengths and token counts.
    Embeddings,
}

/// One value profiled per instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoredField {
    /// The column name in the output tables (`column_name`).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    )]
    pub name: String,
    /// Where the value is: `request.` or `response.` followed by object keys and array
    /// indexes (`response.predictions[*].label`, `request.inputs.amount[*]`); `[*]` marks
    /// the instances of a batch request, and at most one may appear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^(request|response)(\.[^.\[\]]+|\[([0-9]+|\*)\])*$")
    )]
    pub path: Option<String>,
    /// `numeric` (default for features) or `categorical`; the prediction and label default
    /// to the problem type's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FieldKind>,
}

/// How a monitored value is profiled and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FieldKind {
    /// Numbers: moments, quantiles; drift by Kolmogorov–Smirnov, Wasserstein and PSI.
    Numeric,
    /// Categories (strings, or numbers taken as labels): frequent items; drift by
    /// chi-squared, total-variation, L-infinity and Jensen–Shannon distances.
    Categorical,
}

/// What every window is compared with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Another table in the inference-table format (for example requests replayed from the
    /// training set), read with the monitored table's store options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub table: Option<String>,
    /// Start (RFC 3339) of a fixed window of the monitored table itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End (RFC 3339, exclusive) of that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// One custom aggregate metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetric {
    /// The column it is written to in the profile table.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,
    /// A SQL aggregate expression (DataFusion's dialect), e.g.
    /// `avg(CASE WHEN status_code >= 500 THEN 1.0 ELSE 0.0 END)`.
    #[schemars(length(min = 1, max = 4096))]
    pub definition: String,
}
