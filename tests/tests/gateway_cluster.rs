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
