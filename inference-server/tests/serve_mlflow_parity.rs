//! The builtin ONNX runtime answers an MLflow model as MLflow's own scoring server does.
//! `tests/mlflow_parity/save.py` (in `.venv-mlflow`) saves six models with
//! `mlflow.onnx.save_model`: a scikit-learn classifier with a tensor signature and named
//! outputs, the same graph without a signature, the converter's default ZipMap classifier, a
//! regressor with a tensor signature and one unnamed `[-1, 1]` output, the same regressor with a
//! column signature (a DataFrame input example), and a graph with two named inputs and two
//! outputs. Each model runs under `mlflow models serve --env-manager local` (MLflow 3.6.0 with
//! onnxruntime) and under `inference-server serve`, and both get the same bodies in every
//! form MLflow reads: `dataframe_split`, `dataframe_records`, `instances` and `inputs` as lists,
//! records and columns, and CSV. Every body MLflow answers, ours answers with the same field
//! names, shapes and types (integers stay integers; floats within 1e-5, tract and onnxruntime
//! round differently); a body MLflow refuses is refused by ours too unless it is one of the
//! forms ours also reads (listed in `LENIENT`, documented in docs/model-directory.md). Records
//! and dicts of columns are sent with their keys in column order, not sorted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Closeness, Server, assert_json_close, temp_dir};
use serde_json::{Value, json};
use sluice_tests::wait::eventually;

/// A model's name, its column names and two rows.
type Case<'a> = (&'a str, &'a [&'a str], &'a Vec<Vec<f64>>);

/// `mlflow models serve` on one model folder.
struct MlflowServe {
    child: Child,
    base: String,
}

impl MlflowServe {
    fn start(bin: &Path, model: &Path, work: &Path) -> Self {
        let port = sluice_tests::process::unused_port("127.0.0.1");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(work.join(format!("mlflow-{port}.log"))).expect("log");
        let child = Command::new(bin.join("mlflow"))
            .args(["models", "serve", "-m"])
            .arg(model)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["--env-manager", "local"])
            .env("PATH", path)
            .current_dir(work)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("mlflow models serve starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for MlflowServe {
    fn drop(&mut self) {
        // uvicorn gets SIGTERM when its parent dies (MLflow sets PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(base: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/invocations"))
        .header("content-type", content_type)
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/invocations: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

async fn wait_ping(base: &str, log: &Path) {
    let client = reqwest::Client::new();
    let answers = || async {
        let ping = client.get(format!("{base}/ping")).send().await;
        ping.is_ok_and(|r| r.status() == 200).then_some(())
    };
    let logs = || format!("logs in {}", log.display());
    let limit = Duration::from_secs(180);
    eventually("mlflow models serve to start", limit, logs, answers).await;
}

/// MLflow's answer, to the letter but for float rounding.
const AS_MLFLOW: Closeness = Closeness {
    peer: "MLflow",
    relative: 1e-5,
    exact_integers: true,
};

/// A JSON object with its keys in the given order (`json!` would sort them, and a model
/// without a signature takes its features in the order the body names them).
fn object(pairs: impl IntoIterator<Item = (String, Value)>) -> String {
    let fields: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| format!("{}:{value}", Value::String(key)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Every form of one table of `columns` and `rows` that MLflow's scoring server reads.
fn bodies(columns: &[&str], rows: &[Vec<f64>]) -> Vec<(&'static str, &'static str, String)> {
    let cell = |v: f64, wrap: bool| if wrap { json!([v]) } else { json!(v) };
    let records = |wrap: bool| -> String {
        let each: Vec<String> = rows
            .iter()
            .map(|row| {
                object(
                    columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.to_string(), cell(*v, wrap))),
                )
            })
            .collect();
        format!("[{}]", each.join(","))
    };
    let by_column = |wrap: bool| -> String {
        object(columns.iter().enumerate().map(|(i, c)| {
            let values: Vec<Value> = rows.iter().map(|r| cell(r[i], wrap)).collect();
            (c.to_string(), Value::Array(values))
        }))
    };
    let csv = std::iter::once(columns.join(","))
        .chain(
            rows.iter()
                .map(|r| r.iter().map(f64::to_string).collect::<Vec<_>>().join(",")),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let json = "application/json";
    let rows = json!(rows);
    vec![
        (
            "dataframe_split",
            json,
            format!(
                r#"{{"dataframe_split": {{"columns": {}, "data": {rows}}}}}"#,
                json!(columns)
            ),
        ),
        (
            "dataframe_records",
            json,
            format!(r#"{{"dataframe_records": {}}}"#, records(false)),
        ),
        (
            "instances lists",
            json,
            format!(r#"{{"instances": {rows}}}"#),
        ),
        (
            "instances records",
            json,
            format!(r#"{{"instances": {}}}"#, records(false)),
        ),
        (
            "instances records of tensors",
            json,
            format!(r#"{{"instances": {}}}"#, records(true)),
        ),
        ("inputs lists", json, format!(r#"{{"inputs": {rows}}}"#)),
        (
            "inputs records",
            json,
            format!(r#"{{"inputs": {}}}"#, records(false)),
        ),
        (
            "inputs columns",
            json,
            format!(r#"{{"inputs": {}}}"#, by_column(false)),
        ),
        (
            "inputs columns of tensors",
            json,
            format!(r#"{{"inputs": {}}}"#, by_column(true)),
        ),
        ("csv", "text/csv", csv),
    ]
}

/// Bodies MLflow refuses and ours answers, because ours reads more forms: a single-input
/// graph fed named columns that are not its input's name (MLflow hands the names to
/// onnxruntime, which knows only `input`; ours takes the columns in body order as the
/// features), tensors sent by name or as records to a tensor signature (MLflow: "un-named model
/// signature ... an input of type dict was found"), CSV for a tensor signature (MLflow fails
/// building pandas dtypes from a TensorSpec), and lists for a column signature (MLflow: "Model
/// is missing inputs"; ours takes them in the signature's column order).
const LENIENT: &[(&str, &str)] = &[
    ("classifier", "instances records"),
    ("classifier", "instances records of tensors"),
    ("classifier", "inputs records"),
    ("classifier", "inputs columns"),
    ("classifier", "inputs columns of tensors"),
    ("classifier", "csv"),
    ("classifier_nosig", "instances records"),
    ("classifier_nosig", "instances records of tensors"),
    ("classifier_nosig", "inputs records"),
    ("classifier_nosig", "inputs columns"),
    ("classifier_nosig", "inputs columns of tensors"),
    ("zipmap", "instances records"),
    ("zipmap", "instances records of tensors"),
    ("zipmap", "inputs records"),
    ("zipmap", "inputs columns"),
    ("zipmap", "inputs columns of tensors"),
    ("regressor", "instances records"),
    ("regressor", "instances records of tensors"),
    ("regressor", "inputs records"),
    ("regressor", "inputs columns"),
    ("regressor", "inputs columns of tensors"),
    ("regressor", "csv"),
    ("regressor_columns", "instances lists"),
    ("regressor_columns", "inputs lists"),
    ("two_inputs", "instances records"),
    ("two_inputs", "inputs records"),
    ("two_inputs", "inputs columns"),
    ("two_inputs", "csv"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_models_saved_by_mlflow_answer_as_mlflow_models_serve_answers() {
    let out = temp_dir("mlflow-parity");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-mlflow/bin");
    assert!(
        venv.join("mlflow").exists(),
        "run .ci/setup: it installs mlflow, skl2onnx and onnxruntime"
    );
    let saved = Command::new(venv.join("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlflow_parity/save.py"))
        .arg(&out)
        .current_dir(&out)
        .output()
        .expect("save.py runs");
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let iris = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
    let iris_rows = vec![vec![5.1, 3.5, 1.4, 0.2], vec![6.7, 3.0, 5.2, 2.3]];
    let three = ["a", "b", "c"];
    let three_rows = vec![vec![5.1, 3.5, 1.4], vec![6.7, 3.0, 5.2]];
    let two_rows = vec![vec![1.5, 2.0], vec![2.0, 3.0]];
    let cases: [Case; 6] = [
        ("classifier", &iris, &iris_rows),
        ("classifier_nosig", &iris, &iris_rows),
        ("zipmap", &iris, &iris_rows),
        ("regressor", &three, &three_rows),
        ("regressor_columns", &three, &three_rows),
        ("two_inputs", &["a", "b"], &two_rows),
    ];
    // All MLflow servers start side by side (each takes seconds to import MLflow).
    let servers: Vec<(PathBuf, MlflowServe)> = cases
        .iter()
        .map(|(name, _, _)| {
            let model = out.join(name);
            let server = MlflowServe::start(&venv, &model, &out);
            (model, server)
        })
        .collect();
    let mut answered = 0;
    let mut refused_by_both = 0;
    for ((name, columns, rows), (model, mlflow)) in cases.iter().zip(&servers) {
        wait_ping(&mlflow.base, &out).await;
        let ours = Server::start(model, &[]).await;
        ours.wait_ready().await;
        for (form, content_type, body) in bodies(columns, rows) {
            let at = format!("{name}, {form}");
            let (their_status, theirs) = post(&mlflow.base, content_type, &body).await;
            let (our_status, answer) = post(&ours.base, content_type, &body).await;
            eprintln!("{at}: MLflow {their_status}, ours {our_status}");
            if their_status == 200 {
                assert_eq!(
                    our_status, 200,
                    "{at}: MLflow answered {theirs}, ours {answer}"
                );
                assert_json_close(&answer, &theirs, &at, AS_MLFLOW);
                answered += 1;
            } else if LENIENT.contains(&(name, form)) {
                assert_eq!(our_status, 200, "{at}: ours reads this form: {answer}");
            } else {
                assert!(
                    (400..500).contains(&their_status),
                    "{at}: MLflow failed ({their_status}): {theirs}"
                );
                assert_eq!(
                    our_status, 400,
                    "{at}: MLflow refused ({theirs}); ours answered {answer}"
                );
                refused_by_both += 1;
            }
        }
    }
    // What MLflow 3.6.0 answers of these 60 bodies; a change means the comparison changed.
    assert_eq!((answered, refused_by_both), (25, 7));
}
