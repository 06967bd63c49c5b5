//! The profile: per window, slice and column, the counts, moments, quantiles and frequent
//! items of the values (`<table>_profile_metrics`), plus the `:table` row with the request
//! count, model quality and custom metrics.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use sluice_crds::{CustomMetric, FieldKind};

use crate::MonitorError;
use crate::sql::{Column, Integers, Numbers, Scope, Texts, ident, present};

/// The probabilities of the `quantiles` column.
pub const QUANTILES: [f64; 11] = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0];
/// How many most frequent items a categorical column keeps.
pub const FREQUENT_ITEMS: usize = 10;
/// The `column_name` of table-level rows.
pub const TABLE: &str = ":table";

/// One row of the profile table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileRow {
    /// Window start (ms).
    pub window_start: i64,
    /// Window end (ms, exclusive).
    pub window_end: i64,
    /// The slice expression, or none for all rows.
    pub slice_key: Option<String>,
    /// The slice's value.
    pub slice_value: Option<String>,
    /// The column, or `:table`.
    pub column_name: String,
    /// `numeric`, `categorical` or `table`.
    pub data_type: &'static str,
    /// Values considered (instances, or requests for per-request columns and `:table`).
    pub count: i64,
    /// Of those, null (absent or unreadable).
    pub num_nulls: i64,
    /// Of those, zero.
    pub num_zeros: Option<i64>,
    /// Of those, NaN.
    pub num_nan: Option<i64>,
    /// Distinct non-null values (HyperLogLog estimate).
    pub distinct_count: Option<i64>,
    /// Mean, sample standard deviation, extremes and median of the numbers.
    pub avg: Option<f64>,
    /// Sample standard deviation.
    pub stddev: Option<f64>,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Median (t-digest estimate).
    pub median: Option<f64>,
    /// At [`QUANTILES`] (t-digest estimates).
    pub quantiles: Option<Vec<f64>>,
    /// Shortest category text.
    pub min_length: Option<i64>,
    /// Longest category text.
    pub max_length: Option<i64>,
    /// Mean category text length.
    pub avg_length: Option<f64>,
    /// The most frequent categories with their counts.
    pub frequent_items: Option<Vec<(String, i64)>>,
    /// Share of correct predictions (`:table`, with labels).
    pub accuracy_score: Option<f64>,
    /// Root mean squared error (`:table`, regression with labels).
    pub rmse: Option<f64>,
    /// Mean absolute error (`:table`, regression with labels).
    pub mae: Option<f64>,
    /// Precision, recall and F1 (`:table`, classification with labels).
    pub classification: Option<crate::classification::Scores>,
    /// Custom metrics, in configuration order (`:table`).
    pub custom: Vec<Option<f64>>,
}

/// The labels and predictions the quality metrics compare.
#[derive(Clone, Debug)]
pub struct Quality {
    /// The prediction column.
    pub prediction: String,
    /// The label column.
    pub label: String,
    /// Regression (numbers) or classification (categories).
    pub kind: FieldKind,
}

fn table_select(quality: Option<&Quality>, custom: &[CustomMetric]) -> Vec<String> {
    let mut select = vec!["count(*) FILTER (WHERE __first) AS t_requests".to_string()];
    if let Some(quality) = quality {
        let (p, l) = (ident(&quality.prediction), ident(&quality.label));
        let both = format!("{p} IS NOT NULL AND {l} IS NOT NULL");
        match quality.kind {
            FieldKind::Categorical => select.push(format!(
                "avg(CASE WHEN {p} = {l} THEN 1.0 ELSE 0.0 END) FILTER (WHERE {both}) AS t_accuracy"
            )),
            FieldKind::Numeric => {
                select.push(format!(
                    "sqrt(avg(({p} - {l}) * ({p} - {l})) FILTER (WHERE {both})) AS t_rmse"
                ));
                select.push(format!(
                    "avg(abs({p} - {l})) FILTER (WHERE {both}) AS t_mae"
                ));
            }
        }
    }
    for (i, metric) in custom.iter().enumerate() {
        select.push(format!(
            "CAST(({}) AS DOUBLE) AS t_custom{i}",
            metric.definition
        ));
    }
    select
}

fn column_select(i: usize, column: &Column) -> Vec<String> {
    let e = &column.expression;
    let scope = if column.per_request {
        " FILTER (WHERE __first)"
    } else {
        ""
    };
    let valid = format!(" FILTER (WHERE {})", present(column));
    let mut select = vec![
        format!("count(*){scope} AS c{i}_count"),
        format!("count({e}){scope} AS c{i}_present"),
        // HyperLogLog over the values' text (DataFusion's has no float version).
        format!("approx_distinct(CAST({e} AS VARCHAR)){valid} AS c{i}_distinct"),
    ];
    match column.kind {
        FieldKind::Numeric => {
            select.push(format!(
                "count(*) FILTER (WHERE {e} = 0{}) AS c{i}_zeros",
                if column.per_request {
                    " AND __first"
                } else {
                    ""
                }
            ));
            select.push(format!(
                "count(*) FILTER (WHERE isnan({e}){}) AS c{i}_nan",
                if column.per_request {
                    " AND __first"
                } else {
                    ""
                }
            ));
            for (name, function) in [
                ("avg", "avg"),
                ("stddev", "stddev"),
                ("min", "min"),
                ("max", "max"),
            ] {
                select.push(format!("{function}({e}){valid} AS c{i}_{name}"));
            }
            for (q, p) in crate::profile::QUANTILES.iter().enumerate() {
                select.push(format!(
                    "approx_percentile_cont({p}) WITHIN GROUP (ORDER BY {e}){valid} AS c{i}_q{q}"
                ));
            }
        }
        FieldKind::Categorical => {
            for (name, function) in [
                ("min_length", "min"),
                ("max_length", "max"),
                ("avg_length", "avg"),
            ] {
                select.push(format!(
                    "{function}(character_length({e})){valid} AS c{i}_{name}"
                ));
            }
        }
    }
    select
}

/// Computes the profile rows of `columns` in `scope`.
pub async fn profile(
    ctx: &SessionContext,
    scope: &Scope,
    columns: &[Column],
    quality: Option<&Quality>,
    custom: &[CustomMetric],
) -> Result<Vec<ProfileRow>, MonitorError> {
    let mut select = vec![
        format!("{} AS w", scope.window),
        format!("{} AS we", scope.window_end),
        format!("{} AS sv", scope.slice_value()),
    ];
    select.extend(table_select(quality, custom));
    for (i, column) in columns.iter().enumerate() {
        select.extend(column_select(i, column));
    }
    let query = format!(
        "SELECT {} FROM {} WHERE {} GROUP BY 1, 2, 3",
        select.join(", "),
        scope.relation,
        scope.filter()
    );
    let batches = crate::sql::collect(ctx, &query).await?;
    let frequent = frequent_items(ctx, scope, columns).await?;
    let mut classification = match quality {
        Some(quality) if quality.kind == FieldKind::Categorical => {
            crate::classification::by_window(ctx, scope, quality).await?
        }
        _ => BTreeMap::new(),
    };
    let slice_key = scope.slice.as_ref().map(|(key, _)| key.clone());
    let mut rows = Vec::new();
    for batch in &batches {
        let (w, we, sv) = (
            Integers::of(batch, "w")?,
            Integers::of(batch, "we")?,
            Texts::of(batch, "sv")?,
        );
        let requests = Integers::of(batch, "t_requests")?;
        let quality_columns = match quality.map(|quality| quality.kind) {
            Some(FieldKind::Categorical) => (Some(Numbers::of(batch, "t_accuracy")?), None, None),
            Some(FieldKind::Numeric) => (
                None,
                Some(Numbers::of(batch, "t_rmse")?),
                Some(Numbers::of(batch, "t_mae")?),
            ),
            None => (None, None, None),
        };
        let custom_columns = (0..custom.len())
            .map(|i| Numbers::of(batch, &format!("t_custom{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let base = ProfileRow {
                window_start: w.get(row).unwrap_or_default(),
                window_end: we.get(row).unwrap_or_default(),
                slice_key: slice_key.clone(),
                slice_value: sv.get(row),
                ..Default::default()
            };
            rows.push(ProfileRow {
                column_name: TABLE.into(),
                data_type: "table",
                count: requests.get(row).unwrap_or_default(),
                accuracy_score: quality_columns.0.as_ref().and_then(|c| c.get(row)),
                rmse: quality_columns.1.as_ref().and_then(|c| c.get(row)),
                mae: quality_columns.2.as_ref().and_then(|c| c.get(row)),
                classification: classification
                    .remove(&(base.window_start, base.slice_value.clone())),
                custom: custom_columns.iter().map(|c| c.get(row)).collect(),
                ..base.clone()
            });
            for (i, column) in columns.iter().enumerate() {
                let number =
                    |name: &str| Numbers::of(batch, &format!("c{i}_{name}")).map(|c| c.get(row));
                let integer =
                    |name: &str| Integers::of(batch, &format!("c{i}_{name}")).map(|c| c.get(row));
                let count = integer("count")?.unwrap_or_default();
                let mut out = ProfileRow {
                    column_name: column.name.clone(),
                    data_type: match column.kind {
                        FieldKind::Numeric => "numeric",
                        FieldKind::Categorical => "categorical",
                    },
                    count,
                    num_nulls: count - integer("present")?.unwrap_or_default(),
                    distinct_count: integer("distinct")?,
                    ..base.clone()
                };
                match column.kind {
                    FieldKind::Numeric => {
                        out.num_zeros = integer("zeros")?;
                        out.num_nan = integer("nan")?;
                        out.avg = number("avg")?;
                        out.stddev = number("stddev")?;
                        out.min = number("min")?;
                        out.max = number("max")?;
                        let quantiles = (0..QUANTILES.len())
                            .map(|q| number(&format!("q{q}")))
                            .collect::<Result<Option<Vec<f64>>, _>>()?;
                        out.median = quantiles.as_ref().map(|q| q[5]);
                        out.quantiles = quantiles;
                    }
                    FieldKind::Categorical => {
                        out.min_length = integer("min_length")?;
                        out.max_length = integer("max_length")?;
                        out.avg_length = number("avg_length")?;
                        out.frequent_items = Some(
                            frequent
                                .get(&(
                                    out.window_start,
                                    out.slice_value.clone(),
                                    column.name.clone(),
                                ))
                                .cloned()
                                .unwrap_or_default(),
                        );
                    }
                }
                rows.push(out);
            }
        }
    }
    Ok(rows)
}

type FrequentKey = (i64, Option<String>, String);

async fn frequent_items(
    ctx: &SessionContext,
    scope: &Scope,
    columns: &[Column],
) -> Result<BTreeMap<FrequentKey, Vec<(String, i64)>>, MonitorError> {
    let parts: Vec<String> = columns
        .iter()
        .filter(|column| column.kind == FieldKind::Categorical)
        .map(|column| {
            format!(
                "SELECT {w} AS w, {sv} AS sv, {name} AS col, CAST({e} AS VARCHAR) AS item FROM {relation} WHERE {filter} AND {present}",
                w = scope.window,
                sv = scope.slice_value(),
                name = crate::sql::literal(&column.name),
                e = column.expression,
                relation = scope.relation,
                filter = scope.filter(),
                present = present(column),
            )
        })
        .collect();
    let mut out: BTreeMap<FrequentKey, Vec<(String, i64)>> = BTreeMap::new();
    if parts.is_empty() {
        return Ok(out);
    }
    let query = format!(
        "SELECT w, sv, col, item, n FROM (SELECT w, sv, col, item, n, row_number() OVER (PARTITION BY w, sv, col ORDER BY n DESC, item) AS rank FROM (SELECT w, sv, col, item, count(*) AS n FROM ({}) GROUP BY w, sv, col, item)) WHERE rank <= {FREQUENT_ITEMS} ORDER BY w, sv, col, n DESC, item",
        parts.join(" UNION ALL ")
    );
    for batch in crate::sql::collect(ctx, &query).await? {
        let (w, sv, col, item, n) = (
            Integers::of(&batch, "w")?,
            Texts::of(&batch, "sv")?,
            Texts::of(&batch, "col")?,
            Texts::of(&batch, "item")?,
            Integers::of(&batch, "n")?,
        );
        for row in 0..batch.num_rows() {
            out.entry((
                w.get(row).unwrap_or_default(),
                sv.get(row),
                col.get(row).unwrap_or_default(),
            ))
            .or_default()
            .push((
                item.get(row).unwrap_or_default(),
                n.get(row).unwrap_or_default(),
            ));
        }
    }
    Ok(out)
}
