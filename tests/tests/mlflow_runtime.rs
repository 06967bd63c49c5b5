//! A model the builtin runtime cannot run, served by MLflow's own scoring server: a
//! scikit-learn logistic regression saved by `mlflow.sklearn.save_model` (a pickle, flavors
//! `python_function` and `sklearn`) and registered in a real `mlflow server`. The source check
//! reads the MLmodel, the ModelVersion's status names its flavors and the engine they need, and
//! an entity that names no runtime runs the project's MLflow runtime image (`images/mlflow`) as
//! a real container on the test kubelet, non-root, behind the capture sidecar. Predictions come back
//! through the gateway in MLflow's own shape, and every request is a row of the inference
//! table that DuckDB reads back from the lake claim after the pod drained.

mod operator_support;

use std::{path::Path, time::Duration};

use operator_support::Scene;
use serde_json::{Value, json};
use sluice_tests::{
    cluster::shared,
    gateway::GatewayProcess,
    images::{self, podman, run_ok},
    lake::{claim_folder, delete_and_drain, duckdb_row, parquet_table},
    mlflow::Mlflow,
};

const REQUESTS: usize = 12;

#[tokio::test(flavor = "multi_thread")]
async fn an_sklearn_model_runs_on_the_mlflow_runtime_with_its_rows_captured() {
    let dir = sluice_tests::process::temp_dir("mlflow-runtime");
    let server = Mlflow::start(&dir).await;
    let folder = dir.join("sklearn-model");
    server.save_sklearn_model(&folder);
    let registered = server.register(&folder, "Iris_Sklearn", "champion");
    assert_eq!(registered.version, "1");

    let runtime = images::mlflow_runtime().reference();
    let scene = Scene::with_config(
        "mlflow-runtime",
        true,
        &format!("images:\n  engines:\n    mlflow: {runtime}\n"),
    )
    .await;
    scene
        .apply(
            json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-sklearn-1"},
            "spec": {"model": "iris-sklearn", "version": 1, "format": "mlflow",
                     "source": {"uri": "models:/Iris_Sklearn/1", "trackingUri": server.uri}}}),
        )
        .await;
    scene
        .apply(
            json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
            "metadata": {"name": "iris"},
            "spec": {"servedEntities": [{"name": "sk", "model": "iris-sklearn", "version": 1}],
                     "autoCapture": {"enabled": true, "catalogName": "ml", "schemaName": "prod"}}}),
        )
        .await;
    // A first pull of the image (700 MB) and MLflow's start take longer than `settled` waits.
    let endpoints = scene.endpoints();
    sluice_tests::wait::eventually(
        "iris READY on the MLflow runtime",
        Duration::from_secs(300),
        || scene.logs(),
        || async {
            let state = endpoints.get("iris").await.ok()?.status?.state?;
            (format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING")
                .then_some(())
        },
    )
    .await;

    // The source check read the MLmodel: its flavors chose the engine.
    let version = scene
        .versions()
        .get("iris-sklearn-1")
        .await
        .expect("version");
    let status = version.status.expect("status");
    assert_eq!(
        (status.flavors.as_slice(), status.engine),
        (
            ["python_function".to_string(), "sklearn".to_string()].as_slice(),
            Some(sluice_crds::Engine::Mlflow)
        ),
        "{status:?}"
    );

    // The engine container is our image, run as the restricted non-root user.
    let pods = scene.pods_of("iris").await;
    let engine = pods[0]
        .spec
        .as_ref()
        .expect("spec")
        .containers
        .iter()
        .find(|c| c.image.as_deref() == Some(runtime.as_str()))
        .unwrap_or_else(|| panic!("no container runs {runtime}: {:?}", pods[0].spec));
    assert_eq!(
        engine.args.as_ref().expect("args")[..2],
        ["models".to_string(), "serve".to_string()]
    );

    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &scene.ns).await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/iris/invocations", gateway.base);
    let bodies = [
        json!({"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                                   "data": [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]]}}),
        json!({"dataframe_records": [{"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
                                     {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}),
    ];
    for i in 0..REQUESTS {
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(bodies[i % 2].to_string())
            .send()
            .await
            .expect("request");
        let status = answer.status();
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"predictions": [2, 0]}),
            "MLflow's scoring server answers in its own shape"
        );
    }
    // MLflow's own validation error passes through unchanged, with its status.
    let refused = http
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"dataframe_split": {"columns": ["nope"], "data": [[1]]}}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.expect("JSON");
    assert_eq!(
        refused["error_code"], "INVALID_PARAMETER_VALUE",
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("Model is missing inputs")),
        "{refused}"
    );

    let client = scene.client.clone();
    delete_and_drain(&client, &scene.ns, "iris", || scene.logs()).await;
    stops_on_sigterm(&runtime, &folder);
    let lake = claim_folder(&client, &scene.ns, "sluice-lake").await;
    let table = parquet_table(&lake.join("ml/prod/iris_payload"));
    assert_eq!(
        duckdb_row(&format!(
            "select count(*), count(distinct request_id), \
             count(*) filter (where status_code = 200 and response like '%predictions%') \
             from {table}"
        )),
        format!("({0}, {0}, {1})", REQUESTS + 1, REQUESTS),
        "rows in {}",
        lake.display()
    );
}

/// The MLflow runtime image serving the model folder `model` as `mlflow models serve` on
/// 127.0.0.1:`port`, run as restricted as a pod runs it (read-only root, no capabilities, a
/// tmpfs for /tmp), with `network` (`none`, or `host` to be reached); removed when dropped
/// (also when the test fails).
struct RuntimeContainer(String);

impl RuntimeContainer {
    fn start(runtime: &str, model: &Path, network: &str, port: u16) -> Self {
        images::pull(runtime).unwrap_or_else(|e| panic!("pulling {runtime}: {e}"));
        let name = format!(
            "sluice-mlflow-{}-{}",
            model
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model"),
            std::process::id()
        );
        let container = Self(name.clone());
        run_ok(
            podman()
                .args(["run", "-d", "--name", &name, "--network", network])
                .args(["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"])
                .args(["--ulimit", "nofile=16384:16384"])
                .args(["--ulimit", "nproc=16384:16384"])
                .arg("-v")
                .arg(format!("{}:/models:ro", model.display()))
                .arg(runtime)
                .args(["models", "serve", "-m", "/models", "-h", "127.0.0.1"])
                .args(["-p", &port.to_string(), "--env-manager", "local"]),
        );
        container
    }

    fn name(&self) -> &str {
        &self.0
    }

    /// What the container printed so far (standard output, then standard error).
    fn logs(&self) -> String {
        let out = podman()
            .args(["logs", &self.0])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for RuntimeContainer {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "2", &self.0]).output();
    }
}

/// The runtime's PID 1 (images/mlflow/init.py) hands SIGTERM to MLflow's CLI and the scoring
/// server: uvicorn shuts down as asked, instead of everything being killed when the grace
/// period ends (exit status 137), as it was with the CLI as PID 1.
fn stops_on_sigterm(runtime: &str, model: &Path) {
    let container = RuntimeContainer::start(runtime, model, "none", 8000);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !container.logs().contains("Application startup complete") {
        assert!(
            std::time::Instant::now() < deadline,
            "the scoring server did not start: {}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A stop that waits far longer than a clean shutdown takes: a kill would show as 137.
    let name = container.name();
    run_ok(podman().args(["stop", "-t", "60", name]));
    let code = run_ok(podman().args(["inspect", "--format", "{{.State.ExitCode}}", name]));
    let logs = container.logs();
    assert_ne!(code.trim(), "137", "killed, not stopped: {logs}");
    assert!(
        logs.contains("Application shutdown complete"),
        "uvicorn shut down as asked: {logs}"
    );
}

/// A LangChain chain (flavors `langchain` and `python_function`, saved by
/// `mlflow.langchain.save_model` from code) runs on the same image, as a restricted container:
/// MLflow's scoring server answers records of the chain's input in its own shape.
#[tokio::test(flavor = "multi_thread")]
async fn a_langchain_chain_runs_on_the_mlflow_runtime_image() {
    let dir = sluice_tests::process::temp_dir("mlflow-langchain");
    let folder = dir.join("chain");
    sluice_tests::mlflow::save_langchain_chain(&folder, "Sluice serves it.");
    let runtime = images::mlflow_runtime().reference();
    let port = sluice_tests::process::unused_port("127.0.0.1");
    let container = RuntimeContainer::start(&runtime, &folder, "host", port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let logs = || container.logs();
    sluice_tests::wait::eventually(
        "the chain's scoring server to answer /ping",
        Duration::from_secs(120),
        logs,
        || async {
            let ping = http.get(format!("{base}/ping")).send().await.ok()?;
            (ping.status() == 200).then_some(())
        },
    )
    .await;
    for (body, expected) in [
        (
            json!({"dataframe_records": [{"question": "What serves models?"}]}),
            json!({"predictions": ["Sluice serves it."]}),
        ),
        (
            json!({"inputs": [{"question": "a"}, {"question": "b"}]}),
            json!({"predictions": ["Sluice serves it.", "Sluice serves it."]}),
        ),
    ] {
        let answer = http
            .post(format!("{base}/invocations"))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 200, "{body}: {}", logs());
        let answer: Value = answer.json().await.expect("JSON");
        assert_eq!(answer, expected, "{body}");
    }
}
