//! Pods that fail: refused connections are retried elsewhere, a pod that stops answering leaves
//! rotation, an engine's plain-text error becomes the error body.

use std::time::Duration;

use crate::harness::{Gateway, Upstream};

const ONE: &str = "apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {name: ep}
spec:
  servedEntities:
    - {name: a, model: m, version: 1}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_stops_answering_is_taken_out_of_rotation() {
    let (healthy, stuck) = (
        Upstream::python("healthy", None).await,
        Upstream::python("stuck", None).await,
    );
    let gateway = Gateway::start(
        ONE,
        &[("a", healthy.addr), ("a", stuck.addr)],
        &["--health-interval", "300ms"],
    )
    .await;
    // Both backends serve.
    for _ in 0..20 {
        assert_eq!(
            gateway
                .post("/serving-endpoints/ep/invocations", "{}")
                .await
                .status,
            200
        );
    }
    assert!(!stuck.received().is_empty() && !healthy.received().is_empty());
    stuck.signal("STOP");
    // Within a few health intervals the stuck pod is out; from then on every request is
    // answered promptly by the healthy one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = healthy.received().len();
    for _ in 0..100 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            gateway.post("/serving-endpoints/ep/invocations", "{}"),
        )
        .await
        .expect("a request went to the stopped pod");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(healthy.received().len() - before, 100);
    stuck.signal("CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_pod() {
    let live = Upstream::python("live", None).await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::unused_loopback_port()));
    // Health checks off: only the request path can find out the dead pod.
    let gateway = Gateway::start(
        ONE,
        &[("a", live.addr), ("a", dead)],
        &["--health-interval", "0s"],
    )
    .await;
    for _ in 0..50 {
        let answer = gateway
            .post("/serving-endpoints/ep/invocations", "{}")
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let retries = gateway
        .metric(r#"sluice_gateway_upstream_retries_total{namespace="default",endpoint="ep",entity="a"}"#)
        .await;
    assert!(retries >= 1.0, "no retry was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pod_accepting_is_a_502_naming_the_entity() {
    // The address stays routed after its process is gone: health checks are off.
    let upstream = Upstream::python("probe", None).await;
    let gateway = Gateway::start(ONE, &[("a", upstream.addr)], &["--health-interval", "0s"]).await;
    drop(upstream);
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", "{}")
        .await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["error_code"], "UPSTREAM_ERROR");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no pod of entity \"a\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engines_plain_text_error_becomes_the_error_body() {
    let engine = Upstream::python("engine", None).await;
    let gateway = Gateway::start(ONE, &[("a", engine.addr)], &[]).await;
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", r#"{"inputs": "fail"}"#)
        .await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.entity, "a");
    let body = answer.json();
    assert_eq!(body["error_code"], "UPSTREAM_ERROR");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("CUDA out of memory") && message.contains("entity \"a\""),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_past_the_deadline_is_a_504() {
    let engine = Upstream::python("slow", None).await;
    let gateway = Gateway::start(ONE, &[("a", engine.addr)], &["--request-timeout", "1s"]).await;
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", r#"{"inputs": "slow"}"#)
        .await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.json()["error_code"], "DEADLINE_EXCEEDED");
}
