//! Drift: each window compared with the window before it (`CONSECUTIVE`) or with the baseline
//! (`BASELINE`), per slice and column (`<table>_drift_metrics`). The empirical distributions
//! are compared in DataFusion (sorted with spilling, so windows larger than memory work);
//! p-values and category distances come from [`crate::stats`].

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use sluice_crds::FieldKind;

use crate::MonitorError;
use crate::sql::{Column, Integers, Keys, Numbers, Scope, literal, present};
use crate::stats::{self, Test};

/// Bins of the population stability index (equal width over both samples' range).
pub const PSI_BINS: u32 = 10;

/// What a window is compared with.
#[derive(Clone, Debug)]
pub enum Reference {
    /// The window before (the same relation, windows shifted by one).
    Previous,
    /// Every row of the staged baseline relation.
    Baseline(&'static str),
}

impl Reference {
    /// The `drift_type` column.
    pub fn drift_type(&self) -> &'static str {
        match self {
            Self::Previous => "CONSECUTIVE",
            Self::Baseline(_) => "BASELINE",
        }
    }
}

/// The distribution comparisons of one window, slice and column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Values in the window.
    pub count: u64,
    /// Values in the reference.
    pub reference_count: u64,
    /// Kolmogorov–Smirnov (numeric).
    pub ks_test: Option<Test>,
    /// First Wasserstein distance (numeric).
    pub wasserstein_distance: Option<f64>,
    /// Population stability index (numeric).
    pub population_stability_index: Option<f64>,
    /// Pearson's chi-squared (categorical).
    pub chi_squared_test: Option<Test>,
    /// Total variation distance (categorical).
    pub tv_distance: Option<f64>,
    /// L-infinity distance (categorical).
    pub l_infinity_distance: Option<f64>,
    /// Jensen–Shannon distance (categorical).
    pub js_distance: Option<f64>,
}

/// Key of a comparison: window start, slice value, column.
pub type Key = (i64, Option<String>, String);

/// `(current, reference)` rows of every column of `kind`, as `cw, sv, col, x, a, b`.
fn pairs(
    scope: &Scope,
    i: usize,
    reference: &Reference,
    columns: &[Column],
    kind: FieldKind,
) -> Option<String> {
    let (from, to) = scope.windows?;
    let value = |column: &Column| match kind {
        FieldKind::Numeric => format!("CAST({} AS DOUBLE)", column.expression),
        FieldKind::Categorical => format!("CAST({} AS VARCHAR)", column.expression),
    };
    let slice_filter = match &scope.slice {
        Some((_, values)) => format!(
            " AND {}",
            crate::sql::in_list(&scope.slice_value(), values.iter().map(|v| literal(v)))
        ),
        None => String::new(),
    };
    let mut parts = Vec::new();
    for column in columns.iter().filter(|column| column.kind == kind) {
        let (name, x, present) = (literal(&column.name), value(column), present(column));
        parts.push(format!(
            "SELECT {w} AS cw, {sv} AS sv, {name} AS col, {x} AS x, 1.0 AS a, 0.0 AS b FROM {rel} WHERE {w} >= {from} AND {w} < {to} AND {present}{slice_filter}",
            w = scope.window,
            sv = scope.slice_value(),
            rel = scope.relation,
        ));
        parts.push(match reference {
            Reference::Previous => {
                let next = crate::stage::next_column(i);
                format!(
                    "SELECT {next} AS cw, {sv} AS sv, {name} AS col, {x} AS x, 0.0 AS a, 1.0 AS b FROM {rel} WHERE {next} >= {from} AND {next} < {to} AND {present}{slice_filter}",
                    sv = scope.slice_value(),
                    rel = scope.relation,
                )
            }
            Reference::Baseline(relation) => format!(
                "SELECT t.cw AS cw, {sv} AS sv, {name} AS col, {x} AS x, 0.0 AS a, 1.0 AS b FROM (SELECT DISTINCT {w} AS cw FROM {rel} WHERE {w} >= {from} AND {w} < {to}) AS t CROSS JOIN {relation} WHERE {present}{slice_filter}",
                sv = scope.slice_value(),
                w = scope.window,
                rel = scope.relation,
            ),
        });
    }
    (!parts.is_empty()).then(|| parts.join(" UNION ALL "))
}

/// Compares every window of `scope` (granularity index `i`) with `reference`.
pub async fn compare(
    ctx: &SessionContext,
    scope: &Scope,
    i: usize,
    reference: &Reference,
    columns: &[Column],
) -> Result<BTreeMap<Key, Comparison>, MonitorError> {
    let mut out: BTreeMap<Key, Comparison> = BTreeMap::new();
    if let Some(pairs) = pairs(scope, i, reference, columns, FieldKind::Numeric) {
        numeric(ctx, &pairs, &mut out).await?;
    }
    if let Some(pairs) = pairs(scope, i, reference, columns, FieldKind::Categorical) {
        categorical(ctx, &pairs, &mut out).await?;
    }
    Ok(out)
}

const PARTITION: &str = "PARTITION BY cw, sv, col";
const JOIN: &str = "d.cw = n.cw AND (d.sv IS NOT DISTINCT FROM n.sv) AND d.col = n.col";
// Every join below puts the small per-window side first: DataFusion builds its hash table from
// the left input, and the rows side (one per value) must stream, not be held, to stay within
// the memory limit.

async fn numeric(
    ctx: &SessionContext,
    pairs: &str,
    out: &mut BTreeMap<Key, Comparison>,
) -> Result<(), MonitorError> {
    // The two empirical distribution functions at every distinct value (a RANGE frame gives
    // ties their shared cumulative count), then KS = max |F − G| and
    // W1 = ∫ |F − G| dx = Σ |F(x) − G(x)| · (next x − x).
    let query = format!(
        "WITH pairs AS ({pairs}),
         n AS (SELECT cw, sv, col, sum(a) AS na, sum(b) AS nb FROM pairs GROUP BY cw, sv, col),
         cum AS (SELECT DISTINCT cw, sv, col, x,
                   sum(a) OVER ({PARTITION} ORDER BY x RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS ca,
                   sum(b) OVER ({PARTITION} ORDER BY x RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cb
                 FROM pairs),
         f AS (SELECT d.cw AS cw, d.sv AS sv, d.col AS col, d.x AS x, d.ca / n.na AS fa, d.cb / n.nb AS fb, n.na AS na, n.nb AS nb,
                   lead(d.x) OVER (PARTITION BY d.cw, d.sv, d.col ORDER BY d.x) AS nx
               FROM n JOIN cum d ON {JOIN} WHERE n.na > 0 AND n.nb > 0)
         SELECT cw, sv, col, max(na) AS na, max(nb) AS nb, max(abs(fa - fb)) AS ks,
                sum(CASE WHEN nx IS NULL THEN 0.0 ELSE abs(fa - fb) * (nx - x) END) AS wasserstein
         FROM f GROUP BY cw, sv, col"
    );
    for batch in crate::sql::collect(ctx, &query).await? {
        let keys = Keys::of(&batch)?;
        let (na, nb, ks, wasserstein) = (
            Integers::of(&batch, "na")?,
            Integers::of(&batch, "nb")?,
            Numbers::of(&batch, "ks")?,
            Numbers::of(&batch, "wasserstein")?,
        );
        for row in 0..batch.num_rows() {
            let (n, m) = (
                na.get(row).unwrap_or_default() as u64,
                nb.get(row).unwrap_or_default() as u64,
            );
            let statistic = ks.get(row).unwrap_or_default();
            let entry = out.entry(keys.get(row)).or_default();
            entry.count = n;
            entry.reference_count = m;
            entry.ks_test = Some(Test {
                statistic,
                pvalue: stats::ks_pvalue(statistic, n, m),
            });
            entry.wasserstein_distance = wasserstein.get(row);
        }
    }
    let query = format!(
        "WITH pairs AS ({pairs}),
         r AS (SELECT cw, sv, col, min(x) AS lo, max(x) AS hi, sum(a) AS na, sum(b) AS nb FROM pairs GROUP BY cw, sv, col)
         SELECT p.cw AS cw, p.sv AS sv, p.col AS col,
                CASE WHEN r.hi = r.lo THEN 0 ELSE least(CAST(floor((p.x - r.lo) / (r.hi - r.lo) * {PSI_BINS}) AS BIGINT), {last}) END AS bin,
                sum(p.a) AS ca, sum(p.b) AS cb
         FROM r JOIN pairs p ON p.cw = r.cw AND (p.sv IS NOT DISTINCT FROM r.sv) AND p.col = r.col
         WHERE r.na > 0 AND r.nb > 0
         GROUP BY 1, 2, 3, 4",
        last = PSI_BINS - 1
    );
    let mut bins: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for batch in crate::sql::collect(ctx, &query).await? {
        let (keys, bin) = (Keys::of(&batch)?, Integers::of(&batch, "bin")?);
        let (ca, cb) = (Numbers::of(&batch, "ca")?, Numbers::of(&batch, "cb")?);
        for row in 0..batch.num_rows() {
            let entry = bins
                .entry(keys.get(row))
                .or_insert_with(|| (vec![0.0; PSI_BINS as usize], vec![0.0; PSI_BINS as usize]));
            let bin = bin
                .get(row)
                .unwrap_or_default()
                .clamp(0, i64::from(PSI_BINS) - 1) as usize;
            entry.0[bin] += ca.get(row).unwrap_or_default();
            entry.1[bin] += cb.get(row).unwrap_or_default();
        }
    }
    for (key, (current, reference)) in bins {
        out.entry(key).or_default().population_stability_index =
            Some(stats::population_stability_index(&current, &reference));
    }
    Ok(())
}

async fn categorical(
    ctx: &SessionContext,
    pairs: &str,
    out: &mut BTreeMap<Key, Comparison>,
) -> Result<(), MonitorError> {
    let query = format!(
        "WITH pairs AS ({pairs}),
         n AS (SELECT cw, sv, col FROM pairs GROUP BY cw, sv, col HAVING sum(a) > 0 AND sum(b) > 0)
         SELECT p.cw AS cw, p.sv AS sv, p.col AS col, p.x AS item, sum(p.a) AS ca, sum(p.b) AS cb
         FROM n JOIN pairs p ON p.cw = n.cw AND (p.sv IS NOT DISTINCT FROM n.sv) AND p.col = n.col
         GROUP BY 1, 2, 3, 4"
    );
    let mut counts: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for batch in crate::sql::collect(ctx, &query).await? {
        let keys = Keys::of(&batch)?;
        let (ca, cb) = (Numbers::of(&batch, "ca")?, Numbers::of(&batch, "cb")?);
        for row in 0..batch.num_rows() {
            let entry = counts.entry(keys.get(row)).or_default();
            entry.0.push(ca.get(row).unwrap_or_default());
            entry.1.push(cb.get(row).unwrap_or_default());
        }
    }
    for (key, (current, reference)) in counts {
        let distances = stats::distances(&current, &reference);
        let entry = out.entry(key).or_default();
        entry.count = current.iter().sum::<f64>() as u64;
        entry.reference_count = reference.iter().sum::<f64>() as u64;
        entry.chi_squared_test = Some(stats::chi_squared(&current, &reference));
        entry.tv_distance = Some(distances.tv);
        entry.l_infinity_distance = Some(distances.l_infinity);
        entry.js_distance = Some(distances.js);
    }
    Ok(())
}
