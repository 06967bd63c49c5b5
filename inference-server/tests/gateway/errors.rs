//! What clients get wrong, and what they get back: the right status and the error body.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{Gateway, Upstream, two_entities};

async fn gateway(extra: &[&str]) -> (Gateway, Upstream) {
    let up = Upstream::python("a", None).await;
    let gateway = Gateway::start(
        &two_entities(100, "", ""),
        &[("a", up.addr), ("b", up.addr)],
        extra,
    )
    .await;
    (gateway, up)
}

fn assert_error(answer: &crate::harness::Answer, status: u16, code: &str, needle: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["error_code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_error_body() {
    let (gateway, _up) = gateway(&["--max-body-bytes", "1KiB"]).await;
    assert_error(
        &gateway.post("/nope", "{}").await,
        404,
        "ENDPOINT_NOT_FOUND",
        "no route POST /nope",
    );
    assert_error(
        &gateway
            .post("/serving-endpoints/missing/invocations", "{}")
            .await,
        404,
        "ENDPOINT_NOT_FOUND",
        "no serving endpoint named \"missing\"",
    );
    assert_error(
        &gateway
            .post("/serving-endpoints/ep/served-models/zzz/invocations", "{}")
            .await,
        404,
        "ENDPOINT_NOT_FOUND",
        "serves no entity named \"zzz\"",
    );
    assert_error(
        &gateway
            .post("/serving-endpoints/v1/chat/completions", "{not json")
            .await,
        400,
        "BAD_REQUEST",
        "not valid JSON",
    );
    assert_error(
        &gateway
            .post("/serving-endpoints/v1/embeddings", r#"{"input": "x"}"#)
            .await,
        400,
        "BAD_REQUEST",
        "no `model`",
    );
    assert_error(
        &gateway
            .post(
                "/serving-endpoints/ep/invocations",
                &format!("{{\"x\": \"{}\"}}", "y".repeat(2000)),
            )
            .await,
        413,
        "REQUEST_TOO_LARGE",
        "1024 bytes",
    );
    let get = gateway
        .client
        .get(format!("{}/serving-endpoints/ep/invocations", gateway.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    // A named entity is reached directly.
    let direct = gateway
        .post("/serving-endpoints/ep/served-models/b/invocations", "{}")
        .await;
    assert_eq!((direct.status, direct.entity.as_str()), (200, "b"));
    // Errors are counted by code, never by the unknown names clients sent.
    let metrics = gateway.metrics().await;
    assert!(metrics.contains(r#"sluice_gateway_errors_total{namespace="",endpoint="",error_code="ENDPOINT_NOT_FOUND"} 2"#), "{metrics}");
    assert!(!metrics.contains("missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_gets_408() {
    let (gateway, _up) = gateway(&["--body-timeout", "1s"]).await;
    let address = gateway.base.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream
            .write_all(
                b"POST /serving-endpoints/ep/invocations HTTP/1.1\r\nhost: x\r\n\
                  content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"in",
            )
            .expect("write");
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .expect("task");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}
