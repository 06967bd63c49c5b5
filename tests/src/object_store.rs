//! An S3-compatible object store for tests: moto's server (from the project's `.venv`) on a
//! free loopback port, stopped when dropped. Tests put model artifacts where an example's
//! `s3://` URI points, and hand pods its address through the ModelVersion's Secret, as a user
//! would hand them a MinIO's.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::venv_tool;

/// A running moto S3 server.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts moto on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let port = crate::cluster::free_loopback_addr().port();
        let child = Command::new(venv_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server: {e}"));
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        crate::wait::eventually(
            "moto to answer",
            Duration::from_secs(30),
            String::new,
            || async { http.get(&server.endpoint).send().await.ok().map(drop) },
        )
        .await;
        server
    }

    /// Creates `bucket`, then uploads each local file under `key/` (its file name appended).
    pub async fn put_folder(&self, bucket: &str, key: &str, files: &[std::path::PathBuf]) {
        let http = reqwest::Client::new();
        let ok = |r: reqwest::Response| assert!(r.status().is_success(), "{r:?}");
        ok(http
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("creating the bucket"));
        for file in files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            let body = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            ok(http
                .put(format!("{}/{bucket}/{key}/{name}", self.endpoint))
                .body(body)
                .send()
                .await
                .expect("upload"));
        }
    }

    /// The Secret data a ModelVersion's `secretRef` gives the fetch step for this server: the
    /// standard `AWS_*` variables, the endpoint included.
    pub fn credentials(&self) -> serde_json::Value {
        serde_json::json!({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1"
        })
    }
}
