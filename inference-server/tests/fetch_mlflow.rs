//! `inference-server fetch` from a real MLflow tracking and registry server (`mlflow server` from
//! `.venv-mlflow`, with `--serve-artifacts`): the MLflow Python client logs the iris model folder
//! as a run's artifacts, registers it as model `iris` version 1 and points the alias `champion`
//! at it. `models:/iris/1`, `models:/iris@champion` and `runs:/<run>/model` each arrive whole
//! and byte-identical through the server's REST API and artifact proxy; `fetch --check` names the
//! location a reference resolved to (what the operator publishes as `status.resolvedUri`); an
//! unknown alias, a stage name and a missing tracking server fail naming what is wrong. Behind
//! MLflow's basic authentication, the credentials of the environment (a Secret's
//! `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`) are sent, and wrong ones fail naming the variables,
//! never printing the password. A server whose artifact root is an S3 bucket (moto, not
//! proxied) names `s3://` locations, which arrive with the Secret's `AWS_*` keys.

mod capture_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capture_support::temp_dir;
use sluice_tests::mlflow::{ADMIN, ADMIN_PASSWORD, Mlflow};
use sluice_tests::object_store::S3Server;

const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

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
    let server = Mlflow::start(&dir).await;
    let folder = model_folder(&dir);
    let registered = server.register(&folder, "iris", "champion");
    let run = registered.run.as_str();
    assert_eq!(registered.version, "1");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_artifacts_are_in_s3_is_read_from_the_bucket() {
    let dir = temp_dir("mlflow-s3");
    let s3 = S3Server::start().await;
    s3.put_folder("mlflow-artifacts", "keep", &[]).await;
    let server = Mlflow::start_on_s3(&dir, &s3.endpoint, "mlflow-artifacts").await;
    let folder = model_folder(&dir);
    let registered = server.register(&folder, "iris", "champion");
    assert_eq!(registered.version, "1");
    // The Secret's variables: the bucket's keys and endpoint (the tracking server holds none).
    let credentials = s3.credentials();
    let env: Vec<(&str, &str)> = credentials
        .as_object()
        .expect("credentials")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().expect("text")))
        .collect();
    let tracking = ["--mlflow-tracking-uri", server.uri.as_str()];
    let check = fetch(
        "models:/iris@champion",
        &dir.join("unused"),
        &[&tracking[..], &["--check"]].concat(),
        &env,
    );
    assert!(check.status.success(), "{}", text(&check));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("models:/iris@champion resolved to s3://mlflow-artifacts/")
            && said.contains("readable, 3 objects"),
        "{said}"
    );
    let dest = dir.join("dest");
    let out = fetch("models:/iris@champion", &dest, &tracking, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_folder(&folder, &dest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_credentials_reach_an_authenticated_server() {
    let dir = temp_dir("mlflow-auth");
    let server = Mlflow::start_with(&dir, true).await;
    let folder = model_folder(&dir);
    server.register(&folder, "iris", "champion");
    let tracking = ["--mlflow-tracking-uri", server.uri.as_str()];
    let dest = dir.join("dest");
    let out = fetch(
        "models:/iris@champion",
        &dest,
        &tracking,
        &[
            ("MLFLOW_TRACKING_USERNAME", ADMIN),
            ("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_same_folder(&folder, &dest);
    let wrong = "not-the-password-5c1b";
    let refused = fetch(
        "models:/iris@champion",
        &dir.join("refused"),
        &tracking,
        &[
            ("MLFLOW_TRACKING_USERNAME", ADMIN),
            ("MLFLOW_TRACKING_PASSWORD", wrong),
        ],
    );
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("refused the credentials") && said.contains("MLFLOW_TRACKING_USERNAME"),
        "{said}"
    );
    assert!(!said.contains(wrong), "the password is never printed");
    let anonymous = fetch(
        "models:/iris@champion",
        &dir.join("anonymous"),
        &tracking,
        &[],
    );
    assert!(!anonymous.status.success(), "{}", text(&anonymous));
}
