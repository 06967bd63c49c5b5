//! Capture in front of the real `inference-server serve` (the iris ONNX model): N requests of
//! every outcome become exactly N rows, read back with arrow-rs and with DuckDB; request ids
//! are propagated or assigned and answered; readiness follows the model through the sidecar.

mod capture_support;
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capture_support::{
    Sidecar, error_codes, eventually, int32s, parquet_files, read_local_table, run_python, send,
    spool_files, strings, temp_dir,
};
use serde_json::json;

const MANIFEST: &str = "
format: onnx
task: predict
files: {model: iris.onnx}
signature:
  inputs:
    - {name: sepal_length, type: double}
    - {name: sepal_width, type: double}
    - {name: petal_length, type: double}
    - {name: petal_width, type: double}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_requests_become_n_rows_read_by_arrow_and_duckdb() {
    let model = common::model_dir(
        "capture-iris",
        &[
            ("sluice-model.yaml", MANIFEST.as_bytes()),
            ("iris.onnx", &common::iris_onnx()),
        ],
    );
    let serve = common::Server::start(&model, &[]).await;
    serve.wait_ready().await;
    let table = temp_dir("table");
    let spool = temp_dir("spool");
    let upstream = serve.base.trim_start_matches("http://").to_string();
    let mut sidecar = Sidecar::start(&upstream, table.to_str().unwrap(), &spool, &[], &[]).await;

    assert_eq!(
        health_of(&sidecar, "/health").await,
        200,
        "the model is ready, so is the sidecar"
    );

    // 3 kinds of request, N in all: good predictions, bad input (400), unknown route (404).
    const N: usize = 120;
    let mut answered = Vec::new();
    let good = json!({"dataframe_split": {
        "columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "data": [[5.1, 3.5, 1.4, 0.2]]}});
    for i in 0..N {
        let (path, body) = match i % 3 {
            0 => ("/invocations", good.to_string()),
            1 => ("/invocations", "{\"inputs\": [[1, 2,".to_string()),
            _ => ("/no/such/route", "{}".to_string()),
        };
        let mut request = sidecar
            .client
            .post(sidecar.url(path))
            .header("content-type", "application/json")
            .header("x-sluice-requester", format!("user-{}", i % 4))
            .body(body);
        if i % 10 == 0 {
            request = request
                .header("x-request-id", format!("given-{i}"))
                .header("x-client-request-id", format!("client-{i}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let _ = response.bytes().await.unwrap();
        if i % 10 == 0 {
            assert_eq!(id, format!("given-{i}"), "a client's request id is kept");
        }
        answered.push((id, status));
    }
    let statuses: BTreeSet<u16> = answered.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([200, 400, 404]));

    // SIGTERM drains: everything queued and spooled is written before the exit.
    sidecar.terminate();

    let batches = read_local_table(&table);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, N, "exactly one row per request");
    let ids: BTreeSet<String> = strings(&batches, "request_id")
        .into_iter()
        .flatten()
        .collect();
    let sent: BTreeSet<String> = answered.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids, sent,
        "the answered x-request-id is the row's request_id"
    );
    let mut by_id: Vec<(String, i32)> = strings(&batches, "request_id")
        .into_iter()
        .flatten()
        .zip(int32s(&batches, "status_code"))
        .collect();
    by_id.sort();
    let mut expected: Vec<(String, i32)> = answered
        .iter()
        .map(|(id, status)| (id.clone(), i32::from(*status)))
        .collect();
    expected.sort();
    assert_eq!(by_id, expected, "every status is captured as answered");
    let clients: Vec<String> = strings(&batches, "client_request_id")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(clients.len(), N / 10);
    let requesters: BTreeSet<String> = strings(&batches, "requester")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(requesters.len(), 4);
    assert!(
        strings(&batches, "served_entity")
            .iter()
            .all(|e| e.as_deref() == Some("iris-1"))
    );
    assert!(error_codes(&batches).iter().all(Vec::is_empty));
    let responses = strings(&batches, "response");
    assert!(
        responses
            .iter()
            .flatten()
            .any(|r| r.contains("predictions")),
        "model answers are recorded"
    );
    let files = parquet_files(&table);
    assert!(!files.is_empty());
    for file in &files {
        let partition = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(partition.starts_with("date=20"), "{}", file.display());
    }
    assert!(
        spool_files(&spool).iter().all(|f| {
            let name = f.file_name().unwrap();
            name == "lock" || name == "next-seq"
        }),
        "the spool is empty after a drain"
    );

    // The same table from outside: DuckDB reads the Hive partitions as they are.
    let out = run_python(&format!(
        "import duckdb\n\
         r = duckdb.connect().execute(\"select count(*), count(distinct request_id), count(distinct date), \
           sum(case when status_code = 200 then 1 else 0 end), max(request_metadata['path']), \
           min(typeof(date)) \
           from read_parquet('{}/*/*.parquet', hive_partitioning = true)\").fetchone()\n\
         print('|'.join(str(v) for v in r))",
        table.display()
    ));
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(fields[0], N.to_string(), "{out}");
    assert_eq!(fields[1], N.to_string(), "{out}");
    assert_eq!(fields[2], "1", "{out}");
    assert_eq!(fields[3], (N / 3).to_string(), "{out}");
    assert_eq!(fields[4], "/no/such/route", "{out}");
    assert_eq!(fields[5], "DATE", "{out}");
}

#[tokio::test]
async fn readiness_follows_the_model_and_an_absent_model_is_a_recorded_502() {
    let upstream = capture_support::Upstream::start().await;
    let table = temp_dir("ready-table");
    let spool = temp_dir("ready-spool");
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &spool,
        &[],
        &[],
    )
    .await;
    assert_eq!(health_of(&sidecar, "/health").await, 200);
    upstream.healthy.store(false, Ordering::Relaxed);
    assert_eq!(
        health_of(&sidecar, "/health").await,
        503,
        "not ready while the model is not"
    );
    upstream.healthy.store(true, Ordering::Relaxed);
    assert_eq!(health_of(&sidecar, "/health").await, 200);
    sidecar.terminate();

    // A sidecar whose model is not there: /health is 503, /ping 200, requests 502 (recorded).
    let dead = format!("127.0.0.1:{}", capture_support::unused_loopback_port());
    let mut sidecar = Sidecar::start(&dead, table.to_str().unwrap(), &spool, &[], &[]).await;
    assert_eq!(health_of(&sidecar, "/health").await, 503);
    assert_eq!(health_of(&sidecar, "/ping").await, 200);
    let response = sidecar
        .client
        .post(sidecar.url("/invocations"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "UPSTREAM_ERROR");
    sidecar.terminate();
    let batches = read_local_table(&table);
    assert_eq!(int32s(&batches, "status_code"), [502]);
    assert_eq!(
        error_codes(&batches),
        [vec!["UPSTREAM_UNAVAILABLE".to_string()]]
    );
}

async fn health_of(sidecar: &Sidecar, path: &str) -> u16 {
    sidecar
        .client
        .get(sidecar.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Clients that give up before the model answers: each abandoned request still becomes a row
/// (status 499, `CLIENT_DISCONNECTED`, its request body), and the copy budget they held comes
/// back (`in_flight_bytes` 0), so later rows keep their bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_abandoned_before_the_answer_are_rows_and_return_their_budget() {
    let upstream = capture_support::Upstream::start().await;
    let table = temp_dir("abandoned-table");
    let spool = temp_dir("abandoned-spool");
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &spool,
        &[],
        &[],
    )
    .await;
    const ABANDONED: usize = 20;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = vec![b'x'; 100_000];
    let mut gave_up = 0;
    for _ in 0..ABANDONED {
        let sent = impatient
            .post(sidecar.url("/slow/3000"))
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await;
        if sent.is_err() {
            gave_up += 1;
        }
    }
    assert_eq!(gave_up, ABANDONED, "every client gave up");
    eventually(
        Duration::from_secs(20),
        "the copy budget of the abandoned requests to come back",
        || async { (sidecar.metric("sluice_capture_in_flight_bytes").await == 0.0).then_some(()) },
    )
    .await;
    // One patient request afterwards keeps its bodies whole.
    let (code, _, _) = send(&sidecar.client, &sidecar.url("/echo"), b"patient".to_vec()).await;
    assert_eq!(code, 200);
    sidecar.terminate();
    let batches = read_local_table(&table);
    let statuses = int32s(&batches, "status_code");
    let codes = error_codes(&batches);
    let abandoned = statuses.iter().filter(|s| **s == 499).count();
    assert_eq!(abandoned, ABANDONED, "statuses {statuses:?}");
    for (status, codes) in statuses.iter().zip(&codes) {
        if *status == 499 {
            assert_eq!(codes, &["CLIENT_DISCONNECTED".to_string()]);
        }
    }
    assert_eq!(statuses.len(), ABANDONED + 1, "and the patient one");
}
