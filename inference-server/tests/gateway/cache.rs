//! `spec.aiGateway.responseCache` in a standalone gateway: a repeated request is answered from
//! the cache (`x-sluice-cache: hit`) and never reaches the model, counted at the model itself;
//! key order and the caller's `user` do not make a request new; a changed body, an expired
//! entry, a stream or a sampled chat do; a failed answer is never kept.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Gateway, Providers, Upstream};

async fn invoke(gateway: &Gateway, body: &str) -> (u16, String) {
    let response = gateway
        .client
        .post(format!("{}/serving-endpoints/ep/invocations", gateway.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("call");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Read to the end, as a client does: an answer is kept once it was sent whole.
    response.bytes().await.expect("body");
    (status, cache)
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_and_skips_the_model() {
    let a = Upstream::python("a", None).await;
    let manifest = "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: ep}\nspec:\n  servedEntities:\n  - {name: a, model: m, version: 1}\n  aiGateway:\n    responseCache: {enabled: true, ttlSeconds: 2}\n";
    let gateway = Gateway::start(manifest, &[("a", a.addr)], &[]).await;
    let posts = || {
        a.received()
            .iter()
            .filter(|l| l.starts_with("POST"))
            .count()
    };

    assert_eq!(
        invoke(&gateway, r#"{"inputs": [[1.0, 2.0]], "params": {"k": 1}}"#).await,
        (200, "miss".into())
    );
    for _ in 0..5 {
        let same = r#"{ "params": {"k": 1}, "inputs": [[1.0, 2.0]] }"#;
        assert_eq!(invoke(&gateway, same).await, (200, "hit".into()));
    }
    assert_eq!(posts(), 1, "hits never reach the model");
    let hit = gateway
        .post(
            "/serving-endpoints/ep/invocations",
            r#"{"inputs": [[1.0, 2.0]], "params": {"k": 1}}"#,
        )
        .await;
    assert_eq!(
        (hit.entity.as_str(), hit.json()["predictions"][0].as_str()),
        ("a", Some("a"))
    );
    // Another question is another answer.
    assert_eq!(
        invoke(&gateway, r#"{"inputs": [[3.0]]}"#).await,
        (200, "miss".into())
    );
    assert_eq!(posts(), 2);
    // A failure is never kept.
    for _ in 0..2 {
        assert_eq!(
            invoke(&gateway, r#"{"inputs": "fail"}"#).await,
            (500, "miss".into())
        );
    }
    assert_eq!(posts(), 4);
    // Past the TTL the model answers again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        invoke(&gateway, r#"{"inputs": [[1.0, 2.0]], "params": {"k": 1}}"#).await,
        (200, "miss".into())
    );
    assert_eq!(posts(), 5);
    let metric = |outcome: &str| {
        format!(
            "sluice_gateway_cache_requests_total{{namespace=\"default\",endpoint=\"ep\",outcome=\"{outcome}\"}}"
        )
    };
    assert_eq!(gateway.metric(&metric("hit")).await, 6.0);
    assert_eq!(gateway.metric(&metric("miss")).await, 5.0);
    assert!(
        gateway
            .metric("sluice_gateway_cache_bytes{namespace=\"default\",endpoint=\"ep\"}")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn only_deterministic_whole_chats_are_cached() {
    const KEY: &str = "sk-cache-test-0123456789";
    let providers = Providers::start(KEY).await;
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\nstringData: {{key: {KEY}}}\n---\napiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {{name: chat}}\nspec:\n  servedEntities:\n  - name: gpt\n    externalModel: {{provider: openai, name: gpt-4o-mini, task: llm/v1/chat, apiBase: 'http://{}/openai/v1', apiKeySecretRef: {{name: keys, key: key}}}}\n  aiGateway:\n    responseCache: {{enabled: true}}\n",
        providers.addr
    );
    let gateway = Gateway::start(&manifest, &[], &[]).await;
    let ask = |temperature: Option<f64>, stream: bool, user: &str| {
        let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "user": user});
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        if stream {
            body["stream"] = json!(true);
        }
        let gateway = &gateway;
        async move {
            let response = gateway
                .client
                .post(format!(
                    "{}/serving-endpoints/v1/chat/completions",
                    gateway.base
                ))
                .json(&body)
                .send()
                .await
                .expect("call");
            let cache = response
                .headers()
                .get("x-sluice-cache")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let status = response.status().as_u16();
            // The answer is kept once it was sent whole: read it before asking again.
            response.bytes().await.expect("answer body");
            (status, cache)
        }
    };
    assert_eq!(
        ask(Some(0.0), false, "u1").await,
        (200, Some("miss".into()))
    );
    // Another caller asking the same gets the cached answer.
    assert_eq!(ask(Some(0.0), false, "u2").await, (200, Some("hit".into())));
    // Sampled (or the default temperature) and streamed chats are never cached.
    for (temperature, stream) in [(Some(0.7), false), (None, false), (Some(0.0), true)] {
        for _ in 0..2 {
            assert_eq!(
                ask(temperature, stream, "u1").await,
                (200, None),
                "{temperature:?} {stream}"
            );
        }
    }
    let calls = providers.calls().await;
    assert_eq!(
        calls["/openai/v1/chat/completions gpt-4o-mini"], 7,
        "{calls}"
    );
    let bypass = gateway
        .metric("sluice_gateway_cache_requests_total{namespace=\"default\",endpoint=\"chat\",outcome=\"bypass\"}")
        .await;
    assert_eq!(bypass, 6.0);
}
