//! `--overflow block` through an outage of a real S3-compatible server (moto, frozen with
//! SIGSTOP): once the small spool and queue are full, requests are held at the door and then
//! refused with 503 before reaching the model, nothing is dropped; when the store comes back,
//! every answered request's row is in the table exactly once and requests pass again.

mod capture_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use capture_support::{
    Moto, S3_ENV, Sidecar, Upstream, signal, strings, temp_dir, unused_loopback_port,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_sidecar_refuses_at_the_door_and_loses_no_row_through_an_outage() {
    let moto = Moto::start(unused_loopback_port()).await;
    moto.create_bucket("lake").await;
    let upstream = Upstream::start().await;
    let mut extra: Vec<String> = moto.table_options();
    extra.extend(
        [
            "--overflow",
            "block",
            "--block-timeout",
            "500ms",
            "--spool-max-bytes",
            "40000",
            "--queue-max-bytes",
            "10000",
            "--rotate-bytes",
            "8000",
        ]
        .map(String::from),
    );
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        "s3://lake/tables/audit_payload",
        &temp_dir("block-spool"),
        &extra,
        S3_ENV,
    )
    .await;
    let url = sidecar.url("/echo");
    let body = |i: usize| format!("{{\"row\": {i}, \"pad\": \"{}\"}}", "x".repeat(2000));
    let mut answered = BTreeSet::new();
    for i in 0..5 {
        let (status, id, _) =
            capture_support::send(&sidecar.client, &url, body(i).into_bytes()).await;
        assert_eq!(status, 200);
        answered.insert(id);
    }
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            5.0,
            Duration::from_secs(30),
        )
        .await;

    // The outage: rows pile up in the spool, then in the queue, then requests are refused.
    signal(moto.pid(), "STOP");
    let started = Instant::now();
    let mut refused = 0;
    let mut i = 5;
    while refused < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no request was refused: {:?}",
            sidecar.metrics().await
        );
        let (status, id, _) =
            capture_support::send(&sidecar.client, &url, body(i).into_bytes()).await;
        i += 1;
        match status {
            200 => {
                answered.insert(id);
            }
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let during = sidecar.metrics().await;
    signal(moto.pid(), "CONT");
    assert_eq!(during["sluice_capture_requests_refused_total"], 3.0);
    assert_eq!(during["sluice_capture_spool_blocked"], 1.0, "{during:?}");
    assert!(
        answered.len() > 10,
        "the spool and queue held rows first: {}",
        answered.len()
    );
    assert_eq!(
        during["sluice_capture_records_captured_total"],
        answered.len() as f64,
        "refused requests were never recorded (nor sent to the model)"
    );

    // Recovery: every answered request's row reaches the table, and requests pass again.
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            answered.len() as f64,
            Duration::from_secs(90),
        )
        .await;
    let (status, id, _) = capture_support::send(&sidecar.client, &url, body(i).into_bytes()).await;
    assert_eq!(status, 200, "room again");
    answered.insert(id);
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            answered.len() as f64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        sidecar.metric("sluice_capture_records_dropped_total").await,
        0.0
    );
    assert_eq!(sidecar.metric("sluice_capture_spool_blocked").await, 0.0);
    drop(sidecar);

    let (_, batches) = moto.read_table("lake", "tables/audit_payload").await;
    let ids = strings(&batches, "request_id");
    assert_eq!(ids.len(), answered.len(), "one row per answered request");
    let ids: BTreeSet<String> = ids.into_iter().flatten().collect();
    assert_eq!(ids, answered);
}
