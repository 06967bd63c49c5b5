//! Model sources users really have, end to end on the local cluster with real containers: an
//! iris model as a `.tar.gz` behind a plain HTTP URL (with a query string, as a presigned URL
//! has), as a folder in a GCS bucket (fake-gcs-server) and in an Azure Blob container
//! (Azurite), each with the credentials a user puts in the ModelVersion's Secret. Each
//! version's source check passes, each endpoint answers a real prediction through the
//! gateway; a version with a wrong Azure key is `Ready=False` (`SourceUnreachable`, the 403 in
//! the message) and its endpoint says why, within seconds, never showing the key. A version
//! named by its MLflow alias (`models:/iris@champion`) is resolved through a real MLflow
//! tracking server and served.

mod operator_support;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use operator_support::{Scene, condition, endpoint};
use serde_json::{Value, json};
use sluice_tests::{
    cluster::shared,
    gateway::GatewayProcess,
    mlflow::Mlflow,
    object_store::{AzureServer, GcsServer, base64},
    repo_root, venv_tool,
};

const IRIS: &str = r#"{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": [[6.7, 3.0, 5.2, 2.3]]}}"#;

/// A static file server on loopback (Python's `http.server`), killed when dropped.
struct Files(Child, String);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The iris model folder's files, as objects under `iris/1/`.
fn iris_objects() -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("examples/models/iris");
    ["iris.onnx", "sluice-model.yaml"]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).expect("iris file");
            (format!("iris/1/{f}"), bytes)
        })
        .collect()
}

/// `iris.tar.gz` (the folder packed with its top folder) served on loopback.
async fn iris_tarball() -> Files {
    let root = std::env::temp_dir().join(format!("sluice-files-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("folder");
    let packed = Command::new("tar")
        .arg("czf")
        .arg(root.join("iris.tar.gz"))
        .arg("-C")
        .arg(repo_root().join("examples/models"))
        .arg("iris")
        .status()
        .expect("tar");
    assert!(packed.success());
    let port = sluice_tests::cluster::free_loopback_addr().port();
    let child = Command::new(venv_tool("python"))
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http.server");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    sluice_tests::wait::eventually(
        "http.server to answer",
        Duration::from_secs(30),
        String::new,
        || async { http.get(&base).send().await.ok().map(drop) },
    )
    .await;
    Files(child, base)
}

fn secret(name: &str, data: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
}

/// The first 200 answer of endpoint `name` to the iris row, through the gateway at `base`.
async fn prediction(scene: &Scene, http: &reqwest::Client, base: &str, name: &str) -> Value {
    let url = format!("{base}/serving-endpoints/{name}/invocations");
    let body = scene
        .eventually(
            &format!("{name}: an answer through the gateway"),
            || async {
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(IRIS)
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(response.text().await.ok()?)
            },
        )
        .await;
    serde_json::from_str(&body).expect("json")
}

/// Endpoint `name` serving version 1 of model `name` as its one entity, `main`.
fn serving_version_1(name: &str) -> Value {
    endpoint(
        name,
        vec![json!({"name": "main", "model": name, "version": 1})],
        &[],
    )
}

fn version(name: &str, v: i64, uri: &str, secret: Option<&str>) -> Value {
    let mut source = json!({"uri": uri});
    if let Some(secret) = secret {
        source["secretRef"] = json!({"name": secret});
    }
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": name},
           "spec": {"model": name, "version": v, "source": source, "format": "onnx"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn http_gcs_and_azure_sources_answer_and_a_wrong_key_says_why() {
    let scene = Scene::with_config("sources", true, "").await;
    let files = iris_tarball().await;
    let gcs = GcsServer::start().await;
    gcs.put_objects("models", &iris_objects()).await;
    let azure = AzureServer::start().await;
    azure.put_objects("models", &iris_objects()).await;
    let wrong_key = base64::encode(b"not-the-account-key-7c1e");

    scene
        .apply(secret("gcs", &gcs.credentials("not-a-real-private-key")))
        .await;
    scene
        .apply(secret("azure", &azure.credentials(AzureServer::KEY)))
        .await;
    scene
        .apply(secret("azure-wrong", &azure.credentials(&wrong_key)))
        .await;
    let sources = [
        (
            "from-http",
            format!("{}/iris.tar.gz?X-Signature=opaque", files.1),
            None,
        ),
        ("from-gcs", "gs://models/iris/1".to_string(), Some("gcs")),
        (
            "from-azure",
            "az://models/iris/1".to_string(),
            Some("azure"),
        ),
    ];
    for (name, uri, secret) in &sources {
        scene.apply(version(name, 1, uri, *secret)).await;
        scene.apply(serving_version_1(name)).await;
    }
    let started = Instant::now();
    scene
        .apply(version(
            "denied",
            1,
            "az://models/iris/1",
            Some("azure-wrong"),
        ))
        .await;
    scene.apply(serving_version_1("denied")).await;

    // The wrong key: the version's source check fails with the store's 403, and the endpoint's
    // status carries it.
    let versions = scene.versions();
    let check = sluice_tests::wait::eventually(
        "denied: SourceReachable=False",
        Duration::from_secs(30),
        || scene.logs(),
        || async {
            let mv = versions.get("denied").await.ok()?;
            mv.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SourceReachable" && c.status == "False")
        },
    )
    .await;
    eprintln!(
        "wrong key reported after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        check.message
    );
    assert!(check.message.contains("403"), "{}", check.message);
    assert!(!check.message.contains(&wrong_key));
    let endpoints = scene.endpoints();
    let said = sluice_tests::wait::eventually(
        "denied: the endpoint's status names the 403",
        Duration::from_secs(30),
        || scene.logs(),
        || async {
            let status = endpoints.get("denied").await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.status == "False" && c.message.contains("403"))
        },
    )
    .await;
    eprintln!("endpoint condition {}: {}", said.type_, said.message);

    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &scene.ns).await;
    let http = reqwest::Client::new();
    for (name, uri, _) in &sources {
        let mv = versions.get(name).await.expect("version");
        let reachable = condition(&mv.status.expect("status").conditions, "SourceReachable");
        scene
            .settled(name, &format!("{name} READY"), |_| true)
            .await;
        let answer = prediction(&scene, &http, &gateway.base, name).await;
        assert!(answer["predictions"].is_array(), "{name} ({uri}): {answer}");
        let mv = versions.get(name).await.expect("version");
        assert_eq!(
            condition(&mv.status.expect("status").conditions, "SourceReachable").map(|c| c.0),
            Some("True".into()),
            "{name}: the source check passed (first seen {reachable:?})"
        );
    }
}

/// The operator reads no Secret (its RBAC has no rule on Secrets): a version whose Secret does
/// not exist yet is `Ready=False` (`SecretNotFound`, the kubelet's message of the check pod),
/// and becomes Ready, its source checked, once the user creates the Secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_is_reported_and_a_created_one_is_picked_up() {
    let scene = Scene::with_config("secret-later", true, "").await;
    let gcs = GcsServer::start().await;
    gcs.put_objects("models", &iris_objects()).await;
    scene
        .apply(version("later", 1, "gs://models/iris/1", Some("gcs-later")))
        .await;
    let versions = scene.versions();
    let missing = sluice_tests::wait::eventually(
        "later: Ready=False SecretNotFound",
        Duration::from_secs(60),
        || scene.logs(),
        || async {
            let mv = versions.get("later").await.ok()?;
            mv.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "SecretNotFound")
        },
    )
    .await;
    assert!(
        missing.message.contains("gcs-later") && missing.message.contains("not found"),
        "{}",
        missing.message
    );

    scene
        .apply(secret(
            "gcs-later",
            &gcs.credentials("not-a-real-private-key"),
        ))
        .await;
    sluice_tests::wait::eventually(
        "later: Ready and SourceReachable once the Secret exists",
        Duration::from_secs(90),
        || scene.logs(),
        || async {
            let conditions = versions.get("later").await.ok()?.status?.conditions;
            let ready = condition(&conditions, "Ready")?.0 == "True";
            let reachable = condition(&conditions, "SourceReachable")?.0 == "True";
            (ready && reachable).then_some(())
        },
    )
    .await;
}

/// A model kept in an MLflow registry, named as a data scientist names it: the version the
/// alias `champion` points at (`models:/iris@champion`), resolved through the tracking server
/// the ModelVersion names (`spec.source.trackingUri`, a real `mlflow server` on loopback) with
/// the token of its Secret. The source check resolves it and publishes the location in
/// `status.resolvedUri`; the entity pod's fetch step downloads that location through the
/// server's artifact proxy, and the endpoint answers a real prediction through the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn an_mlflow_alias_is_resolved_by_the_check_and_served() {
    let scene = Scene::with_config("mlflow", true, "").await;
    let dir = sluice_tests::process::temp_dir("mlflow-cluster");
    let server = Mlflow::start(&dir).await;
    let registered = server.register(
        &repo_root().join("examples/models/iris"),
        "iris",
        "champion",
    );
    scene
        .apply(secret(
            "mlflow",
            &json!({"MLFLOW_TRACKING_TOKEN": "mlflow-token-3e7d"}),
        ))
        .await;
    let mut mv = version("iris-mlflow", 1, "models:/iris@champion", Some("mlflow"));
    mv["spec"]["source"]["trackingUri"] = json!(server.uri);
    scene.apply(mv).await;
    scene.apply(serving_version_1("iris-mlflow")).await;
    scene
        .settled("iris-mlflow", "iris-mlflow READY", |_| true)
        .await;
    let status = scene
        .versions()
        .get("iris-mlflow")
        .await
        .expect("version")
        .status
        .expect("status");
    let resolved = status.resolved_uri.expect("resolvedUri");
    assert!(
        resolved.starts_with("mlflow-artifacts:/") && resolved.contains(&registered.run),
        "the alias's version, as the server stores it: {resolved}"
    );
    let reachable = condition(&status.conditions, "SourceReachable").expect("checked");
    assert_eq!(reachable.0, "True");

    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &scene.ns).await;
    let http = reqwest::Client::new();
    let answer = prediction(&scene, &http, &gateway.base, "iris-mlflow").await;
    assert!(answer["predictions"].is_array(), "{answer}");
}
