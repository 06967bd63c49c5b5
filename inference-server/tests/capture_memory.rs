//! Memory stays bounded under sustained load with large bodies, even while the table is
//! unreachable: copies are capped per body and in total, the queue is capped, and the spool
//! keeps to its size by dropping (and counting) its oldest rows. RSS is read from /proc.

mod capture_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capture_support::{S3_ENV, Sidecar, Upstream, temp_dir, unused_loopback_port};

const LOAD: Duration = Duration::from_secs(20);
const WORKERS: usize = 24;
const BODY: usize = 4 << 20;
const SPOOL_CAP: u64 = 24 << 20;
/// Resident memory the sidecar may reach. It idles at about 40 MiB (debug build) and peaks at
/// 130–150 MiB here: hyper keeps up to a few hundred KiB of buffers per connection on each
/// side, and the capture budgets below add about 20 MiB. A proxy holding whole bodies would
/// need more than WORKERS × 2 × BODY = 192 MiB for the bodies in flight alone, and one queueing
/// its copies without bound would grow by gigabytes over the run (the flat RSS between the
/// middle and the last third is the real check).
const RSS_LIMIT: u64 = 192 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_and_spool_stay_bounded_under_large_bodies() {
    let upstream = Upstream::start().await;
    let dead = format!("aws_endpoint=http://127.0.0.1:{}", unused_loopback_port());
    let spool = temp_dir("memory-spool");
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        "s3://lake/t",
        &spool,
        &[
            "--table-option",
            &dead,
            "--table-option",
            "aws_allow_http=true",
            "--max-payload-bytes",
            "262144",
            "--capture-memory-bytes",
            "4194304",
            "--queue-max-bytes",
            "4194304",
            "--rotate-bytes",
            "4194304",
            "--spool-max-bytes",
            &SPOOL_CAP.to_string(),
        ],
        S3_ENV,
    )
    .await;
    let sidecar = Arc::new(sidecar);
    let body = Bytes::from((0..BODY).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (sidecar, body, stop, requests) = (
            sidecar.clone(),
            body.clone(),
            stop.clone(),
            requests.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = sidecar
                    .client
                    .post(sidecar.url("/echo"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let echoed = response.bytes().await.unwrap();
                assert_eq!(echoed.len(), BODY, "bodies pass through whole");
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < LOAD {
        samples.push((started.elapsed(), sidecar.rss_bytes()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let metrics = sidecar.metrics().await;
    let requests = requests.load(Ordering::Relaxed);
    let peak = samples.iter().map(|(_, rss)| *rss).max().unwrap();
    let third = samples.len() / 3;
    // The first third is warm-up (pools, the spool filling to its cap); compare the steady
    // middle third with the last.
    let early = samples[third..2 * third]
        .iter()
        .map(|(_, rss)| *rss)
        .max()
        .unwrap();
    let late = samples[2 * third..]
        .iter()
        .map(|(_, rss)| *rss)
        .max()
        .unwrap();
    let moved = requests * BODY as u64 * 2;
    eprintln!(
        "{requests} requests ({} MiB through the sidecar) in {LOAD:?}; RSS peak {} MiB, middle third {} MiB, last third {} MiB; spool {} MiB, dropped {}",
        moved >> 20,
        peak >> 20,
        early >> 20,
        late >> 20,
        metrics["sluice_capture_spool_bytes"] as u64 >> 20,
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_capture_records_dropped_total"))
            .map(|(_, v)| v)
            .sum::<f64>()
    );
    assert!(
        moved > 4 * RSS_LIMIT,
        "enough load to matter: {requests} requests"
    );
    assert!(peak < RSS_LIMIT, "RSS peaked at {} MiB", peak >> 20);
    // Allocator fragmentation moves RSS by tens of MiB on a loaded machine; a leak of the
    // bodies (about 10 GB pass through) would not stay within this.
    assert!(
        late <= early + (48 << 20),
        "RSS grew from {} MiB to {} MiB",
        early >> 20,
        late >> 20
    );
    assert!(metrics["sluice_capture_spool_bytes"] <= SPOOL_CAP as f64);
    assert!(
        metrics["sluice_capture_records_dropped_total{reason=\"spool_full\"}"] > 0.0,
        "the full spool dropped its oldest rows and counted them: {metrics:?}"
    );
    assert_eq!(metrics["sluice_capture_in_flight_bytes"], 0.0);
    assert!(metrics["sluice_capture_payloads_truncated_total{body=\"request\"}"] > 0.0);
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&spool);
}
