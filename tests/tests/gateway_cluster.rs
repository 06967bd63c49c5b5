//! The gateway in cluster mode on the local cluster, in front of real entity pods run by the
//! test kubelet, with the real operator: requests are answered by the entity the promoted
//! config routes to; a traffic change moves traffic with no pod restart and no failed request;
//! a version change under steady load rolls blue/green with zero failed requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::cluster::{fresh_namespace, shared, shared_nodes};
use sluice_tests::gateway::GatewayProcess;
use sluice_tests::models::iris_on_claim;

const IRIS: &str = r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#;

fn endpoint(a_version: i64, a_weight: i32) -> serde_json::Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint", "metadata": {"name": "iris"},
           "spec": {"servedEntities": [
                {"name": "a", "model": "iris", "version": a_version},
                {"name": "b", "model": "iris", "version": 1}],
            "trafficConfig": {"routes": [
                {"servedEntityName": "a", "trafficPercentage": a_weight},
                {"servedEntityName": "b", "trafficPercentage": 100 - a_weight}]}}})
}

/// One answer: status, entity, config version.
type Answer = (u16, String, String);

async fn call(client: &reqwest::Client, base: &str) -> Answer {
    match client
        .post(format!("{base}/serving-endpoints/iris/invocations"))
        .header("content-type", "application/json")
        .body(IRIS)
        .send()
        .await
    {
        Ok(response) => {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let (entity, version) = (
                header("served-model-name"),
                header("x-sluice-config-version"),
            );
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status != 200 {
                return (status, format!("{entity}: {body}"), version);
            }
            (status, entity, version)
        }
        Err(error) => (0, error.to_string(), String::new()),
    }
}

/// Requests in a loop (4 at a time) until stopped; every answer.
fn steady_load(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        answers.push(call(&client, &base).await);
                    }
                    answers
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await.expect("worker"));
        }
        all
    })
}

fn failures(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.0 != 200).collect()
}

fn by_entity(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.1.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_follows_promoted_configs_without_failing_a_request() {
    let nodes = shared_nodes();
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "gateway").await;
    let _operator = cp.start_operator();
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());

    let uri = iris_on_claim(&client, &ns).await;
    let apply = PatchParams::apply("test-user");
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    for v in [1, 2] {
        let mv = json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": format!("iris-{v}")},
            "spec": {"model": "iris", "version": v, "source": {"uri": uri}, "format": "onnx", "task": "predict"}});
        mvs.patch(&format!("iris-{v}"), &apply, &Patch::Apply(mv))
            .await
            .expect("model version");
    }
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch("iris", &apply, &Patch::Apply(endpoint(1, 50)))
        .await
        .expect("endpoint");
    let promoted = |version: i64| {
        let endpoints = endpoints.clone();
        async move {
            let status = endpoints.get("iris").await.ok()?.status?;
            let state = status.state.as_ref()?;
            let config = status.config.as_ref()?;
            (format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING"
                && config.config_version == version)
                .then_some(())
        }
    };
    sluice_tests::wait::eventually("config 1 READY", Duration::from_secs(180), logs, || {
        promoted(1)
    })
    .await;

    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let gateway_logs = || format!("{}{}", logs(), sluice_tests::log_tail(&gateway.log, 60));
    let http = reqwest::Client::new();

    // 50/50: both entities answer, each by its own pods.
    let mut answers = Vec::new();
    for _ in 0..200 {
        answers.push(call(&http, &gateway.base).await);
    }
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let split = by_entity(&answers);
    assert!(
        split.get("a").copied().unwrap_or(0) > 40 && split.get("b").copied().unwrap_or(0) > 40,
        "{split:?}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_uids = || async {
        let mut uids: Vec<String> = pods
            .list(&ListParams::default().labels("serving.sluice.dev/endpoint=iris"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        uids.sort();
        uids
    };
    let before = pod_uids().await;

    // Traffic only: 100/0 under load. No request fails, no pod restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(gateway.base.clone(), stop.clone());
    endpoints
        .patch("iris", &apply, &Patch::Apply(endpoint(1, 100)))
        .await
        .expect("traffic change");
    sluice_tests::wait::eventually(
        "config 2 promoted",
        Duration::from_secs(60),
        gateway_logs,
        || promoted(2),
    )
    .await;
    sluice_tests::wait::eventually(
        "traffic to follow config 2",
        Duration::from_secs(30),
        gateway_logs,
        || {
            let http = http.clone();
            let base = gateway.base.clone();
            async move {
                let answer = call(&http, &base).await;
                (answer.2 == "2").then_some(())
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let during = load.await.expect("load");
    assert!(failures(&during).is_empty(), "{:?}", failures(&during));
    for _ in 0..50 {
        let answer = call(&http, &gateway.base).await;
        assert_eq!((answer.0, answer.1.as_str()), (200, "a"), "{answer:?}");
    }
    assert_eq!(
        pod_uids().await,
        before,
        "a traffic-only change restarted pods"
    );

    // Version change of `a` under load: blue/green, zero failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(gateway.base.clone(), stop.clone());
    endpoints
        .patch("iris", &apply, &Patch::Apply(endpoint(2, 100)))
        .await
        .expect("version change");
    sluice_tests::wait::eventually(
        "config 3 promoted",
        Duration::from_secs(180),
        gateway_logs,
        || promoted(3),
    )
    .await;
    sluice_tests::wait::eventually(
        "the old revision of a to be gone",
        Duration::from_secs(60),
        gateway_logs,
        || {
            let pods = pods.clone();
            let before = before.clone();
            async move {
                let now = pods
                    .list(
                        &ListParams::default()
                            .labels("serving.sluice.dev/endpoint=iris,serving.sluice.dev/entity=a"),
                    )
                    .await
                    .ok()?;
                now.items
                    .iter()
                    .all(|p| !before.contains(p.metadata.uid.as_ref().unwrap_or(&String::new())))
                    .then_some(())
            }
        },
    )
    .await;
    // Keep the load on a little past the prune.
    for _ in 0..50 {
        call(&http, &gateway.base).await;
    }
    stop.store(true, Ordering::Relaxed);
    let during = load.await.expect("load");
    assert!(during.len() > 50, "too little load: {}", during.len());
    assert!(
        failures(&during).is_empty(),
        "{} of {} failed: {:?}",
        failures(&during).len(),
        during.len(),
        failures(&during).first()
    );
    assert!(
        during.iter().any(|a| a.2 == "3"),
        "no answer came through config 3"
    );
}

/// An external entity on the cluster: the operator makes it READY with no pods and publishes
/// the resolved `externalModel`; the cluster-mode gateway reads the key from the Secret in the
/// endpoint's namespace through the API server and answers in the OpenAI format from the
/// Anthropic-format stand-in; a key rotated in the Secret is used after the provider refused
/// the old one.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_entity_serves_with_no_pods_and_the_secrets_key() {
    const KEY: &str = "sk-cluster-5e2d7c9a1b3f";
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "external").await;
    let _operator = cp.start_operator();
    let logs = || cp.dump_logs();
    let providers = sluice_tests::providers::Providers::start(KEY).await;
    let apply = PatchParams::apply("test-user");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |key: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "anthropic"},
               "stringData": {"api-key": key}})
    };
    secrets
        .patch(
            "anthropic",
            &apply,
            &Patch::Apply(secret("sk-old-and-revoked-000")),
        )
        .await
        .expect("secret");
    let endpoint = json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
        "metadata": {"name": "assistant"},
        "spec": {"servedEntities": [{"name": "claude", "externalModel": {
            "provider": "anthropic", "name": "claude-haiku-4-5", "task": "llm/v1/chat",
            "apiBase": format!("http://{}/anthropic", providers.addr),
            "apiKeySecretRef": {"name": "anthropic", "key": "api-key"}}}]}});
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch("assistant", &apply, &Patch::Apply(endpoint))
        .await
        .expect("endpoint");
    sluice_tests::wait::eventually(
        "the external endpoint READY",
        Duration::from_secs(120),
        logs,
        || {
            let endpoints = endpoints.clone();
            async move {
                let status = endpoints.get("assistant").await.ok()?.status?;
                let state = status.state.as_ref()?;
                (format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING")
                    .then_some(status)
            }
        },
    )
    .await;
    let status = endpoints
        .get("assistant")
        .await
        .expect("get")
        .status
        .expect("status");
    let entity = &status.config.as_ref().expect("config").served_entities[0];
    assert_eq!(
        entity.deployment_name, None,
        "no pods for an external entity"
    );
    assert_eq!(
        entity.external_model.as_ref().map(|m| m.name.as_str()),
        Some("claude-haiku-4-5")
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let http = reqwest::Client::new();
    let ask = || async {
        let response = http
            .post(format!(
                "{}/serving-endpoints/v1/chat/completions",
                gateway.base
            ))
            .json(
                &json!({"model": "assistant", "messages": [{"role": "user", "content": "Hello"}]}),
            )
            .send()
            .await
            .expect("call");
        let status = response.status().as_u16();
        (
            status,
            response
                .json::<serde_json::Value>()
                .await
                .unwrap_or_default(),
        )
    };
    // The old key is refused by the provider: the gateway's fault, a 502 naming the Secret.
    let (status, body) = ask().await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("apiKeySecretRef"), "{body}");
    secrets
        .patch("anthropic", &apply, &Patch::Apply(secret(KEY)))
        .await
        .expect("rotate");
    sluice_tests::wait::eventually(
        "the rotated key to be used",
        Duration::from_secs(30),
        || sluice_tests::log_tail(&gateway.log, 40),
        || async {
            let (status, body) = ask().await;
            (status == 200).then_some(body)
        },
    )
    .await;
    let (status, body) = ask().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    let log = std::fs::read_to_string(&gateway.log).expect("log");
    assert!(!log.contains(KEY), "the key is in the gateway's log");
}
