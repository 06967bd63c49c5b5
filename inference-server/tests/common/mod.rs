//! Test harness: starts the real `inference-server serve` binary on 127.0.0.1 with a model
//! directory made for the test, and stops it when dropped.

#![allow(dead_code)]

/// The tiny random Llama of the test support crate, and a model folder of it in a temp dir.
pub mod tiny_llm {
    pub use sluice_tests::tiny_llm::*;

    /// `model` written as a `format` model folder for `task` in a fresh temp dir, and the
    /// reference its answers must match.
    pub fn model_dir(
        label: &str,
        format: &str,
        task: &str,
        model: &Model,
    ) -> (std::path::PathBuf, Model) {
        let dir = super::temp_dir(label);
        let reference = write_model_dir(&dir, format, task, model);
        (dir, reference)
    }
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

/// A fresh, empty directory under the system temp dir.
#[allow(unused_imports)]
pub use sluice_tests::process::temp_dir;

/// A model directory with `files` (name, contents).
pub fn model_dir(label: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = temp_dir(label);
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    dir
}

/// The iris ONNX fixture's bytes.
pub fn iris_onnx() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/iris.onnx")).unwrap()
}

#[allow(unused_imports)]
pub use sluice_tests::process::unused_loopback_port;

/// A running server.
pub struct Server {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts `serve --model-dir dir` plus `extra` flags and waits until `/ping` answers.
    pub async fn start(dir: &Path, extra: &[&str]) -> Server {
        // Port 0: serve announces the port it bound on stdout.
        let output = temp_dir("serve-output").join("stdout");
        let child = Command::new(BINARY)
            .args(["serve", "--model-dir"])
            .arg(dir)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env("SLUICE_LOG", "warn")
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let address =
            sluice_tests::process::announced(&output, &["serve"], Duration::from_secs(20)).await[0];
        let server = Server {
            child,
            base: format!("http://{address}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if server.client.get(server.url("/ping")).send().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not answer /ping within 20 s");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A metric's value from `/metrics` (the first line starting with `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `/health` until it is 200 (panics after 60 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let response = self.client.get(self.url("/health")).send().await.unwrap();
            if response.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the model did not become ready within 60 s");
    }

    /// POSTs a JSON value; answers status and JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post(path, "application/json", body.to_string()).await
    }

    /// POSTs raw bytes with a content type; answers status and JSON body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }

    /// GETs a path; answers status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `serve` expecting it to exit; answers its output.
pub fn run_to_exit(dir: &Path) -> Output {
    run_to_exit_with(dir, &[], &[])
}

/// As [`run_to_exit`], with more flags and environment variables.
pub fn run_to_exit_with(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BINARY)
        .args(["serve", "--model-dir"])
        .arg(dir)
        .args(["--port", "0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not exit within 20 s");
}

/// Asserts an error body with `code` whose message contains `needle`.
pub fn assert_error(
    status: u16,
    body: &serde_json::Value,
    expected_status: u16,
    code: &str,
    needle: &str,
) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
}

/// How [`assert_json_close`] compares numbers with a peer's answer (onnxruntime, MLflow).
#[derive(Clone, Copy, Debug)]
pub struct Closeness {
    /// Whose answer is compared against, for the failure message.
    pub peer: &'static str,
    /// Largest difference allowed, relative to the peer's value (absolute below 1).
    pub relative: f64,
    /// Whether an integer in the peer's answer must be the same integer in ours (MLflow answers
    /// integer columns as integers; a float there is a different answer).
    pub exact_integers: bool,
}

/// Asserts that `ours` has the shape of `theirs` (the same keys in the same order, the same
/// lengths, equal strings and booleans) and numbers within `closeness`; `at` names the place.
pub fn assert_json_close(
    ours: &serde_json::Value,
    theirs: &serde_json::Value,
    at: &str,
    closeness: Closeness,
) {
    use serde_json::Value;
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b))
            if closeness.exact_integers && (b.is_i64() || b.is_u64()) =>
        {
            assert_eq!(a, b, "{at}: an integer, as {} answers it", closeness.peer);
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= closeness.relative * b.abs().max(1.0),
                "{at}: {a} against {}'s {b}",
                closeness.peer
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: {ours} against {theirs}");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert_json_close(a, b, &format!("{at}[{i}]"), closeness);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "{at}: {ours} against {theirs}");
            for (key, value) in a {
                assert_json_close(value, &b[key], &format!("{at}.{key}"), closeness);
            }
        }
        _ => assert_eq!(ours, theirs, "{at}"),
    }
}
