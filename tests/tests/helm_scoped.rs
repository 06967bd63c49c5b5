//! Several installations in one cluster (the GitOps example's dev/staging/prod): two releases
//! of the chart, each with `scope.namespaces` naming its own model namespace, installed into
//! the local control plane (real API server, RBAC on) with our images by digest. Each holds
//! only Roles (no ClusterRole), each operator makes its own endpoint READY and each gateway
//! serves only its own endpoint; an endpoint in a namespace neither manages is left untouched.
//! A test binary of its own: a cluster-wide installation beside it would manage everything.

mod helm_support;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::Pod,
    rbac::v1::{ClusterRole, Role},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::{
    cluster::{fresh_namespace, shared, shared_nodes},
    http,
    wait::on_nodes,
};

use helm_support::{WAIT, helm_on_cluster, image_values, ready_replicas};

/// Installs release `release` into `ns`, managing only `managed`, one replica of each part.
fn install(release: &str, ns: &str, managed: &str) {
    let chart = helm_support::chart().display().to_string();
    let values = helm_support::chart().join("ci/local-cluster-values.yaml");
    let scope = format!("scope.namespaces={{{managed}}}");
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        ns,
        "--values",
        values.to_str().unwrap_or_default(),
        "--set",
        "crds.install=false",
        "--set",
        "operator.replicas=1",
        "--set",
        "gateway.replicas=1",
        "--set",
        "gateway.podDisruptionBudget.enabled=false",
        "--set",
        &scope,
        // This test is about scoping; who may call is tested in helm_install.rs.
        "--set",
        "gateway.auth.allowAnonymous=true",
    ];
    let images = image_values();
    args.extend(images.iter().map(String::as_str));
    helm_on_cluster(&args);
}

/// The iris model on a claim of `ns`, and endpoint `name` serving it.
async fn iris_endpoint(client: &Client, ns: &str, name: &str) {
    let uri = sluice_tests::models::iris_on_claim(client, ns).await;
    let apply = PatchParams::apply("test-user");
    Api::<ModelVersion>::namespaced(client.clone(), ns)
        .patch(
            "iris-1",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": "iris-1"},
                "spec": {"model": "iris", "version": 1, "format": "onnx", "task": "predict",
                         "source": {"uri": uri}}})),
        )
        .await
        .expect("ModelVersion");
    Api::<ServingEndpoint>::namespaced(client.clone(), ns)
        .patch(
            name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
                "metadata": {"name": name},
                "spec": {"servedEntities": [{"name": "main", "model": "iris", "version": 1}]}})),
        )
        .await
        .expect("ServingEndpoint");
}

/// The pod IP of release `release`'s gateway in `ns`.
async fn gateway_ip(client: &Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nodes = shared_nodes();
    on_nodes(nodes, "the gateway pod's IP", WAIT, || async {
        pods.list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
            .await
            .ok()?
            .items
            .into_iter()
            .find_map(|p| p.status?.pod_ip)
    })
    .await
}

async fn status_code(ip: &str, endpoint: &str) -> Option<u16> {
    let path = format!("/serving-endpoints/{endpoint}/invocations");
    http::post_json(ip, 8000, &path, r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#)
        .await
        .map(|(code, _)| code)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_scoped_installations_share_the_cluster_without_touching_each_other() {
    let nodes = shared_nodes();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = shared().client().await.expect("client");
    let (sys_a, sys_b) = (
        fresh_namespace(&client, "sys-a").await,
        fresh_namespace(&client, "sys-b").await,
    );
    let (app_a, app_b, app_c) = (
        fresh_namespace(&client, "app-a").await,
        fresh_namespace(&client, "app-b").await,
        fresh_namespace(&client, "app-c").await,
    );
    install("team-a", &sys_a, &app_a);
    install("team-b", &sys_b, &app_b);

    // Roles only: no ClusterRole for either release, a Role of each in its model namespace.
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    for release in ["team-a", "team-b"] {
        for part in ["operator", "gateway"] {
            let name = format!("{release}-sluice-{part}");
            assert!(
                cluster_roles.get_opt(&name).await.expect("get").is_none(),
                "ClusterRole {name} exists"
            );
        }
    }
    for (app, release) in [(&app_a, "team-a"), (&app_b, "team-b")] {
        let roles: Api<Role> = Api::namespaced(client.clone(), app);
        for name in [
            format!("{release}-sluice-operator-managed"),
            format!("{release}-sluice-gateway"),
        ] {
            assert!(
                roles.get_opt(&name).await.expect("get").is_some(),
                "Role {name} in {app}"
            );
        }
    }
    for ns in [&sys_a, &sys_b] {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        for name in ["sluice-operator", "sluice-gateway"] {
            let release = if ns == &sys_a { "team-a" } else { "team-b" };
            let full = format!("{release}-{name}");
            on_nodes(nodes, &format!("{full} ready"), WAIT, || {
                ready_replicas(&deployments, &full, 1)
            })
            .await;
        }
    }

    iris_endpoint(&client, &app_a, "iris-a").await;
    iris_endpoint(&client, &app_b, "iris-b").await;
    iris_endpoint(&client, &app_c, "iris-c").await;
    for (app, name) in [(&app_a, "iris-a"), (&app_b, "iris-b")] {
        let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), app);
        on_nodes(nodes, &format!("{name} READY"), WAIT, || async {
            let state = endpoints.get(name).await.ok()?.status?.state?;
            (format!("{:?}", state.ready) == "READY").then_some(())
        })
        .await;
    }

    // Each gateway serves its own endpoint, and not the other installation's.
    let (gateway_a, gateway_b) = (
        gateway_ip(&client, &sys_a).await,
        gateway_ip(&client, &sys_b).await,
    );
    for (ip, own, other) in [
        (&gateway_a, "iris-a", "iris-b"),
        (&gateway_b, "iris-b", "iris-a"),
    ] {
        on_nodes(
            nodes,
            &format!("{own} answered by its gateway"),
            WAIT,
            || async { (status_code(ip, own).await? == 200).then_some(()) },
        )
        .await;
        assert_eq!(
            status_code(ip, other).await,
            Some(404),
            "gateway {ip} serves {other}"
        );
        assert_eq!(status_code(ip, "iris-c").await, Some(404));
    }

    // The endpoint no installation manages has no status and no children.
    let unmanaged: Api<ServingEndpoint> = Api::namespaced(client.clone(), &app_c);
    let c = unmanaged.get("iris-c").await.expect("iris-c");
    assert!(c.status.is_none(), "iris-c was reconciled: {:?}", c.status);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &app_c);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}
