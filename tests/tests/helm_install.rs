//! `helm install` of the chart into the local control plane (real apiserver, RBAC on), its pods
//! run by the test kubelet as real processes: both operator replicas and both gateway replicas
//! become Ready under the chart's own ServiceAccounts and RBAC, one operator holds the Lease,
//! the quickstart endpoint reaches READY and answers through the gateway, and `helm uninstall`
//! removes the release's pods and RBAC but keeps the CRDs (and so every custom resource).

mod helm_support;

use std::time::Duration;

use k8s_openapi::{
    api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod, rbac::v1::ClusterRole},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::{
    cluster::{LocalNodes, fresh_namespace, shared, shared_nodes},
    http, repo_root,
};

async fn eventually<T, Fut>(nodes: &LocalNodes, what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let logs = || format!("{}{}", shared().dump_logs(), nodes.kubelet.dump_logs());
    sluice_tests::wait::eventually(what, Duration::from_secs(180), logs, check).await
}

fn helm(args: &[&str]) -> String {
    let kubeconfig = shared().kubeconfig.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig.as_str()]);
    helm_support::helm_run(&all).unwrap_or_else(|e| panic!("helm {}:\n{e}", args.join(" ")))
}

const RELEASE: &str = "sluice";

/// Both replicas of the Deployment report ready.
async fn ready_replicas(deployments: &Api<Deployment>, name: &str, want: i32) -> Option<()> {
    let d = deployments.get(name).await.ok()?;
    let status = d.status?;
    (status.ready_replicas == Some(want) && status.updated_replicas == Some(want)).then_some(())
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_operator_and_gateway_and_uninstall_keeps_the_crds() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "sluice-system").await;
    let values = helm_support::chart().join("ci/local-cluster-values.yaml");
    let chart = helm_support::chart().display().to_string();

    // The harness applied the CRDs already (as a platform pipeline might); the release takes
    // them over.
    helm(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        &ns,
        "--values",
        &values.display().to_string(),
        "--take-ownership",
    ]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(nodes, "2 ready operator replicas", || {
        ready_replicas(&deployments, "sluice-operator", 2)
    })
    .await;
    eventually(nodes, "2 ready gateway replicas", || {
        ready_replicas(&deployments, "sluice-gateway", 2)
    })
    .await;

    // One operator leads; the other stands by (and is still Ready, so rollouts progress).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let operator_pods: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let holder = eventually(nodes, "the operator Lease to be held", || async {
        leases
            .get("sluice-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    assert!(
        operator_pods.contains(&holder),
        "Lease held by {holder}, not one of {operator_pods:?}"
    );

    // The CRDs now belong to the release and are marked to outlive it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "servingendpoints.serving.sluice.dev",
        "modelversions.serving.sluice.dev",
    ] {
        let annotations = crds
            .get(name)
            .await
            .expect("CRD")
            .metadata
            .annotations
            .unwrap_or_default();
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-name")
                .map(String::as_str),
            Some(RELEASE)
        );
        assert_eq!(
            annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
    }

    // The quickstart, with a local artifact: the installed operator makes it READY and the
    // installed gateway answers for it.
    let app = fresh_namespace(&client, "quickstart").await;
    let artifact = cp.state_dir.join(format!("artifacts-{app}/iris"));
    std::fs::create_dir_all(&artifact).expect("artifact dir");
    std::fs::copy(
        repo_root().join("inference-server/tests/fixtures/iris.onnx"),
        artifact.join("iris.onnx"),
    )
    .expect("onnx");
    std::fs::write(
        artifact.join("sluice-model.yaml"),
        "format: onnx\ntask: predict\nfiles: {model: iris.onnx}\n",
    )
    .expect("manifest");
    let apply = PatchParams::apply("test-user");
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &app);
    mvs.patch(
        "iris-classifier-1",
        &apply,
        &Patch::Apply(json!({
            "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-classifier-1"},
            "spec": {"model": "iris-classifier", "version": 1, "format": "onnx", "task": "predict",
                     "source": {"uri": format!("file://{}", artifact.display())}}})),
    )
    .await
    .expect("ModelVersion");
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &app);
    endpoints
        .patch(
            "iris",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
                "metadata": {"name": "iris"},
                "spec": {"servedEntities": [{"name": "iris-v1", "model": "iris-classifier", "version": 1}]}})),
        )
        .await
        .expect("ServingEndpoint");
    eventually(nodes, "the quickstart endpoint to be READY", || async {
        let s = endpoints.get("iris").await.ok()?.status?;
        let state = s.state?;
        (format!("{:?}", state.ready) == "READY").then_some(())
    })
    .await;
    let gateway_ips: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
        .await
        .expect("gateway pods")
        .items
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .collect();
    assert_eq!(gateway_ips.len(), 2, "{gateway_ips:?}");
    for ip in &gateway_ips {
        let (code, body) = eventually(nodes, "the gateway to route to the endpoint", || async {
            let answer = http::post_json(
                ip,
                8000,
                "/serving-endpoints/iris/invocations",
                r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#,
            )
            .await?;
            (answer.0 == 200).then_some(answer)
        })
        .await;
        assert_eq!(code, 200, "gateway {ip}: {body}");
    }

    // Uninstall: the release's pods and RBAC go, the CRDs and the custom resources stay.
    helm(&["uninstall", RELEASE, "--namespace", &ns, "--wait"]);
    eventually(nodes, "the release's pods to be gone", || async {
        let left = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
            .await
            .ok()?
            .items;
        left.is_empty().then_some(())
    })
    .await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for name in ["sluice-operator", "sluice-gateway"] {
        assert!(
            roles.get_opt(name).await.expect("get").is_none(),
            "ClusterRole {name} survived uninstall"
        );
    }
    for name in [
        "servingendpoints.serving.sluice.dev",
        "modelversions.serving.sluice.dev",
    ] {
        let crd = crds.get_opt(name).await.expect("get CRD");
        assert!(
            crd.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
            "CRD {name} was deleted by helm uninstall"
        );
    }
    assert!(
        endpoints.get_opt("iris").await.expect("get").is_some(),
        "the ServingEndpoint went with the release"
    );
}
