//! A sidecar killed with SIGKILL while its table is unreachable keeps its rows on disk; the
//! next sidecar on the same spool (the restarted container) writes every one of them, sealed
//! segments and the one left open alike.

mod capture_support;

use std::collections::BTreeSet;
use std::time::Duration;

use capture_support::{
    S3_ENV, Sidecar, Upstream, read_local_table, spool_files, strings, temp_dir,
    unused_loopback_port,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_replays_its_spool_after_restart() {
    let upstream = Upstream::start().await;
    let spool = temp_dir("restart-spool");
    // Nothing listens at this S3 endpoint: every write fails.
    let dead = format!("aws_endpoint=http://127.0.0.1:{}", unused_loopback_port());
    let mut first = Sidecar::start(
        &upstream.addr.to_string(),
        "s3://lake/t",
        &spool,
        &[
            "--table-option",
            &dead,
            "--table-option",
            "aws_allow_http=true",
            "--rotate-bytes",
            "4096",
            "--rotate-seconds",
            "3600",
        ],
        S3_ENV,
    )
    .await;
    // Enough rows to seal a few segments by size; the last ones stay in the open segment
    // (one more row is sent while the last row happened to seal its segment exactly).
    let mut sent = BTreeSet::new();
    let open_segment = || {
        spool_files(&spool)
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".open"))
    };
    while sent.len() < 40 || !open_segment() {
        assert!(sent.len() < 50, "no segment stays open");
        let i = sent.len();
        let body = format!(
            "{{\"inputs\": [[{i}, 1, 2, 3]], \"pad\": \"{}\"}}",
            "x".repeat(200)
        );
        let (status, id, _) =
            capture_support::send(&first.client, &first.url("/echo"), body.into_bytes()).await;
        assert_eq!(status, 200);
        sent.insert(id);
        first
            .wait_metric(
                "sluice_capture_spool_records",
                sent.len() as f64,
                Duration::from_secs(20),
            )
            .await;
    }
    let n = sent.len();
    first
        .wait_metric(
            "sluice_capture_upload_failures_total",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    first.kill();
    let names: Vec<String> = spool_files(&spool)
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".rows")),
        "sealed segments: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".open")),
        "an open segment: {names:?}"
    );

    // The restarted sidecar (same spool) reaches its table and replays everything.
    let table = temp_dir("restart-table");
    let mut second = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &spool,
        &[],
        &[],
    )
    .await;
    second
        .wait_metric(
            "sluice_capture_records_written_total",
            n as f64,
            Duration::from_secs(30),
        )
        .await;
    second.terminate();
    let batches = read_local_table(&table);
    let ids = strings(&batches, "request_id");
    assert_eq!(ids.len(), n, "every spooled row, once");
    assert_eq!(ids.into_iter().flatten().collect::<BTreeSet<_>>(), sent);
}
