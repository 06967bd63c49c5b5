//! `inference-server fetch` from a real MLflow tracking and registry server (`mlflow server` from
//! `.venv-mlflow`, with `--serve-artifacts`): the MLflow Python client logs the iris model folder
//! as a run's artifacts, registers it as model `iris` version 1 and points the alias `champion`
//! at it. `models:/iris/1`, `models:/iris@champion` and `runs:/<run>/model` each arrive whole
//! and byte-identical through the server's REST API and artifact proxy; `fetch --check` names the
//! location a reference resolved to (what the operator publishes as `status.resolvedUri`); an
//! unknown alias, a stage name and a missing tracking server fail naming what is wrong.

mod capture_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use capture_support::{temp_dir, unused_loopback_port};

const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

fn venv(tool: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv-mlflow/bin")
        .join(tool);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup (it installs mlflow)",
        path.display()
    );
    path
}

/// A running `mlflow server`; killed when dropped.
struct Mlflow {
    child: Child,
    uri: String,
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_mlflow(dir: &Path) -> Mlflow {
    let port = unused_loopback_port();
    let child = Command::new(venv("mlflow"))
        .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", "1", "--serve-artifacts"])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--artifacts-destination")
        .arg(dir.join("artifacts"))
        .stdout(std::fs::File::create(dir.join("mlflow.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("mlflow.err")).expect("log"))
        .spawn()
        .expect("mlflow server starts");
    let mut server = Mlflow {
        child,
        uri: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if reqwest::get(format!("{}/health", server.uri))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return server;
        }
        let exited = server.child.try_wait().ok().flatten().is_some();
        assert!(
            Instant::now() < deadline && !exited,
            "mlflow server did not start: {}",
            std::fs::read_to_string(dir.join("mlflow.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The model folder logged: the iris example and a nested file.
fn model_folder(dir: &Path) -> PathBuf {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/iris");
    let folder = dir.join("iris");
    std::fs::create_dir_all(folder.join("extra")).expect("folder");
    for name in ["iris.onnx", "sluice-model.yaml"] {
        std::fs::copy(iris.join(name), folder.join(name)).expect(name);
    }
    std::fs::write(folder.join("extra/notes.txt"), b"nested").expect("notes");
    folder
}

fn assert_same_folder(expected: &Path, got: &Path) {
    for relative in ["iris.onnx", "sluice-model.yaml", "extra/notes.txt"] {
        assert_eq!(
            std::fs::read(got.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}")),
            std::fs::read(expected.join(relative)).expect(relative),
            "{relative}"
        );
    }
}

fn fetch(uri: &str, dest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(["fetch", "--uri", uri, "--dest"])
        .arg(dest)
        .args(["--termination-log", "/nonexistent/termination-log"])
        .args(extra)
        .env_remove("MLFLOW_TRACKING_URI")
        .env("SLUICE_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("fetch runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_references_arrive_through_the_tracking_server() {
    let dir = temp_dir("mlflow");
    let server = start_mlflow(&dir).await;
    let folder = model_folder(&dir);
    let registered = Command::new(venv("python"))
        .arg("-c")
        .arg(
            "import json, sys, mlflow\n\
             from mlflow import MlflowClient\n\
             mlflow.set_tracking_uri(sys.argv[1])\n\
             with mlflow.start_run() as run:\n\
             \x20   mlflow.log_artifacts(sys.argv[2], 'model')\n\
             c = MlflowClient()\n\
             c.create_registered_model('iris')\n\
             v = c.create_model_version('iris', f'{run.info.artifact_uri}/model', run_id=run.info.run_id)\n\
             c.set_registered_model_alias('iris', 'champion', v.version)\n\
             print(json.dumps({'run': run.info.run_id, 'version': v.version}))\n",
        )
        .arg(&server.uri)
        .arg(&folder)
        .output()
        .expect("the MLflow client runs");
    assert!(registered.status.success(), "{}", text(&registered));
    let stdout = String::from_utf8_lossy(&registered.stdout);
    let last = stdout.lines().last().expect("the client's answer");
    let ids: serde_json::Value = serde_json::from_str(last).expect("JSON");
    let run = ids["run"].as_str().expect("run id");
    assert_eq!(ids["version"], "1");

    let tracking = ["--mlflow-tracking-uri", server.uri.as_str()];
    for (i, uri) in [
        "models:/iris/1".to_string(),
        "models:/iris@champion".to_string(),
        format!("runs:/{run}/model"),
    ]
    .iter()
    .enumerate()
    {
        let dest = dir.join(format!("dest-{i}"));
        let out = fetch(uri, &dest, &tracking, &[]);
        assert!(out.status.success(), "{uri}: {}", text(&out));
        assert_same_folder(&folder, &dest);
    }
    // The tracking server from the environment, as a Secret gives it.
    let dest = dir.join("dest-env");
    let out = fetch(
        "models:/iris@champion",
        &dest,
        &[],
        &[
            ("MLFLOW_TRACKING_URI", server.uri.as_str()),
            ("MLFLOW_TRACKING_TOKEN", "tok-7a1c"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_folder(&folder, &dest);
    assert!(
        !text(&out).contains("tok-7a1c"),
        "the token is never printed"
    );

    let check = fetch(
        "models:/iris@champion",
        &dir.join("unused"),
        &[&tracking[..], &["--check"]].concat(),
        &[],
    );
    assert!(check.status.success(), "{}", text(&check));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("models:/iris@champion resolved to mlflow-artifacts:/")
            && said.contains("readable, 3 objects"),
        "{said}"
    );
    assert!(!dir.join("unused").exists(), "a check downloads nothing");

    let missing = fetch("models:/iris@nobody", &dir.join("d1"), &tracking, &[]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("models:/iris@nobody") && text(&missing).contains("nobody"),
        "{}",
        text(&missing)
    );
    let stage = fetch("models:/iris/Production", &dir.join("d2"), &tracking, &[]);
    assert!(!stage.status.success());
    assert!(text(&stage).contains("use an alias"), "{}", text(&stage));
    let nowhere = fetch("models:/iris/1", &dir.join("d3"), &[], &[]);
    assert!(!nowhere.status.success());
    assert!(
        text(&nowhere).contains("no MLflow tracking server"),
        "{}",
        text(&nowhere)
    );
}
