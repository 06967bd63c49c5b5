//! ONNX models as users export them, served by the builtin runtime: `tests/onnx_ml/convert.py`
//! (in `.venv-mlflow`, with skl2onnx, onnxmltools, XGBoost, LightGBM and onnxruntime from
//! PyPI) converts, with the converters' default options, scikit-learn random-forest and
//! gradient-boosting regressors (`TreeEnsembleRegressor`), a random-forest classifier
//! (`TreeEnsembleClassifier` + `ZipMap`), an imputer → scaler → logistic regression pipeline
//! (`Imputer`, `Scaler`, `LinearClassifier`, `Normalizer`, `ZipMap`; missing values sent as
//! `null`), a min-max scaler → binarizer → linear regression pipeline (`Binarizer`,
//! `LinearRegressor`), a one-hot → logistic regression pipeline (`OneHotEncoder`), a label
//! encoder (`LabelEncoder`, string in, integer out), and XGBoost and LightGBM regressors and
//! classifiers (onnxmltools). Every prediction equals onnxruntime's on the same rows (labels
//! exactly, scores within 1e-4); `ZipMap` outputs answer one `{label: probability}` map per row.

mod common;

use std::process::Command;

use common::{Closeness, Server, assert_json_close, model_dir, temp_dir};
use serde_json::{Value, json};

const MANIFEST: &str = "format: onnx\ntask: predict\nfiles: {model: model.onnx}\n";

/// onnxruntime's answer: labels exactly, scores within 1e-4.
const AS_ONNXRUNTIME: Closeness = Closeness {
    peer: "onnxruntime",
    relative: 1e-4,
    exact_integers: false,
};

/// Asserts `ours` is onnxruntime's answer `theirs`.
fn close(ours: &Value, theirs: &Value, at: &str) {
    assert_json_close(ours, theirs, at, AS_ONNXRUNTIME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scikit_learn_exports_answer_what_onnxruntime_answers() {
    let out = temp_dir("onnx-ml");
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-mlflow/bin/python");
    assert!(
        python.exists(),
        "run .ci/setup: it installs skl2onnx and onnxruntime"
    );
    let converted = Command::new(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_ml/convert.py"))
        .arg(&out)
        // MLflow leaves an `mlruns` folder where it runs: there, not in the repository.
        .current_dir(&out)
        .output()
        .expect("convert.py runs");
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let cases: Value =
        serde_json::from_slice(&std::fs::read(out.join("cases.json")).expect("cases"))
            .expect("JSON");
    let cases = cases.as_object().expect("cases");
    assert_eq!(cases.len(), 11);
    let mut served = Vec::new();
    for (name, case) in cases {
        let model = std::fs::read(out.join(name).join("model.onnx")).expect("model");
        let dir = model_dir(
            name,
            &[
                ("sluice-model.yaml", MANIFEST.as_bytes()),
                ("model.onnx", &model),
            ],
        );
        served.push((name.clone(), dir, case));
        // The same model as `mlflow.onnx.save_model` wrote it, for two of them.
        let saved = out.join(name).join("mlflow");
        if saved.join("MLmodel").is_file() {
            served.push((format!("{name} (MLflow)"), saved, case));
        }
    }
    assert_eq!(served.len(), 13);
    for (name, dir, case) in served {
        let server = Server::start(&dir, &[]).await;
        server.wait_ready().await;
        let (status, body) = server
            .post_json("/invocations", &json!({"inputs": case["inputs"]}))
            .await;
        assert_eq!(status, 200, "{name} ({}): {body}", case["ops"]);
        let outputs = case["outputs"].as_object().expect("outputs");
        if name.ends_with("(MLflow)") {
            // As MLflow's scoring server answers `inputs` for the onnx flavor: every output
            // whole, by name.
            for (output, values) in outputs {
                close(
                    &body["predictions"][output],
                    values,
                    &format!("{name} {output}"),
                );
            }
            continue;
        }
        let predictions = body["predictions"].as_array().expect("predictions");
        for (row, prediction) in predictions.iter().enumerate() {
            let at = format!("{name} row {row}");
            if outputs.len() == 1 {
                let theirs = &outputs.values().next().unwrap()[row];
                close(prediction, theirs, &at);
            } else {
                for (output, values) in outputs {
                    close(&prediction[output], &values[row], &format!("{at} {output}"));
                }
            }
        }
        assert_eq!(predictions.len(), 16, "{name}");
    }
}
