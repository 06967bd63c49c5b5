//! The whole control path on the local cluster: a ServingEndpoint becomes READY through real
//! pods (fetch init container, builtin `serve`), answers predictions on its pod IP, and a version
//! change rolls out blue/green: the old revision keeps serving until the new one is ready, then
//! it is pruned.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::{
    cluster::{fresh_namespace, shared, shared_nodes},
    http,
    wait::on_nodes,
};

/// How long each step may take: pods fetch the model and start real servers.
const WAIT: Duration = Duration::from_secs(120);

fn model_version(name: &str, version: i64, uri: &str) -> serde_json::Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
           "spec": {"model": "iris", "version": version, "source": {"uri": uri}, "format": "onnx", "task": "predict"}})
}

fn endpoint(version: i64) -> serde_json::Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint", "metadata": {"name": "iris"},
           "spec": {"servedEntities": [{"name": "classifier", "model": "iris", "version": version}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_becomes_ready_through_real_pods_and_rolls_blue_green() {
    let nodes = shared_nodes();
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "rollout").await;
    let _operator = cp.start_operator();

    // The model on a claim of the namespace, which the pods' fetch step copies in.
    let uri = sluice_tests::models::iris_on_claim(&client, &ns).await;

    let apply = PatchParams::apply("test-user");
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    for v in [1, 2] {
        mvs.patch(
            &format!("iris-{v}"),
            &apply,
            &Patch::Apply(model_version(&format!("iris-{v}"), v, &uri)),
        )
        .await
        .expect("mv");
    }
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch("iris", &apply, &Patch::Apply(endpoint(1)))
        .await
        .expect("endpoint");

    let ready_at = |version: i64| {
        let endpoints = endpoints.clone();
        async move {
            let s = endpoints.get("iris").await.ok()?.status?;
            let config = s.config.as_ref()?;
            let state = s.state.as_ref()?;
            let ok = format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING"
                && config.served_entities.first()?.version == Some(version);
            ok.then_some(s)
        }
    };
    let first = on_nodes(nodes, "the endpoint to be READY on version 1", WAIT, || {
        ready_at(1)
    })
    .await;
    let child_v1 = first
        .config
        .as_ref()
        .and_then(|c| c.served_entities[0].deployment_name.clone())
        .expect("child");
    assert_eq!(first.traffic_summary.as_deref(), Some("classifier:100"));

    // The ready pod answers predictions on its own address.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!(
        "serving.sluice.dev/endpoint=iris,serving.sluice.dev/revision={}",
        child_v1.rsplit('-').next().unwrap_or_default()
    );
    let ip = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("pods")
        .items[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod ip");
    let (code, body) = http::post_json(
        &ip,
        8081,
        "/invocations",
        r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#,
    )
    .await
    .expect("answer");
    assert_eq!(code, 200, "{body}");

    // Version 2: a pending config rolls out beside the serving one, then replaces it.
    endpoints
        .patch("iris", &apply, &Patch::Apply(endpoint(2)))
        .await
        .expect("update");
    let second = on_nodes(nodes, "version 2 promoted", WAIT, || ready_at(2)).await;
    assert_eq!(second.config.as_ref().map(|c| c.config_version), Some(2));
    assert!(second.pending_config.is_none());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    on_nodes(
        nodes,
        "the version 1 revision to be pruned",
        WAIT,
        || async {
            let names: Vec<String> = deployments
                .list(&ListParams::default().labels("serving.sluice.dev/endpoint=iris"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|d| d.metadata.name)
                .collect();
            (names.len() == 1 && names[0] != child_v1).then_some(())
        },
    )
    .await;
}
