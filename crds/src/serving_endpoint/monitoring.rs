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
    /// When the operator refreshes the tables: a Kubernetes CronJob schedule (five cron
    /// fields, UTC). Defaults to hourly, `17 * * * *`. Setting the annotation
    /// `serving.sluice.dev/refresh-monitoring` to a new value also refreshes once, at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128))]
    pub schedule: Option<String>,
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
    /// The ServiceAccount the refresh runs as (workload identity for the lake); defaults to
    /// the first served entity's `serviceAccountName`, else the namespace's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Thresholds on the newest window's drift and quality values; one crossed sets the
    /// endpoint's `Drifting` or `QualityDegraded` condition and sends a Warning event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub alerts: Vec<Alert>,
}

impl MonitoringConfig {
    /// The part that decides what the tables hold: without the schedule, identity and alerts,
    /// whose change needs no window computed again.
    pub fn tables_part(&self) -> Self {
        Self {
            schedule: None,
            service_account_name: None,
            alerts: Vec::new(),
            ..self.clone()
        }
    }
}

/// One alert threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The value watched.
    pub metric: AlertMetric,
    /// The monitored column it is watched on; every column when unset (quality metrics
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub column: Option<String>,
    /// Distances alert above it; p-values and accuracy below it; errors above it.
    pub threshold: f64,
}

/// A value an alert watches. Drift values are read from the newest window's comparison with
/// the baseline when there is one, else with the window before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AlertMetric {
    /// Jensen–Shannon distance (categorical), above the threshold.
    #[default]
    JsDistance,
    /// Total variation distance (categorical), above.
    TvDistance,
    /// L-infinity distance (categorical), above.
    LInfinityDistance,
    /// Chi-squared p-value (categorical), below.
    ChiSquaredPvalue,
    /// Kolmogorov–Smirnov statistic (numeric), above.
    KsStatistic,
    /// Kolmogorov–Smirnov p-value (numeric), below.
    KsPvalue,
    /// Wasserstein distance (numeric), above.
    WassersteinDistance,
    /// Population stability index (numeric), above.
    PopulationStabilityIndex,
    /// Accuracy (classification with labels), below.
    AccuracyScore,
    /// Root mean squared error (regression with labels), above.
    Rmse,
    /// Mean absolute error (regression with labels), above.
    Mae,
    /// Precision, macro-averaged over classes (classification with labels), below.
    Precision,
    /// Recall, macro-averaged over classes (classification with labels), below.
    Recall,
    /// F1 score, macro-averaged over classes (classification with labels), below.
    F1Score,
}

impl AlertMetric {
    /// The condition an alert of this metric sets: `Drifting` or `QualityDegraded`.
    pub fn condition(self) -> &'static str {
        match self {
            Self::AccuracyScore
            | Self::Rmse
            | Self::Mae
            | Self::Precision
            | Self::Recall
            | Self::F1Score => "QualityDegraded",
            _ => "Drifting",
        }
    }

    /// The name as the spec spells it (the `metric` label of the operator's gauges).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JsDistance => "jsDistance",
            Self::TvDistance => "tvDistance",
            Self::LInfinityDistance => "lInfinityDistance",
            Self::ChiSquaredPvalue => "chiSquaredPvalue",
            Self::KsStatistic => "ksStatistic",
            Self::KsPvalue => "ksPvalue",
            Self::WassersteinDistance => "wassersteinDistance",
            Self::PopulationStabilityIndex => "populationStabilityIndex",
            Self::AccuracyScore => "accuracyScore",
            Self::Rmse => "rmse",
            Self::Mae => "mae",
            Self::Precision => "precision",
            Self::Recall => "recall",
            Self::F1Score => "f1Score",
        }
    }

    /// Whether a value below the threshold (not above) crosses it.
    pub fn alerts_below(self) -> bool {
        matches!(
            self,
            Self::ChiSquaredPvalue
                | Self::KsPvalue
                | Self::AccuracyScore
                | Self::Precision
                | Self::Recall
                | Self::F1Score
        )
    }

    /// Whether `value` crosses `threshold`.
    pub fn crossed(self, value: f64, threshold: f64) -> bool {
        if self.alerts_below() {
            value < threshold
        } else {
            value > threshold
        }
    }
}

/// What one refresh did and found: printed by `inference-server monitor`, written to its
/// termination message, and published by the operator as `status.monitoring`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringRefresh {
    /// When it ran (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refreshed_at: String,
    /// Files of the inference table read for the first time (or changed since).
    #[serde(default)]
    pub new_files: u64,
    /// Rows (requests) read.
    #[serde(default)]
    pub rows_read: u64,
    /// Instances profiled (items of batch requests).
    #[serde(default)]
    pub instances: u64,
    /// Profile windows written, all granularities together.
    #[serde(default)]
    pub windows_written: u64,
    /// Drift windows written.
    #[serde(default)]
    pub drift_windows_written: u64,
    /// The profile table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub profile_table: String,
    /// The drift table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drift_table: String,
    /// Why the refresh failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The newest window's values the alerts watch, and which crossed their threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertState>,
    /// The newest window's drift of each monitored column (with the baseline when there is
    /// one, else with the window before), worst first, at most [`MAX_DRIFT_VALUES`]: the
    /// KS statistic of numeric columns, the JS distance of categorical ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<MonitoredValue>,
    /// The newest window's model quality, when it has labels: `accuracyScore`, `precision`,
    /// `recall` and `f1Score` (macro averages) of a classifier, `rmse` and `mae` of a
    /// regression.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<MonitoredValue>,
}

/// Most drift values a refresh reports ([`MonitoringRefresh::drift`]): the summary travels in
/// a termination message of at most 4 KiB.
pub const MAX_DRIFT_VALUES: usize = 20;

/// One value of the newest window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoredValue {
    /// What it measures.
    pub metric: AlertMetric,
    /// The column (none for quality metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The value.
    pub value: f64,
}

/// One alert's newest value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertState {
    /// The metric.
    pub metric: AlertMetric,
    /// The column (none for quality metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Start of the window the value is from (RFC 3339).
    pub window: String,
    /// The value.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// Whether the value crossed it.
    pub firing: bool,
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
    /// the instances of a batch request, and at most one may appear. `feedback.label`,
    /// `feedback.rating` or `feedback.comment` read the newest feedback posted about the
    /// request (`POST /serving-endpoints/{name}/feedback`): a label from people instead of
    /// one inside the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(
            pattern = r"^((request|response)(\.[^.\[\]]+|\[([0-9]+|\*)\])*|feedback\.(label|rating|comment))$"
        )
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
