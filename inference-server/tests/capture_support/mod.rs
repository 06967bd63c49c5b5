//! Harness of the capture tests: the real `inference-server capture` binary on 127.0.0.1, a
//! small upstream model server (echo, status codes, streamed chat), a real S3-compatible
//! server (moto from the project's `.venv`), and readers of the table (arrow-rs here, DuckDB
//! from the venv).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

pub const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

/// A fresh, empty directory under the system temp dir.
#[allow(unused_imports)]
pub use sluice_tests::process::temp_dir;

/// The files of every spool folder under the spool root `root` (one folder per sidecar).
pub fn spool_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for folder in std::fs::read_dir(root).unwrap() {
        let folder = folder.unwrap().path();
        if folder.is_dir() {
            files.extend(
                std::fs::read_dir(folder)
                    .unwrap()
                    .map(|f| f.unwrap().path()),
            );
        }
    }
    files.sort();
    files
}

/// The one spool folder under the spool root `root` (a root used by one sidecar at a time).
/// The rows of one spool segment file, counted from its frames' length prefixes (the format
/// of `sluice_capture::table::spool::frame`: an 8-byte magic, then `[length u32][crc u32][body]`).
pub fn spooled_rows(segment: &Path) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    assert!(
        bytes.starts_with(b"SLROWS1\n"),
        "{segment:?} is a frame segment"
    );
    let mut rest = &bytes[8..];
    let mut rows = 0;
    while rest.len() >= 8 {
        let length = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = &rest[(8 + length).min(rest.len())..];
        rows += 1;
    }
    rows
}

pub fn spool_folder(root: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|f| f.is_dir())
        .collect();
    assert_eq!(folders.len(), 1, "one spool folder: {folders:?}");
    folders.into_iter().next().unwrap()
}

#[allow(unused_imports)]
pub use sluice_tests::process::unused_loopback_port;

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Polls `check` every 50 ms until it answers `Some`, panicking with `what` after `limit`
/// ([`sluice_tests::wait::eventually_every`]).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    sluice_tests::wait::eventually_every(what, limit, Duration::from_millis(50), String::new, check)
        .await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A running capture sidecar.
pub struct Sidecar {
    child: Child,
    pub base: String,
    pub spool: PathBuf,
    pub client: reqwest::Client,
}

impl Sidecar {
    /// Starts `capture` in front of `upstream` (a recorder, `--record-only`, when it is
    /// empty), writing to `table`, spooling in `spool`, with
    /// test-friendly rotation (0.3 s), retries (at most 1 s apart) and shutdown (5 s of drain,
    /// 10 s in all) unless `extra` says otherwise; waits until `/ping` answers.
    pub async fn start(
        upstream: &str,
        table: &str,
        spool: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Sidecar {
        // Port 0: capture announces the port it bound on stdout.
        let output = temp_dir("capture-output").join("stdout");
        let mut command = Command::new(BINARY);
        command
            .args(["capture", "--listen", "127.0.0.1:0", "--spool-dir"])
            .arg(spool)
            .args([
                "--endpoint",
                "iris",
                "--entity",
                "iris-1",
                "--model",
                "iris",
            ])
            .args(["--model-version", "1"]);
        if upstream.is_empty() {
            command.arg("--record-only");
        } else {
            command.args(["--upstream", upstream]);
        }
        // An empty `table`: no payload table (usage tracking alone, from `extra`).
        if !table.is_empty() {
            command.args(["--table", table]);
        }
        for (flag, value) in [
            ("--rotate-seconds", "0.3"),
            ("--retry-max-seconds", "1"),
            ("--drain-timeout", "5"),
            ("--shutdown-seconds", "10"),
        ] {
            if !extra.contains(&flag) {
                command.args([flag, value]);
            }
        }
        command
            .args(extra)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or("warn".into()),
            )
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        let address =
            sluice_tests::process::announced(&output, &["capture"], Duration::from_secs(20)).await
                [0];
        let mut sidecar = Sidecar {
            child,
            base: format!("http://{address}"),
            spool: spool.to_path_buf(),
            client: client(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if sidecar
                .client
                .get(sidecar.url("/ping"))
                .send()
                .await
                .is_ok()
            {
                return sidecar;
            }
            if let Some(status) = sidecar.child.try_wait().unwrap() {
                panic!("capture exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "capture did not answer /ping in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "capture exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("capture did not exit within 30 s of SIGTERM");
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The sidecar's metrics: `name{labels}` → value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// The sum of every series of metric `name` (all label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Waits until metric `name` reaches at least `value`.
    pub async fn wait_metric(&self, name: &str, value: f64, limit: Duration) {
        eventually(limit, &format!("{name} >= {value}"), || async {
            (self.metric(name).await >= value).then_some(())
        })
        .await;
    }

    /// Resident memory of the process, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small model server: echo, chosen statuses, a streamed or plain chat, a switchable health.
pub struct Upstream {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let healthy = Arc::new(AtomicBool::new(true));
        let app = axum::Router::new()
            .route("/health", get(health))
            .route("/echo", post(echo))
            .route("/status/{code}", post(status))
            .route("/slow/{ms}", post(slow))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/endless", post(endless))
            .with_state(healthy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { addr, healthy }
    }
}

async fn health(State(healthy): State<Arc<AtomicBool>>) -> Response {
    if healthy.load(Ordering::Relaxed) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "loading"})),
        )
            .into_response()
    }
}

/// Streams the request body back as it arrives.
async fn echo(request: Request) -> Response {
    let kind = request
        .headers()
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".parse().unwrap());
    Response::builder()
        .header("content-type", kind)
        .body(Body::new(request.into_body()))
        .unwrap()
}

/// Reads the whole request, then waits `ms` milliseconds before answering (a model slower
/// than its client's patience).
async fn slow(UrlPath(ms): UrlPath<u64>, body: Bytes) -> Response {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({"received": body.len()})).into_response()
}

async fn status(UrlPath(code): UrlPath<u16>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
    (
        status,
        Json(json!({"error_code": "CHOSEN", "message": format!("status {code}")})),
    )
        .into_response()
}

/// The words of the streamed answer, one chunk each.
pub const CHAT_WORDS: [&str; 5] = ["The ", "iris ", "is ", "a ", "flower."];
/// Pause between two streamed chunks.
pub const CHUNK_PAUSE: Duration = Duration::from_millis(150);

async fn chat(Json(body): Json<Value>) -> Response {
    let head = |choices: Value| json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "tiny", "choices": choices});
    if body["stream"] != json!(true) {
        return Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CHAT_WORDS.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        }))
        .into_response();
    }
    let mut events = vec![head(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    for word in CHAT_WORDS {
        events.push(head(
            json!([{"index": 0, "delta": {"content": word}, "finish_reason": null}]),
        ));
    }
    events.push(head(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ));
    let mut last = head(json!([]));
    last["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16});
    events.push(last);
    let stream = futures::stream::iter(events.into_iter().map(Some).chain([None])).then(
        |event| async move {
            tokio::time::sleep(CHUNK_PAUSE).await;
            let text = match event {
                Some(event) => format!("data: {event}\n\n"),
                None => "data: [DONE]\n\n".to_string(),
            };
            Ok::<_, std::convert::Infallible>(Bytes::from(text))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Pause between two chunks of the endless stream.
pub const ENDLESS_PAUSE: Duration = Duration::from_millis(100);

/// A streamed chat answer that never ends: a `tick ` chunk every [`ENDLESS_PAUSE`].
async fn endless() -> Response {
    let chunk = json!({"id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": 7,
        "model": "tiny", "choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": null}]});
    let text = Bytes::from(format!("data: {chunk}\n\n"));
    let stream = futures::stream::repeat(text).then(|text| async move {
        tokio::time::sleep(ENDLESS_PAUSE).await;
        Ok::<_, std::convert::Infallible>(text)
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

/// Every Parquet file under `dir`, recursively.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Reads Parquet bytes into batches with arrow-rs.
pub fn read_parquet(bytes: Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every row of the local table at `dir`, read with arrow-rs.
pub fn read_local_table(dir: &Path) -> Vec<RecordBatch> {
    parquet_files(dir)
        .into_iter()
        .flat_map(|file| read_parquet(Bytes::from(std::fs::read(file).unwrap())))
        .collect()
}

/// The values of string column `name` in every batch, in order (`None` for nulls).
pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    let mut values = Vec::new();
    for batch in batches {
        let column = batch.column_by_name(name).unwrap();
        let column = column
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        for i in 0..column.len() {
            values.push(column.is_valid(i).then(|| column.value(i).to_string()));
        }
    }
    values
}

/// The values of Int32 column `name`.
pub fn int32s(batches: &[RecordBatch], name: &str) -> Vec<i32> {
    batches
        .iter()
        .flat_map(|batch| {
            let column = batch.column_by_name(name).unwrap();
            column
                .as_any()
                .downcast_ref::<arrow_array::Int32Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// The values of Int64 column `name` (`None` for nulls).
pub fn int64s(batches: &[RecordBatch], name: &str) -> Vec<Option<i64>> {
    let mut values = Vec::new();
    for batch in batches {
        let column = batch.column_by_name(name).unwrap();
        let column = column
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        for i in 0..column.len() {
            values.push(column.is_valid(i).then(|| column.value(i)));
        }
    }
    values
}

/// The `logging_error_codes` of every row.
pub fn error_codes(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in batches {
        let column = batch.column_by_name("logging_error_codes").unwrap();
        let list = column
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap();
        for i in 0..list.len() {
            let items = list.value(i);
            let items = items
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            rows.push(
                (0..items.len())
                    .map(|j| items.value(j).to_string())
                    .collect(),
            );
        }
    }
    rows
}

/// The project's Python (`.venv`, made by `.ci/setup`).
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup (it installs duckdb and moto)",
        python.display()
    );
    python
}

/// Runs a Python snippet from the venv and answers its stdout.
/// The first row of `sql` as DuckDB answers it, as a JSON array.
pub fn duckdb(sql: &str) -> serde_json::Value {
    let out = run_python(&format!(
        "import duckdb, json\nr = duckdb.connect().execute({sql:?}).fetchone()\nprint(json.dumps(list(r), default=str))"
    ));
    serde_json::from_str(out.trim()).unwrap()
}

pub fn run_python(code: &str) -> String {
    let output = Command::new(python()).args(["-c", code]).output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A moto S3 server on 127.0.0.1, started from the venv.
pub struct Moto {
    child: Child,
    pub port: u16,
}

/// Credentials moto accepts (it checks none).
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

impl Moto {
    pub async fn start(port: u16) -> Moto {
        let server = python().with_file_name("moto_server");
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { child, port };
        let client = client();
        eventually(Duration::from_secs(30), "moto answers", || async {
            client.get(moto.endpoint()).send().await.ok().map(drop)
        })
        .await;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let response = client()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// The `--table-option`s that point the sidecar at this server.
    pub fn table_options(&self) -> Vec<String> {
        vec![
            "--table-option".into(),
            format!("aws_endpoint={}", self.endpoint()),
            "--table-option".into(),
            "aws_allow_http=true".into(),
        ]
    }

    /// Every row of the table at `s3://bucket/prefix`, read with arrow-rs through
    /// object_store.
    pub async fn read_table(&self, bucket: &str, prefix: &str) -> (Vec<String>, Vec<RecordBatch>) {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap();
        let prefix = object_store::path::Path::from(prefix);
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut names = Vec::new();
        let mut batches = Vec::new();
        for object in objects {
            names.push(object.location.to_string());
            let bytes = store
                .get(&object.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            batches.extend(read_parquet(bytes));
        }
        names.sort();
        (names, batches)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request to the sidecar with a chosen body size, answering (status, x-request-id, body
/// length).
pub async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String, usize) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let length = response.bytes().await.unwrap().len();
    (status, id, length)
}

/// `inference-server gateway --standalone` on loopback ports over `manifest`, each entity
/// routed to the address given (a capture sidecar); stopped when dropped, a failed test too.
pub struct StandaloneGateway {
    child: Child,
    /// Base URL of the serving routes.
    pub base: String,
}

impl StandaloneGateway {
    /// Starts it and waits until it announced its ports.
    pub async fn start(name: &str, manifest: &str, upstreams: &[(&str, &str)]) -> Self {
        let dir = temp_dir(name);
        let path = dir.join("endpoints.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        let output = dir.join("stdout");
        let mut command = Command::new(BINARY);
        command
            .args(["gateway", "--standalone"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .env("SLUICE_LOG", "warn")
            .stdout(std::fs::File::create(&output).expect("stdout file"))
            .stderr(Stdio::inherit());
        for (entity, addr) in upstreams {
            command.args(["--upstream", &format!("{entity}={addr}")]);
        }
        let child = command.spawn().expect("the gateway starts");
        let bound = sluice_tests::process::announced(
            &output,
            &["gateway", "admin"],
            Duration::from_secs(30),
        )
        .await;
        Self {
            child,
            base: format!("http://{}", bound[0]),
        }
    }
}

impl Drop for StandaloneGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
