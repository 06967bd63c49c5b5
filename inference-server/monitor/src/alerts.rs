//! Alerts: the configured thresholds checked against the newest window's values.

use std::collections::BTreeMap;

use sluice_crds::{Alert, AlertMetric, AlertState, MAX_DRIFT_VALUES, MonitoredValue};

use crate::drift::Comparison;
use crate::profile::ProfileRow;

/// The newest window of the finest granularity, over all rows (no slice).
#[derive(Clone, Debug, Default)]
pub struct Newest {
    /// Its start (ms).
    pub window: i64,
    /// Its comparisons (with the baseline when there is one), by column.
    pub comparisons: BTreeMap<String, Comparison>,
    /// Its `:table` profile row.
    pub table: Option<ProfileRow>,
}

fn drift_value(metric: AlertMetric, comparison: &Comparison) -> Option<f64> {
    match metric {
        AlertMetric::JsDistance => comparison.js_distance,
        AlertMetric::TvDistance => comparison.tv_distance,
        AlertMetric::LInfinityDistance => comparison.l_infinity_distance,
        AlertMetric::ChiSquaredPvalue => comparison.chi_squared_test.map(|test| test.pvalue),
        AlertMetric::KsStatistic => comparison.ks_test.map(|test| test.statistic),
        AlertMetric::KsPvalue => comparison.ks_test.map(|test| test.pvalue),
        AlertMetric::WassersteinDistance => comparison.wasserstein_distance,
        AlertMetric::PopulationStabilityIndex => comparison.population_stability_index,
        AlertMetric::AccuracyScore
        | AlertMetric::Rmse
        | AlertMetric::Mae
        | AlertMetric::Precision
        | AlertMetric::Recall
        | AlertMetric::F1Score => None,
    }
}

fn quality_value(metric: AlertMetric, table: &ProfileRow) -> Option<f64> {
    match metric {
        AlertMetric::AccuracyScore => table.accuracy_score,
        AlertMetric::Rmse => table.rmse,
        AlertMetric::Mae => table.mae,
        AlertMetric::Precision => table.classification.as_ref().map(|s| s.precision.macro_avg),
        AlertMetric::Recall => table.classification.as_ref().map(|s| s.recall.macro_avg),
        AlertMetric::F1Score => table.classification.as_ref().map(|s| s.f1_score.macro_avg),
        _ => None,
    }
}

/// Each alert's newest value: on its column, or on the column where it is worst; none when
/// the newest window has no such value.
pub fn states(alerts: &[Alert], newest: &Newest, window: &str) -> Vec<AlertState> {
    alerts
        .iter()
        .filter_map(|alert| {
            let metric = alert.metric;
            let (column, value) = if metric.condition() == "QualityDegraded" {
                (None, quality_value(metric, newest.table.as_ref()?)?)
            } else {
                let worse = |a: f64, b: f64| if metric.alerts_below() { a < b } else { a > b };
                newest
                    .comparisons
                    .iter()
                    .filter(|(column, _)| {
                        alert.column.as_ref().is_none_or(|wanted| wanted == *column)
                    })
                    .filter_map(|(column, comparison)| {
                        Some((Some(column.clone()), drift_value(metric, comparison)?))
                    })
                    .reduce(|best, next| if worse(next.1, best.1) { next } else { best })?
            };
            Some(AlertState {
                metric,
                column,
                window: window.to_string(),
                value,
                threshold: alert.threshold,
                firing: metric.crossed(value, alert.threshold),
            })
        })
        .collect()
}

/// The newest window's drift of each column, worst first, at most [`MAX_DRIFT_VALUES`]: the
/// KS statistic of numeric columns, the JS distance of categorical ones.
pub fn drift_values(newest: &Newest) -> Vec<MonitoredValue> {
    let mut values: Vec<MonitoredValue> = newest
        .comparisons
        .iter()
        .filter_map(|(column, comparison)| {
            let (metric, value) = match (comparison.ks_test, comparison.js_distance) {
                (Some(test), _) => (AlertMetric::KsStatistic, test.statistic),
                (None, Some(js)) => (AlertMetric::JsDistance, js),
                (None, None) => return None,
            };
            Some(MonitoredValue {
                metric,
                column: Some(column.clone()),
                value,
            })
        })
        .collect();
    values.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then_with(|| a.column.cmp(&b.column))
    });
    values.truncate(MAX_DRIFT_VALUES);
    values
}

/// The newest window's model quality values, when it has labels.
pub fn quality_values(newest: &Newest) -> Vec<MonitoredValue> {
    let Some(table) = &newest.table else {
        return Vec::new();
    };
    [
        AlertMetric::AccuracyScore,
        AlertMetric::Precision,
        AlertMetric::Recall,
        AlertMetric::F1Score,
        AlertMetric::Rmse,
        AlertMetric::Mae,
    ]
    .into_iter()
    .filter_map(|metric| {
        Some(MonitoredValue {
            metric,
            column: None,
            value: quality_value(metric, table)?,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Test;

    fn newest() -> Newest {
        let comparison = |js: f64, ks_p: Option<f64>| Comparison {
            js_distance: Some(js),
            ks_test: ks_p.map(|pvalue| Test {
                statistic: 0.5,
                pvalue,
            }),
            ..Default::default()
        };
        Newest {
            window: 0,
            comparisons: BTreeMap::from([
                ("amount".to_string(), comparison(0.1, Some(0.0001))),
                ("merchant".to_string(), comparison(0.4, None)),
            ]),
            table: Some(ProfileRow {
                accuracy_score: Some(0.7),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn drift_and_quality_values_of_the_newest_window() {
        let drift = drift_values(&newest());
        let seen: Vec<(AlertMetric, Option<&str>, f64)> = drift
            .iter()
            .map(|v| (v.metric, v.column.as_deref(), v.value))
            .collect();
        assert_eq!(
            seen,
            vec![
                (AlertMetric::KsStatistic, Some("amount"), 0.5),
                (AlertMetric::JsDistance, Some("merchant"), 0.4),
            ]
        );
        let quality = quality_values(&newest());
        assert_eq!(quality.len(), 1);
        assert_eq!(quality[0].metric, AlertMetric::AccuracyScore);
        assert_eq!(quality[0].value, 0.7);
    }

    fn alert(metric: AlertMetric, column: Option<&str>, threshold: f64) -> Alert {
        Alert {
            metric,
            column: column.map(Into::into),
            threshold,
        }
    }

    #[test]
    fn alerts_fire_past_their_threshold_in_their_direction() {
        let states = states(
            &[
                alert(AlertMetric::JsDistance, None, 0.2),
                alert(AlertMetric::JsDistance, Some("amount"), 0.2),
                alert(AlertMetric::KsPvalue, None, 0.01),
                alert(AlertMetric::AccuracyScore, None, 0.8),
                alert(AlertMetric::Rmse, None, 1.0),
            ],
            &newest(),
            "2026-12-01T04:00:00Z",
        );
        let seen: Vec<(AlertMetric, Option<&str>, f64, bool)> = states
            .iter()
            .map(|s| (s.metric, s.column.as_deref(), s.value, s.firing))
            .collect();
        assert_eq!(
            seen,
            vec![
                // Every column: the worst one.
                (AlertMetric::JsDistance, Some("merchant"), 0.4, true),
                (AlertMetric::JsDistance, Some("amount"), 0.1, false),
                (AlertMetric::KsPvalue, Some("amount"), 0.0001, true),
                (AlertMetric::AccuracyScore, None, 0.7, true),
                // No RMSE in a classification window: no state.
            ]
        );
        assert_eq!(AlertMetric::AccuracyScore.condition(), "QualityDegraded");
        assert_eq!(AlertMetric::KsPvalue.condition(), "Drifting");
    }
}
