//! What the operator scenarios share: a namespace with its own operator process (run as the
//! operator's ServiceAccount), manifests of ModelVersions and endpoints, and waits that print
//! every relevant log when they time out.

#![allow(dead_code)] // Each test binary uses a different part.

use std::time::Duration;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_crds::{ModelVersion, ServingEndpoint, ServingEndpointStatus};
use sluice_tests::cluster::{
    LocalNodes, OperatorOptions, OperatorProcess, fresh_namespace, shared, shared_nodes,
};

/// Operator configuration under which entity pods run no process on the test kubelet: the
/// data-plane image (the fetch init container) and the engine images are not mapped to local
/// binaries, so pods are Running and Ready at once, as kwok reports them.
pub const NO_PROCESS_CONFIG: &str =
    "images:\n  inferenceServer: test.local/no-process/inference-server\n";

/// One scenario: a fresh namespace, an admin client, and an operator watching that namespace.
pub struct Scene {
    /// Admin client (the test's own actions).
    pub client: Client,
    /// The scenario's namespace.
    pub ns: String,
    /// The operator.
    pub operator: OperatorProcess,
    /// The test kubelet, when the scenario needs pods to run.
    pub nodes: Option<&'static LocalNodes>,
}

impl Scene {
    /// A namespace `<prefix>-<random>` and an operator confined to it (no leader election);
    /// with `with_nodes`, the shared test kubelet runs the pods.
    pub async fn new(prefix: &str, with_nodes: bool) -> Self {
        Self::with_config(prefix, with_nodes, NO_PROCESS_CONFIG).await
    }

    /// As [`Self::new`], with the operator configuration `config_yaml` (without
    /// `images.inferenceServer`, pods run our real data-plane image).
    pub async fn with_config(prefix: &str, with_nodes: bool, config_yaml: &str) -> Self {
        Self::with_config_for(prefix, with_nodes, |_| config_yaml.to_string()).await
    }

    /// As [`Self::with_config`], the configuration made from the scenario's namespace.
    pub async fn with_config_for(
        prefix: &str,
        with_nodes: bool,
        config_yaml: impl FnOnce(&str) -> String,
    ) -> Self {
        let nodes = with_nodes.then(shared_nodes);
        let cp = shared();
        let client = cp.client().await.expect("admin client");
        let ns = fresh_namespace(&client, prefix).await;
        let operator = cp.start_operator_with(&OperatorOptions {
            namespace: Some(ns.clone()),
            config_yaml: Some(config_yaml(&ns)),
            ..Default::default()
        });
        Self {
            client,
            ns,
            operator,
            nodes,
        }
    }

    /// Control plane, operator and kubelet logs.
    pub fn logs(&self) -> String {
        let kubelet = self
            .nodes
            .map(|n| n.kubelet.dump_logs())
            .unwrap_or_default();
        format!(
            "{}{}{kubelet}",
            shared().dump_logs(),
            self.operator.log_tail()
        )
    }

    /// Polls `check` until it yields, for up to two minutes; then fails with the logs.
    pub async fn eventually<T, Fut>(&self, what: &str, check: impl FnMut() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        sluice_tests::wait::eventually(what, Duration::from_secs(120), || self.logs(), check).await
    }

    /// Server-side applies a manifest (a ModelVersion or ServingEndpoint) as the test user.
    pub async fn apply(&self, doc: Value) {
        let ar = sluice_tests::apply::api_resource(&doc).expect("known kind");
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.ns, &ar)
            .patch(
                &name,
                &PatchParams::apply("test-user").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }

    /// ServingEndpoints of the namespace.
    pub fn endpoints(&self) -> Api<ServingEndpoint> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// ModelVersions of the namespace.
    pub fn versions(&self) -> Api<ModelVersion> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Deployments of the namespace.
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Pods of endpoint `endpoint`, with their entity label.
    pub async fn pods_of(&self, endpoint: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("serving.sluice.dev/endpoint={endpoint}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until `endpoint` is READY and NOT_UPDATING with `check` true of its status.
    pub async fn settled(
        &self,
        endpoint: &str,
        what: &str,
        check: impl Fn(&ServingEndpointStatus) -> bool,
    ) -> ServingEndpointStatus {
        let api = self.endpoints();
        let check = &check;
        self.eventually(what, || {
            let api = api.clone();
            async move {
                let s = api.get(endpoint).await.ok()?.status?;
                let state = s.state.as_ref()?;
                let settled =
                    format!("{:?}/{:?}", state.ready, state.config_update) == "READY/NOT_UPDATING";
                (settled && check(&s)).then_some(s)
            }
        })
        .await
    }
}

/// A ModelVersion of `model` (ONNX, an s3 URI nobody fetches in these scenarios).
pub fn model_version(name: &str, model: &str, version: i64, aliases: &[&str]) -> Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
           "spec": {"model": model, "version": version, "aliases": aliases,
                    "source": {"uri": format!("s3://models/{model}/{version}")}, "format": "onnx"}})
}

/// A served entity on the vLLM engine (no process on the test kubelet); `pick` is
/// `{"version": n}` or `{"alias": "..."}`, and `extra` more fields (workloadType, …).
pub fn engine_entity(name: &str, model: &str, pick: Value, extra: Value) -> Value {
    let mut e = json!({"name": name, "model": model, "runtime": {"engine": "vllm"}});
    for source in [pick, extra] {
        if let (Some(target), Value::Object(fields)) = (e.as_object_mut(), source) {
            target.extend(fields);
        }
    }
    e
}

/// A ServingEndpoint with `entities` and, when given, traffic `routes`
/// (`[(entity, percent)]`).
pub fn endpoint(name: &str, entities: Vec<Value>, routes: &[(&str, i64)]) -> Value {
    let mut spec = json!({"servedEntities": entities});
    if !routes.is_empty() {
        let routes: Vec<Value> = routes
            .iter()
            .map(|(e, p)| json!({"servedEntityName": e, "trafficPercentage": p}))
            .collect();
        spec["trafficConfig"] = json!({"routes": routes});
    }
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
           "metadata": {"name": name}, "spec": spec})
}

/// The condition `type_` in `conditions`: (status, reason).
pub fn condition(conditions: &[Condition], type_: &str) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The versions the active config of `status` serves, by entity.
pub fn served_versions(status: &ServingEndpointStatus) -> Vec<(String, Option<i64>)> {
    status
        .config
        .iter()
        .flat_map(|c| c.served_entities.iter())
        .map(|e| (e.name.clone(), e.version))
        .collect()
}
