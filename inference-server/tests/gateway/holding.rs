//! Holding requests while a scale-to-zero entity has no ready backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::unused_loopback_port;
use crate::harness::{Gateway, Upstream, two_entities};

fn nowhere() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_loopback_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_answered_when_the_entity_comes_up_and_extras_are_refused() {
    let port = unused_loopback_port();
    let b = SocketAddr::from(([127, 0, 0, 1], port));
    let manifest = two_entities(
        0,
        ", scaleToZeroEnabled: true, autoscaling: {maxHeldRequests: 5, holdTimeoutSeconds: 60}",
        "",
    );
    let gateway = Arc::new(Gateway::start(&manifest, &[("a", nowhere()), ("b", b)], &[]).await);
    let held: Vec<_> = (0..5)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                gateway
                    .post("/serving-endpoints/ep/invocations", "{}")
                    .await
            })
        })
        .collect();
    // All five wait; the demand report shows them to the autoscaler.
    let held_now = || async {
        let demand = gateway.demand().await;
        demand["entities"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["entity"] == "b"))
            .map(|row| row["held"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    for _ in 0..200 {
        if held_now().await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(held_now().await, 5);
    // A sixth is past the cap: refused at once, with Retry-After.
    let refused = gateway
        .post("/serving-endpoints/ep/invocations", "{}")
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.retry_after.is_some());
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already held")
    );
    // The entity comes up: every held request is answered by it.
    let _upstream = Upstream::python_at(port, "b", None).await;
    for request in held {
        let answer = request.await.expect("task");
        assert_eq!(
            (answer.status, answer.entity.as_str()),
            (200, "b"),
            "{}",
            answer.body
        );
    }
    assert_eq!(held_now().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_times_out_with_503_and_retry_after() {
    let manifest = two_entities(
        0,
        ", scaleToZeroEnabled: true, autoscaling: {holdTimeoutSeconds: 1}",
        "",
    );
    let gateway = Gateway::start(&manifest, &[("a", nowhere()), ("b", nowhere())], &[]).await;
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", "{}")
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["error_code"], "TEMPORARILY_UNAVAILABLE");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("within 1s")
    );
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    let timed_out = gateway
        .metric(r#"sluice_gateway_hold_duration_seconds_count{namespace="default",endpoint="ep",entity="b",outcome="timed_out"}"#)
        .await;
    assert_eq!(timed_out, 1.0);
}
