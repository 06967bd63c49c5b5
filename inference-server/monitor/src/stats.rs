//! The test statistics and distances of the drift table that are not aggregates: p-values
//! and distances between two category (or bin) distributions. Pure functions; the counts
//! come from the queries.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// A statistic and its p-value (`ks_test`, `chi_squared_test`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Test {
    /// The test statistic.
    pub statistic: f64,
    /// The probability of a statistic at least this large when both samples come from the
    /// same distribution.
    pub pvalue: f64,
}

/// The p-value of a two-sample Kolmogorov–Smirnov statistic `d` between samples of `n` and
/// `m` values, from the limiting Kolmogorov distribution at `sqrt(n m / (n + m)) d` (scipy's
/// `kstwobign.sf`).
pub fn ks_pvalue(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let (n, m) = (n as f64, m as f64);
    kolmogorov_sf((n * m / (n + m)).sqrt() * d)
}

/// The survival function of the Kolmogorov distribution.
fn kolmogorov_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < 1.0 {
        // The theta-function form converges fast for small x: the CDF is
        // sqrt(2 pi)/x * sum over odd k of exp(-k^2 pi^2 / (8 x^2)).
        let pi2 = std::f64::consts::PI * std::f64::consts::PI;
        let cdf: f64 = (0..20)
            .map(|i| {
                let k = f64::from(2 * i + 1);
                (-k * k * pi2 / (8.0 * x * x)).exp()
            })
            .sum::<f64>()
            * (2.0 * std::f64::consts::PI).sqrt()
            / x;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    // 2 * sum over k >= 1 of (-1)^(k-1) exp(-2 k^2 x^2).
    let sf: f64 = (1..=100)
        .map(|k| {
            let k = f64::from(k);
            let term = (-2.0 * k * k * x * x).exp();
            if k as u32 % 2 == 1 { term } else { -term }
        })
        .sum::<f64>()
        * 2.0;
    sf.clamp(0.0, 1.0)
}

/// Pearson's chi-squared test of independence on the 2 × k table of two samples' category
/// counts (no continuity correction; categories absent from both are not in the table).
pub fn chi_squared(current: &[f64], reference: &[f64]) -> Test {
    let (total_current, total_reference) =
        (current.iter().sum::<f64>(), reference.iter().sum::<f64>());
    let total = total_current + total_reference;
    let columns: Vec<f64> = current.iter().zip(reference).map(|(a, b)| a + b).collect();
    let categories = columns.iter().filter(|&&c| c > 0.0).count();
    if total_current == 0.0 || total_reference == 0.0 || categories < 2 {
        return Test {
            statistic: 0.0,
            pvalue: 1.0,
        };
    }
    let mut statistic = 0.0;
    for ((observed_current, observed_reference), column) in
        current.iter().zip(reference).zip(&columns)
    {
        if *column == 0.0 {
            continue;
        }
        for (observed, row) in [
            (observed_current, total_current),
            (observed_reference, total_reference),
        ] {
            let expected = row * column / total;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    let pvalue = ChiSquared::new((categories - 1) as f64)
        .map(|distribution| distribution.sf(statistic))
        .unwrap_or(f64::NAN);
    Test { statistic, pvalue }
}

/// Shares of each count in its total (all zeros for an empty sample).
fn shares(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|count| if total > 0.0 { count / total } else { 0.0 })
        .collect()
}

/// Distances between two samples' distributions over the same categories (or bins).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distances {
    /// Half the L1 distance between the two share vectors, in [0, 1].
    pub tv: f64,
    /// The largest difference of one category's shares, in [0, 1].
    pub l_infinity: f64,
    /// The square root of the Jensen–Shannon divergence in bits, in [0, 1] (scipy's
    /// `jensenshannon(p, q, base=2)`).
    pub js: f64,
}

/// The distances between the category counts of two samples.
pub fn distances(current: &[f64], reference: &[f64]) -> Distances {
    let (p, q) = (shares(current), shares(reference));
    let mut tv = 0.0;
    let mut l_infinity: f64 = 0.0;
    let mut divergence = 0.0;
    for (p, q) in p.iter().zip(&q) {
        let difference = (p - q).abs();
        tv += difference / 2.0;
        l_infinity = l_infinity.max(difference);
        let m = (p + q) / 2.0;
        for share in [p, q] {
            if *share > 0.0 {
                divergence += share * (share / m).log2() / 2.0;
            }
        }
    }
    Distances {
        tv,
        l_infinity,
        js: divergence.max(0.0).sqrt(),
    }
}

/// Share given to an empty bin in the population stability index, so its logarithm stays
/// finite (the common convention).
pub const PSI_EMPTY_BIN_SHARE: f64 = 1e-4;

/// The population stability index of the current sample's bin counts against the
/// reference's: sum over bins of (current − reference) · ln(current / reference), empty bins
/// counted as [`PSI_EMPTY_BIN_SHARE`].
pub fn population_stability_index(current: &[f64], reference: &[f64]) -> f64 {
    let floor = |share: f64| {
        if share == 0.0 {
            PSI_EMPTY_BIN_SHARE
        } else {
            share
        }
    };
    shares(current)
        .into_iter()
        .zip(shares(reference))
        .map(|(p, q)| {
            let (p, q) = (floor(p), floor(q));
            (p - q) * (p / q).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1e-12)
    }

    #[test]
    fn kolmogorov_survival_matches_known_values() {
        // scipy.stats.kstwobign.sf at these points.
        for (x, expected) in [
            (0.5, 0.963_945_243_664_875_1),
            (1.0, 0.269_999_671_677_354_56),
            (1.36, 0.049_485_876_755_377_876),
            (2.0, 0.000_670_925_255_779_695_3),
        ] {
            let got = kolmogorov_sf(x);
            assert!(
                close(got, expected, 1e-9),
                "sf({x}) = {got}, expected {expected}"
            );
        }
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert_eq!(ks_pvalue(0.3, 0, 10), 1.0);
    }

    #[test]
    fn both_forms_of_the_kolmogorov_series_agree_where_they_meet() {
        let below = kolmogorov_sf(1.0 - 1e-12);
        let above = kolmogorov_sf(1.0);
        assert!(close(below, above, 1e-9), "{below} vs {above}");
    }

    #[test]
    fn chi_squared_of_a_two_by_three_table() {
        // scipy.stats.chi2_contingency([[10, 20, 30], [20, 20, 20]], correction=False)
        let test = chi_squared(&[10.0, 20.0, 30.0], &[20.0, 20.0, 20.0]);
        assert!(
            close(test.statistic, 5.333_333_333_333_333, 1e-9),
            "{test:?}"
        );
        assert!(
            close(test.pvalue, 0.069_483_451_222_801_5, 1e-7),
            "{test:?}"
        );
        // One category, or an empty side: nothing to test.
        assert_eq!(chi_squared(&[5.0], &[7.0]).pvalue, 1.0);
        assert_eq!(chi_squared(&[0.0, 0.0], &[1.0, 2.0]).statistic, 0.0);
    }

    #[test]
    fn distances_of_identical_and_disjoint_samples() {
        let same = distances(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]);
        assert!(same.tv.abs() < 1e-12 && same.l_infinity.abs() < 1e-12 && same.js.abs() < 1e-7);
        let disjoint = distances(&[5.0, 0.0], &[0.0, 5.0]);
        assert!(close(disjoint.tv, 1.0, 1e-12));
        assert!(close(disjoint.l_infinity, 1.0, 1e-12));
        assert!(close(disjoint.js, 1.0, 1e-12));
        // scipy.spatial.distance.jensenshannon([.5, .5], [.9, .1], base=2)
        let some = distances(&[1.0, 1.0], &[9.0, 1.0]);
        assert!(close(some.js, 0.383_135_879_859_942_3, 1e-9), "{some:?}");
    }

    #[test]
    fn population_stability_index_floors_empty_bins() {
        assert!(population_stability_index(&[1.0, 1.0], &[1.0, 1.0]).abs() < 1e-12);
        let psi = population_stability_index(&[1.0, 0.0], &[1.0, 1.0]);
        let expected = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (1e-4 - 0.5) * (1e-4f64 / 0.5).ln();
        assert!(close(psi, expected, 1e-12));
    }
}
