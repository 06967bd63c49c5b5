//! The ServingEndpoint controller, run as the real `sluice-operator` against the local control
//! plane: entity Deployments and Services with owner references and labels, a pending config
//! rolling out, and garbage collection of the children when the endpoint goes.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, Service},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::ServingEndpoint;
use sluice_tests::{
    cluster::{fresh_namespace, shared},
    wait::on_cluster,
};

/// How long each step may take: no pods run here, only the operator and the controllers.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_gets_owned_children_per_entity_and_a_pending_config() {
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "se").await;
    let _operator = cp.start_operator();

    let apply = PatchParams::apply("test-user");
    let mvs: Api<sluice_crds::ModelVersion> = Api::namespaced(client.clone(), &ns);
    for v in [3, 4] {
        let mv = json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": format!("fraud-{v}")},
            "spec": {"model": "fraud", "version": v, "source": {"uri": format!("s3://models/fraud/{v}")}, "format": "onnx"}});
        mvs.patch(&format!("fraud-{v}"), &apply, &Patch::Apply(mv))
            .await
            .expect("model version");
    }
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    let ep = json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint", "metadata": {"name": "fraud"},
        "spec": {"servedEntities": [
            {"name": "a", "model": "fraud", "version": 3},
            {"name": "b", "model": "fraud", "version": 4, "workloadType": "GPU_SMALL"}],
          "trafficConfig": {"routes": [{"servedEntityName": "a", "trafficPercentage": 90}, {"servedEntityName": "b", "trafficPercentage": 10}]}}});
    endpoints
        .patch("fraud", &apply, &Patch::Apply(ep))
        .await
        .expect("endpoint");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let children = on_cluster("two entity Deployments", WAIT, || async {
        let list = deployments
            .list(&ListParams::default().labels("serving.sluice.dev/endpoint=fraud"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for d in &children {
        let owner = &d.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ServingEndpoint", "fraud", Some(true))
        );
        let labels = d.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice");
        let pod = d.spec.template.spec.as_ref().expect("pod");
        let gpus = pod.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("nvidia.com/gpu").cloned());
        let entity = labels["serving.sluice.dev/entity"].as_str();
        assert_eq!(
            gpus.is_some(),
            entity == "b",
            "only the GPU_SMALL entity requests a GPU"
        );
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    // Each entity's Service is applied right after its Deployment.
    on_cluster("two entity Services", WAIT, || async {
        let list = services
            .list(&ListParams::default().labels("serving.sluice.dev/endpoint=fraud"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;

    // No kubelet runs here, so pods never become ready: the first config stays pending.
    let status = on_cluster("a pending config in status", WAIT, || async {
        let s = endpoints.get("fraud").await.ok()?.status?;
        s.pending_config.is_some().then_some(s)
    })
    .await;
    let state = status.state.expect("state");
    assert_eq!(
        format!("{:?}/{:?}", state.ready, state.config_update),
        "NOT_READY/IN_PROGRESS"
    );
    assert!(status.config.is_none());
    let pending = status.pending_config.expect("pending");
    assert_eq!(pending.config_version, 1);
    let names: Vec<_> = pending
        .served_entities
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        status.url.as_deref(),
        Some("/serving-endpoints/fraud/invocations")
    );

    // The real controller-manager made ReplicaSets and Pods below the Deployments.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    on_cluster("ReplicaSets and Pods of both entities", WAIT, || async {
        let selector = ListParams::default().labels("serving.sluice.dev/endpoint=fraud");
        let rs = replica_sets.list(&selector).await.ok()?.items.len();
        let p = pods.list(&selector).await.ok()?.items.len();
        (rs >= 2 && p >= 2).then_some(())
    })
    .await;

    // Deleting the endpoint garbage-collects every child through the owner references (the
    // real controller-manager's garbage collector): Deployments, Services, ReplicaSets, Pods.
    endpoints
        .delete("fraud", &DeleteParams::background())
        .await
        .expect("delete");
    on_cluster("children garbage-collected", WAIT, || async {
        let d = deployments
            .list(&ListParams::default().labels("serving.sluice.dev/endpoint=fraud"))
            .await
            .ok()?
            .items
            .len();
        let s = services
            .list(&ListParams::default().labels("serving.sluice.dev/endpoint=fraud"))
            .await
            .ok()?
            .items
            .len();
        let selector = ListParams::default().labels("serving.sluice.dev/endpoint=fraud");
        let rs = replica_sets.list(&selector).await.ok()?.items.len();
        let p = pods.list(&selector).await.ok()?.items.len();
        (d + s + rs + p == 0).then_some(())
    })
    .await;
}
