//! A real MLflow tracking and registry server (`mlflow server` from `.venv-mlflow`, which
//! `.ci/setup` makes) on loopback, its artifacts on local disk behind its proxy or in an S3
//! bucket (moto), and the MLflow Python client to register models in it, as a data scientist
//! would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::process::unused_loopback_port;
use crate::repo_root;

/// A tool of `.venv-mlflow` (`mlflow`, `python`).
pub fn tool(name: &str) -> PathBuf {
    let path = repo_root().join(".venv-mlflow/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup (it installs mlflow)",
        path.display()
    );
    path
}

/// The admin user of a server started with authentication.
pub const ADMIN: &str = "admin";
/// Its password (MLflow's default).
pub const ADMIN_PASSWORD: &str = "password1234";

/// A running `mlflow server`; killed when dropped.
pub struct Mlflow {
    child: Child,
    /// Its tracking URI (`http://127.0.0.1:<port>`).
    pub uri: String,
    dir: PathBuf,
    /// Variables the Python client gets (an S3 artifact store's endpoint and keys).
    client_env: Vec<(String, String)>,
}

/// A model version registered by [`Mlflow::register`].
#[derive(Debug)]
pub struct Registered {
    /// The run that logged the artifacts.
    pub run: String,
    /// The registered version (`"1"` for the first).
    pub version: String,
}

impl Mlflow {
    /// Starts a server keeping its store and artifacts under `dir`; waits until `/health`
    /// answers.
    pub async fn start(dir: &Path) -> Mlflow {
        Self::start_with(dir, false).await
    }

    /// [`start`](Self::start), with MLflow's basic authentication when `auth` (the built-in
    /// admin, [`ADMIN`] / [`ADMIN_PASSWORD`]; every other caller is refused).
    pub async fn start_with(dir: &Path, auth: bool) -> Mlflow {
        let artifacts = vec![
            "--serve-artifacts".to_string(),
            "--artifacts-destination".into(),
            dir.join("artifacts").display().to_string(),
        ];
        Self::launch(dir, auth, &artifacts, Vec::new()).await
    }

    /// A server whose artifacts live in an S3 bucket (`s3://<bucket>/`, on the S3-compatible
    /// server at `endpoint`), not proxied: the client uploads there itself and the registry
    /// names `s3://` locations, which the fetch step reads with the Secret's `AWS_*` keys.
    pub async fn start_on_s3(dir: &Path, endpoint: &str, bucket: &str) -> Mlflow {
        let artifacts = vec![
            "--no-serve-artifacts".to_string(),
            "--default-artifact-root".into(),
            format!("s3://{bucket}/"),
        ];
        let env = [
            ("MLFLOW_S3_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Self::launch(dir, false, &artifacts, env.collect()).await
    }

    async fn launch(
        dir: &Path,
        auth: bool,
        artifacts: &[String],
        client_env: Vec<(String, String)>,
    ) -> Mlflow {
        let port = unused_loopback_port();
        let mut command = Command::new(tool("mlflow"));
        if auth {
            command
                .args(["server", "--app-name", "basic-auth"])
                .env("MLFLOW_FLASK_SERVER_SECRET_KEY", "sluice-test-secret")
                .current_dir(dir);
        } else {
            command.arg("server");
        }
        let child = command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .args(artifacts)
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .envs(client_env.iter().map(|(k, v)| (k, v)))
            .stdout(std::fs::File::create(dir.join("mlflow.log")).expect("log"))
            .stderr(std::fs::File::create(dir.join("mlflow.err")).expect("log"))
            .spawn()
            .expect("mlflow server starts");
        let mut server = Mlflow {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            client_env,
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
                server.errors()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The server's stderr so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("mlflow.err")).unwrap_or_default()
    }

    /// Runs `code` with the MLflow Python client against this server (`sys.argv[1]` is its
    /// URI, then `args`), and returns the last line it printed.
    fn client(&self, what: &str, code: &str, args: &[&str]) -> String {
        let out = Command::new(tool("python"))
            // Ignored by a server without authentication.
            .env("MLFLOW_TRACKING_USERNAME", ADMIN)
            .env("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
            .envs(self.client_env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg(format!(
                "import json, sys, mlflow\nfrom mlflow import MlflowClient\n\
                 mlflow.set_tracking_uri(sys.argv[1])\n{code}"
            ))
            .arg(&self.uri)
            .args(args)
            .output()
            .expect("the MLflow client runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines().last().unwrap_or_default().to_string()
    }

    /// Logs `folder` as the artifacts `model` of a new run, registers it as the next version
    /// of `name`, and points `alias` at that version, with the MLflow Python client.
    pub fn register(&self, folder: &Path, name: &str, alias: &str) -> Registered {
        let folder = folder.display().to_string();
        let last = self.client(
            &format!("registering {name}"),
            "folder, name, alias = sys.argv[2:5]\n\
             with mlflow.start_run() as run:\n\
             \x20   mlflow.log_artifacts(folder, 'model')\n\
             c = MlflowClient()\n\
             if not c.search_registered_models(f\"name='{name}'\"):\n\
             \x20   c.create_registered_model(name)\n\
             v = c.create_model_version(name, f'{run.info.artifact_uri}/model', run_id=run.info.run_id)\n\
             c.set_registered_model_alias(name, alias, v.version)\n\
             print(json.dumps({'run': run.info.run_id, 'version': v.version}))\n",
            &[&folder, name, alias],
        );
        let ids: serde_json::Value = serde_json::from_str(&last).expect("JSON");
        Registered {
            run: ids["run"].as_str().expect("run").to_string(),
            version: ids["version"].as_str().expect("version").to_string(),
        }
    }

    /// Trains a scikit-learn logistic regression on the iris columns and saves it with
    /// `mlflow.sklearn.save_model` (flavors `python_function` and `sklearn`, a pickle the
    /// builtin runtime cannot run) into `folder`, an input example included.
    pub fn save_sklearn_model(&self, folder: &Path) {
        let folder = folder.display().to_string();
        self.client(
            "saving an sklearn model",
            "import pandas as pd\n\
             from sklearn.linear_model import LogisticRegression\n\
             cols = ['sepal_length', 'sepal_width', 'petal_length', 'petal_width']\n\
             X = pd.DataFrame([[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3],\n\
             \x20   [6.3, 2.5, 5.0, 1.9], [5.8, 2.7, 4.1, 1.0], [6.0, 2.2, 4.0, 1.0]], columns=cols)\n\
             y = [0, 0, 2, 2, 1, 1]\n\
             model = LogisticRegression(max_iter=1000).fit(X, y)\n\
             mlflow.sklearn.save_model(model, sys.argv[2], input_example=X.head(2))\n\
             print('saved')\n",
            &[&folder],
        );
    }

    /// Points `alias` of registered model `name` at `version`, as a data scientist promotes a
    /// version.
    pub fn set_alias(&self, name: &str, alias: &str, version: &str) {
        self.client(
            &format!("moving {name}@{alias}"),
            "MlflowClient().set_registered_model_alias(*sys.argv[2:5])\n",
            &[name, alias, version],
        );
    }

    /// Deletes version `version` of registered model `name` (MLflow drops its aliases too).
    pub fn delete_version(&self, name: &str, version: &str) {
        self.client(
            &format!("deleting {name}/{version}"),
            "MlflowClient().delete_model_version(*sys.argv[2:4])\n",
            &[name, version],
        );
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves a LangChain chain with `mlflow.langchain.save_model` (MLflow's "models from code":
/// the chain's file is copied into the model): a prompt template, LangChain's own fake LLM that
/// answers `answer` to every prompt, and a string parser. Flavors `langchain` and
/// `python_function`; MLflow's scoring server takes records of `question`.
pub fn save_langchain_chain(folder: &Path, answer: &str) {
    let work = folder.with_extension("code");
    std::fs::create_dir_all(&work).expect("code folder");
    let code = work.join("chain.py");
    std::fs::write(
        &code,
        format!(
            "from langchain_core.language_models.fake import FakeListLLM\n\
             from langchain_core.output_parsers import StrOutputParser\n\
             from langchain_core.prompts import PromptTemplate\n\
             import mlflow\n\
             chain = (PromptTemplate.from_template('Answer briefly: {{question}}')\n\
             \x20   | FakeListLLM(responses=[{answer:?}]) | StrOutputParser())\n\
             mlflow.models.set_model(chain)\n"
        ),
    )
    .expect("chain.py");
    let out = Command::new(tool("python"))
        .arg("-c")
        .arg(
            "import sys, mlflow.langchain\n\
             mlflow.langchain.save_model(lc_model=sys.argv[1], path=sys.argv[2],\n\
             \x20   input_example={'question': 'What serves models?'})\n",
        )
        .arg(&code)
        .arg(folder)
        // MLflow leaves an `mlruns` folder where it runs.
        .current_dir(&work)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "saving the chain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
