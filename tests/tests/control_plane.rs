//! The local control plane is the real thing: Kubernetes' own API server (CRD schemas and CEL,
//! server-side apply, RBAC), controller-manager (Deployments, garbage collection) and scheduler.
//! Also proves the API contract (examples and invalid fixtures) against the real API server.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use sluice_tests::{
    apply::create_strict,
    cluster::{fresh_namespace, shared},
    manifests::{read_documents, read_expectation, yaml_files},
    repo_root,
    wait::on_cluster,
};

async fn admin() -> Client {
    shared().client().await.expect("admin client")
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_is_ready_and_reports_its_version() {
    let client = admin().await;
    let readyz = client
        .request_text(
            http::Request::get("/readyz?verbose")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("/readyz answers");
    assert!(readyz.contains("readyz check passed"), "{readyz}");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37"),
        "control plane must run Kubernetes 1.37"
    );
    eprintln!(
        "control plane ready in {:?} (pid {})",
        shared().startup,
        shared().pid()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_is_accepted_by_the_apiserver() {
    let client = admin().await;
    for file in yaml_files(&repo_root().join("examples")).expect("examples") {
        let ns = fresh_namespace(&client, "example").await;
        for doc in read_documents(&file).expect("example parses") {
            let verdict = create_strict(&client, &ns, &doc)
                .await
                .expect("request sent");
            assert_eq!(
                verdict,
                Ok(()),
                "{} ({}) was refused",
                file.display(),
                doc["metadata"]["name"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_manifest_is_refused_by_the_apiserver_with_its_message() {
    let client = admin().await;
    let ns = fresh_namespace(&client, "invalid").await;
    for file in yaml_files(&repo_root().join("tests/invalid")).expect("fixtures") {
        let expect = read_expectation(&file).expect("fixture header");
        let doc = read_documents(&file).expect("fixture parses").remove(0);
        let verdict = create_strict(&client, &ns, &doc)
            .await
            .expect("request sent");
        let message = verdict.expect_err(&format!(
            "{} was accepted by the API server",
            file.display()
        ));
        assert!(
            message.contains(&expect.field) && message.contains(&expect.message),
            "{}: the API server said\n  {message}\nexpected it to name `{}` and say `{}`",
            file.display(),
            expect.field,
            expect.message
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_tracks_field_managers_and_conflicts() {
    let client = admin().await;
    let ns = fresh_namespace(&client, "ssa").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let cm = |value: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"key": value}});
    api.patch(
        "cfg",
        &PatchParams::apply("sluice-a"),
        &Patch::Apply(cm("one")),
    )
    .await
    .expect("first apply");
    let got = api.get("cfg").await.expect("get");
    let managers: Vec<_> = got
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"sluice-a".to_string()), "{managers:?}");

    let conflict = api
        .patch(
            "cfg",
            &PatchParams::apply("sluice-b"),
            &Patch::Apply(cm("two")),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a second manager changing an owned field must conflict, got {other:?}"),
    }
    api.patch(
        "cfg",
        &PatchParams::apply("sluice-b").force(),
        &Patch::Apply(cm("two")),
    )
    .await
    .expect("forced apply");
    assert_eq!(
        api.get("cfg").await.expect("get").data.unwrap_or_default()["key"],
        "two"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_get_replicasets_and_pods_and_are_garbage_collected() {
    let client = admin().await;
    let ns = fresh_namespace(&client, "gc").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create deployment");

    let rs_name = on_cluster(
        "a ReplicaSet owned by the Deployment",
        Duration::from_secs(60),
        || async {
            let list = replicasets.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|rs| {
                let owned = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Deployment" && o.name == "web");
                owned.then(|| rs.metadata.name.clone().unwrap_or_default())
            })
        },
    )
    .await;
    on_cluster(
        "two Pods owned by the ReplicaSet",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let owned = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.name == rs_name)
                })
                .count();
            (owned == 2).then_some(())
        },
    )
    .await;

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete deployment");
    on_cluster(
        "the garbage collector to remove ReplicaSets and Pods",
        Duration::from_secs(90),
        || async {
            let rs = replicasets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            let p = pods.list(&ListParams::default()).await.ok()?.items.len();
            (rs == 0 && p == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_denies_a_service_account_what_it_was_not_granted() {
    let admin = admin().await;
    let ns = fresh_namespace(&admin, "rbac").await;
    let sa_api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sa_api
        .create(&PostParams::default(), &sa)
        .await
        .expect("service account");
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    let role = Role {
        metadata: ObjectMeta {
            name: Some("pod-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["list".into()],
            ..Default::default()
        }]),
    };
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader-pods".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "pod-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    let token = sa_api
        .create_token_request("reader", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token issued");
    let as_sa = shared()
        .client_with_token(&token)
        .await
        .expect("service account client");

    Api::<Pod>::namespaced(as_sa.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("granted: list pods");
    match Api::<Secret>::namespaced(as_sa, &ns)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains(&format!("system:serviceaccount:{ns}:reader")),
                "{}",
                s.message
            );
        }
        other => panic!("listing secrets without a grant must be forbidden, got {other:?}"),
    }
}
