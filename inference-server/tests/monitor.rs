//! `inference-server monitor` against an independent oracle: `tests/monitor/oracle.py` (numpy,
//! scipy and pyarrow in `.venv`) writes a synthetic inference table in the capture sidecar's
//! layout — MLflow `dataframe_records` batches, two served entities, 3 % missing values, 5 %
//! errors — with a drift injected at hour 4 (`amount` N(50, 10) → N(65, 10), a new merchant
//! mix). The monitor's profile and drift tables, read back with pyarrow, must equal what numpy
//! and scipy compute on the same rows: moments, extremes, null and zero shares, frequent items,
//! accuracy, precision/recall/F1 (per class, macro, weighted) and a custom metric exactly; t-digest quantiles within 2 % of rank; HyperLogLog
//! distinct counts within 3 %; Kolmogorov–Smirnov statistic (`ks_2samp`) and its asymptotic
//! p-value (`kstwobign`), Wasserstein (`wasserstein_distance`), PSI, chi-squared
//! (`chi2_contingency`, no correction), total-variation, L-infinity and Jensen–Shannon
//! (`jensenshannon`, base 2), for consecutive windows and against a baseline window, per slice.
//! Evidently's own stattests (`tests/monitor/evidently_check.py`, `.venv-evidently`) agree on
//! the same rows where they compute the same quantity: JS and total-variation distance,
//! normed Wasserstein.
//! The drift is flagged at hour 4 and not before, and a second refresh after new rows rewrites
//! only the windows those rows fall in. The report page renders in headless Chromium with its
//! plots drawn and the drifted columns first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use sluice_tests::process::temp_dir;

const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

const CONFIG: &str = r#"{
  "granularities": ["1 hour", "1 day"],
  "problemType": "classification",
  "features": [{"name": "amount"}, {"name": "merchant", "kind": "categorical"}],
  "prediction": {"name": "prediction"},
  "label": {"name": "label"},
  "slicingExprs": ["served_entity"],
  "baseline": {"start": "2026-12-01T00:00:00Z", "end": "2026-12-01T03:00:00Z"},
  "customMetrics": [{"name": "error_rate", "definition": "avg(CASE WHEN status_code >= 500 THEN 1.0 ELSE 0.0 END)"}],
  "alerts": [{"metric": "ksPvalue", "column": "amount", "threshold": 0.001}, {"metric": "jsDistance", "threshold": 0.2}]
}"#;

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "run .ci/setup: it installs numpy, scipy and pyarrow in .venv"
    );
    python
}

fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/monitor")
        .join(script);
    let out = Command::new(python)
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{script} runs: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn oracle(args: &[&str]) -> String {
    run_script(&python(), "oracle.py", args)
}

/// The drift rows against Evidently's own stattests (`.venv-evidently`).
fn evidently(args: &[&str]) -> String {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-evidently/bin/python");
    assert!(
        python.exists(),
        "run .ci/setup: it installs Evidently in .venv-evidently"
    );
    run_script(&python, "evidently_check.py", args)
}

fn monitor(table: &Path, work: &Path) -> serde_json::Value {
    let summary_file = work.with_extension("summary.json");
    let out = Command::new(BINARY)
        .args(["monitor", "--table"])
        .arg(table)
        .args(["--config", CONFIG, "--work-dir"])
        .arg(work)
        // Runs of about two hours: every statistic below is then computed over several
        // queries per refresh, as on a table too large for one.
        .args(["--rows-per-query", "500"])
        .arg("--summary-file")
        .arg(&summary_file)
        .output()
        .expect("the monitor runs");
    assert!(
        out.status.success(),
        "monitor failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).expect("the summary file"))
            .expect("JSON");
    assert_eq!(written, summary);
    summary
}

/// `(metric, column, firing)` of each alert of a summary.
fn alerts(summary: &serde_json::Value) -> Vec<(String, String, bool)> {
    summary["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["metric"].as_str().unwrap_or_default().into(),
                a["column"].as_str().unwrap_or_default().into(),
                a["firing"] == true,
            )
        })
        .collect()
}

/// Modification time of every file under `dir`, by path.
fn files(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.insert(
                path.clone(),
                entry.metadata().and_then(|m| m.modified()).expect("mtime"),
            );
        }
    }
    out
}

#[test]
fn profile_and_drift_equal_numpy_and_scipy_and_refreshes_are_incremental() {
    let root = temp_dir("monitor");
    let table = root.join("fraud_payload");
    let work = root.join("work");
    let table_text = table.to_string_lossy().into_owned();
    let profile = root.join("fraud_payload_profile_metrics");

    oracle(&["make", &table_text, "1"]);
    let first = monitor(&table, &work);
    assert_eq!(first["newFiles"], 1, "{first}");
    assert_eq!(first["rowsRead"], 480, "{first}");
    // Hours 0-3, and their day.
    assert_eq!(first["windowsWritten"], 5, "{first}");
    // Hour 3 against the baseline (hours 0-2): the same distribution, no alert.
    assert_eq!(
        alerts(&first),
        [
            ("ksPvalue".into(), "amount".into(), false),
            ("jsDistance".into(), "merchant".into(), false)
        ]
    );
    let checked = oracle(&["check", &table_text, &table_text, "0,1,2"]);
    assert!(checked.contains("\"checks\""), "{checked}");

    let before = files(&profile);
    // Nothing new: nothing read, nothing written.
    let idle = monitor(&table, &work);
    assert_eq!(
        (idle["newFiles"].as_u64(), idle["windowsWritten"].as_u64()),
        (Some(0), Some(0)),
        "{idle}"
    );
    assert_eq!(files(&profile), before);

    oracle(&["make", &table_text, "2"]);
    let second = monitor(&table, &work);
    assert_eq!(second["newFiles"], 1, "{second}");
    // Hours 4 and 5, and the day they are in.
    assert_eq!(second["windowsWritten"], 3, "{second}");
    // Hour 5 against the baseline: both drifts fire.
    assert_eq!(
        second["alerts"][0]["window"], "2026-12-01T05:00:00Z",
        "{second}"
    );
    assert_eq!(
        alerts(&second),
        [
            ("ksPvalue".into(), "amount".into(), true),
            ("jsDistance".into(), "merchant".into(), true)
        ]
    );
    let after = files(&profile);
    for (path, modified) in &before {
        let name = path.file_name().unwrap().to_string_lossy();
        let rewritten = after[path] != *modified;
        // The day the new rows are in, the read-files state, the baseline's profile and the
        // report (made again with each refresh that reads rows) change; the hours before stay as they were.
        let expected = path.parent().unwrap().ends_with("1d")
            || name.starts_with("_sluice")
            || name == "baseline.parquet"
            || name == "report.html";
        assert_eq!(
            rewritten,
            expected,
            "{} rewritten: {rewritten}",
            path.display()
        );
    }
    assert!(
        after
            .keys()
            .any(|path| path.ends_with("1h/20261201T0400Z.parquet"))
    );
    // The newest window's drift, worst first, and its quality, for the operator's gauges.
    let drift: Vec<(&str, &str)> = second["drift"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["metric"].as_str().unwrap_or_default(),
                v["column"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        drift.contains(&("ksStatistic", "amount")) && drift.contains(&("jsDistance", "merchant")),
        "{second}"
    );
    let values: Vec<f64> = second["drift"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["value"].as_f64())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "worst first: {values:?}"
    );
    let quality: Vec<&str> = second["quality"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["metric"].as_str())
        .collect();
    assert_eq!(
        quality,
        ["accuracyScore", "precision", "recall", "f1Score"],
        "{second}"
    );
    // Every statistic again over all six hours; the drift is flagged at hour 4, not before.
    let checked = oracle(&["check", &table_text, &table_text, "0,1,2"]);
    assert!(checked.contains("\"checks\""), "{checked}");
    let checked = evidently(&["check", &table_text, &table_text, "0,1,2"]);
    assert!(checked.contains("\"evidently_checks\""), "{checked}");
    report_renders(&profile.join("report.html"), &root);
    assert!(
        std::fs::read_dir(&work)
            .map(|entries| entries.count())
            .unwrap_or(0)
            == 0,
        "the work folder is left empty"
    );
}

/// Opens the report in headless Chromium: its plots drew lines (the page's own layout-time
/// count, `data-rendered`), the drift table lists a drifted column first, and a screenshot is
/// taken (kept beside the tables for a person to look at).
fn report_renders(report: &Path, root: &Path) {
    let chromium = |args: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(format!("file://{}", report.display()))
            .output()
            .expect("chromium runs: run .ci/setup, it installs Debian's chromium");
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    let rendered: usize = dom
        .split("data-rendered=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page did not count its plots: {dom}"));
    // A profile and a drift plot for amount, merchant and prediction at least, the quality
    // scores (the table has labels) and the traffic.
    assert!(rendered >= 8, "{rendered} plots drew a line");
    for title in ["quality: scores against labels", "requests per window"] {
        assert!(dom.contains(title), "no {title:?} plot");
    }
    let first = dom
        .split("<td>")
        .nth(1)
        .and_then(|cell| cell.split('<').next())
        .unwrap_or_default();
    assert!(
        ["amount", "merchant", "prediction"].contains(&first),
        "worst drift first, not {first:?}"
    );
    let shot = root.join("report.png");
    chromium(&[
        "--window-size=1400,2400",
        &format!("--screenshot={}", shot.display()),
    ]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 50_000,
        "a screenshot of {size} bytes is a blank page"
    );
}

#[test]
fn a_bad_configuration_names_the_field() {
    let root = temp_dir("monitor-bad");
    let out = Command::new(BINARY)
        .args(["monitor", "--table"])
        .arg(root.join("t"))
        .args([
            "--config",
            r#"{"features": [{"name": "x", "path": "body.x"}]}"#,
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("x: path \"body.x\" must start with `request`, `response` or `feedback.`"),
        "{stderr}"
    );
    let out = Command::new(BINARY)
        .args(["monitor", "--table"])
        .arg(root.join("t"))
        .args(["--config", r#"{"features": [{"name": "x"}], "customMetrics": [{"name": "m", "definition": "no_such_function(x)"}]}"#])
        .output()
        .expect("runs");
    // An empty table: nothing to compute yet, so a bad metric is not found until rows exist.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
