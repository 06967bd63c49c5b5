//! One refresh: find the table's new files, stage the rows of the windows they touch (and
//! their neighbours, which consecutive drift compares with), compute the profile and drift of
//! those windows, write one file per window, then remember which files were read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_contract::metadata as row_keys;
use sluice_crds::{FieldKind, Granularity, MonitoringRefresh as Summary};
use sluice_store::TableStore;

use crate::drift::{self, Reference};
use crate::fields::{self, Field, Role};
use crate::output::{self, DriftRecord};
use crate::profile::{self, ProfileRow, Quality};
use crate::source::{FileVersion, Table};
use crate::sql::{Column, Integers, Scope, Texts, ident};
use crate::stage::{self, REQUEST_COLUMNS};
use crate::{MonitorArgs, MonitorError, window};

/// Most values a slicing expression keeps.
pub const SLICE_VALUES: usize = 100;
const STATE: &str = "_sluice_monitor_state.json";
/// The report's name in the profile table's folder.
pub const REPORT: &str = "report.html";

/// What the previous refresh read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    config: String,
    files: BTreeMap<String, FileVersion>,
    /// The feedback table's files read.
    #[serde(default)]
    feedback_files: BTreeMap<String, FileVersion>,
}

struct Output {
    store: TableStore,
    uri: String,
}

impl Output {
    fn open(uri: String, options: &[(String, String)]) -> Result<Self, MonitorError> {
        let store = TableStore::open(&uri, options).map_err(|source| MonitorError::Store {
            source: Box::new(source),
        })?;
        Ok(Self { store, uri })
    }

    fn location(&self, relative: &str) -> Path {
        let (_, prefix) = self.store.parts();
        prefix.parts().chain(Path::from(relative).parts()).collect()
    }

    async fn get(&self, relative: &str) -> Result<Option<bytes::Bytes>, MonitorError> {
        let (store, _) = self.store.parts();
        match store.get(&self.location(relative)).await {
            Ok(found) => Ok(Some(
                found.bytes().await.map_err(|source| self.error(source))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.error(source)),
        }
    }

    async fn put(&self, relative: &str, bytes: bytes::Bytes) -> Result<(), MonitorError> {
        let (store, _) = self.store.parts();
        store
            .put(&self.location(relative), PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(|source| self.error(source))
    }

    /// Writes one file per window (`<slug>/<start>.parquet`); how many were written.
    async fn put_windows(
        &self,
        granularity: Granularity,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        windows: BTreeMap<i64, Vec<serde_json::Value>>,
    ) -> Result<u64, MonitorError> {
        let mut written = 0;
        for (start, records) in windows {
            let name = format!(
                "{}/{}.parquet",
                window::slug(granularity),
                window::file_stem(start)
            );
            self.put(&name, output::parquet(schema, &records)?).await?;
            written += 1;
        }
        Ok(written)
    }

    fn error(&self, source: object_store::Error) -> MonitorError {
        MonitorError::List {
            uri: self.uri.clone(),
            source: Box::new(source),
        }
    }
}

fn context(args: &MonitorArgs) -> Result<SessionContext, MonitorError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(
            args.memory_limit_mib * 1024 * 1024,
        )))
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![args.work_dir.clone()])),
        )
        .build_arc()?;
    let mut config = SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// The columns profiled: the monitored fields, then the operational ones of each request.
fn columns(fields: &[Field]) -> Vec<Column> {
    let mut columns: Vec<Column> = fields
        .iter()
        .map(|field| Column {
            name: field.name.clone(),
            kind: field.kind,
            per_request: false,
            expression: ident(&field.name),
        })
        .collect();
    for (name, kind, expression) in [
        (
            "status_code",
            FieldKind::Categorical,
            "CAST(status_code AS VARCHAR)",
        ),
        (
            "execution_time_ms",
            FieldKind::Numeric,
            "CAST(execution_time_ms AS DOUBLE)",
        ),
        (
            "input_token_count",
            FieldKind::Numeric,
            "CAST(input_token_count AS DOUBLE)",
        ),
        (
            "output_token_count",
            FieldKind::Numeric,
            "CAST(output_token_count AS DOUBLE)",
        ),
        (
            row_keys::TIME_TO_FIRST_BYTE_MS,
            FieldKind::Numeric,
            "CAST(time_to_first_byte_ms AS DOUBLE)",
        ),
        (row_keys::GUARDRAILS, FieldKind::Categorical, "guardrails"),
        (row_keys::COST, FieldKind::Numeric, "cost"),
    ] {
        if !columns.iter().any(|column| column.name == name) {
            columns.push(Column {
                name: name.into(),
                kind,
                per_request: true,
                expression: expression.into(),
            });
        }
    }
    columns
}

/// The newest non-null `label`, `rating` and `comment` of each request in table `feedback`.
fn newest_feedback() -> String {
    let newest = stage::FEEDBACK_FIELDS
        .iter()
        .map(|name| {
            format!(
                "last_value({name} ORDER BY feedback_time, feedback_id) FILTER (WHERE {name} IS NOT NULL) AS {}",
                stage::feedback_column(name)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT request_id AS __feedback_request_id, {newest} FROM feedback GROUP BY request_id"
    )
}

/// The staging query: `stage_query`'s rows with the newest feedback of each request joined.
fn with_feedback(query: &str) -> String {
    let columns = stage::FEEDBACK_FIELDS
        .iter()
        .map(|name| format!("f.{}", stage::feedback_column(name)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT p.*, {columns} FROM ({query}) p LEFT JOIN ({}) f ON p.request_id = f.__feedback_request_id",
        newest_feedback()
    )
}

fn stage_query(relation: &str, available: &BTreeSet<String>, range: Option<(i64, i64)>) -> String {
    let mut select = vec![
        "timestamp_ms".to_string(),
        "request".into(),
        "response".into(),
    ];
    select.extend(
        REQUEST_COLUMNS
            .iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| available.contains(name)),
    );
    // From the capture sidecar's request facts: the time to the answer's first byte (a
    // stream's first token), the gateway's input guardrail verdict, and the request's cost.
    if available.contains("request_metadata") {
        for (key, kind) in [
            (row_keys::TIME_TO_FIRST_BYTE_MS, "BIGINT"),
            (row_keys::GUARDRAILS, "VARCHAR"),
            (row_keys::COST, "DOUBLE"),
        ] {
            select.push(format!(
                "CAST(array_element(map_extract(request_metadata, '{key}'), 1) AS {kind}) AS {key}"
            ));
        }
    }
    let filter = range.map_or_else(
        || "timestamp_ms IS NOT NULL".to_string(),
        |(from, to)| format!("timestamp_ms >= {from} AND timestamp_ms < {to}"),
    );
    format!(
        "SELECT {} FROM {relation} WHERE {filter}",
        select.join(", ")
    )
}

async fn columns_of(
    ctx: &SessionContext,
    relation: &str,
) -> Result<BTreeSet<String>, MonitorError> {
    let table = ctx.table(relation).await?;
    let names: BTreeSet<String> = table
        .schema()
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .collect();
    for required in ["timestamp_ms", "request", "response"] {
        if !names.contains(required) {
            return Err(MonitorError::Schema(format!(
                "{relation} has no `{required}` column: not an inference table"
            )));
        }
    }
    Ok(names)
}

fn parse_time(what: &str, text: &str) -> Result<i64, MonitorError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.timestamp_millis())
        .map_err(|error| {
            MonitorError::Config(format!(
                "baseline.{what}: {text:?} is not an RFC 3339 time: {error}"
            ))
        })
}

/// The 100 most frequent values of a slicing expression in the staged rows.
async fn slice_values(ctx: &SessionContext, expression: &str) -> Result<Vec<String>, MonitorError> {
    let query = format!(
        "SELECT v FROM (SELECT CAST(({expression}) AS VARCHAR) AS v, count(*) AS n FROM staged GROUP BY 1) WHERE v IS NOT NULL ORDER BY n DESC, v LIMIT {SLICE_VALUES}"
    );
    let mut out = Vec::new();
    for batch in crate::sql::collect(ctx, &query).await? {
        let values = Texts::of(&batch, "v")?;
        out.extend((0..batch.num_rows()).filter_map(|row| values.get(row)));
    }
    Ok(out)
}

/// Runs one refresh.
pub async fn refresh(args: &MonitorArgs) -> Result<Summary, MonitorError> {
    let config = args.monitoring()?;
    let fields = fields::fields(&config)?;
    let granularities: Vec<Granularity> = if config.granularities.is_empty() {
        vec![Granularity::Day]
    } else {
        config
            .granularities
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let prefix = args
        .output_prefix
        .clone()
        .unwrap_or_else(|| args.table.trim_end_matches('/').to_string());
    let profile_out = Output::open(format!("{prefix}_profile_metrics"), &args.table_options)?;
    let drift_out = Output::open(format!("{prefix}_drift_metrics"), &args.table_options)?;
    let refreshed = chrono::Utc::now();
    let mut summary = Summary {
        refreshed_at: refreshed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        profile_table: profile_out.uri.clone(),
        drift_table: drift_out.uri.clone(),
        ..Default::default()
    };
    // The tables' contents depend on the feedback table too: naming another recomputes all.
    let config_text = format!(
        "{}{}",
        serde_json::to_string(&config.tables_part()).unwrap_or_default(),
        args.feedback_table
            .as_deref()
            .map(|uri| format!(" feedback={uri}"))
            .unwrap_or_default()
    );
    if fields::reads_feedback(&fields) && args.feedback_table.is_none() {
        return Err(MonitorError::Config(
            "a field reads `feedback.`, but no --feedback-table is given".into(),
        ));
    }
    let previous: State = match profile_out.get(STATE).await? {
        Some(bytes) if !args.full => serde_json::from_slice(&bytes).unwrap_or_default(),
        _ => State::default(),
    };
    let table = Table::list(&args.table, &args.table_options).await?;
    let everything = previous.config != config_text;
    let new: BTreeSet<String> = table
        .files
        .iter()
        .filter(|(file, version)| everything || previous.files.get(*file) != Some(version))
        .map(|(file, _)| file.clone())
        .collect();
    let feedback = match &args.feedback_table {
        Some(uri) => Some(Table::list(uri, &args.table_options).await?),
        None => None,
    };
    let new_feedback: BTreeSet<String> = feedback
        .iter()
        .flat_map(|table| &table.files)
        .filter(|(file, version)| everything || previous.feedback_files.get(*file) != Some(version))
        .map(|(file, _)| file.clone())
        .collect();
    let feedback_files = feedback
        .as_ref()
        .map(|table| table.files.clone())
        .unwrap_or_default();
    summary.new_files = (new.len() + new_feedback.len()) as u64;
    if new.is_empty() && new_feedback.is_empty() {
        return Ok(summary);
    }
    std::fs::create_dir_all(&args.work_dir).map_err(|source| MonitorError::Io {
        path: args.work_dir.clone(),
        source,
    })?;
    let ctx = context(args)?;
    let has_new = table.register(&ctx, "payload_new", Some(&new)).await?;
    if !table.register(&ctx, "payload", None).await? {
        save_state(&profile_out, config_text, table.files, feedback_files).await?;
        return Ok(summary);
    }
    let available = columns_of(&ctx, "payload").await?;
    let joined = match &feedback {
        Some(feedback) => feedback.register(&ctx, "feedback", None).await?,
        None => false,
    };
    // The time range of the new rows, and of the requests new feedback is about; per
    // granularity widened to whole windows.
    let mut ranges = Vec::new();
    if has_new {
        ranges.push(
            "SELECT min(timestamp_ms) AS lo, max(timestamp_ms) AS hi FROM payload_new".to_string(),
        );
    }
    if let Some(feedback) = feedback
        .as_ref()
        .filter(|_| joined && !new_feedback.is_empty())
    {
        feedback
            .register(&ctx, "feedback_new", Some(&new_feedback))
            .await?;
        ranges.push(
            "SELECT min(p.timestamp_ms) AS lo, max(p.timestamp_ms) AS hi FROM payload p \
             JOIN (SELECT DISTINCT request_id FROM feedback_new) f ON p.request_id = f.request_id"
                .to_string(),
        );
    }
    let (mut lo, mut hi) = (None::<i64>, None::<i64>);
    for query in &ranges {
        if let Some(batch) = crate::sql::collect(&ctx, query).await?.first() {
            if let Some(low) = Integers::of(batch, "lo")?.get(0) {
                lo = Some(lo.map_or(low, |lo| lo.min(low)));
            }
            if let Some(high) = Integers::of(batch, "hi")?.get(0) {
                hi = Some(hi.map_or(high, |hi| hi.max(high)));
            }
        }
    }
    let (Some(lo), Some(hi)) = (lo, hi) else {
        save_state(&profile_out, config_text, table.files, feedback_files).await?;
        return Ok(summary);
    };
    let staging = |query: String| if joined { with_feedback(&query) } else { query };
    // Per granularity: the windows written [from, to) and the drift windows [from, next(to)).
    let affected: Vec<(i64, i64)> = granularities
        .iter()
        .map(|g| {
            (
                window::start(*g, lo),
                window::next(*g, window::start(*g, hi)),
            )
        })
        .collect();
    let stage_from = granularities
        .iter()
        .zip(&affected)
        .map(|(g, (from, _))| window::previous(*g, *from))
        .min()
        .unwrap_or(lo);
    let stage_to = granularities
        .iter()
        .zip(&affected)
        .map(|(g, (_, to))| window::next(*g, *to))
        .max()
        .unwrap_or(hi + 1);

    let work = WorkDir::create(&args.work_dir)?;
    let staged_path = work.join("staged.parquet");
    let staged = stage::stage(
        &ctx,
        &staging(stage_query(
            "payload",
            &available,
            Some((stage_from, stage_to)),
        )),
        &fields,
        &granularities,
        &staged_path,
    )
    .await?;
    summary.rows_read = staged.requests;
    summary.instances = staged.instances;
    ctx.register_parquet(
        "staged",
        staged_path.to_string_lossy().as_ref(),
        Default::default(),
    )
    .await?;

    let baseline = match &config.baseline {
        Some(baseline) => {
            let path = work.join("baseline.parquet");
            let query = match (&baseline.table, &baseline.start, &baseline.end) {
                (Some(uri), None, None) => {
                    let baseline_table = Table::list(uri, &args.table_options).await?;
                    if !baseline_table
                        .register(&ctx, "baseline_payload", None)
                        .await?
                    {
                        return Err(MonitorError::Config(format!(
                            "baseline.table {uri:?} has no data files"
                        )));
                    }
                    let columns = columns_of(&ctx, "baseline_payload").await?;
                    stage_query("baseline_payload", &columns, None)
                }
                (None, Some(start), Some(end)) => staging(stage_query(
                    "payload",
                    &available,
                    Some((parse_time("start", start)?, parse_time("end", end)?)),
                )),
                _ => {
                    return Err(MonitorError::Config(
                        "baseline: set either table, or both start and end".into(),
                    ));
                }
            };
            stage::stage(&ctx, &query, &fields, &granularities, &path).await?;
            ctx.register_parquet(
                "baseline",
                path.to_string_lossy().as_ref(),
                Default::default(),
            )
            .await?;
            true
        }
        None => false,
    };

    let columns = columns(&fields);
    let quality = quality(&fields);
    let mut slices: Vec<Option<(String, Vec<String>)>> = vec![None];
    for expression in &config.slicing_exprs {
        let expression = if fields.iter().any(|field| &field.name == expression) {
            ident(expression)
        } else {
            expression.clone()
        };
        let values = slice_values(&ctx, &expression).await?;
        slices.push(Some((expression, values)));
    }
    let refreshed_ms = refreshed.timestamp_millis();
    let profile_schema = output::profile_schema(&config.custom_metrics);
    let drift_schema = output::drift_schema();

    // The baseline's profile per slice: computed once, written to `baseline.parquet` and
    // compared with every granularity's windows below.
    let mut baseline_profiles: Vec<Vec<ProfileRow>> = Vec::new();
    if baseline {
        let mut records = Vec::new();
        for slice in &slices {
            let rows = profile::profile(
                &ctx,
                &Scope::whole("baseline", slice.clone()),
                &columns,
                quality.as_ref(),
                &config.custom_metrics,
            )
            .await?;
            records.extend(rows.iter().map(|row| {
                output::profile_record(
                    "baseline",
                    "BASELINE",
                    row,
                    &config.custom_metrics,
                    refreshed_ms,
                )
            }));
            baseline_profiles.push(rows);
        }
        profile_out
            .put(
                "baseline.parquet",
                output::parquet(&profile_schema, &records)?,
            )
            .await?;
    }

    let mut newest = None;
    for (i, granularity) in granularities.iter().enumerate() {
        let (first, end) = affected[i];
        let last_drift_to = window::next(*granularity, end);
        for (from, to) in runs(&ctx, i, (first, end), args.rows_per_query).await? {
            // A run's drift rows reach one window past it only at the end: that window's previous
            // one changed; otherwise the next run covers it.
            let drift_to = if to == end { last_drift_to } else { to };
            let profile_from = window::previous(*granularity, from);
            let mut by_window: BTreeMap<i64, Vec<serde_json::Value>> = BTreeMap::new();
            let mut drift_by_window: BTreeMap<i64, Vec<serde_json::Value>> = BTreeMap::new();
            for (s, slice) in slices.iter().enumerate() {
                let scope = Scope::windows_of("staged", i, (profile_from, drift_to), slice.clone());
                let rows = profile::profile(
                    &ctx,
                    &scope,
                    &columns,
                    quality.as_ref(),
                    &config.custom_metrics,
                )
                .await?;
                let index: BTreeMap<(i64, Option<String>, String), &ProfileRow> = rows
                    .iter()
                    .map(|row| {
                        (
                            (
                                row.window_start,
                                row.slice_value.clone(),
                                row.column_name.clone(),
                            ),
                            row,
                        )
                    })
                    .collect();
                for row in rows
                    .iter()
                    .filter(|row| row.window_start >= from && row.window_start < to)
                {
                    by_window
                        .entry(row.window_start)
                        .or_default()
                        .push(output::profile_record(
                            granularity.as_str(),
                            "INPUT",
                            row,
                            &config.custom_metrics,
                            refreshed_ms,
                        ));
                }
                let drift_scope = Scope::windows_of("staged", i, (from, drift_to), slice.clone());
                let consecutive =
                    drift::compare(&ctx, &drift_scope, i, &Reference::Previous, &columns).await?;
                let baseline_rows = match baseline_profiles.get(s) {
                    Some(rows) => Some((
                        drift::compare(
                            &ctx,
                            &drift_scope,
                            i,
                            &Reference::Baseline("baseline"),
                            &columns,
                        )
                        .await?,
                        rows,
                    )),
                    None => None,
                };
                if i == 0 && slice.is_none() && to == end {
                    newest = newest_window(
                        &rows,
                        (from, to),
                        baseline_rows
                            .as_ref()
                            .map_or(&consecutive, |(compared, _)| compared),
                    );
                }
                let baseline_index: BTreeMap<(Option<String>, String), &ProfileRow> = baseline_rows
                    .as_ref()
                    .map(|(_, rows)| {
                        rows.iter()
                            .map(|row| ((row.slice_value.clone(), row.column_name.clone()), row))
                            .collect()
                    })
                    .unwrap_or_default();
                for row in rows
                    .iter()
                    .filter(|row| row.window_start >= from && row.window_start < drift_to)
                {
                    let key = (
                        row.window_start,
                        row.slice_value.clone(),
                        row.column_name.clone(),
                    );
                    let previous_start = window::previous(*granularity, row.window_start);
                    if let Some(reference) = index.get(&(
                        previous_start,
                        row.slice_value.clone(),
                        row.column_name.clone(),
                    )) {
                        let record = DriftRecord {
                            current: row,
                            reference: Some(reference),
                            window_cmp: (previous_start, row.window_start),
                            drift_type: Reference::Previous.drift_type(),
                            comparison: consecutive.get(&key),
                        };
                        drift_by_window.entry(row.window_start).or_default().push(
                            output::drift_record(granularity.as_str(), &record, refreshed_ms),
                        );
                    }
                    if let Some((comparisons, _)) = &baseline_rows {
                        let record = DriftRecord {
                            current: row,
                            reference: baseline_index
                                .get(&(row.slice_value.clone(), row.column_name.clone()))
                                .copied(),
                            window_cmp: (0, 0),
                            drift_type: Reference::Baseline("baseline").drift_type(),
                            comparison: comparisons.get(&key),
                        };
                        drift_by_window.entry(row.window_start).or_default().push(
                            output::drift_record(granularity.as_str(), &record, refreshed_ms),
                        );
                    }
                }
            }
            summary.windows_written += profile_out
                .put_windows(*granularity, &profile_schema, by_window)
                .await?;
            summary.drift_windows_written += drift_out
                .put_windows(*granularity, &drift_schema, drift_by_window)
                .await?;
        }
    }
    drop(work);
    write_report(
        &ctx,
        &profile_out,
        &drift_out,
        &args.table_options,
        &summary.refreshed_at,
    )
    .await?;
    if let Some(newest) = newest {
        let window = chrono::DateTime::from_timestamp_millis(newest.window)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        summary.alerts = crate::alerts::states(&config.alerts, &newest, &window);
        summary.drift = crate::alerts::drift_values(&newest);
        summary.quality = crate::alerts::quality_values(&newest);
    }
    save_state(&profile_out, config_text, table.files, feedback_files).await?;
    Ok(summary)
}

/// The windows `[first, end)` of the granularity at index `i` cut into runs `[from, to)` of
/// whole windows holding about `rows` staged instances each (a window with more is a run
/// alone), in time order, covering the whole range.
async fn runs(
    ctx: &SessionContext,
    i: usize,
    (first, end): (i64, i64),
    rows: u64,
) -> Result<Vec<(i64, i64)>, MonitorError> {
    let w = stage::window_column(i);
    let query = format!(
        "SELECT {w} AS w, count(*) AS n FROM staged WHERE {w} >= {first} AND {w} < {end} GROUP BY 1 ORDER BY 1"
    );
    let mut counts = Vec::new();
    for batch in crate::sql::collect(ctx, &query).await? {
        let (w, n) = (Integers::of(&batch, "w")?, Integers::of(&batch, "n")?);
        for row in 0..batch.num_rows() {
            if let Some(w) = w.get(row) {
                counts.push((w, n.get(row).unwrap_or_default().max(0) as u64));
            }
        }
    }
    Ok(cut_runs(&counts, (first, end), rows))
}

/// [`runs`]' pure step over the instances of each window that has some, in time order.
fn cut_runs(counts: &[(i64, u64)], (first, end): (i64, i64), rows: u64) -> Vec<(i64, i64)> {
    let mut runs = Vec::new();
    let (mut from, mut held) = (first, 0u64);
    for &(window, n) in counts {
        if held > 0 && held + n > rows {
            runs.push((from, window));
            (from, held) = (window, 0);
        }
        held += n;
    }
    if from < end {
        runs.push((from, end));
    }
    runs
}

/// The newest window written (in `[from, to)`) with its comparisons and `:table` row.
fn newest_window(
    rows: &[ProfileRow],
    (from, to): (i64, i64),
    comparisons: &BTreeMap<drift::Key, drift::Comparison>,
) -> Option<crate::alerts::Newest> {
    let window = rows
        .iter()
        .map(|row| row.window_start)
        .filter(|start| *start >= from && *start < to)
        .max()?;
    Some(crate::alerts::Newest {
        window,
        comparisons: comparisons
            .iter()
            .filter(|((start, slice, _), _)| *start == window && slice.is_none())
            .map(|((_, _, column), comparison)| (column.clone(), comparison.clone()))
            .collect(),
        table: rows
            .iter()
            .find(|row| row.window_start == window && row.column_name == profile::TABLE)
            .cloned(),
    })
}

/// Writes `report.html` beside the profile table's windows, from every window of both tables.
async fn write_report(
    ctx: &SessionContext,
    profile: &Output,
    drift: &Output,
    options: &[(String, String)],
    refreshed_at: &str,
) -> Result<(), MonitorError> {
    for (name, out) in [("profile", profile), ("drift", drift)] {
        if !Table::list(&out.uri, options)
            .await?
            .register(ctx, name, None)
            .await?
        {
            return Ok(());
        }
    }
    let title = format!(
        "Monitoring of {}",
        profile.uri.trim_end_matches("_profile_metrics")
    );
    let html = crate::report::render(ctx, &title, refreshed_at).await?;
    profile.put(REPORT, bytes::Bytes::from(html)).await
}

fn quality(fields: &[Field]) -> Option<Quality> {
    let prediction = fields.iter().find(|field| field.role == Role::Prediction)?;
    let label = fields.iter().find(|field| field.role == Role::Label)?;
    Some(Quality {
        prediction: prediction.name.clone(),
        label: label.name.clone(),
        kind: prediction.kind,
    })
}

/// The refresh's own folder under `--work-dir`, removed when the refresh ends, failed or not.
struct WorkDir(std::path::PathBuf);

impl WorkDir {
    fn create(root: &std::path::Path) -> Result<Self, MonitorError> {
        let path = root.join(format!(
            "sluice-monitor-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        std::fs::create_dir_all(&path).map_err(|source| MonitorError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }

    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn save_state(
    out: &Output,
    config: String,
    files: BTreeMap<String, FileVersion>,
    feedback_files: BTreeMap<String, FileVersion>,
) -> Result<(), MonitorError> {
    let state = State {
        config,
        files,
        feedback_files,
    };
    out.put(
        STATE,
        bytes::Bytes::from(serde_json::to_vec(&state).unwrap_or_default()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::cut_runs;

    #[test]
    fn runs_hold_whole_windows_up_to_the_rows_and_cover_the_range() {
        let counts = [(0, 300), (10, 300), (20, 300), (40, 900), (50, 10)];
        assert_eq!(
            cut_runs(&counts, (0, 60), 600),
            [(0, 20), (20, 40), (40, 50), (50, 60)],
            "a window over the rows is a run alone; an empty one (30) stays in a run"
        );
        assert_eq!(cut_runs(&counts, (0, 60), 1 << 20), [(0, 60)]);
        assert_eq!(cut_runs(&[], (0, 60), 10), [(0, 60)]);
    }
}
