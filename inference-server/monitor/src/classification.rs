//! Precision, recall and F1 of a classifier, per window and slice: DataFusion counts each
//! class's true positives, predictions and labels; [`scores`] turns the counts into the
//! upstream's `{one_vs_all, macro, weighted}` structs, with scikit-learn's conventions (the
//! classes are every value seen as a label or a prediction; a class never predicted has
//! precision 0, one never labelled recall 0; `weighted` weighs by each class's labels).

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;

use crate::MonitorError;
use crate::profile::Quality;
use crate::sql::{Integers, Scope, Texts, ident};

/// How often one class was right, predicted and the truth, in one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Predicted and labelled this class.
    pub true_positives: i64,
    /// Predicted this class.
    pub predicted: i64,
    /// Labelled this class.
    pub labelled: i64,
}

/// One metric per class and its two averages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Averaged {
    /// The metric of each class against all the others.
    pub one_vs_all: BTreeMap<String, f64>,
    /// The unweighted mean over classes.
    pub macro_avg: f64,
    /// The mean weighted by each class's number of labels.
    pub weighted: f64,
}

/// Precision, recall and F1 of one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Of the predictions of a class, the share that were right.
    pub precision: Averaged,
    /// Of the labels of a class, the share predicted.
    pub recall: Averaged,
    /// The harmonic mean of the two.
    pub f1_score: Averaged,
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn averaged(per_class: BTreeMap<String, f64>, weights: &BTreeMap<String, i64>) -> Averaged {
    let n = per_class.len().max(1) as f64;
    let total: i64 = weights.values().sum();
    let weighted = per_class
        .iter()
        .map(|(class, value)| value * ratio(weights.get(class).copied().unwrap_or(0), total))
        .sum();
    Averaged {
        macro_avg: per_class.values().sum::<f64>() / n,
        weighted,
        one_vs_all: per_class,
    }
}

/// The scores of one window's per-class counts; `None` without any labelled prediction.
pub fn scores(counts: &BTreeMap<String, ClassCounts>) -> Option<Scores> {
    if counts.values().all(|c| c.labelled == 0) {
        return None;
    }
    let weights: BTreeMap<String, i64> = counts
        .iter()
        .map(|(class, c)| (class.clone(), c.labelled))
        .collect();
    let mut precision = BTreeMap::new();
    let mut recall = BTreeMap::new();
    let mut f1 = BTreeMap::new();
    for (class, c) in counts {
        let p = ratio(c.true_positives, c.predicted);
        let r = ratio(c.true_positives, c.labelled);
        precision.insert(class.clone(), p);
        recall.insert(class.clone(), r);
        f1.insert(
            class.clone(),
            if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            },
        );
    }
    Some(Scores {
        precision: averaged(precision, &weights),
        recall: averaged(recall, &weights),
        f1_score: averaged(f1, &weights),
    })
}

/// The key of one window's scores: its start and the slice value.
pub type WindowKey = (i64, Option<String>);

/// The scores of each window (and slice value) of `scope`, from the rows that have both a
/// prediction and a label.
pub async fn by_window(
    ctx: &SessionContext,
    scope: &Scope,
    quality: &Quality,
) -> Result<BTreeMap<WindowKey, Scores>, MonitorError> {
    let (p, l) = (ident(&quality.prediction), ident(&quality.label));
    let pairs = format!(
        "SELECT {w} AS w, {sv} AS sv, CAST({p} AS VARCHAR) AS p, CAST({l} AS VARCHAR) AS l \
         FROM {relation} WHERE {filter} AND {p} IS NOT NULL AND {l} IS NOT NULL",
        w = scope.window,
        sv = scope.slice_value(),
        relation = scope.relation,
        filter = scope.filter(),
    );
    let query = format!(
        "WITH pairs AS ({pairs}) \
         SELECT w, sv, class, sum(tp) AS tp, sum(predicted) AS predicted, sum(labelled) AS labelled FROM ( \
           SELECT w, sv, p AS class, CASE WHEN p = l THEN 1 ELSE 0 END AS tp, 1 AS predicted, 0 AS labelled FROM pairs \
           UNION ALL SELECT w, sv, l AS class, 0 AS tp, 0 AS predicted, 1 AS labelled FROM pairs \
         ) GROUP BY w, sv, class"
    );
    let mut counts: BTreeMap<WindowKey, BTreeMap<String, ClassCounts>> = BTreeMap::new();
    for batch in crate::sql::collect(ctx, &query).await? {
        let (w, sv, class) = (
            Integers::of(&batch, "w")?,
            Texts::of(&batch, "sv")?,
            Texts::of(&batch, "class")?,
        );
        let (tp, predicted, labelled) = (
            Integers::of(&batch, "tp")?,
            Integers::of(&batch, "predicted")?,
            Integers::of(&batch, "labelled")?,
        );
        for row in 0..batch.num_rows() {
            counts
                .entry((w.get(row).unwrap_or_default(), sv.get(row)))
                .or_default()
                .insert(
                    class.get(row).unwrap_or_default(),
                    ClassCounts {
                        true_positives: tp.get(row).unwrap_or_default(),
                        predicted: predicted.get(row).unwrap_or_default(),
                        labelled: labelled.get(row).unwrap_or_default(),
                    },
                );
        }
    }
    Ok(counts
        .into_iter()
        .filter_map(|(key, classes)| Some((key, scores(&classes)?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_scikit_learn() {
        // y_true = [a, a, a, b, b, c], y_pred = [a, a, b, b, c, c]; scikit-learn 1.5:
        // precision_score(average=None) = [1.0, 0.5, 0.5], recall [0.667, 0.5, 1.0],
        // f1 [0.8, 0.5, 0.667]; macro precision 0.6667, weighted precision 0.75,
        // weighted f1 0.6778.
        let counts: BTreeMap<String, ClassCounts> =
            [("a", 2, 2, 3), ("b", 1, 2, 2), ("c", 1, 2, 1)]
                .into_iter()
                .map(|(class, tp, predicted, labelled)| {
                    (
                        class.to_string(),
                        ClassCounts {
                            true_positives: tp,
                            predicted,
                            labelled,
                        },
                    )
                })
                .collect();
        let scores = scores(&counts).unwrap();
        let near = |a: f64, b: f64| assert!((a - b).abs() < 1e-4, "{a} != {b}");
        near(scores.precision.one_vs_all["b"], 0.5);
        near(scores.recall.one_vs_all["a"], 2.0 / 3.0);
        near(scores.f1_score.one_vs_all["a"], 0.8);
        near(scores.precision.macro_avg, 2.0 / 3.0);
        near(scores.precision.weighted, 0.75);
        near(scores.recall.macro_avg, (2.0 / 3.0 + 0.5 + 1.0) / 3.0);
        near(scores.f1_score.weighted, 0.6778);
    }

    #[test]
    fn a_class_never_predicted_scores_zero_and_no_label_means_no_scores() {
        let counts: BTreeMap<String, ClassCounts> = [
            (
                "x".to_string(),
                ClassCounts {
                    true_positives: 0,
                    predicted: 0,
                    labelled: 2,
                },
            ),
            (
                "y".to_string(),
                ClassCounts {
                    true_positives: 1,
                    predicted: 3,
                    labelled: 1,
                },
            ),
        ]
        .into();
        let scores = scores(&counts).unwrap();
        assert_eq!(scores.precision.one_vs_all["x"], 0.0);
        assert_eq!(scores.f1_score.one_vs_all["x"], 0.0);
        let none: BTreeMap<String, ClassCounts> = [(
            "x".to_string(),
            ClassCounts {
                true_positives: 0,
                predicted: 1,
                labelled: 0,
            },
        )]
        .into();
        assert_eq!(super::scores(&none), None);
    }
}
