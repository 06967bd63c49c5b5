//! The seed's serving code, unchanged, against Sluice: the official `databricks-sdk` Python
//! client (`WorkspaceClient(host=<gateway>, token=<Kubernetes token>)`) creates an endpoint,
//! queries it, moves it to a 90/10 split with `update_config`, queries it again, sets its AI
//! gateway and deletes it; MLflow's `get_deploy_client("databricks")` predicts and reads it.
//! Everything runs on the local cluster: the operator rolls real containers out on the test
//! kubelet, the gateway checks every call with the real API server's TokenReview and
//! SubjectAccessReview.

mod operator_support;

use std::collections::BTreeMap;

use operator_support::{Scene, model_version};
use serde_json::{Value, json};
use sluice_tests::{
    cluster::shared, gateway::GatewayProcess, models::iris_on_claim, rbac, repo_root,
};

const ENDPOINT: &str = "iris-ab";

/// The script's steps, by name.
fn steps(stdout: &str) -> BTreeMap<String, Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| Some((v["step"].as_str()?.to_string(), v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_databricks_sdk_creates_queries_splits_and_deletes_an_endpoint() {
    let scene = Scene::with_config("dbx", true, "").await;
    let uri = iris_on_claim(&scene.client, &scene.ns).await;
    for v in [1, 2] {
        let mut mv = model_version(&format!("iris-{v}"), "iris", v, &[]);
        mv["spec"]["source"]["uri"] = json!(uri);
        scene.apply(mv).await;
    }
    // The engineer may manage and query endpoints in the namespace, as the chart's `edit`
    // aggregation allows; the viewer may only query.
    let engineer = rbac::account_token(
        &scene.client,
        &scene.ns,
        "ml-engineer",
        rbac::on_endpoints(&["get", "list", "create", "update", "delete", "query"], &[]),
    )
    .await;
    let viewer = rbac::account_token(
        &scene.client,
        &scene.ns,
        "viewer",
        rbac::on_endpoints(&["query"], &[]),
    )
    .await;
    let gateway = GatewayProcess::start_with(
        shared(),
        &shared().kubeconfig,
        &scene.ns,
        &["--auth-cache-ttl", "0s"],
    )
    .await;

    let script = repo_root().join("tests/databricks/seed.py");
    let scene_ref = &scene;
    let run = tokio::process::Command::new(sluice_tests::mlflow::tool("python"))
        .arg(&script)
        .arg(ENDPOINT)
        .env("DATABRICKS_HOST", &gateway.base)
        .env("DATABRICKS_TOKEN", &engineer)
        .env("VIEWER_TOKEN", &viewer)
        .env_remove("DATABRICKS_CLIENT_ID")
        .env_remove("DATABRICKS_CONFIG_PROFILE")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the SDK script ran 10 minutes\n{}\n{}",
                scene_ref.logs(),
                sluice_tests::log_tail(&gateway.log, 60)
            )
        })
        .expect("python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway\n{}\n{}",
        sluice_tests::log_tail(&gateway.log, 60),
        scene.logs()
    );
    let steps = steps(&stdout);
    eprintln!("{stdout}");

    // The seed's dict-style `config` never leaves the SDK (docs/databricks.md says so).
    assert_eq!(steps["seed_dict"]["sent"], false, "{}", steps["seed_dict"]);

    let created = &steps["created"];
    assert_eq!(created["ready"], "READY");
    assert_eq!(created["config_update"], "NOT_UPDATING");
    assert_eq!(
        created["entities"],
        json!(["iris-1"]),
        "the upstream default name"
    );

    let queried = &steps["queried"];
    assert_eq!(queried["served_model_name"], "iris-1");
    assert_eq!(queried["predictions"].as_array().map(Vec::len), Some(1));

    let updated = &steps["updated"];
    assert_eq!(updated["ready"], "READY");
    assert_eq!(updated["config_update"], "NOT_UPDATING");
    assert_eq!(updated["routes"], json!([["iris-1", 90], ["iris-2", 10]]));
    assert_eq!(updated["pending"], false);
    assert!(
        updated["config_version"].as_i64() > created["config_version"].as_i64(),
        "{updated} after {created}"
    );

    // 200 queries split 90/10: both entities answer, the first far more.
    let served = &steps["split"]["served"];
    let (first, second) = (
        served["iris-1"].as_u64().unwrap_or(0),
        served["iris-2"].as_u64().unwrap_or(0),
    );
    assert_eq!(first + second, 200, "{served}");
    assert!(second >= 5 && first >= 150, "a 90/10 split: {served}");

    assert_eq!(
        steps["ai_gateway"]["rate_limits"],
        json!([{"calls": 1000, "key": "user", "renewal_period": "minute"}])
    );
    assert_eq!(steps["listed"]["names"], json!([ENDPOINT]));

    let mlflow = &steps["mlflow"];
    assert_eq!(mlflow["predictions"].as_array().map(Vec::len), Some(1));
    assert_eq!(mlflow["state"]["ready"], "READY");
    assert_eq!(mlflow["listed"], json!([ENDPOINT]));

    let errors = &steps["errors"];
    assert_eq!(errors["exists"]["error_code"], "RESOURCE_ALREADY_EXISTS");
    assert_eq!(errors["missing"]["error_code"], "RESOURCE_DOES_NOT_EXIST");
    assert_eq!(errors["forbidden"]["error_code"], "PERMISSION_DENIED");
    let forbidden = errors["forbidden"]["message"].as_str().unwrap_or_default();
    assert!(
        forbidden.contains("viewer") && forbidden.contains("create"),
        "{forbidden}"
    );
    assert_eq!(errors["invalid"]["error_code"], "INVALID_PARAMETER_VALUE");
    assert!(
        errors["invalid"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("entity_version"),
        "{errors}"
    );
    assert_eq!(errors["viewer_query"].as_array().map(Vec::len), Some(1));
    assert!(steps.contains_key("deleted"));

    // The SDK's delete removed the ServingEndpoint; the gateway logged who made it.
    let endpoints = scene.endpoints();
    scene
        .eventually("the deleted endpoint to be gone", || {
            let endpoints = endpoints.clone();
            async move {
                endpoints
                    .get_opt(ENDPOINT)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        })
        .await;
    let made = sluice_tests::log_tail(&gateway.log, 200);
    assert!(
        made.contains("endpoint created") && made.contains("ml-engineer"),
        "{made}"
    );
}
