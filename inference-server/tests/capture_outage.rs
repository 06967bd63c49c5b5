//! A 60-second outage of a real S3-compatible server (moto, started by the test and frozen with
//! SIGSTOP, so connections hang rather than fail fast): requests keep being answered, rows wait
//! in the spool, and after the server comes back every row is in the table exactly once.

mod capture_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use capture_support::{
    Moto, S3_ENV, Sidecar, Upstream, signal, strings, temp_dir, unused_loopback_port,
};

const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_store_outage_loses_no_rows() {
    let moto = Moto::start(unused_loopback_port()).await;
    moto.create_bucket("lake").await;
    let upstream = Upstream::start().await;
    let mut extra: Vec<String> = moto.table_options();
    extra.extend(["--retry-max-seconds".into(), "2".into()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        "s3://lake/tables/iris_payload",
        &temp_dir("outage-spool"),
        &extra,
        S3_ENV,
    )
    .await;
    let mut sent = BTreeSet::new();
    let mut request = async |i: usize| {
        let (status, id, _) = capture_support::send(
            &sidecar.client,
            &sidecar.url("/echo"),
            format!("{{\"row\": {i}}}").into_bytes(),
        )
        .await;
        assert_eq!(status, 200);
        sent.insert(id);
    };

    for i in 0..30 {
        request(i).await;
    }
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            30.0,
            Duration::from_secs(30),
        )
        .await;

    // The outage: the server is frozen; the sidecar's writes hang and time out.
    signal(moto.pid(), "STOP");
    let outage_started = Instant::now();
    let mut i = 30;
    while outage_started.elapsed() < OUTAGE {
        request(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let total = i;
    let during = sidecar.metrics().await;
    signal(moto.pid(), "CONT");
    assert_eq!(
        during["sluice_capture_records_written_total"], 30.0,
        "nothing written while down"
    );
    assert!(
        during["sluice_capture_upload_failures_total"] >= 1.0,
        "{during:?}"
    );
    assert!(during["sluice_capture_spool_records"] > 0.0, "{during:?}");
    assert!(during["sluice_capture_lag_seconds"] > 10.0, "{during:?}");

    // Recovery: every row reaches the table.
    let recovered = Instant::now();
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            total as f64,
            Duration::from_secs(90),
        )
        .await;
    eprintln!(
        "{total} rows in the table {:?} after the store came back",
        recovered.elapsed()
    );
    assert_eq!(
        sidecar.metric("sluice_capture_records_dropped_total").await,
        0.0
    );
    sidecar.terminate();

    let (files, batches) = moto.read_table("lake", "tables/iris_payload").await;
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("tables/iris_payload/date=20") && f.ends_with(".parquet")),
        "{files:?}"
    );
    let ids = strings(&batches, "request_id");
    assert_eq!(
        ids.len(),
        total,
        "exactly one row per request, no duplicates"
    );
    let ids: BTreeSet<String> = ids.into_iter().flatten().collect();
    assert_eq!(ids, sent);
}
