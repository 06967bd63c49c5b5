//! Shared by the fault-injection tests (`faults`, `faults_apiserver`): the iris endpoint on
//! a claim, applying manifests, and waiting for a settled rollout.

#![allow(dead_code)]

use std::time::Duration;

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_crds::ServingEndpoint;
use sluice_tests::cluster::{shared, shared_nodes};

pub const PATH: &str = "/serving-endpoints/iris/invocations";
pub const BODY: &str = r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#;

pub fn logs() -> String {
    let cp = shared();
    let mut out = format!("{}{}", cp.dump_logs(), shared_nodes().kubelet.dump_logs());
    // The operators' and gateways' own logs (one file per process).
    if let Ok(entries) = std::fs::read_dir(cp.state_dir.join("logs")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("operator-") || name.starts_with("gateway-") {
                out.push_str(&sluice_tests::log_tail(&entry.path(), 30));
            }
        }
    }
    out
}

pub async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    sluice_tests::wait::eventually(what, Duration::from_secs(120), logs, check).await
}

pub async fn apply(client: &Client, ns: &str, doc: Value) {
    let resource = sluice_tests::apply::api_resource(&doc).expect("kind");
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .patch(
            &name,
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

pub fn version(v: i64, uri: &str) -> Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": format!("iris-{v}")},
           "spec": {"model": "iris", "version": v, "format": "onnx", "task": "predict",
                    "source": {"uri": uri}}})
}

pub fn endpoint(v: i64, replicas: i32) -> Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
           "metadata": {"name": "iris"},
           "spec": {"servedEntities": [{"name": "main", "model": "iris", "version": v,
                    "minProvisionedConcurrency": replicas, "maxProvisionedConcurrency": replicas,
                    "autoscaling": {"perReplicaConcurrency": 1}}]}})
}

/// READY, not updating, serving version `v` of the model.
pub async fn settled_on(client: &Client, ns: &str, v: i64) {
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), ns);
    eventually(&format!("iris READY on version {v}"), || async {
        let status = endpoints.get("iris").await.ok()?.status?;
        let state = status.state.as_ref()?;
        let served = status
            .config
            .as_ref()?
            .served_entities
            .iter()
            .all(|e| e.version == Some(v));
        (format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING" && served)
            .then_some(())
    })
    .await;
}
