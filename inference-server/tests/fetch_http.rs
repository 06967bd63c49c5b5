//! `inference-server fetch` over HTTP: the real binary against a hand-rolled HTTP/1.1 server in
//! the test process on 127.0.0.1 whose every answer the test scripts (statuses, a connection cut
//! half-way, a stall, a slow body, 2 GiB made on the fly). Covers: a presigned tarball unpacked
//! with its query never shown, resume with `Range` (and a restart without it), retries of 5xx
//! and none of 404/403, the stall timeout, progress lines, `--sha256` on a file and on a folder,
//! the termination log, and bounded memory for a large artifact.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{BINARY, temp_dir};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The body of an answer.
enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of a repeating pattern, written from one 1 MiB buffer.
    Repeat(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Repeat(len) => *len,
        }
    }
}

/// What the server does after the headers.
enum Then {
    /// Sends the whole body.
    Finish,
    /// Closes the connection after this many body bytes.
    Cut(usize),
    /// Sends this many body bytes, then nothing (keeping the connection open).
    Stall(usize),
    /// Sends the body in pieces of this size with a pause between them.
    Pace(usize, Duration),
}

/// One scripted answer. `Content-Length` is the body's length.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
    then: Then,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Self::status(200, body)
    }

    fn status(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body),
            then: Then::Finish,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn then(mut self, then: Then) -> Self {
        self.then = then;
        self
    }
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// The scripted server: `handler` gets each request and its number (from 0).
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    async fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, handler.clone(), seen.clone()));
            }
        });
        Self { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }
}

async fn serve(mut socket: TcpStream, handler: Arc<Handler>, seen: Arc<Mutex<Vec<Request>>>) {
    let mut head = Vec::new();
    let mut buffer = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        assert!(head.len() < 64 * 1024, "request head too large");
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let request = Request { target, headers };
    let index = {
        let mut seen = seen.lock().expect("requests");
        seen.push(request.clone());
        seen.len() - 1
    };
    let reply = handler(&request, index);
    let mut text = format!(
        "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    if socket.write_all(text.as_bytes()).await.is_err() {
        return;
    }
    let limit = match reply.then {
        Then::Cut(n) | Then::Stall(n) => n as u64,
        Then::Finish | Then::Pace(..) => u64::MAX,
    };
    let piece = match reply.then {
        Then::Pace(size, _) => size,
        _ => 1 << 20,
    };
    let pattern: Vec<u8> = match &reply.body {
        Body::Repeat(_) => (0..1 << 20).map(|i: u32| (i % 251) as u8).collect(),
        Body::Bytes(_) => Vec::new(),
    };
    let end = reply.body.len().min(limit);
    let mut sent = 0u64;
    while sent < end {
        let n = (end - sent).min(piece as u64) as usize;
        let chunk = match &reply.body {
            Body::Bytes(bytes) => &bytes[sent as usize..sent as usize + n],
            Body::Repeat(_) => &pattern[..n],
        };
        if socket.write_all(chunk).await.is_err() {
            return;
        }
        sent += n as u64;
        if let Then::Pace(_, pause) = reply.then {
            tokio::time::sleep(pause).await;
        }
    }
    match reply.then {
        Then::Stall(_) => tokio::time::sleep(Duration::from_secs(120)).await,
        _ => {
            let _ = socket.shutdown().await;
        }
    }
}

/// What a run of `fetch` did.
struct Outcome {
    ok: bool,
    log: String,
    /// Peak resident memory (VmHWM), sampled every 100 ms while it ran.
    peak_rss_kib: u64,
    elapsed: Duration,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `inference-server fetch --uri <uri> --dest <dest> <extra>`; no proxy, and a termination
/// log nowhere unless `extra` names one.
async fn fetch(uri: &str, dest: &Path, extra: &[&str]) -> Outcome {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(["fetch", "--uri", uri, "--dest"])
        .arg(dest)
        .args(extra)
        .env("SLUICE_LOG", "info")
        .env("NO_COLOR", "1")
        .env(
            "SLUICE_TERMINATION_LOG",
            "/nonexistent-sluice-test/termination-log",
        )
        .env("NO_PROXY", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for proxy in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(proxy);
    }
    let mut child = command.spawn().expect("running fetch");
    let pid = child.id().expect("pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let err = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        if let Some(kib) = vm_hwm_kib(pid) {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "fetch ran for 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = format!(
        "{}{}",
        out.await.expect("stdout"),
        err.await.expect("stderr")
    );
    Outcome {
        ok: status.success(),
        log,
        peak_rss_kib,
        elapsed: started.elapsed(),
    }
}

/// `len` bytes that differ from one offset to the next.
fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default()
}

/// The `bytes=N-` a request asked for, if any.
fn range_start(request: &Request) -> Option<usize> {
    request
        .header("range")?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

/// Answers `body` whole, or from the asked offset with 206 when `ranges`; cuts the first answer
/// at half.
fn cut_once(body: Arc<Vec<u8>>, ranges: bool) -> impl Fn(&Request, usize) -> Reply {
    move |request, index| {
        let from = range_start(request).filter(|_| ranges);
        let mut reply = match from {
            Some(from) => Reply::status(206, body[from..].to_vec()).header(
                "Content-Range",
                format!("bytes {from}-{}/{}", body.len() - 1, body.len()),
            ),
            None => Reply::ok(body.to_vec()),
        };
        if ranges {
            reply = reply.header("Accept-Ranges", "bytes");
        }
        if index == 0 {
            reply = reply.then(Then::Cut(body.len() / 2));
        }
        reply
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_tarball_is_unpacked_and_its_credentials_never_show() {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/iris");
    let root = temp_dir("fetch-http-tarball");
    let tgz = root.join("iris.tar.gz");
    let tarred = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tgz)
        .arg("-C")
        .arg(iris.parent().expect("models folder"))
        .arg("iris")
        .status()
        .expect("tar");
    assert!(tarred.success());
    let tarball = std::fs::read(&tgz).expect("tarball");
    let digest = sha256_hex(&tarball);
    let server = Server::start(move |_, _| Reply::ok(tarball.clone())).await;
    let uri = format!(
        "http://reader:hunter2-pw@127.0.0.1:{}/models/iris.tar.gz?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=sekrit-signature",
        server.port
    );
    let dest = root.join("dest");
    let run = fetch(&uri, &dest, &["--sha256", &digest]).await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(
        std::fs::read(dest.join("iris.onnx")).expect("onnx"),
        std::fs::read(iris.join("iris.onnx")).expect("fixture")
    );
    assert!(dest.join("sluice-model.yaml").is_file());
    assert!(
        !dest.join("iris.tar.gz").exists(),
        "the archive is unpacked"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0]
            .target
            .ends_with("X-Amz-Signature=sekrit-signature"),
        "{requests:?}"
    );
    for secret in [
        "sekrit-signature",
        "AKIAEXAMPLE",
        "X-Amz",
        "hunter2-pw",
        "reader",
    ] {
        assert!(!run.log.contains(secret), "{secret} shown in\n{}", run.log);
    }
    assert!(
        run.log.contains(&format!(
            "http://127.0.0.1:{}/models/iris.tar.gz",
            server.port
        )),
        "{}",
        run.log
    );
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_transfer_resumes_with_a_range_request_or_starts_over() {
    let body = Arc::new(data(1 << 20));
    let digest = sha256_hex(&body);
    let root = temp_dir("fetch-http-resume");

    let server = Server::start(cut_once(body.clone(), true)).await;
    let dest = root.join("resumed");
    let run = fetch(
        &server.url("/weights.bin"),
        &dest,
        &["--retry-delay", "50ms", "--sha256", &digest],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(
        std::fs::read(dest.join("weights.bin")).expect("file"),
        *body
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(range_start(&requests[0]), None);
    assert_eq!(
        requests[1].header("range"),
        Some(format!("bytes={}-", body.len() / 2).as_str()),
        "the second request resumes where the first broke"
    );

    // Without `Accept-Ranges` the second request asks for everything again; the digest is of
    // the final file, not of the broken attempt followed by the full one.
    let server = Server::start(cut_once(body.clone(), false)).await;
    let dest = root.join("restarted");
    let run = fetch(
        &server.url("/weights.bin"),
        &dest,
        &["--retry-delay", "50ms", "--sha256", &digest],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(
        std::fs::read(dest.join("weights.bin")).expect("file"),
        *body
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].header("range"), None);
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_not_found_or_denied_fail_at_once() {
    let root = temp_dir("fetch-http-retry");
    let body = data(4096);
    let served = body.clone();
    let server = Server::start(move |_, index| match index {
        0 => Reply::status(503, b"busy".to_vec()).header("Retry-After", "1"),
        1 => Reply::status(503, b"busy".to_vec()),
        _ => Reply::ok(served.clone()),
    })
    .await;
    let dest = root.join("retried");
    let run = fetch(
        &server.url("/model.onnx"),
        &dest,
        &["--retry-delay", "50ms"],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(std::fs::read(dest.join("model.onnx")).expect("file"), body);
    assert_eq!(server.requests().len(), 3);
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );

    let server = Server::start(|_, _| Reply::status(404, b"no such key".to_vec())).await;
    let run = fetch(
        &server.url("/models/absent.onnx?sig=secret-query"),
        &root.join("absent"),
        &["--retry-delay", "50ms"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.log.contains("not found")
            && run
                .log
                .contains(&format!("127.0.0.1:{}/models/absent.onnx", server.port)),
        "{}",
        run.log
    );
    assert!(!run.log.contains("secret-query"), "{}", run.log);
    assert_eq!(server.requests().len(), 1, "no retry after a 404");

    let server = Server::start(|_, _| Reply::status(403, b"expired".to_vec())).await;
    let run = fetch(
        &server.url("/models/a.onnx"),
        &root.join("denied"),
        &["--retry-delay", "50ms"],
    )
    .await;
    assert!(!run.ok);
    assert!(run.log.contains("access denied (HTTP 403)"), "{}", run.log);
    assert_eq!(server.requests().len(), 1, "no retry after a 403");

    let server = Server::start(|_, _| Reply::status(500, b"down".to_vec())).await;
    let run = fetch(
        &server.url("/models/a.onnx"),
        &root.join("down"),
        &["--retry-delay", "50ms"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.log.contains("HTTP 500") && run.log.contains("after 5 attempts"),
        "{}",
        run.log
    );
    assert_eq!(server.requests().len(), 5);
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_fails_naming_the_bytes_received() {
    let root = temp_dir("fetch-http-stall");
    let server = Server::start(|_, _| Reply::ok(data(10_000)).then(Then::Stall(3_000))).await;
    let dest = root.join("stalled");
    let run = fetch(
        &server.url("/weights.bin"),
        &dest,
        &["--stall-timeout", "1s", "--retry-delay", "50ms"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.log
            .contains("no data for 1 s after 3000 of 10000 bytes (after 5 attempts)"),
        "{}",
        run.log
    );
    // Five attempts of one second each, and the pauses between them.
    assert!(
        run.elapsed >= Duration::from_secs(5) && run.elapsed < Duration::from_secs(30),
        "{:?}",
        run.elapsed
    );
    assert!(entries(&dest).is_empty(), "nothing published");
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_logs_its_progress() {
    let root = temp_dir("fetch-http-progress");
    let server = Server::start(|_, _| {
        Reply::ok(data(64 * 1024)).then(Then::Pace(4096, Duration::from_millis(60)))
    })
    .await;
    let dest = root.join("slow");
    let run = fetch(
        &server.url("/weights.bin"),
        &dest,
        &["--progress-every", "200ms"],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    let lines: Vec<_> = run
        .log
        .lines()
        .filter(|l| l.contains("download progress"))
        .collect();
    assert!(lines.len() >= 3, "{}", run.log);
    let last = lines.last().expect("a final line");
    assert!(
        last.contains("bytes=65536")
            && last.contains("total=65536")
            && last.contains("mib_per_s=")
            && last.contains("complete=true"),
        "{last}"
    );
    std::fs::remove_dir_all(&root).expect("cleanup");
}

/// The folder digest as docs/model-directory.md defines it: SHA-256 of the sorted listing of
/// `<sha256>  <relative path>` lines.
fn folder_digest(files: &[(&str, &[u8])]) -> String {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let listing: String = files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", sha256_hex(bytes)))
        .collect();
    sha256_hex(listing.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_digest_is_checked_before_anything_is_published() {
    let root = temp_dir("fetch-http-digest");
    let body = data(100_000);
    let right = sha256_hex(&body);
    let served = body.clone();
    let server = Server::start(move |_, _| Reply::ok(served.clone())).await;
    let wrong = sha256_hex(b"another artifact");

    let dest = root.join("wrong");
    let run = fetch(&server.url("/weights.bin"), &dest, &["--sha256", &wrong]).await;
    assert!(!run.ok);
    assert!(
        run.log.contains("SHA-256 mismatch")
            && run.log.contains(&format!("expected {wrong}"))
            && run.log.contains(&format!("got {right}")),
        "{}",
        run.log
    );
    assert!(
        entries(&dest).is_empty(),
        "nothing published: {:?}",
        entries(&dest)
    );

    let dest = root.join("right");
    let run = fetch(
        &server.url("/weights.bin"),
        &dest,
        &["--sha256", &right.to_ascii_uppercase()],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(std::fs::read(dest.join("weights.bin")).expect("file"), body);

    let before = server.requests().len();
    let run = fetch(
        &server.url("/weights.bin"),
        &root.join("bad"),
        &["--sha256", "abc"],
    )
    .await;
    assert!(!run.ok);
    assert!(run.log.contains("64 hexadecimal"), "{}", run.log);
    assert_eq!(
        server.requests().len(),
        before,
        "checked before downloading"
    );

    // A folder: the digest of its sorted listing.
    let files: [(&str, &[u8]); 4] = [
        ("sluice-model.yaml", b"format: onnx\n"),
        ("Weights.bin", &body[..1000]),
        ("1_Pooling/config.json", b"{}"),
        ("a b/notes.txt", b"nested, with a space"),
    ];
    let folder = root.join("source");
    for (name, bytes) in files {
        let path = folder.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        std::fs::write(path, bytes).expect("file");
    }
    let expected = folder_digest(&files);
    let shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && find . -type f -printf '%P\\n' | LC_ALL=C sort \
             | xargs -d '\\n' sha256sum | sha256sum",
        )
        .arg("sh")
        .arg(&folder)
        .output();
    match shell {
        Ok(out) if out.status.success() => {
            let printed = String::from_utf8_lossy(&out.stdout);
            assert_eq!(printed.split_whitespace().next(), Some(expected.as_str()));
        }
        other => eprintln!("no sha256sum pipeline here ({other:?}); checked in-process only"),
    }
    let uri = format!("file://{}", folder.display());
    let dest = root.join("folder-wrong");
    let run = fetch(&uri, &dest, &["--sha256", &right]).await;
    assert!(!run.ok);
    assert!(
        run.log
            .contains(&format!("got {expected} (digest of the folder listing)")),
        "{}",
        run.log
    );
    assert!(entries(&dest).is_empty(), "nothing published");
    let dest = root.join("folder-right");
    let run = fetch(&uri, &dest, &["--sha256", &expected]).await;
    assert!(run.ok, "{}", run.log);
    assert_eq!(
        std::fs::read(dest.join("a b/notes.txt")).expect("nested"),
        b"nested, with a space"
    );
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_written_to_the_termination_log() {
    let root = temp_dir("fetch-http-termination");
    let server = Server::start(|_, _| Reply::status(404, Vec::new())).await;
    let log = root.join("termination-log");
    let run = fetch(
        &server.url("/models/gone.onnx?token=do-not-show"),
        &root.join("dest"),
        &["--termination-log", log.to_str().expect("utf-8")],
    )
    .await;
    assert!(!run.ok);
    let message = std::fs::read_to_string(&log).expect("the termination log");
    assert_eq!(
        message,
        format!(
            "downloading http://127.0.0.1:{}/models/gone.onnx: not found (HTTP 404)",
            server.port
        )
    );
    assert!(
        run.log.contains(&format!("inference-server: {message}")),
        "{}",
        run.log
    );

    let ok_log = root.join("ok-termination-log");
    let served = Server::start(|_, _| Reply::ok(b"fine".to_vec())).await;
    let run = fetch(
        &served.url("/fine.bin"),
        &root.join("fine"),
        &["--termination-log", ok_log.to_str().expect("utf-8")],
    )
    .await;
    assert!(run.ok, "{}", run.log);
    assert!(!ok_log.exists(), "nothing written on success");
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_download_streams_in_bounded_memory() {
    const SIZE: u64 = 2 << 30;
    let root = temp_dir("fetch-http-large");
    let server = Server::start(|_, _| Reply {
        status: 200,
        headers: Vec::new(),
        body: Body::Repeat(SIZE),
        then: Then::Finish,
    })
    .await;
    let dest = root.join("large");
    let run = fetch(&server.url("/large/weights.bin"), &dest, &[]).await;
    assert!(run.ok, "{}", run.log);
    let file = dest.join("weights.bin");
    assert_eq!(std::fs::metadata(&file).expect("file").len(), SIZE);
    assert!(run.peak_rss_kib > 0, "VmHWM was sampled");
    assert!(
        run.peak_rss_kib < 128 * 1024,
        "peak RSS {} KiB for a 2 GiB download",
        run.peak_rss_kib
    );
    eprintln!(
        "2 GiB in {:.1} s, peak RSS {} KiB",
        run.elapsed.as_secs_f64(),
        run.peak_rss_kib
    );
    std::fs::remove_file(&file).expect("delete the 2 GiB");
    std::fs::remove_dir_all(&root).expect("cleanup");
}
