//! Load shedding: global in-flight and body-byte budgets refuse at once (503 + `Retry-After`,
//! counted) and come back to zero; stalled request bodies and stalled response streams are cut
//! by idle timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::temp_dir;
use crate::harness::{Answer, Gateway, Upstream};

const ONE_ENTITY: &str = "apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {name: ep}
spec:
  servedEntities:
    - {name: a, model: m, version: 1}
";

const CHAT: &str =
    r#"{"model": "ep", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;

const IN_FLIGHT: &str = "sluice_gateway_in_flight_requests ";
const BUFFERED: &str = "sluice_gateway_buffered_request_bytes ";

fn shed(reason: &str) -> String {
    format!(r#"sluice_gateway_shed_requests_total{{reason="{reason}"}}"#)
}

fn idle(body: &str) -> String {
    format!(r#"sluice_gateway_idle_timeouts_total{{body="{body}"}}"#)
}

/// Polls the metric `prefix` until `done` holds for it (panics after 10 s).
async fn wait_metric(gateway: &Gateway, prefix: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = gateway.metric(prefix).await;
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{prefix} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_shed(answer: &Answer, needle: &str) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    let body = answer.json();
    assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

/// Opens a raw connection to the gateway and sends `head` (request line and headers).
async fn connect(gateway: &Gateway, head: &str) -> TcpStream {
    let address = gateway.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
}

/// Reads the answer on a raw connection (up to 4 KiB, 20 s at most).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("an answer within 20 s")
        .expect("read");
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

/// A JSON body of about `size` bytes.
fn body_of(size: usize) -> String {
    format!("{{\"x\": \"{}\"}}", "y".repeat(size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_body_budget_sheds_with_503_and_comes_back_to_zero() {
    let up = Upstream::python("a", None).await;
    let gateway = Gateway::start(
        ONE_ENTITY,
        &[("a", up.addr)],
        &["--max-buffered-bytes", "1MiB"],
    )
    .await;
    // A slow chunked upload (no length declared): its bytes count as they arrive.
    let mut upload = connect(
        &gateway,
        "POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    let payload = body_of(900_000);
    let (first, rest) = payload.as_bytes().split_at(800_000);
    for piece in first.chunks(100_000) {
        upload.write_all(&chunk(piece)).await.expect("chunk");
    }
    let buffered = wait_metric(&gateway, BUFFERED, |v| v >= 800_000.0).await;
    assert!(buffered <= 1_048_576.0, "{buffered}");
    // The next body does not fit: refused at once (its declared length is reserved before it
    // is read), counted, never queued.
    let refused = gateway
        .post("/serving-endpoints/ep/invocations", &body_of(300_000))
        .await;
    assert_shed(&refused, "--max-buffered-bytes");
    assert_eq!(gateway.metric(&shed("buffered_bytes")).await, 1.0);
    assert_eq!(gateway.metric(&shed("in_flight")).await, 0.0);
    // A small body still fits beside the upload.
    let small = gateway
        .post("/serving-endpoints/ep/invocations", &body_of(1_000))
        .await;
    assert_eq!(small.status, 200, "{}", small.body);
    // The upload finishes and is answered; the budget comes back to zero.
    upload.write_all(&chunk(rest)).await.expect("chunk");
    upload.write_all(b"0\r\n\r\n").await.expect("end");
    let answer = read_answer(&mut upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_metric(&gateway, BUFFERED, |v| v == 0.0).await;
    wait_metric(&gateway, IN_FLIGHT, |v| v == 0.0).await;
    let again = gateway
        .post("/serving-endpoints/ep/invocations", &body_of(300_000))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    // A body larger than the whole budget could never fit: 413, not a 503 to retry forever.
    let huge = gateway
        .post("/serving-endpoints/ep/invocations", &body_of(1_100_000))
        .await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    assert_eq!(gateway.metric(&shed("buffered_bytes")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_in_flight_budget_sheds_with_503_and_comes_back_to_zero() {
    let release = temp_dir("release").join("go");
    let up = Upstream::python("a", Some(&release)).await;
    let gateway =
        Arc::new(Gateway::start(ONE_ENTITY, &[("a", up.addr)], &["--max-in-flight", "2"]).await);
    // Two open streams fill the budget: a request counts until its response body ends.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = gateway
            .client
            .post(format!(
                "{}/serving-endpoints/v1/chat/completions",
                gateway.base
            ))
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
            .await
            .expect("chat");
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    assert_eq!(gateway.metric(IN_FLIGHT).await, 2.0);
    let refused = gateway
        .post("/serving-endpoints/ep/invocations", "{}")
        .await;
    assert_shed(&refused, "--max-in-flight");
    assert_eq!(gateway.metric(&shed("in_flight")).await, 1.0);
    assert_eq!(gateway.metric(&shed("buffered_bytes")).await, 0.0);
    // The streams end; the budget comes back and requests pass again.
    std::fs::write(&release, "").expect("release");
    for mut stream in streams {
        while let Some(chunk) = stream.next().await {
            chunk.expect("chunk");
        }
    }
    wait_metric(&gateway, IN_FLIGHT, |v| v == 0.0).await;
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", "{}")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(gateway.metric(&shed("in_flight")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_within_the_idle_timeout_and_a_slow_one_does_not() {
    let up = Upstream::python("a", None).await;
    let gateway = Gateway::start(
        ONE_ENTITY,
        &[("a", up.addr)],
        &["--body-idle-timeout", "1s", "--body-timeout", "60s"],
    )
    .await;
    let head = "POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: x\r\n\
                content-type: application/json\r\ncontent-length: 8\r\n\r\n";
    // Headers, a byte, then nothing: cut after the idle timeout, long before --body-timeout.
    let started = Instant::now();
    let mut stalled = connect(&gateway, head).await;
    stalled.write_all(b"{").await.expect("byte");
    let answer = read_answer(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains("--body-idle-timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(gateway.metric(&idle("request")).await, 1.0);
    // A body that trickles in (a byte every 300 ms) is never idle for long: it is answered.
    let mut slow = connect(&gateway, head).await;
    for byte in br#"{"a": 1}"# {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(&[*byte]).await.expect("byte");
    }
    let answer = read_answer(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(gateway.metric(&idle("request")).await, 1.0);
    wait_metric(&gateway, BUFFERED, |v| v == 0.0).await;
    wait_metric(&gateway, IN_FLIGHT, |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_stream_is_cut_after_the_idle_timeout() {
    // The release file never appears: the model sends one event, then nothing.
    let release = temp_dir("release").join("never");
    let up = Upstream::python("a", Some(&release)).await;
    let gateway = Gateway::start(
        ONE_ENTITY,
        &[("a", up.addr)],
        &["--response-idle-timeout", "1s"],
    )
    .await;
    let started = Instant::now();
    let response = gateway
        .client
        .post(format!(
            "{}/serving-endpoints/v1/chat/completions",
            gateway.base
        ))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(text.contains("first"), "{text}");
    assert!(
        failed,
        "the cut stream ends with an error, not a clean end: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(gateway.metric(&idle("response")).await, 1.0);
    wait_metric(&gateway, IN_FLIGHT, |v| v == 0.0).await;
}
