//! Examples that answer real requests on the local cluster with real containers: each applied
//! unchanged into a namespace of its own, its artifact put where its manifest points (the
//! claim `models` for `pvc://`, an S3-compatible server for `s3://`, whose address and keys
//! the example's Secret carries, as a user's MinIO would), the operator's real data-plane
//! image fetching and serving it, and a request through the gateway answered by the model.
//!
//! Not here yet: the examples whose artifacts need runtimes or models this machine lacks (vLLM
//! on a GPU, the fraud/ranker/churn/LLM artifacts, external models); `operator_examples` checks
//! that every example reaches its expected state, and `model_sources` proves the `gs://`,
//! `az://` and `https://`-archive sources end to end.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::ServingEndpoint;
use sluice_tests::{
    apply,
    cluster::{fresh_namespace, shared, shared_nodes},
    gateway::GatewayProcess,
    manifests::read_documents,
    models::iris_on_claim,
    object_store::S3Server,
    repo_root,
};

const IRIS: &str = r#"{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]]}}"#;

/// Applies `examples/<file>` unchanged into `ns`, waits for endpoint `name` READY, and returns
/// the answer the gateway gives to the iris request.
async fn answer(ns: &str, file: &str, name: &str) -> (u16, String) {
    let cp = shared();
    let nodes = shared_nodes();
    let client = cp.client().await.expect("client");
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());
    let params = PatchParams::apply("test-user");
    for doc in read_documents(&repo_root().join("examples").join(file)).expect("example") {
        let resource = apply::api_resource(&doc).expect("kind");
        let object = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource);
        api.patch(&object, &params, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("applying {file}: {e}"));
    }
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), ns);
    sluice_tests::wait::eventually(
        &format!("{file}: endpoint {name} READY"),
        Duration::from_secs(180),
        logs,
        || async {
            let state = endpoints.get(name).await.ok()?.status?.state?;
            (format!("{:?}", state.ready) == "READY").then_some(())
        },
    )
    .await;
    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, ns).await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/{name}/invocations", gateway.base);
    sluice_tests::wait::eventually(
        &format!("{file}: an answer through the gateway"),
        Duration::from_secs(60),
        || format!("{}{}", logs(), sluice_tests::log_tail(&gateway.log, 40)),
        || async {
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .body(IRIS)
                .send()
                .await
                .ok()?;
            let code = response.status().as_u16();
            let body = response.text().await.ok()?;
            (code == 200).then_some((code, body))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_and_the_minimal_cpu_example_answer_through_the_gateway() {
    let nodes = shared_nodes();
    let _logs = nodes.kubelet.logs_on_panic();
    let cp = shared();
    let client = cp.client().await.expect("client");
    let _operator = cp.start_operator();

    // quickstart.yaml: pvc://models/iris.
    let ns = fresh_namespace(&client, "ex-quickstart").await;
    iris_on_claim(&client, &ns).await;
    let (_, body) = answer(&ns, "quickstart.yaml", "iris").await;
    assert!(body.contains("predictions"), "{body}");

    // minimal-cpu.yaml: s3://models/iris-classifier/1 with the Secret model-store-credentials.
    let ns = fresh_namespace(&client, "ex-minimal").await;
    let s3 = S3Server::start().await;
    let iris = repo_root().join("examples/models/iris");
    s3.put_folder(
        "models",
        "iris-classifier/1",
        &[iris.join("iris.onnx"), iris.join("sluice-model.yaml")],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "model-store-credentials",
            &PatchParams::apply("test-user"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "model-store-credentials"},
                "stringData": s3.credentials()})),
        )
        .await
        .expect("secret");
    let (_, body) = answer(&ns, "minimal-cpu.yaml", "iris").await;
    assert!(body.contains("predictions"), "{body}");
}
