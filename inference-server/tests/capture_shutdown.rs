//! SIGTERM while a streamed answer never ends: the sidecar writes the rows of finished
//! exchanges to the table at once, while the stream is still open and flowing; at the drain
//! deadline it cuts what is still open, records each cut exchange as a row with the
//! `SHUTDOWN` code, writes those too, and exits within `--shutdown-seconds` of the signal.
//! With the store hung, it exits on time all the same and the rows wait in the spool.

mod capture_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use capture_support::{
    Moto, S3_ENV, Sidecar, Upstream, error_codes, eventually, int32s, parquet_files,
    read_local_table, send, signal, spool_files, strings, temp_dir, unused_loopback_port,
};

/// `--drain-timeout`: how long exchanges still open at SIGTERM may run.
const DRAIN: Duration = Duration::from_secs(3);
/// `--shutdown-seconds`: SIGTERM to exit, at most.
const SHUTDOWN: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_flushes_at_once_and_cuts_an_endless_stream_at_the_drain_deadline() {
    let upstream = Upstream::start().await;
    let table = temp_dir("shutdown-table");
    let spool = temp_dir("shutdown-spool");
    let (drain, shutdown) = (DRAIN.as_secs().to_string(), SHUTDOWN.as_secs().to_string());
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &spool,
        // Rotation by age is an hour away: only the SIGTERM flush writes anything.
        &[
            "--rotate-seconds",
            "3600",
            "--drain-timeout",
            &drain,
            "--shutdown-seconds",
            &shutdown,
        ],
        &[],
    )
    .await;

    const FINISHED: usize = 10;
    let mut finished = BTreeSet::new();
    for i in 0..FINISHED {
        let body = format!("{{\"inputs\": [[{i}, 1, 2, 3]]}}").into_bytes();
        let (status, id, _) = send(&sidecar.client, &sidecar.url("/echo"), body).await;
        assert_eq!(status, 200);
        finished.insert(id);
    }
    sidecar
        .wait_metric(
            "sluice_capture_spool_records",
            FINISHED as f64,
            Duration::from_secs(10),
        )
        .await;
    assert!(parquet_files(&table).is_empty(), "nothing written yet");

    // A stream that never ends, its first chunk received...
    let mut stream = sidecar
        .client
        .post(sidecar.url("/v1/endless"))
        .header("x-request-id", "endless")
        .json(&serde_json::json!({"model": "tiny", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    // ...and a request the model will not answer for a minute.
    let unanswered = {
        let client = sidecar.client.clone();
        let url = sidecar.url("/slow/60000");
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-request-id", "unanswered")
                .body("{\"inputs\": []}")
                .send()
                .await
        })
    };
    sidecar
        .wait_metric(
            "sluice_capture_requests_total",
            FINISHED as f64 + 2.0,
            Duration::from_secs(10),
        )
        .await;

    signal(sidecar.pid(), "TERM");
    let signalled = Instant::now();
    // The finished exchanges reach the table while the stream is still open.
    let written = eventually(
        DRAIN - Duration::from_millis(500),
        "the finished rows in the table before the drain deadline",
        || async {
            let ids = strings(&read_local_table(&table), "request_id");
            (ids.len() >= FINISHED).then_some(ids)
        },
    )
    .await;
    let flushed_after = signalled.elapsed();
    assert_eq!(
        written.into_iter().flatten().collect::<BTreeSet<_>>(),
        finished
    );
    assert!(
        stream.chunk().await.unwrap().is_some(),
        "the stream still flows after the flush"
    );
    assert!(signalled.elapsed() < DRAIN, "before the drain deadline");

    let status = sidecar
        .wait_exit(SHUTDOWN + Duration::from_secs(2))
        .expect("the sidecar exits within --shutdown-seconds (and 2 s of slack)");
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        exited_after >= DRAIN - Duration::from_millis(200),
        "the stream was given its drain time: exited after {exited_after:?}"
    );
    assert!(
        exited_after <= SHUTDOWN + Duration::from_millis(500),
        "exited after {exited_after:?}"
    );
    // The client sees its stream cut, not completed.
    let ended = loop {
        match stream.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break "a clean end",
            Err(_) => break "an error",
        }
    };
    assert_eq!(ended, "an error", "a cut stream must not look complete");
    assert!(unanswered.await.unwrap().is_err(), "no answer came");

    let batches = read_local_table(&table);
    let ids = strings(&batches, "request_id");
    let statuses = int32s(&batches, "status_code");
    let codes = error_codes(&batches);
    let responses = strings(&batches, "response");
    assert_eq!(ids.len(), FINISHED + 2, "every exchange once: {ids:?}");
    let row = |id: &str| {
        let i = ids
            .iter()
            .position(|x| x.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no row {id}"));
        (statuses[i], codes[i].clone(), responses[i].clone())
    };
    let (status, endless_codes, response) = row("endless");
    assert_eq!(status, 200);
    assert_eq!(endless_codes, ["RESPONSE_INCOMPLETE", "SHUTDOWN"]);
    let response = response.expect("the part streamed so far");
    assert!(response.contains("tick tick"), "{response}");
    let (status, unanswered_codes, response) = row("unanswered");
    assert_eq!((status, response), (503, None));
    assert_eq!(unanswered_codes, ["SHUTDOWN"]);
    eprintln!(
        "finished rows in the table {flushed_after:?} after SIGTERM with the stream open; \
         exit {exited_after:?} after SIGTERM (drain {DRAIN:?}, shutdown {SHUTDOWN:?})"
    );
}

/// SIGTERM while the store hangs (a frozen S3 server): the sidecar still exits at
/// `--shutdown-seconds`, its rows kept in the spool, and the next sidecar on that spool writes
/// them once the store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_hung_store_exits_on_time_and_keeps_the_rows() {
    let moto = Moto::start(unused_loopback_port()).await;
    moto.create_bucket("lake").await;
    let upstream = Upstream::start().await;
    let spool = temp_dir("shutdown-hung-spool");
    let mut flags = moto.table_options();
    flags.extend(["--drain-timeout", "1", "--shutdown-seconds", "3"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let table = "s3://lake/hung";
    let upstream_addr = upstream.addr.to_string();
    let mut sidecar = Sidecar::start(&upstream_addr, table, &spool, &flags, S3_ENV).await;
    signal(moto.pid(), "STOP");
    let mut sent = BTreeSet::new();
    for i in 0..5 {
        let body = format!("{{\"inputs\": [[{i}]]}}").into_bytes();
        let (status, id, _) = send(&sidecar.client, &sidecar.url("/echo"), body).await;
        assert_eq!(status, 200);
        sent.insert(id);
    }
    sidecar
        .wait_metric("sluice_capture_spool_records", 5.0, Duration::from_secs(10))
        .await;
    signal(sidecar.pid(), "TERM");
    let signalled = Instant::now();
    let status = sidecar
        .wait_exit(Duration::from_secs(3) + Duration::from_secs(2))
        .expect("the sidecar exits within --shutdown-seconds (and 2 s of slack)");
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    let spooled: usize = spool_files(&spool)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rows" || e == "open"))
        .map(|f| capture_support::spooled_rows(f))
        .sum();
    assert_eq!(spooled, 5, "the rows wait in the spool");

    signal(moto.pid(), "CONT");
    let mut next = Sidecar::start(&upstream_addr, table, &spool, &flags, S3_ENV).await;
    next.wait_metric(
        "sluice_capture_records_written_total",
        5.0,
        Duration::from_secs(30),
    )
    .await;
    next.terminate();
    let (_, batches) = moto.read_table("lake", "hung").await;
    let ids = strings(&batches, "request_id");
    assert_eq!(ids.len(), 5, "once each");
    assert_eq!(ids.into_iter().flatten().collect::<BTreeSet<_>>(), sent);
    eprintln!("exit {exited_after:?} after SIGTERM with the store hung (shutdown 3 s)");
}
