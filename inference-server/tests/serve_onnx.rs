//! `serve` with a real ONNX model (tests/fixtures/iris.onnx, made by make_iris_onnx.py): the
//! MLflow scoring protocol in every input form, signature errors, protocol errors, health
//! and startup behaviour, metrics. Reference outputs come from onnxruntime.

mod common;

use std::time::{Duration, Instant};

use common::{Server, assert_error, iris_onnx, model_dir, run_to_exit};
use serde_json::{Value, json};

const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
const ROWS: [[f64; 4]; 3] = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
];
/// onnxruntime's labels for ROWS.
const LABELS: [i64; 3] = [0, 2, 1];

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

fn iris_dir() -> std::path::PathBuf {
    model_dir(
        "iris",
        &[
            ("sluice-model.yaml", MANIFEST.as_bytes()),
            ("iris.onnx", &iris_onnx()),
        ],
    )
}

async fn iris_server(extra: &[&str]) -> Server {
    let server = Server::start(&iris_dir(), extra).await;
    server.wait_ready().await;
    server
}

fn labels(body: &Value) -> Vec<i64> {
    body["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {body}"))
        .iter()
        .map(|prediction| prediction["label"].as_i64().unwrap())
        .collect()
}

fn records() -> Value {
    ROWS.iter()
        .map(|row| {
            Value::Object(
                COLUMNS
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.to_string(), json!(v)))
                    .collect(),
            )
        })
        .collect()
}

fn csv() -> String {
    let mut text = COLUMNS.join(",") + "\n";
    for row in ROWS {
        text += &row.map(|v| v.to_string()).join(",");
        text += "\n";
    }
    text
}

#[tokio::test]
async fn every_scoring_input_form_gives_the_reference_labels() {
    let server = iris_server(&[]).await;
    let bodies = [
        json!({"dataframe_split": {"columns": COLUMNS, "data": ROWS}}),
        json!({"dataframe_records": records()}),
        json!({"instances": records()}),
        json!({"instances": ROWS}),
        json!({"inputs": ROWS}),
        json!({"inputs": {"sepal_length": [5.1, 6.7, 5.9], "sepal_width": [3.5, 3.0, 3.0], "petal_length": [1.4, 5.2, 4.2], "petal_width": [0.2, 2.3, 1.5]}}),
    ];
    for body in bodies {
        let (status, answer) = server.post_json("/invocations", &body).await;
        assert_eq!(status, 200, "{body} -> {answer}");
        assert_eq!(labels(&answer), LABELS, "{body}");
    }
    for content_type in ["text/csv", "application/csv", "text/csv; charset=utf-8"] {
        let (status, answer) = server.post("/invocations", content_type, csv()).await;
        assert_eq!(status, 200, "{content_type} -> {answer}");
        assert_eq!(labels(&answer), LABELS);
    }
    let (_, answer) = server
        .post_json("/invocations", &json!({"inputs": [ROWS[0]]}))
        .await;
    let probabilities = answer["predictions"][0]["probabilities"]
        .as_array()
        .unwrap();
    assert!(
        (probabilities[0].as_f64().unwrap() - 0.98157).abs() < 1e-4,
        "{answer}"
    );
}

#[tokio::test]
async fn signature_and_protocol_errors_say_what_is_wrong() {
    let server = iris_server(&["--max-body-bytes", "2KiB"]).await;
    let cases = [
        (
            json!({"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}]}),
            400,
            "INVALID_PARAMETER_VALUE",
            "missing required column `petal_width`",
        ),
        (
            json!({"dataframe_split": {"columns": COLUMNS, "data": [[5.1, "wide", 1.4, 0.2]]}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "column `sepal_width` row 0: expected a double, got a string",
        ),
        (
            json!({"inputs": [[5.1, 3.5, 1.4]]}),
            400,
            "INVALID_PARAMETER_VALUE",
            "takes 4 values per row, got 3",
        ),
        (
            json!({"inputs": []}),
            400,
            "INVALID_PARAMETER_VALUE",
            "no rows",
        ),
        (
            json!({"dataframe_split": {"columns": COLUMNS, "data": []}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "no rows",
        ),
        (
            json!({"rows": [[1, 2, 3, 4]]}),
            400,
            "BAD_REQUEST",
            "none of the input keys",
        ),
        (json!([[1, 2, 3, 4]]), 400, "BAD_REQUEST", "bare list"),
        (
            json!({"inputs": ROWS, "params": {"depth": 3}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "unknown param `depth`",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (got, answer) = server.post_json("/invocations", &body).await;
        assert_error(got, &answer, status, code, needle);
    }
    let (status, answer) = server
        .post("/invocations", "application/json", "{\"inputs\": [[1, 2,")
        .await;
    assert_error(status, &answer, 400, "BAD_REQUEST", "malformed JSON");
    let (status, answer) = server.post("/invocations", "application/json", "").await;
    assert_error(status, &answer, 400, "BAD_REQUEST", "empty");
    let (status, answer) = server
        .post("/invocations", "text/csv", "sepal_length,sepal_width\n")
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "no data rows",
    );
    let (status, answer) = server.post("/invocations", "text/plain", "5.1").await;
    assert_error(status, &answer, 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain");
    let (status, answer) = server
        .post("/invocations", "application/json; charset=latin1", "{}")
        .await;
    assert_error(status, &answer, 415, "UNSUPPORTED_MEDIA_TYPE", "latin1");
    let big = json!({"inputs": vec![ROWS[0]; 200]});
    let (status, answer) = server.post_json("/invocations", &big).await;
    assert_error(status, &answer, 413, "REQUEST_TOO_LARGE", "2048 bytes");
    let (status, answer) = server.post_json("/no/such/route", &json!({})).await;
    assert_error(status, &answer, 404, "ENDPOINT_NOT_FOUND", "/no/such/route");
    let (status, text) = server.get("/invocations").await;
    assert_eq!(status, 405, "{text}");
    let (status, answer) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_error(
        status,
        &answer,
        400,
        "BAD_REQUEST",
        "does not serve chat completions",
    );
    // The server is still well after all that.
    let (status, answer) = server
        .post_json("/invocations", &json!({"inputs": ROWS}))
        .await;
    assert_eq!((status, labels(&answer)), (200, LABELS.to_vec()));
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_answered_in_order() {
    let server = iris_server(&["--batch-window-ms", "20", "--max-batch", "64"]).await;
    let calls = (0..24).map(|index| {
        let server = &server;
        async move {
            let row = ROWS[index % 3];
            let (status, answer) = server
                .post_json("/invocations", &json!({"inputs": [row]}))
                .await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(labels(&answer), [LABELS[index % 3]]);
        }
    });
    futures::future::join_all(calls).await;
    let (_, metrics) = server.get("/metrics").await;
    let count = metric(&metrics, "sluice_serve_batch_size_count{runtime=\"onnx\"}");
    let sum = metric(&metrics, "sluice_serve_batch_size_sum{runtime=\"onnx\"}");
    assert_eq!(sum, 24.0, "{metrics}");
    assert!(
        count < 24.0,
        "24 concurrent requests ran in {count} model calls; expected batching"
    );
    assert!(
        metrics.contains("sluice_serve_requests_total{route=\"/invocations\",status=\"200\"} 24"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_serve_model_load_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_serve_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn an_mlflow_onnx_model_directory_is_served_with_its_signature() {
    let mlmodel = r#"
flavors:
  onnx: {data: model.onnx, onnx_version: 1.17.0, providers: [CPUExecutionProvider]}
  python_function: {loader_module: mlflow.onnx, data: model.onnx, env: {conda: conda.yaml}}
mlflow_version: 2.17.0
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
"#;
    let dir = model_dir(
        "iris-mlflow",
        &[
            ("MLmodel", mlmodel.as_bytes()),
            ("model.onnx", &iris_onnx()),
        ],
    );
    let server = Server::start(&dir, &[]).await;
    server.wait_ready().await;
    let (status, answer) = server
        .post_json("/invocations", &json!({"instances": ROWS}))
        .await;
    // MLflow's answer for a tensor signature: every output whole, by name.
    assert_eq!(
        (status, answer["predictions"]["label"].clone()),
        (200, json!(LABELS)),
        "{answer}"
    );
    assert_eq!(
        answer["predictions"]["probabilities"]
            .as_array()
            .map(Vec::len),
        Some(LABELS.len()),
        "{answer}"
    );
    let (status, answer) = server
        .post_json(
            "/invocations",
            &json!({"instances": [[5.1, 3.5, "x", 0.2]]}),
        )
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "row 0: expected a float, got a string",
    );
}

#[tokio::test]
async fn health_reports_a_model_that_fails_to_load_and_ping_stays_up() {
    let dir = model_dir(
        "broken",
        &[
            ("sluice-model.yaml", MANIFEST.as_bytes()),
            ("iris.onnx", b"not an onnx graph"),
        ],
    );
    let server = Server::start(&dir, &[]).await;
    let (status, text) = server.get("/ping").await;
    assert_eq!(status, 200, "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body: Value = loop {
        let (status, text) = server.get("/health").await;
        assert_eq!(status, 503, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        if body["message"].as_str().unwrap().contains("failed to load")
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_error(503, &body, 503, "TEMPORARILY_UNAVAILABLE", "iris.onnx");
    let (status, answer) = server
        .post_json("/invocations", &json!({"inputs": ROWS}))
        .await;
    assert_error(
        status,
        &answer,
        503,
        "TEMPORARILY_UNAVAILABLE",
        "failed to load",
    );
}

/// A file of a model directory: name and contents.
type ModelFile<'a> = (&'a str, &'a [u8]);

#[test]
fn a_broken_model_directory_ends_the_process_with_the_reason() {
    let cases: [(&[ModelFile], &str); 4] = [
        (&[], "neither an `MLmodel` nor a `sluice-model.yaml`"),
        (&[("sluice-model.yaml", b"format: [onnx\n")], "cannot parse"),
        (
            &[(
                "sluice-model.yaml",
                b"format: onnx\ntask: predict\nfiles: {model: m.onnx}\nsignatur: {}\n",
            )],
            "signatur",
        ),
        (
            &[(
                "MLmodel",
                b"flavors:\n  sklearn: {pickled_model: model.pkl}\n",
            )],
            "need MLflow's scoring server",
        ),
    ];
    for (files, needle) in cases {
        let output = run_to_exit(&model_dir("bad", files));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    let output = run_to_exit(std::path::Path::new("/nonexistent/sluice/model"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/sluice/model"));
}

#[tokio::test]
async fn after_sigterm_the_drain_delay_keeps_answering_while_health_says_503() {
    let mut server = iris_server(&["--drain-delay", "3s"]).await;
    let request = serde_json::json!({"dataframe_records": records()});
    server.terminate();
    let signalled = Instant::now();
    // Not ready any more, so routing layers stop sending…
    let mut health = 0;
    while signalled.elapsed() < Duration::from_secs(2) {
        health = server.get("/health").await.0;
        if health == 503 {
            break;
        }
    }
    assert_eq!(health, 503, "/health after SIGTERM");
    // …while whatever they still send in the meantime is answered, on new connections too.
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_millis(2000) {
        let (status, body) = server.post_json("/invocations", &request).await;
        assert_eq!(status, 200, "{body}");
        answered += 1;
        let fresh = reqwest::Client::new()
            .post(server.url("/invocations"))
            .json(&request)
            .send()
            .await
            .expect("a new connection is accepted during the delay");
        assert_eq!(fresh.status(), 200);
    }
    assert!(answered > 0);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("serve exits after the delay");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "exited {:?} after SIGTERM, before the 3 s delay",
        signalled.elapsed()
    );
}
