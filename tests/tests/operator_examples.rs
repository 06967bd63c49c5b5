//! Every example in `examples/` (the top-level manifests users copy) applied to the local
//! cluster with the operator running: each ModelVersion becomes Ready (one of format `mlflow`
//! stays Ready=Unknown, Inspecting, since no source check pod runs here to read its MLmodel
//! flavors, and its endpoint says so in Resolved=False), each ServingEndpoint READY and
//! NOT_UPDATING (or, where it sets a field this version does not act on, Ready=False with
//! reason FieldNotSupported), and the children match what the example asks for — an entity
//! Deployment with ready pods per model entity, none for external models, GPU entities on the
//! GPU node with the workload table's resources and tolerations, the capture sidecar wherever
//! auto-capture or usage tracking is on; all in a namespace where Pod Security `restricted` is enforced.
//!
//! Entity pods run no process here (the images are not mapped to local binaries, as kwok
//! does), so all examples fit side by side on the test nodes, GPU ones included; each example
//! that serves a model on CPU answers real requests from its own artifacts in
//! `examples_answer`.

mod operator_support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use operator_support::{Scene, condition};
use serde_json::{Value, json};
use sluice_crds::ServingEndpoint;
use sluice_tests::{manifests::read_documents, manifests::yaml_files, repo_root};

/// Secrets the examples reference, which a user creates before applying them.
fn prerequisites() -> Vec<Value> {
    [
        "model-store-credentials",
        "gcs-credentials",
        "hf-credentials",
    ]
    .into_iter()
    .map(|name| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                   "stringData": {"token": "test", "AWS_ACCESS_KEY_ID": "test"}})
    })
    .collect()
}

/// What one served entity of an example must look like once settled.
#[derive(Debug, Default)]
struct EntityExpectation {
    external: bool,
    gpu: bool,
}

fn entity_expectations(doc: &Value) -> BTreeMap<String, EntityExpectation> {
    doc["spec"]["servedEntities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let workload = e["workloadType"].as_str().unwrap_or("CPU");
            let expect = EntityExpectation {
                external: e.get("externalModel").is_some(),
                gpu: workload != "CPU",
            };
            (name, expect)
        })
        .collect()
}

fn container_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref();
    let init = spec.and_then(|s| s.init_containers.as_ref());
    let main = spec.map(|s| &s.containers);
    init.into_iter()
        .chain(main)
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// Checks the pods of one settled entity against its expectation; `None` while not there yet.
fn entity_pods_match(
    pods: &[Pod],
    entity: &str,
    expect: &EntityExpectation,
    sidecar: bool,
    gpu_node: &str,
) -> Result<(), String> {
    let mine: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("serving.sluice.dev/entity"))
                .is_some_and(|e| e == entity)
        })
        .collect();
    if expect.external {
        return match mine.len() {
            0 => Ok(()),
            n => Err(format!("external entity {entity} has {n} pods")),
        };
    }
    let ready = |p: &&&Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let pod = mine
        .iter()
        .find(ready)
        .ok_or_else(|| format!("entity {entity} has no ready pod ({} pods)", mine.len()))?;
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let on = spec.node_name.as_deref().unwrap_or_default();
    if expect.gpu {
        let gpus = spec.containers.iter().find_map(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("nvidia.com/gpu")
                .map(|q| q.0.clone())
        });
        let tolerates = spec
            .tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"));
        if on != gpu_node || gpus.is_none() || !tolerates {
            return Err(format!(
                "GPU entity {entity}: node {on}, nvidia.com/gpu {gpus:?}, toleration {tolerates}"
            ));
        }
    } else if on == gpu_node {
        return Err(format!("CPU entity {entity} landed on the GPU node"));
    }
    let names = container_names(pod);
    if sidecar != names.iter().any(|n| n == "capture") {
        return Err(format!(
            "entity {entity}: capture sidecar expected {sidecar} but containers {names:?}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_reaches_its_expected_state() {
    let scene = Scene::new("examples", true).await;
    let nodes = scene.nodes.expect("nodes");
    // Pod Security `restricted`, enforced by the API server's admission: every entity pod the
    // operator renders (engines too) must be admitted, or its ReplicaSet creates no pod.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(scene.client.clone());
    namespaces
        .patch(
            &scene.ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"
            }}})),
        )
        .await
        .expect("labelling the namespace restricted");
    for secret in prerequisites() {
        scene.apply(secret).await;
    }
    // The claims the pvc:// examples read from, made (and the quickstart's model copied on)
    // as a user would before applying them.
    sluice_tests::models::iris_on_claim(&scene.client, &scene.ns).await;
    sluice_tests::pvc::bound_claim(&scene.client, &scene.ns, "model-store", "ReadWriteMany").await;
    let files = yaml_files(&repo_root().join("examples")).expect("examples");
    let mut endpoints = Vec::new();
    let mut versions = Vec::new();
    // Versions of format mlflow, whose runtime follows the MLmodel flavors the source check
    // reads: no check pod runs here, so they stay Ready=Unknown (Inspecting) and their
    // endpoints unresolved, naming why (examples_answer runs them to the end on real pods).
    let mut inspected = std::collections::BTreeSet::new();
    let mut inspected_models = std::collections::BTreeSet::new();
    for file in &files {
        for doc in read_documents(file).expect("example parses") {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match doc["kind"].as_str() {
                Some("ServingEndpoint") => endpoints.push((file.clone(), name, doc.clone())),
                Some("ModelVersion") => {
                    if doc["spec"]["format"] == "mlflow" {
                        inspected_models.insert(
                            doc["spec"]["model"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                        inspected.insert(name.clone());
                    }
                    versions.push(name)
                }
                _ => {}
            }
            scene.apply(doc).await;
        }
    }
    assert!(
        endpoints.len() >= 9 && versions.len() >= 9,
        "examples/ holds {} endpoints and {} versions",
        endpoints.len(),
        versions.len()
    );

    for name in &versions {
        let api = scene.versions();
        let expected = if inspected.contains(name) {
            ("Unknown", "Inspecting")
        } else {
            ("True", "Checked")
        };
        scene
            .eventually(&format!("ModelVersion {name} Ready {expected:?}"), || {
                let api = api.clone();
                async move {
                    let mv = api.get(name).await.ok()?;
                    let conditions = mv.status?.conditions;
                    let (status, reason) = condition(&conditions, "Ready")?;
                    (status == expected.0 && (status == "True" || reason == expected.1))
                        .then_some(())
                }
            })
            .await;
    }

    for (file, name, doc) in &endpoints {
        let expectations = entity_expectations(doc);
        let endpoint: ServingEndpoint =
            serde_json::from_value(doc.clone()).expect("a ServingEndpoint");
        if !sluice_contract::support::unsupported_fields(&endpoint).is_empty() {
            // Fields this version does not act on: never READY, and it says which.
            let api = scene.endpoints();
            let what = format!("{} ({name}): Ready=False FieldNotSupported", file.display());
            scene
                .eventually(&what, || {
                    let api = api.clone();
                    async move {
                        let s = api.get(name).await.ok()?.status?;
                        let ready = condition(&s.conditions, "Ready")?;
                        (ready == ("False".into(), "FieldNotSupported".into())).then_some(())
                    }
                })
                .await;
            continue;
        }
        let models: Vec<&str> = doc["spec"]["servedEntities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["model"].as_str())
            .collect();
        if models.iter().any(|m| inspected_models.contains(*m)) {
            let api = scene.endpoints();
            let what = format!(
                "{} ({name}): Resolved=False until the flavors are read",
                file.display()
            );
            scene
                .eventually(&what, || {
                    let api = api.clone();
                    async move {
                        let s = api.get(name).await.ok()?.status?;
                        let resolved = s.conditions.iter().find(|c| c.type_ == "Resolved")?;
                        (resolved.status == "False"
                            && resolved.message.contains("reads the MLmodel flavors"))
                        .then_some(())
                    }
                })
                .await;
            continue;
        }
        let what = format!("{} ({name}) READY", file.display());
        let status = scene.settled(name, &what, |_| true).await;
        let mut served: Vec<&str> = status
            .config
            .iter()
            .flat_map(|c| c.served_entities.iter().map(|e| e.name.as_str()))
            .collect();
        served.sort_unstable();
        assert_eq!(
            served,
            expectations.keys().map(String::as_str).collect::<Vec<_>>(),
            "{what}: served entities"
        );
        let capture = doc["spec"]["autoCapture"]["enabled"].as_bool() == Some(true);
        // Usage tracking is written by the same sidecar.
        let sidecar =
            capture || doc["spec"]["aiGateway"]["usageTracking"]["enabled"].as_bool() == Some(true);
        assert_eq!(
            status
                .config
                .as_ref()
                .and_then(|c| c.auto_capture.as_ref())
                .is_some(),
            capture,
            "{what}: resolved auto-capture"
        );
        let (expectations, scene_ref) = (&expectations, &scene);
        scene
            .eventually(
                &format!("{what}: pods as the example asks"),
                || async move {
                    let pods = scene_ref.pods_of(name).await;
                    expectations
                        .iter()
                        .map(|(entity, expect)| {
                            entity_pods_match(&pods, entity, expect, sidecar, &nodes.gpu_node)
                        })
                        .collect::<Result<Vec<()>, String>>()
                        .map_err(|e| eprintln!("{name}: {e}"))
                        .ok()
                },
            )
            .await;
    }
}
