//! `capture --table-format delta`: the table is a Delta table that other tools read, many
//! sidecars append to it at once without losing or duplicating a row, and a sidecar restarted
//! on a spool whose segments were committed already does not commit them twice.

mod capture_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use capture_support::{
    S3_ENV, Sidecar, Upstream, read_parquet, run_python, spool_folder, strings, temp_dir,
    unused_loopback_port,
};
use serde_json::Value;

const DELTA: &[&str] = &["--table-format", "delta"];

async fn send_many(sidecar: &Sidecar, n: usize, tag: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let body = format!("{{\"inputs\": [[{i}, 1, 2, 3]], \"tag\": \"{tag}\"}}");
        let (status, id, _) =
            capture_support::send(&sidecar.client, &sidecar.url("/echo"), body.into_bytes()).await;
        assert_eq!(status, 200);
        ids.insert(id);
    }
    ids
}

/// The table read through the Rust `deltalake` API: its live files, read with arrow-rs.
async fn rust_delta_ids(table: &Path) -> Vec<String> {
    let url = url::Url::from_directory_path(table).unwrap();
    let delta = deltalake_core::open_table(url).await.unwrap();
    let mut ids = Vec::new();
    for uri in delta.get_file_uris().unwrap() {
        let path = uri.strip_prefix("file://").unwrap_or(&uri).to_string();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let batches = read_parquet(bytes.into());
        ids.extend(strings(&batches, "request_id").into_iter().flatten());
    }
    ids
}

/// The table read from outside, by the Python `deltalake` package: (rows, columns, distinct
/// request ids, version, history length).
fn python_delta(table: &Path) -> Value {
    let code = format!(
        r#"
import json, os, sys
from deltalake import DeltaTable
dt = DeltaTable({path:?})
t = dt.to_pyarrow_table()
ids = t.column("request_id").to_pylist()
print(json.dumps({{"rows": t.num_rows, "columns": t.column_names, "distinct": len(set(ids)),
  "version": dt.version(), "history": len(dt.history()),
  "partitions": dt.metadata().partition_columns}}))
sys.stdout.flush()
# deltalake 1.6.6 aborts in its runtime's teardown at interpreter exit ("terminate called
# without an active exception") after everything was read: leave without the teardown.
os._exit(0)
"#,
        path = table.to_str().unwrap()
    );
    serde_json::from_str(run_python(&code).trim()).unwrap()
}

/// The commits in `_delta_log`: versions 0..=n without a gap, and per application id the
/// transaction versions (segments) committed, each at most once.
fn log_commits(table: &Path) -> (usize, BTreeMap<String, Vec<i64>>, usize) {
    let log = table.join("_delta_log");
    let mut versions: Vec<u64> = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        (0..versions.len() as u64).collect::<Vec<_>>(),
        "log versions without gaps"
    );
    let mut txns: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut adds = 0;
    for v in &versions {
        let text = std::fs::read_to_string(log.join(format!("{v:020}.json"))).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(txn) = action.get("txn") {
                txns.entry(txn["appId"].as_str().unwrap().to_string())
                    .or_default()
                    .push(txn["version"].as_i64().unwrap());
            }
            if action.get("add").is_some() {
                adds += 1;
            }
        }
    }
    for (app, segments) in &txns {
        let distinct: BTreeSet<_> = segments.iter().collect();
        assert_eq!(
            distinct.len(),
            segments.len(),
            "{app} committed a segment twice"
        );
    }
    (versions.len(), txns, adds)
}

/// A sidecar writing the local Delta table at `table`.
async fn local_delta_sidecar(upstream: &Upstream, table: &Path, spool: &Path) -> Sidecar {
    Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        spool,
        DELTA,
        &[],
    )
    .await
}

/// `n` sidecars writing `table`, each with a spool of its own.
async fn start_sidecars(
    upstream: &Upstream,
    table: &str,
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for _ in 0..n {
        let spool = temp_dir("delta-spool");
        sidecars.push(Sidecar::start(&upstream.addr.to_string(), table, &spool, extra, env).await);
    }
    sidecars
}

/// Waits until each sidecar wrote `per` rows, stops them, and answers their Delta commits and
/// commit conflicts, summed.
async fn all_written(sidecars: &mut [Sidecar], per: usize) -> (f64, f64) {
    let (mut commits, mut conflicts) = (0.0, 0.0);
    for sidecar in sidecars.iter() {
        sidecar
            .wait_metric(
                "sluice_capture_records_written_total",
                per as f64,
                Duration::from_secs(60),
            )
            .await;
        commits += sidecar.metric("sluice_capture_delta_commits_total").await;
        conflicts += sidecar
            .metric("sluice_capture_delta_commit_conflicts_total")
            .await;
    }
    for sidecar in sidecars.iter_mut() {
        sidecar.terminate();
    }
    (commits, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_a_delta_table_read_by_python_and_rust() {
    let upstream = Upstream::start().await;
    let table = temp_dir("delta-table");
    let spool = temp_dir("delta-spool");
    let mut sidecar = local_delta_sidecar(&upstream, &table, &spool).await;
    let n = 60;
    let sent = send_many(&sidecar, n, "one").await;
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            n as f64,
            Duration::from_secs(30),
        )
        .await;
    let commits = sidecar.metric("sluice_capture_delta_commits_total").await;
    assert!(commits >= 1.0, "delta commits counted: {commits}");
    sidecar.terminate();

    let python = python_delta(&table);
    assert_eq!(python["rows"], n, "{python}");
    assert_eq!(python["distinct"], n, "{python}");
    let columns: Vec<&str> = python["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for column in [
        "request_id",
        "client_request_id",
        "date",
        "timestamp_ms",
        "status_code",
        "execution_time_ms",
        "request",
        "response",
        "request_metadata",
        "endpoint",
        "served_entity",
        "model",
        "model_version",
        "requester",
        "input_token_count",
        "output_token_count",
        "sampling_fraction",
        "logging_error_codes",
    ] {
        assert!(columns.contains(&column), "{column} in {columns:?}");
    }
    let rust: BTreeSet<String> = rust_delta_ids(&table).await.into_iter().collect();
    assert_eq!(rust, sent, "the Rust deltalake API sees every row");

    let (versions, txns, _) = log_commits(&table);
    assert_eq!(txns.len(), 1, "one application: {txns:?}");
    assert_eq!(
        versions as f64,
        commits + 1.0,
        "create + one commit per segment"
    );
    assert_eq!(python["version"], versions - 1);
    assert_eq!(python["partitions"], serde_json::json!(["date"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_append_to_one_delta_table_concurrently() {
    let upstream = Upstream::start().await;
    let table = temp_dir("delta-concurrent-table");
    let extra = ["--table-format", "delta", "--rotate-seconds", "0.1"];
    let mut sidecars = start_sidecars(&upstream, table.to_str().unwrap(), 3, &extra, &[]).await;
    let per = 80;
    let sent: Vec<BTreeSet<String>> = futures::future::join_all(
        sidecars
            .iter()
            .enumerate()
            .map(|(i, s)| send_many(s, per, if i == 0 { "a" } else { "b" })),
    )
    .await;
    let (commits, conflicts) = all_written(&mut sidecars, per).await;
    eprintln!("{commits} commits, {conflicts} conflicts retried");

    let all: BTreeSet<String> = sent.iter().flatten().cloned().collect();
    assert_eq!(all.len(), 3 * per);
    let rust = rust_delta_ids(&table).await;
    assert_eq!(rust.len(), 3 * per, "exactly the sum of rows");
    assert_eq!(
        rust.into_iter().collect::<BTreeSet<_>>(),
        all,
        "no duplicate id"
    );
    let python = python_delta(&table);
    assert_eq!(python["rows"], 3 * per, "{python}");
    assert_eq!(python["distinct"], 3 * per, "{python}");

    let (versions, txns, _) = log_commits(&table);
    assert_eq!(txns.len(), 3, "three applications: {txns:?}");
    let segments: usize = txns.values().map(Vec::len).sum();
    assert_eq!(versions, segments + 1, "create + one commit per segment");
    assert_eq!(segments as f64, commits);
    assert_eq!(python["version"], versions - 1);
    assert_eq!(python["history"], versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_skips_segments_it_committed_before() {
    let upstream = Upstream::start().await;
    let spool = temp_dir("delta-restart-spool");
    // First, rows pile up in the spool while the store is unreachable.
    let dead = format!("aws_endpoint=http://127.0.0.1:{}", unused_loopback_port());
    let mut first = Sidecar::start(
        &upstream.addr.to_string(),
        "s3://lake/t",
        &spool,
        &[
            "--table-format",
            "delta",
            "--table-option",
            &dead,
            "--table-option",
            "aws_allow_http=true",
            "--rotate-bytes",
            "2048",
            "--rotate-seconds",
            "3600",
        ],
        S3_ENV,
    )
    .await;
    let n = 30;
    let sent = send_many(&first, n, "restart").await;
    first
        .wait_metric(
            "sluice_capture_spool_records",
            n as f64,
            Duration::from_secs(20),
        )
        .await;
    // The unreachable table is counted as a failed Delta log read (and retried).
    first
        .wait_metric(
            "sluice_capture_delta_commit_failures_total",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    first.kill();
    // What a sidecar killed right after its commits (before removing the segments) leaves.
    let copy = temp_dir("delta-restart-copy");
    let folder = spool_folder(&spool);
    let mut segments = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rows") || name.ends_with(".open") {
            segments += 1;
        }
        std::fs::copy(entry.path(), copy.join(&name)).unwrap();
    }
    assert!(segments >= 2, "several segments: {segments}");

    // Second: the same spool reaches a local Delta table and commits every segment.
    let table = temp_dir("delta-restart-table");
    let mut second = local_delta_sidecar(&upstream, &table, &spool).await;
    second
        .wait_metric(
            "sluice_capture_records_written_total",
            n as f64,
            Duration::from_secs(30),
        )
        .await;
    second.terminate();

    // Third: the committed segments are back in the spool (the crash window): skipped.
    for entry in std::fs::read_dir(&copy).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rows") || name.ends_with(".open") {
            std::fs::copy(entry.path(), folder.join(&name)).unwrap();
        }
    }
    let mut third = local_delta_sidecar(&upstream, &table, &spool).await;
    third
        .wait_metric(
            "sluice_capture_delta_segments_skipped_total",
            segments as f64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        third.metric("sluice_capture_records_written_total").await,
        0.0
    );
    let more = send_many(&third, 10, "third").await;
    third
        .wait_metric(
            "sluice_capture_records_written_total",
            10.0,
            Duration::from_secs(30),
        )
        .await;
    third.terminate();

    // Fourth, on the now empty spool: new segments are numbered past the committed ones and
    // written (not mistaken for committed ones).
    let mut fourth = local_delta_sidecar(&upstream, &table, &spool).await;
    let last = send_many(&fourth, 10, "fourth").await;
    fourth
        .wait_metric(
            "sluice_capture_records_written_total",
            10.0,
            Duration::from_secs(30),
        )
        .await;
    fourth.terminate();

    let expected: BTreeSet<String> = sent.iter().chain(&more).chain(&last).cloned().collect();
    let rust = rust_delta_ids(&table).await;
    assert_eq!(rust.len(), n + 20, "every row once");
    assert_eq!(rust.into_iter().collect::<BTreeSet<_>>(), expected);
    let python = python_delta(&table);
    assert_eq!(python["rows"], n + 20, "{python}");
    let (_, txns, _) = log_commits(&table);
    assert_eq!(txns.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_append_to_a_delta_table_on_an_s3_compatible_server() {
    let upstream = Upstream::start().await;
    let moto = capture_support::Moto::start(unused_loopback_port()).await;
    moto.create_bucket("lake").await;
    let mut extra: Vec<String> = vec![
        "--table-format".into(),
        "delta".into(),
        "--rotate-seconds".into(),
        "0.1".into(),
    ];
    extra.extend(moto.table_options());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut sidecars = start_sidecars(&upstream, "s3://lake/payload", 2, &extra, S3_ENV).await;
    let per = 40;
    let sent: Vec<BTreeSet<String>> =
        futures::future::join_all(sidecars.iter().map(|s| send_many(s, per, "s3"))).await;
    let (commits, _) = all_written(&mut sidecars, per).await;
    let code = format!(
        r#"
import json, os, sys
from deltalake import DeltaTable
dt = DeltaTable("s3://lake/payload", storage_options={{"AWS_ENDPOINT_URL": "{endpoint}",
  "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
  "AWS_SECRET_ACCESS_KEY": "testing", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}})
ids = dt.to_pyarrow_table().column("request_id").to_pylist()
print(json.dumps({{"rows": len(ids), "distinct": len(set(ids)), "version": dt.version(),
  "history": len(dt.history()), "ops": [h.get("operation") for h in dt.history()]}}))
sys.stdout.flush()
os._exit(0)
"#,
        endpoint = moto.endpoint()
    );
    let python: Value = serde_json::from_str(run_python(&code).trim()).unwrap();
    let all: BTreeSet<String> = sent.iter().flatten().cloned().collect();
    assert_eq!(all.len(), 2 * per);
    assert_eq!(python["rows"], 2 * per, "{python}");
    assert_eq!(python["distinct"], 2 * per, "{python}");
    assert_eq!(
        python["version"], commits as usize,
        "create + one per segment: {python}"
    );
    assert_eq!(python["history"], commits as usize + 1, "{python}");
}
