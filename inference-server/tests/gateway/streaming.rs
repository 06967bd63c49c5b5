//! Streams flow through unbuffered, shadow copies never touch the answer, SIGTERM drains.

use std::time::Duration;

use futures::StreamExt;

use crate::common::temp_dir;
use crate::harness::{Gateway, Upstream};

const CHAT: &str =
    r#"{"model": "ep", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;

const SHADOWED: &str = "apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {name: ep}
spec:
  servedEntities:
    - {name: a, model: m, version: 1}
    - {name: b, model: m, version: 2}
  trafficConfig:
    routes:
      - {servedEntityName: a, trafficPercentage: 100}
    shadowRoutes:
      - {servedEntityName: b, mirrorPercentage: 100}
";

type Events = futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>;

/// Starts a streamed chat and returns the stream once its first event arrived.
async fn first_event(gateway: &Gateway) -> (Events, String) {
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
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["served-model-name"], "a");
    let mut stream = response.bytes_stream().boxed();
    let mut text = String::new();
    while !text.contains("first") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the first event arrived while the model still holds the rest")
            .expect("a chunk")
            .expect("chunk bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (stream, text)
}

/// The rest of a stream.
async fn rest(mut stream: Events) -> String {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_as_the_model_writes_them() {
    let release = temp_dir("release").join("go");
    let up = Upstream::python("a", Some(&release)).await;
    let gateway = Gateway::start(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: ep}\nspec:\n  servedEntities:\n    - {name: a, model: m, version: 1}\n",
        &[("a", up.addr)],
        &[],
    )
    .await;
    let (response, first) = first_event(&gateway).await;
    assert!(!first.contains("second"));
    std::fs::write(&release, "").expect("release");
    let rest = rest(response).await;
    assert!(rest.contains("second") && rest.contains("[DONE]"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_reach_the_shadow_entity_and_never_touch_the_answer() {
    let (a, b) = (
        Upstream::python("a", None).await,
        Upstream::python("b", None).await,
    );
    let gateway = Gateway::start(SHADOWED, &[("a", a.addr), ("b", b.addr)], &[]).await;
    for _ in 0..20 {
        let answer = gateway
            .post("/serving-endpoints/ep/invocations", "{}")
            .await;
        assert_eq!((answer.status, answer.entity.as_str()), (200, "a"));
        assert_eq!(answer.json()["predictions"][0], "a");
    }
    let mut mirrored = 0;
    for _ in 0..100 {
        mirrored = b
            .received()
            .iter()
            .filter(|line| line.ends_with("true"))
            .count();
        if mirrored == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mirrored, 20);
    assert_eq!(a.received().len(), 20);
    // The shadow entity goes away: callers notice nothing, the failures are counted.
    drop(b);
    for _ in 0..10 {
        let answer = gateway
            .post("/serving-endpoints/ep/invocations", "{}")
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let ok = gateway
        .metric(r#"sluice_gateway_shadow_requests_total{namespace="default",endpoint="ep",entity="b",outcome="ok"}"#)
        .await;
    assert_eq!(ok, 20.0);
    let mut failed = 0.0;
    for _ in 0..100 {
        failed = gateway
            .metric(r#"sluice_gateway_shadow_requests_total{namespace="default",endpoint="ep",entity="b",outcome="error"}"#)
            .await;
        if failed == 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_before_exiting() {
    let release = temp_dir("release").join("go");
    let up = Upstream::python("a", Some(&release)).await;
    let mut gateway = Gateway::start(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: ep}\nspec:\n  servedEntities:\n    - {name: a, model: m, version: 1}\n",
        &[("a", up.addr)],
        &[],
    )
    .await;
    let (response, _) = first_event(&gateway).await;
    gateway.signal("TERM");
    // Readiness goes false while the stream is still open.
    crate::harness::wait_for(&format!("{}/readyz", gateway.admin), 503).await;
    std::fs::write(&release, "").expect("release");
    let rest = rest(response).await;
    assert!(rest.contains("[DONE]"), "{rest}");
    let status = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status}");
}
