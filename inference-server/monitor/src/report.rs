//! The report: one self-contained HTML page per refresh (`<table>_profile_metrics/report.html`)
//! that a person would rather look at than read: the worst-drifting columns first, the model's
//! quality (when labels, e.g. from feedback, exist) and the traffic over time, then each
//! column's profile and drift over time as SVG plots, then the slices of the newest window.
//! Read back from the output tables, so it covers every window, not only this refresh's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;

use crate::MonitorError;
use crate::sql::{Integers, Numbers, Texts, collect, literal};

/// Most windows plotted per column (the newest ones).
pub const MAX_WINDOWS: usize = 500;

/// One plotted series: a name and its points (window start in ms, value).
pub struct Series {
    /// The legend.
    pub name: String,
    /// The points, in time order.
    pub points: Vec<(i64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |at| at.format("%Y-%m-%d %H:%M").to_string(),
    )
}

const COLORS: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// An SVG line chart of `series` over time.
pub fn line_chart(title: &str, series: &[Series]) -> String {
    let (width, height, left, right, top, bottom) = (640.0, 220.0, 56.0, 12.0, 28.0, 34.0);
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (i64::MAX, i64::MIN, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points.filter(|(_, y)| y.is_finite()) {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    let mut svg = format!(
        r#"<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><text x="{left}" y="18" class="title">{}</text>"#,
        escape(title)
    );
    if x0 > x1 {
        svg.push_str(r#"<text x="60" y="110">no values yet</text></svg>"#);
        return svg;
    }
    if y0 == y1 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let span = (x1 - x0).max(1) as f64;
    let sx = |x: i64| left + (x - x0) as f64 / span * (width - left - right);
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (height - top - bottom);
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#888"/><text x="4" y="{t}" class="tick">{y1:.4}</text><text x="4" y="{b}" class="tick">{y0:.4}</text><text x="{left}" y="{l}" class="tick">{from}</text><text x="{r}" y="{l}" class="tick" text-anchor="end">{to}</text>"##,
        b = height - bottom,
        r = width - right,
        t = top + 4.0,
        l = height - 12.0,
        from = time(x0),
        to = time(x1),
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            path.join(" ")
        );
        if path.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(x),
                sy(y)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{}" class="legend" fill="{color}">{}</text>"#,
            width - right - 8.0,
            18 + 14 * i,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The finest granularity in the profile table (the one plotted).
async fn finest(ctx: &SessionContext) -> Result<Option<String>, MonitorError> {
    let batches = collect(ctx, "SELECT granularity, count(DISTINCT \"window\".start) AS n FROM profile WHERE granularity <> 'baseline' GROUP BY 1").await?;
    let mut found: Vec<(i64, String)> = Vec::new();
    for batch in &batches {
        let (name, n) = (Texts::of(batch, "granularity")?, Integers::of(batch, "n")?);
        for row in 0..batch.num_rows() {
            if let Some(name) = name.get(row) {
                found.push((n.get(row).unwrap_or_default(), name));
            }
        }
    }
    // The most windows, up to the plotted limit; past it, the coarsest under it.
    found.sort();
    Ok(found
        .iter()
        .rev()
        .find(|(n, _)| *n as usize <= MAX_WINDOWS)
        .or(found.first())
        .map(|(_, name)| name.clone()))
}

type PerColumn = BTreeMap<String, Vec<Series>>;

async fn profile_series(
    ctx: &SessionContext,
    granularity: &str,
) -> Result<PerColumn, MonitorError> {
    let query = format!(
        "SELECT column_name, CAST(\"window\".start AS BIGINT) AS w, count, avg, quantiles[3] AS p05, quantiles[9] AS p95, percent_null
         FROM profile WHERE granularity = {} AND slice_key IS NULL AND column_name <> ':table' ORDER BY column_name, w",
        literal(granularity)
    );
    let mut out: PerColumn = BTreeMap::new();
    for batch in collect(ctx, &query).await? {
        let (column, w) = (
            Texts::of(&batch, "column_name")?,
            Integers::of(&batch, "w")?,
        );
        let values = ["avg", "p05", "p95"].map(|name| Numbers::of(&batch, name));
        let [avg, p05, p95] = values;
        let (avg, p05, p95) = (avg?, p05?, p95?);
        for row in 0..batch.num_rows() {
            let (Some(column), Some(w)) = (column.get(row), w.get(row)) else {
                continue;
            };
            let series = out.entry(column).or_insert_with(|| {
                ["mean", "5th percentile", "95th percentile"]
                    .map(|name| Series {
                        name: name.into(),
                        points: Vec::new(),
                    })
                    .into()
            });
            for (series, value) in series
                .iter_mut()
                .zip([avg.get(row), p05.get(row), p95.get(row)])
            {
                if let Some(value) = value {
                    series.points.push((w, value));
                }
            }
        }
    }
    for series in out.values_mut() {
        for s in series.iter_mut() {
            let skip = s.points.len().saturating_sub(MAX_WINDOWS);
            s.points.drain(..skip);
        }
        series.retain(|s| !s.points.is_empty());
    }
    Ok(out)
}

/// Categorical columns: the share of each of their 5 most frequent items over time.
async fn item_series(ctx: &SessionContext, granularity: &str) -> Result<PerColumn, MonitorError> {
    let query = format!(
        "WITH items AS (
           SELECT column_name, CAST(w AS BIGINT) AS w, f['item'] AS item, CAST(f['count'] AS DOUBLE) / total AS share
           FROM (SELECT column_name, \"window\".start AS w, count AS total, unnest(frequent_items) AS f
                 FROM profile WHERE granularity = {} AND slice_key IS NULL AND data_type = 'categorical' AND count > 0)),
         top AS (
           SELECT column_name, item FROM (
             SELECT column_name, item, row_number() OVER (PARTITION BY column_name ORDER BY sum(share) DESC, item) AS rank
             FROM items GROUP BY column_name, item) WHERE rank <= 5)
         SELECT i.column_name AS column_name, i.item AS item, i.w AS w, i.share AS share
         FROM items i JOIN top t ON i.column_name = t.column_name AND i.item = t.item ORDER BY 1, 2, 3",
        literal(granularity)
    );
    let mut out: PerColumn = BTreeMap::new();
    for batch in collect(ctx, &query).await? {
        let (column, item, w, share) = (
            Texts::of(&batch, "column_name")?,
            Texts::of(&batch, "item")?,
            Integers::of(&batch, "w")?,
            Numbers::of(&batch, "share")?,
        );
        for row in 0..batch.num_rows() {
            let (Some(column), Some(item), Some(w), Some(share)) =
                (column.get(row), item.get(row), w.get(row), share.get(row))
            else {
                continue;
            };
            let series = out.entry(column).or_default();
            let name = format!("share of {item}");
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((w, share)),
                None => series.push(Series {
                    name,
                    points: vec![(w, share)],
                }),
            }
        }
    }
    Ok(out)
}

/// Drift per column: the series plotted and the newest window's worst distance.
async fn drift_series(
    ctx: &SessionContext,
    granularity: &str,
) -> Result<(PerColumn, Vec<(String, String, f64, Option<f64>)>), MonitorError> {
    let query = format!(
        "SELECT column_name, drift_type, CAST(\"window\".start AS BIGINT) AS w,
                coalesce(js_distance, ks_test.statistic) AS distance, coalesce(chi_squared_test.pvalue, ks_test.pvalue) AS pvalue
         FROM drift WHERE granularity = {} AND slice_key IS NULL AND column_name <> ':table' ORDER BY column_name, drift_type, w",
        literal(granularity)
    );
    let mut out: PerColumn = BTreeMap::new();
    let mut newest: BTreeMap<(String, String), (i64, f64, Option<f64>)> = BTreeMap::new();
    for batch in collect(ctx, &query).await? {
        let (column, kind, w) = (
            Texts::of(&batch, "column_name")?,
            Texts::of(&batch, "drift_type")?,
            Integers::of(&batch, "w")?,
        );
        let (distance, pvalue) = (
            Numbers::of(&batch, "distance")?,
            Numbers::of(&batch, "pvalue")?,
        );
        for row in 0..batch.num_rows() {
            let (Some(column), Some(kind), Some(w), Some(distance)) = (
                column.get(row),
                kind.get(row),
                w.get(row),
                distance.get(row),
            ) else {
                continue;
            };
            let series = out.entry(column.clone()).or_default();
            let name = format!("{} distance", kind.to_lowercase());
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((w, distance)),
                None => series.push(Series {
                    name,
                    points: vec![(w, distance)],
                }),
            }
            let entry = newest
                .entry((column, kind))
                .or_insert((w, distance, pvalue.get(row)));
            if w >= entry.0 {
                *entry = (w, distance, pvalue.get(row));
            }
        }
    }
    let mut worst: Vec<(String, String, f64, Option<f64>)> = newest
        .into_iter()
        .map(|((column, kind), (_, distance, pvalue))| (column, kind, distance, pvalue))
        .collect();
    worst.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok((out, worst))
}

/// The model's quality over time (scores in 0..1; errors of a regression) and the requests of
/// each window, from the `:table` rows.
async fn quality_series(
    ctx: &SessionContext,
    granularity: &str,
) -> Result<[Vec<Series>; 3], MonitorError> {
    let query = format!(
        "SELECT CAST(\"window\".start AS BIGINT) AS w, CAST(count AS DOUBLE) AS requests,
                accuracy_score, precision['macro'] AS precision_macro, recall['macro'] AS recall_macro,
                f1_score['macro'] AS f1_macro, rmse, mae
         FROM profile WHERE granularity = {} AND slice_key IS NULL AND column_name = ':table' ORDER BY w",
        literal(granularity)
    );
    let named = |names: &[(&str, &str)]| -> Vec<(String, String, Series)> {
        names
            .iter()
            .map(|(column, legend)| {
                let series = Series {
                    name: (*legend).into(),
                    points: Vec::new(),
                };
                (column.to_string(), legend.to_string(), series)
            })
            .collect()
    };
    let mut groups = [
        named(&[
            ("accuracy_score", "accuracy"),
            ("precision_macro", "precision (macro)"),
            ("recall_macro", "recall (macro)"),
            ("f1_macro", "F1 (macro)"),
        ]),
        named(&[("rmse", "RMSE"), ("mae", "MAE")]),
        named(&[("requests", "requests")]),
    ];
    for batch in collect(ctx, &query).await? {
        let w = Integers::of(&batch, "w")?;
        for group in &mut groups {
            for (column, _, series) in group.iter_mut() {
                let values = Numbers::of(&batch, column)?;
                for row in 0..batch.num_rows() {
                    if let (Some(w), Some(value)) = (w.get(row), values.get(row)) {
                        series.points.push((w, value));
                    }
                }
            }
        }
    }
    Ok(groups.map(|group| {
        group
            .into_iter()
            .map(|(_, _, mut series)| {
                let skip = series.points.len().saturating_sub(MAX_WINDOWS);
                series.points.drain(..skip);
                series
            })
            .filter(|series| !series.points.is_empty())
            .collect()
    }))
}

async fn slices(ctx: &SessionContext, granularity: &str) -> Result<String, MonitorError> {
    let query = format!(
        "WITH newest AS (SELECT max(\"window\".start) AS w FROM profile WHERE granularity = {g})
         SELECT slice_key, slice_value, column_name, count, avg, percent_null FROM profile, newest
         WHERE granularity = {g} AND \"window\".start = newest.w AND slice_key IS NOT NULL
         ORDER BY slice_key, slice_value, column_name",
        g = literal(granularity)
    );
    let mut html = String::from(
        "<table><tr><th>slice</th><th>value</th><th>column</th><th>count</th><th>mean</th><th>% null</th></tr>",
    );
    for batch in collect(ctx, &query).await? {
        let texts = ["slice_key", "slice_value", "column_name"].map(|name| Texts::of(&batch, name));
        let [key, value, column] = texts;
        let (key, value, column) = (key?, value?, column?);
        let (count, avg, null) = (
            Integers::of(&batch, "count")?,
            Numbers::of(&batch, "avg")?,
            Numbers::of(&batch, "percent_null")?,
        );
        for row in 0..batch.num_rows() {
            let number = |n: Option<f64>| n.map_or_else(String::new, |n| format!("{n:.4}"));
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&key.get(row).unwrap_or_default()),
                escape(&value.get(row).unwrap_or_default()),
                escape(&column.get(row).unwrap_or_default()),
                count.get(row).unwrap_or_default(),
                number(avg.get(row)),
                number(null.get(row)),
            );
        }
    }
    html.push_str("</table>");
    Ok(html)
}

/// Renders the report of the tables registered as `profile` and `drift` in `ctx`.
pub async fn render(
    ctx: &SessionContext,
    title: &str,
    refreshed_at: &str,
) -> Result<String, MonitorError> {
    let Some(granularity) = finest(ctx).await? else {
        return Ok(page(
            title,
            refreshed_at,
            "<p>No window has been profiled yet.</p>",
        ));
    };
    let mut profiles = profile_series(ctx, &granularity).await?;
    profiles.extend(item_series(ctx, &granularity).await?);
    profiles.retain(|_, series| !series.is_empty());
    let (drifts, worst) = drift_series(ctx, &granularity).await?;
    let mut body = format!(
        "<p>Windows of {}; all rows (slices at the end).</p><h2>Drift, worst first</h2><table><tr><th>column</th><th>compared with</th><th>distance (JS or KS)</th><th>p-value</th></tr>",
        escape(&granularity)
    );
    for (column, kind, distance, pvalue) in &worst {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{distance:.4}</td><td>{}</td></tr>",
            escape(column),
            escape(kind),
            pvalue.map_or_else(String::new, |p| format!("{p:.3e}"))
        );
    }
    body.push_str("</table>");
    let [scores, errors, traffic] = quality_series(ctx, &granularity).await?;
    if !scores.is_empty() || !errors.is_empty() {
        body.push_str("<h2>Model quality</h2><div class=\"row\">");
        if !scores.is_empty() {
            body.push_str(&line_chart("quality: scores against labels", &scores));
        }
        if !errors.is_empty() {
            body.push_str(&line_chart("quality: errors against labels", &errors));
        }
        body.push_str("</div>");
    }
    body.push_str("<h2>Traffic</h2><div class=\"row\">");
    body.push_str(&line_chart("requests per window", &traffic));
    body.push_str("</div>");
    // Columns in the order of their worst drift, then the rest.
    let mut order: Vec<&String> = Vec::new();
    for column in worst
        .iter()
        .map(|w| &w.0)
        .chain(profiles.keys())
        .filter(|c| profiles.contains_key(*c) || drifts.contains_key(*c))
    {
        if !order.contains(&column) {
            order.push(column);
        }
    }
    for column in order {
        let _ = write!(body, "<h2>{}</h2><div class=\"row\">", escape(column));
        if let Some(series) = profiles.get(column) {
            let what = if series.iter().any(|s| s.name.starts_with("share of")) {
                "most frequent items"
            } else {
                "profile"
            };
            body.push_str(&line_chart(&format!("{column}: {what}"), series));
        }
        if let Some(series) = drifts.get(column) {
            body.push_str(&line_chart(&format!("{column}: drift"), series));
        }
        body.push_str("</div>");
    }
    body.push_str("<h2>Slices, newest window</h2>");
    body.push_str(&slices(ctx, &granularity).await?);
    Ok(page(title, refreshed_at, &body))
}

fn page(title: &str, refreshed_at: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #111; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
.row {{ display: flex; flex-wrap: wrap; gap: 12px; }} .plot {{ border: 1px solid #eee; }}
.title {{ font-weight: 600; font-size: 13px; }} .tick, .legend {{ font-size: 11px; }} .legend {{ text-anchor: end; }}
</style></head><body><h1>{t}</h1><p>Refreshed {r}.</p>{body}
<script>
// How many plots have a drawn line (a layout-time check a headless browser can report).
document.body.dataset.rendered = [...document.querySelectorAll('svg.plot')]
  .filter(svg => [...svg.querySelectorAll('polyline')].some(line => line.getBBox().width > 0)).length;
</script></body></html>"#,
        t = escape(title),
        r = escape(refreshed_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_points_into_the_plot_area() {
        let svg = line_chart(
            "amount <avg>",
            &[Series {
                name: "mean".into(),
                points: vec![(0, 1.0), (3_600_000, 3.0)],
            }],
        );
        assert!(svg.contains("amount &lt;avg&gt;"));
        assert!(svg.contains(r#"points="56.0,186.0 628.0,28.0""#), "{svg}");
        assert!(line_chart("empty", &[]).contains("no values yet"));
    }
}
