//! Starts the real gateway binary in standalone mode in front of real upstream processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{BINARY, temp_dir};
pub use sluice_tests::providers::Providers;

/// A process the gateway routes to.
pub struct Upstream {
    child: Child,
    /// Where it answers.
    pub addr: SocketAddr,
    /// One line per request it received.
    pub log: PathBuf,
}

impl Upstream {
    /// Starts `upstream.py` answering as `name` on the port it binds and announces; chat
    /// streams wait for `release` to exist.
    pub async fn python(name: &str, release: Option<&Path>) -> Upstream {
        Self::python_at(0, name, release).await
    }

    /// [`python`](Self::python) on a given port (one a test knew before the upstream came up).
    pub async fn python_at(port: u16, name: &str, release: Option<&Path>) -> Upstream {
        let dir = temp_dir(&format!("upstream-{name}"));
        let log = dir.join("requests.log");
        let output = dir.join("stdout");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/upstream.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .args(["--port", &port.to_string(), "--name", name])
            .arg("--log")
            .arg(&log)
            .stdout(std::fs::File::create(&output).expect("stdout file"));
        if let Some(release) = release {
            command.arg("--release").arg(release);
        }
        let child = command.spawn().expect("python3 starts");
        let addr =
            sluice_tests::process::announced(&output, &["upstream"], Duration::from_secs(30)).await
                [0];
        let upstream = Upstream { child, addr, log };
        wait_for(&format!("http://{}/health", upstream.addr), 200).await;
        upstream
    }

    /// Requests this upstream received (shadow copies included).
    pub fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Sends a signal to the process (`STOP`, `CONT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers `status` (panics after 30 s).
pub async fn wait_for(url: &str, status: u16) {
    let client = reqwest::Client::new();
    let answers = || async {
        let response = client
            .get(url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == status).then_some(())
    };
    let what = format!("{url} to answer {status}");
    let (limit, every) = (Duration::from_secs(30), Duration::from_millis(50));
    sluice_tests::wait::eventually_every(&what, limit, every, String::new, answers).await;
}

/// A running standalone gateway.
pub struct Gateway {
    child: Child,
    /// Base URL of the serving routes.
    pub base: String,
    /// Base URL of the admin routes.
    pub admin: String,
    /// The manifest it serves (rewrite it to change the config).
    pub manifest: PathBuf,
    /// A client with a 30 s timeout.
    pub client: reqwest::Client,
    /// Where its log goes, when it was started with [`Gateway::start_logged`].
    pub log: Option<PathBuf>,
}

/// A response: status, `served-model-name`, body text.
pub struct Answer {
    pub status: u16,
    pub entity: String,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.body))
    }
}

impl Gateway {
    /// Starts `gateway --standalone` on `manifest` with `entity=address` upstreams and `extra`
    /// flags; waits for `/readyz`.
    pub async fn start(
        manifest: &str,
        upstreams: &[(&str, SocketAddr)],
        extra: &[&str],
    ) -> Gateway {
        Self::start_with(manifest, upstreams, extra, None).await
    }

    /// [`start`](Self::start) with the log at `level` written to a file ([`Gateway::log`]).
    pub async fn start_logged(manifest: &str, extra: &[&str], level: &str) -> Gateway {
        Self::start_with(manifest, &[], extra, Some(level)).await
    }

    async fn start_with(
        manifest: &str,
        upstreams: &[(&str, SocketAddr)],
        extra: &[&str],
        logged: Option<&str>,
    ) -> Gateway {
        let dir = temp_dir("gateway");
        let path = dir.join("endpoints.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        // Port 0 for both: the gateway announces what it bound on stdout.
        let output = dir.join("stdout");
        let mut command = Command::new(BINARY);
        command
            .args(["gateway", "--standalone"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .args(extra)
            .env("SLUICE_LOG", logged.unwrap_or("warn"))
            .stdout(std::fs::File::create(&output).expect("stdout file"));
        let log = logged.map(|_| dir.join("stderr"));
        match &log {
            Some(log) => command.stderr(std::fs::File::create(log).expect("log file")),
            None => command.stderr(Stdio::inherit()),
        };
        for (entity, addr) in upstreams {
            command.args(["--upstream", &format!("{entity}={addr}")]);
        }
        let child = command.spawn().expect("gateway starts");
        let bound = sluice_tests::process::announced(
            &output,
            &["gateway", "admin"],
            Duration::from_secs(30),
        )
        .await;
        let gateway = Gateway {
            child,
            base: format!("http://{}", bound[0]),
            admin: format!("http://{}", bound[1]),
            manifest: path,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            log,
        };
        wait_for(&format!("{}/readyz", gateway.admin), 200).await;
        gateway
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post(&self, path: &str, body: &str) -> Answer {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Answer {
            status: response.status().as_u16(),
            entity: header("served-model-name").unwrap_or_default(),
            retry_after: header("retry-after"),
            body: response.text().await.unwrap_or_default(),
        }
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the first metric line starting with `prefix` (0 when absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The admin `/demand` report.
    pub async fn demand(&self) -> serde_json::Value {
        self.client
            .get(format!("{}/demand", self.admin))
            .send()
            .await
            .expect("demand")
            .json()
            .await
            .expect("demand JSON")
    }

    /// Replaces the manifest; the gateway re-reads it (and SIGHUP makes it immediate).
    pub fn rewrite(&self, manifest: &str) {
        let temp = self.manifest.with_extension("tmp");
        std::fs::write(&temp, manifest).expect("write");
        std::fs::rename(&temp, &self.manifest).expect("rename");
        self.signal("HUP");
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A two-entity endpoint `ep` splitting `a`/`b` by `weight_a`/`100 - weight_a`, with extra
/// entity YAML lines for `b` (e.g. `scaleToZeroEnabled: true`) and extra traffic YAML.
pub fn two_entities(weight_a: u32, b_extra: &str, traffic_extra: &str) -> String {
    format!(
        "apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {{name: ep}}
spec:
  servedEntities:
    - {{name: a, model: m, version: 1}}
    - {{name: b, model: m, version: 2{b_extra}}}
  trafficConfig:
    routes:
      - {{servedEntityName: a, trafficPercentage: {weight_a}}}
      - {{servedEntityName: b, trafficPercentage: {}}}
{traffic_extra}",
        100 - weight_a
    )
}
