//! `spec.aiGateway.fallback` in a standalone gateway in front of real upstream processes: with
//! the entity that takes all the traffic killed, every request is answered by the standby entity
//! (0 % of the traffic) and says so; an engine error goes on too; without fallback the caller
//! gets the failure.

use crate::harness::{Gateway, Upstream, two_entities};

const FALLBACK: &str = "  aiGateway:\n    fallback: {enabled: true}\n";

async fn invoke(gateway: &Gateway, body: &str) -> (u16, String) {
    let answer = gateway
        .post("/serving-endpoints/ep/invocations", body)
        .await;
    (answer.status, answer.entity)
}

#[tokio::test]
async fn a_dead_or_failing_entity_hands_requests_to_the_standby() {
    let (a, b) = (
        Upstream::python("a", None).await,
        Upstream::python("b", None).await,
    );
    let upstreams = [("a", a.addr), ("b", b.addr)];
    let with = Gateway::start(&two_entities(100, "", FALLBACK), &upstreams, &[]).await;
    let without = Gateway::start(&two_entities(100, "", ""), &upstreams, &[]).await;

    // The engine of `a` answers 500 to this body; `b` answers it too, so the last failure
    // stands: fallback tries each entity once.
    assert_eq!(
        invoke(&with, r#"{"inputs": "fail"}"#).await,
        (500, "b".into())
    );
    assert_eq!(
        invoke(&without, r#"{"inputs": "fail"}"#).await,
        (500, "a".into())
    );

    a.signal("KILL");
    for _ in 0..20 {
        assert_eq!(
            invoke(&with, r#"{"inputs": [[1.0]]}"#).await,
            (200, "b".into())
        );
    }
    let (status, _) = invoke(&without, r#"{"inputs": [[1.0]]}"#).await;
    assert!(
        status >= 500,
        "without fallback the caller gets the failure: {status}"
    );
    let handed = with
        .metric("sluice_gateway_fallbacks_total{namespace=\"default\",endpoint=\"ep\",entity=\"a\",reason=\"unavailable\"}")
        .await;
    assert_eq!(handed, 20.0);
    let failed = with
        .metric("sluice_gateway_fallbacks_total{namespace=\"default\",endpoint=\"ep\",entity=\"a\",reason=\"server_error\"}")
        .await;
    assert_eq!(failed, 1.0);
}
