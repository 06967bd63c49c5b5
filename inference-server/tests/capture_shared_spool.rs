//! Two sidecars share one spool root, as the pods of an endpoint with a persistent spool share
//! its claim. The store is unreachable; one sidecar is SIGKILLed (its pod deleted) with rows
//! spooled; once the store is back, the other adopts the dead one's folder and writes its rows
//! under the dead one's instance id: every row in the table exactly once.

mod capture_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use capture_support::{
    Moto, S3_ENV, Sidecar, Upstream, eventually, send, strings, temp_dir, unused_loopback_port,
};

/// The instance folders under a spool root.
fn instances(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn requests(sidecar: &Sidecar, n: usize, tag: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let body = format!("{{\"inputs\": [[{i}]], \"from\": \"{tag}\"}}").into_bytes();
        let (status, id, _) = send(&sidecar.client, &sidecar.url("/echo"), body).await;
        assert_eq!(status, 200);
        ids.insert(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecars_spool_is_adopted_by_its_sibling_and_every_row_lands_once() {
    let upstream = Upstream::start().await;
    let root = temp_dir("shared-spool");
    // The store's port: nothing listens there until the outage ends.
    let port = unused_loopback_port();
    let endpoint = format!("aws_endpoint=http://127.0.0.1:{port}");
    let flags = [
        "--table-option",
        &endpoint,
        "--table-option",
        "aws_allow_http=true",
        "--spool-adopt-seconds",
        "0.5",
    ];
    let upstream_addr = upstream.addr.to_string();
    let mut doomed = Sidecar::start(&upstream_addr, "s3://lake/t", &root, &flags, S3_ENV).await;
    let doomed_instance = {
        let found = instances(&root);
        assert_eq!(found.len(), 1, "one folder per sidecar: {found:?}");
        found.into_iter().next().unwrap()
    };
    let mut survivor = Sidecar::start(&upstream_addr, "s3://lake/t", &root, &flags, S3_ENV).await;
    assert_eq!(
        instances(&root).len(),
        2,
        "a live sidecar's folder is not taken"
    );

    const DOOMED_ROWS: usize = 30;
    const SURVIVOR_ROWS: usize = 10;
    let mut sent = requests(&doomed, DOOMED_ROWS, "doomed").await;
    sent.extend(requests(&survivor, SURVIVOR_ROWS, "survivor").await);
    survivor
        .wait_metric(
            "sluice_capture_spool_records",
            SURVIVOR_ROWS as f64,
            Duration::from_secs(20),
        )
        .await;
    doomed
        .wait_metric(
            "sluice_capture_spool_records",
            DOOMED_ROWS as f64,
            Duration::from_secs(20),
        )
        .await;
    doomed
        .wait_metric(
            "sluice_capture_upload_failures_total",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    // The survivor does not adopt a live sibling's rows (it looks every 0.5 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        survivor.metric("sluice_capture_spool_records").await,
        SURVIVOR_ROWS as f64
    );
    doomed.kill();

    // The store comes back.
    let moto = Moto::start(port).await;
    moto.create_bucket("lake").await;
    let back = Instant::now();
    survivor
        .wait_metric(
            "sluice_capture_records_written_total",
            (DOOMED_ROWS + SURVIVOR_ROWS) as f64,
            Duration::from_secs(60),
        )
        .await;
    let written_after = back.elapsed();
    assert_eq!(
        survivor.metric("sluice_capture_spools_adopted_total").await,
        1.0
    );
    eventually(
        Duration::from_secs(10),
        "the adopted folder removed",
        || async { (!instances(&root).contains(&doomed_instance)).then_some(()) },
    )
    .await;
    assert_eq!(instances(&root).len(), 1, "the survivor's own folder stays");
    survivor.terminate();

    let (files, batches) = moto.read_table("lake", "t").await;
    let ids = strings(&batches, "request_id");
    assert_eq!(
        ids.len(),
        DOOMED_ROWS + SURVIVOR_ROWS,
        "every row exactly once; the table's files: {files:?}"
    );
    assert_eq!(ids.into_iter().flatten().collect::<BTreeSet<_>>(), sent);
    assert!(
        files
            .iter()
            .any(|f| f.contains(&format!("/part-{doomed_instance}-"))),
        "the dead sidecar's rows keep its instance id: {files:?}"
    );
    eprintln!(
        "{} rows in the table {written_after:?} after the store came back ({} files)",
        DOOMED_ROWS + SURVIVOR_ROWS,
        files.len()
    );
}
