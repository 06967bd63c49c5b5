//! Where entity pods land and when they are replaced, with the real scheduler and the test
//! kubelet: a GPU entity gets the workload table's `nvidia.com/gpu` resources and tolerations
//! and runs on the GPU node; a traffic-only change is promoted without touching any pod.

mod operator_support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use operator_support::{Scene, endpoint, engine_entity, model_version, served_versions};
use serde_json::json;
use sluice_contract::config::OperatorConfig;
use sluice_tests::cluster::shared_nodes;

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_entity_runs_on_the_gpu_node_with_the_tables_resources_and_tolerations() {
    let scene = Scene::new("gpu", true).await;
    scene.apply(model_version("llm-1", "llm", 1, &[])).await;
    scene
        .apply(endpoint(
            "chat",
            vec![
                engine_entity(
                    "big",
                    "llm",
                    json!({"version": 1}),
                    json!({"workloadType": "GPU_SMALL"}),
                ),
                engine_entity(
                    "small",
                    "llm",
                    json!({"version": 1}),
                    json!({"workloadType": "CPU"}),
                ),
            ],
            &[("big", 50), ("small", 50)],
        ))
        .await;
    scene.settled("chat", "the endpoint READY", |_| true).await;

    // The expected placement comes from the operator's table, not from constants here.
    let table = OperatorConfig::default().workload_types;
    let gpu_class = &table[&sluice_crds::WorkloadType::GPU_SMALL];
    let pods = scene.pods_of("chat").await;
    let by_entity: BTreeMap<String, &Pod> = pods
        .iter()
        .map(|p| {
            (
                p.metadata.labels.as_ref().expect("labels")["serving.sluice.dev/entity"].clone(),
                p,
            )
        })
        .collect();
    let nodes = shared_nodes();

    let big = by_entity["big"];
    let spec = big.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(nodes.gpu_node.as_str()));
    let limits = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(
        limits.get("nvidia.com/gpu").map(|q| q.0.clone()),
        Some(gpu_class.gpu_count.to_string())
    );
    for toleration in &gpu_class.tolerations {
        assert!(
            spec.tolerations.iter().flatten().any(|t| t == toleration),
            "missing toleration {toleration:?} in {:?}",
            spec.tolerations
        );
    }
    for (key, value) in &gpu_class.node_selector {
        assert_eq!(
            spec.node_selector.as_ref().and_then(|s| s.get(key)),
            Some(value)
        );
    }

    let small = by_entity["small"].spec.as_ref().expect("spec");
    assert!(
        small.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_none_or(|l| !l.contains_key("nvidia.com/gpu")),
        "a CPU entity requests no GPU"
    );
    assert!(small.node_name.is_some(), "the CPU entity is scheduled too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traffic_only_change_is_promoted_without_touching_a_pod() {
    let scene = Scene::new("traffic", true).await;
    for v in [1, 2] {
        scene
            .apply(model_version(&format!("fraud-{v}"), "fraud", v, &[]))
            .await;
    }
    let entities = || {
        vec![
            engine_entity("a", "fraud", json!({"version": 1}), json!({})),
            engine_entity("b", "fraud", json!({"version": 2}), json!({})),
        ]
    };
    scene
        .apply(endpoint("fraud", entities(), &[("a", 90), ("b", 10)]))
        .await;
    let before = scene
        .settled("fraud", "the 90/10 config READY", |s| {
            s.traffic_summary.as_deref() == Some("a:90,b:10")
        })
        .await;
    let uids = |pods: Vec<Pod>| -> Vec<String> {
        let mut uids: Vec<String> = pods.into_iter().filter_map(|p| p.metadata.uid).collect();
        uids.sort();
        uids
    };
    let pods_before = uids(scene.pods_of("fraud").await);
    assert_eq!(pods_before.len(), 2);

    scene
        .apply(endpoint("fraud", entities(), &[("a", 20), ("b", 80)]))
        .await;
    let after = scene
        .settled("fraud", "the 20/80 config READY", |s| {
            s.traffic_summary.as_deref() == Some("a:20,b:80")
        })
        .await;
    let version =
        |s: &sluice_crds::ServingEndpointStatus| s.config.as_ref().map(|c| c.config_version);
    assert_eq!(version(&after), version(&before).map(|v| v + 1));
    assert_eq!(served_versions(&after), served_versions(&before));
    assert_eq!(
        uids(scene.pods_of("fraud").await),
        pods_before,
        "a traffic-only change must not replace any pod"
    );
}

/// `spec.replicas` of an entity Deployment has exactly one owner, the autoscaler's field
/// manager, from creation on: the operator's later applies leave replicas out, which would
/// reset them to 1 if the operator's own manager were their only owner.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_keep_one_owner_and_survive_the_operators_later_applies() {
    let scene = Scene::new("replicas", true).await;
    scene.apply(model_version("fraud-1", "fraud", 1, &[])).await;
    let two_replicas = || {
        endpoint(
            "fraud",
            vec![engine_entity(
                "a",
                "fraud",
                json!({"version": 1}),
                json!({"minProvisionedConcurrency": 8, "maxProvisionedConcurrency": 8,
                       "autoscaling": {"perReplicaConcurrency": 4}}),
            )],
            &[],
        )
    };
    scene.apply(two_replicas()).await;
    let status = scene.settled("fraud", "fraud READY", |_| true).await;
    let child = status
        .config
        .as_ref()
        .and_then(|c| c.served_entities[0].deployment_name.clone())
        .expect("a Deployment");
    // A spec change that renders the same child: the operator applies it again.
    let mut described = two_replicas();
    described["spec"]["description"] = json!("applied a second time");
    scene.apply(described).await;
    scene
        .settled("fraud", "generation 2 observed", |s| {
            s.observed_generation == Some(2)
        })
        .await;
    let deployment = scene.deployments().get(&child).await.expect("deployment");
    assert_eq!(deployment.spec.replicas, Some(2), "not reset to 1");
    // Beside it, the NetworkPolicy that lets only the gateways reach its pods (the local
    // cluster has no network plugin that enforces it; docs/testing.md).
    let policy = kube::Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        scene.client.clone(),
        &scene.ns,
    )
    .get(&child)
    .await
    .expect("the entity's NetworkPolicy");
    let selected = policy
        .spec
        .and_then(|s| s.pod_selector)
        .and_then(|s| s.match_labels);
    assert_eq!(selected, deployment.spec.selector.match_labels);
    let owners: Vec<String> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
        .map(|m| format!("{:?}/{:?}", m.manager, m.operation))
        .collect();
    assert_eq!(
        owners,
        [format!(
            "{:?}/{:?}",
            Some(sluice_operator::autoscaler::FIELD_MANAGER),
            Some("Apply")
        )],
        "one owner of spec.replicas"
    );
}

/// Pruning removes only the endpoint's own children: a Deployment that carries the
/// endpoint's label without being owned by it survives every reconcile.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_spares_a_deployment_the_endpoint_does_not_own() {
    let scene = Scene::new("prune-owned", true).await;
    scene.apply(model_version("fraud-1", "fraud", 1, &[])).await;
    let impostor = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "not-ours", "labels": {"serving.sluice.dev/endpoint": "fraud"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "not-ours"}},
                 "template": {"metadata": {"labels": {"app": "not-ours"}},
                              "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]}}}});
    let deployments = scene.deployments();
    deployments
        .create(
            &Default::default(),
            &serde_json::from_value(impostor).expect("deployment"),
        )
        .await
        .expect("create");
    let spec = |description: &str| {
        let mut e = endpoint(
            "fraud",
            vec![engine_entity(
                "a",
                "fraud",
                json!({"version": 1}),
                json!({}),
            )],
            &[],
        );
        e["spec"]["description"] = json!(description);
        e
    };
    scene.apply(spec("first")).await;
    scene.settled("fraud", "fraud READY", |_| true).await;
    scene.apply(spec("second")).await;
    scene
        .settled("fraud", "generation 2 observed", |s| {
            s.observed_generation == Some(2)
        })
        .await;
    assert!(
        deployments
            .get_opt("not-ours")
            .await
            .expect("get")
            .is_some(),
        "a Deployment the endpoint does not own is never pruned"
    );
}
