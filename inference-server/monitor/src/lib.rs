//! `inference-server monitor`: one refresh of an endpoint's monitoring. It reads the inference
//! table (Parquet or Delta, local or object store) with DataFusion, unpacks each recorded
//! request into its instances once, and writes the windows that have new rows into
//! `<table>_profile_metrics` and `<table>_drift_metrics`, in the column names of the upstream
//! monitoring product.
//!
//! Modules: [`fields`] (where values are in a request), [`window`] (time windows), [`source`]
//! (the table's live files), [`stage`] (unpacking), [`sql`], [`profile`], [`classification`], [`drift`], [`stats`]
//! (p-values and distances), [`output`] (the tables' files), [`report`] (the HTML page),
//! [`refresh`] (the whole step).

use std::path::PathBuf;

use clap::Args;
use sluice_crds::MonitoringConfig;

pub mod alerts;
pub mod classification;
pub mod drift;
pub mod fields;
pub mod output;
pub mod profile;
pub mod refresh;
pub mod report;
pub mod source;
pub mod sql;
pub mod stage;
pub mod stats;
pub mod window;

pub use refresh::refresh;

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The configuration cannot be used.
    #[error("monitor configuration: {0}")]
    Config(String),
    /// A monitored field is wrong.
    #[error("monitor configuration: {0}")]
    Field(#[from] fields::FieldError),
    /// The table's location cannot be opened.
    #[error(transparent)]
    Store {
        /// The store's error.
        source: Box<sluice_store::StoreError>,
    },
    /// Listing, reading or writing objects failed.
    #[error("table {uri:?}: {source}")]
    List {
        /// The location.
        uri: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
    /// The Delta log cannot be read.
    #[error("Delta table {uri:?}: {source}")]
    Delta {
        /// The location.
        uri: String,
        /// The Delta error.
        source: Box<deltalake_core::DeltaTableError>,
    },
    /// A query failed (including a custom metric or slicing expression that does not plan).
    #[error("query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// One of the monitor's statements failed (a custom metric or slicing expression that
    /// does not plan shows here).
    #[error("query failed: {source}; the statement: {statement}")]
    Statement {
        /// The SQL.
        statement: String,
        /// DataFusion's error.
        source: datafusion::error::DataFusionError,
    },
    /// Arrow could not build or convert a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Parquet encoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// The table does not have the inference table's columns.
    #[error("table schema: {0}")]
    Schema(String),
    /// A local work file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `inference-server monitor`.
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// The inference table: a folder, `file://`, `s3://`, `gs://` or `az://` URI (Parquet, or
    /// Delta when it has a `_delta_log`).
    #[arg(long)]
    pub table: String,
    /// Object-store options of the table, its baseline and the output tables
    /// (`aws_endpoint=http://…`, `aws_allow_http=true`, …); credentials come from the usual
    /// `AWS_*`, `GOOGLE_*`, `AZURE_*` variables.
    #[arg(long = "table-option", value_parser = parse_option)]
    pub table_options: Vec<(String, String)>,
    /// What to compute: the `monitoring` section of a ServingEndpoint, as JSON.
    #[arg(long, env = "SLUICE_MONITOR_CONFIG")]
    pub config: String,
    /// The endpoint's feedback table (`<prefix>_feedback`, Parquet or Delta): its newest
    /// feedback per request is what `feedback.` paths read, and new feedback recomputes the
    /// windows of the requests it is about.
    #[arg(long)]
    pub feedback_table: Option<String>,
    /// Where the output tables go: `<prefix>_profile_metrics` and `<prefix>_drift_metrics`.
    /// Defaults to the table's own location (beside it).
    #[arg(long)]
    pub output_prefix: Option<String>,
    /// Local folder for staged rows and spilled sorts.
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
    /// Memory the queries may hold before they spill to `--work-dir`, in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_limit_mib: usize,
    /// Most staged instances one profile or drift query covers: the windows of a refresh are
    /// computed in runs of whole windows of about this many instances, so a query's sorts
    /// (and the spill files they merge) stay the same size however large the table is. One
    /// window is never split.
    #[arg(long, default_value_t = 1 << 20)]
    pub rows_per_query: u64,
    /// Recompute every window, not only those with new rows.
    #[arg(long)]
    pub full: bool,
    /// Also write the summary to this file (the operator passes `/dev/termination-log`, so
    /// the refresh's pod status carries it).
    #[arg(long)]
    pub summary_file: Option<PathBuf>,
}

/// The summary as JSON within a termination message's 4 KiB: the error is cut, then the
/// drift values and alerts are dropped from the least worrying end.
fn fit_termination_message(summary: &sluice_crds::MonitoringRefresh) -> String {
    const LIMIT: usize = 4000;
    let mut cut = summary.clone();
    let mut text = serde_json::to_string(&cut).unwrap_or_default();
    if text.len() > LIMIT {
        cut.error = cut.error.map(|e| e.chars().take(1500).collect());
        text = serde_json::to_string(&cut).unwrap_or_default();
    }
    while text.len() > LIMIT && !(cut.drift.is_empty() && cut.alerts.is_empty()) {
        if cut.drift.len() >= cut.alerts.len() {
            cut.drift.pop();
        } else {
            // Firing alerts first, so the ones kept are those that matter.
            cut.alerts.sort_by_key(|alert| !alert.firing);
            cut.alerts.pop();
        }
        text = serde_json::to_string(&cut).unwrap_or_default();
    }
    text
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

impl MonitorArgs {
    /// The parsed configuration.
    pub fn monitoring(&self) -> Result<MonitoringConfig, MonitorError> {
        serde_json::from_str(&self.config).map_err(|error| {
            MonitorError::Config(format!("--config is not a monitoring section: {error}"))
        })
    }
}

/// Runs one refresh and prints its summary (JSON) on standard output, and into
/// `--summary-file`: a failed refresh's summary holds its error.
pub async fn run(args: MonitorArgs) -> Result<(), MonitorError> {
    let result = refresh(&args).await;
    let summary = match &result {
        Ok(summary) => summary.clone(),
        Err(error) => sluice_crds::MonitoringRefresh {
            refreshed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            error: Some(error.to_string()),
            ..Default::default()
        },
    };
    let text = serde_json::to_string(&summary).unwrap_or_default();
    if let Some(path) = &args.summary_file {
        let text = fit_termination_message(&summary);
        std::fs::write(path, text).map_err(|source| MonitorError::Io {
            path: path.clone(),
            source,
        })?;
    }
    result.map(|_| println!("{text}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_summary_fits_a_termination_message() {
        let alert = sluice_crds::AlertState {
            column: Some("c".repeat(100)),
            window: "2026-12-06T10:00:00Z".into(),
            ..Default::default()
        };
        let value = sluice_crds::MonitoredValue {
            column: Some("c".repeat(100)),
            ..Default::default()
        };
        let mut alerts = vec![alert.clone(); 30];
        alerts[0].firing = true;
        let summary = sluice_crds::MonitoringRefresh {
            error: Some("e".repeat(5000)),
            alerts,
            drift: vec![value; 20],
            ..Default::default()
        };
        let text = super::fit_termination_message(&summary);
        assert!(text.len() <= 4000, "{}", text.len());
        let back: sluice_crds::MonitoringRefresh = serde_json::from_str(&text).unwrap();
        assert!(
            back.alerts.iter().any(|a| a.firing),
            "the firing alert is kept"
        );
        assert!(!back.drift.is_empty());
    }
}
