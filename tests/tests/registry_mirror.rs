//! A registry mirror end to end: a real `mlflow server` holds model `Iris_Model` with two
//! versions, `champion` on the first; the operator (config `registries`) mirrors both as
//! ModelVersions; an endpoint follows `champion` and serves version 1 through the gateway on
//! real containers. A data scientist moves `champion` to version 2 in MLflow: the endpoint rolls
//! blue/green to version 2 with no failed request under steady load. Then version 2 is deleted
//! in MLflow: its ModelVersion is kept, marked `InRegistry=False` (`DeletedInRegistry`) with a
//! Warning event, and the endpoint keeps serving it (never silently removed), saying that no
//! version holds `champion` any more.

mod operator_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use operator_support::{Scene, condition, endpoint, served_versions};
use serde_json::json;
use sluice_tests::{
    cluster::shared, gateway::GatewayProcess, load::Load, mlflow::Mlflow, repo_root,
};

const IRIS: &str = r#"{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": [[6.7, 3.0, 5.2, 2.3]]}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_alias_moved_in_mlflow_rolls_the_endpoint_and_a_deleted_version_is_kept() {
    let dir = sluice_tests::process::temp_dir("registry-mirror");
    let server = Mlflow::start(&dir).await;
    let iris = repo_root().join("examples/models/iris");
    let first = server.register(&iris, "Iris_Model", "champion");
    let second = server.register(&iris, "Iris_Model", "challenger");
    assert_eq!(
        (first.version.as_str(), second.version.as_str()),
        ("1", "2")
    );

    let uri = server.uri.clone();
    let scene = Scene::with_config_for("mirror", true, |ns| {
        format!(
            "registries:\n- name: test-registry\n  trackingUri: {uri}\n  namespace: {ns}\n  \
             models: [Iris_Model]\n  intervalSeconds: 5\n  format: onnx\n"
        )
    })
    .await;
    let versions = scene.versions();
    let mirrored = scene
        .eventually("both versions mirrored and Ready", || {
            let versions = versions.clone();
            async move {
                let list = versions.list(&ListParams::default()).await.ok()?.items;
                let ready = |name: &str| {
                    let mv = list
                        .iter()
                        .find(|m| m.metadata.name.as_deref() == Some(name))?;
                    let conditions = &mv.status.as_ref()?.conditions;
                    (condition(conditions, "Ready")?.0 == "True"
                        && condition(conditions, "InRegistry")?.0 == "True")
                        .then(|| mv.spec.clone())
                };
                Some((ready("iris-model-1")?, ready("iris-model-2")?))
            }
        })
        .await;
    assert_eq!(mirrored.0.aliases, ["champion"]);
    assert_eq!(mirrored.1.aliases, ["challenger"]);
    assert_eq!(mirrored.0.source.uri, "models:/Iris_Model/1");
    assert_eq!(mirrored.0.model, "iris-model");

    scene
        .apply(endpoint(
            "iris",
            vec![json!({"name": "main", "model": "iris-model", "alias": "champion"})],
            &[],
        ))
        .await;
    scene
        .settled("iris", "iris READY on version 1", |s| {
            served_versions(s) == [("main".to_string(), Some(1))]
        })
        .await;
    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &scene.ns).await;
    let load = Load::start(
        vec![gateway.base.clone()],
        "/serving-endpoints/iris/invocations",
        IRIS,
        4,
    );
    load.wait_for(20, Duration::from_secs(60)).await;

    // Promote version 2 in MLflow: the endpoint follows within a sync and a blue/green rollout.
    server.set_alias("Iris_Model", "champion", "2");
    scene
        .settled(
            "iris",
            "iris READY on version 2 after the alias moved",
            |s| served_versions(s) == [("main".to_string(), Some(2))],
        )
        .await;
    load.wait_for(20, Duration::from_secs(60)).await;
    let outcome = load.stop().await;
    assert!(
        outcome.failed.is_empty(),
        "{} failed of {}: {:?}",
        outcome.failed.len(),
        outcome.answered + outcome.failed.len(),
        &outcome.failed[..outcome.failed.len().min(5)]
    );
    eprintln!(
        "alias moved under load: {} answered, none failed",
        outcome.answered
    );
    let aliases = |name: &'static str| {
        let versions = versions.clone();
        async move { versions.get(name).await.expect(name).spec.aliases }
    };
    assert_eq!(aliases("iris-model-2").await, ["challenger", "champion"]);
    assert!(aliases("iris-model-1").await.is_empty());

    // Delete the served version in MLflow: kept, reported, still answering.
    server.delete_version("Iris_Model", "2");
    let note = scene
        .eventually("iris-model-2 InRegistry=False", || {
            let versions = versions.clone();
            async move {
                let mv = versions.get("iris-model-2").await.ok()?;
                let c = mv
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "InRegistry" && c.status == "False")?;
                Some((c.reason, c.message, mv.spec.aliases))
            }
        })
        .await;
    assert_eq!(note.0, "DeletedInRegistry");
    assert!(note.1.contains("version 2 of Iris_Model"), "{}", note.1);
    assert!(
        note.2.is_empty(),
        "MLflow dropped its aliases: {:?}",
        note.2
    );
    let events: Api<Event> = Api::namespaced(scene.client.clone(), &scene.ns);
    scene
        .eventually("a Warning event DeletedInRegistry", || {
            let events = events.clone();
            async move {
                events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("DeletedInRegistry")
                            && e.type_.as_deref() == Some("Warning")
                    })
            }
        })
        .await;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!(
            "{}/serving-endpoints/iris/invocations",
            gateway.base
        ))
        .header("content-type", "application/json")
        .body(IRIS)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200, "the deleted version still serves");
    let endpoints = scene.endpoints();
    let said = scene
        .eventually("the endpoint says champion is held by no version", || {
            let endpoints = endpoints.clone();
            async move {
                let status = endpoints.get("iris").await.ok()?.status?;
                status
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "AliasConflict" && c.status == "True")
            }
        })
        .await;
    assert!(
        said.message.contains(
            "alias champion of model iris-model is held by no ModelVersion; keeping version 2"
        ),
        "{}",
        said.message
    );
    let status = endpoints
        .get("iris")
        .await
        .expect("iris")
        .status
        .expect("status");
    assert_eq!(served_versions(&status), [("main".to_string(), Some(2))]);
    assert!(versions.get("iris-model-2").await.is_ok(), "never removed");
}
