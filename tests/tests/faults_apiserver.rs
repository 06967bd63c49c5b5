//! The kube-apiserver restarted under load (a control plane of its own, so no other test sees
//! the outage): the gateway keeps routing from the last config it saw, so no request fails
//! while the API server is away; afterwards the operator's and the gateway's watches resume,
//! and a rollout started after the restart completes, still without a failed request.

mod faults_support;

use std::time::{Duration, Instant};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};

use faults_support::{BODY, PATH, apply, endpoint, eventually, settled_on, version};
use sluice_tests::{
    cluster::{OperatorOptions, fresh_namespace, shared, shared_nodes},
    gateway::GatewayProcess,
    load::Load,
    models::iris_on_claim,
};

#[tokio::test(flavor = "multi_thread")]
async fn routing_survives_an_api_server_restart_and_watches_resume() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "fault-apiserver").await;
    let uri = iris_on_claim(&client, &ns).await;
    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let _operator = cp.start_operator_with(&OperatorOptions {
        namespace: Some(ns.clone()),
        identity: Some(ns.clone()),
        args: vec!["--gateway-admin-url".into(), gateway.admin.clone()],
        ..OperatorOptions::default()
    });
    apply(&client, &ns, version(1, &uri)).await;
    apply(&client, &ns, version(2, &uri)).await;
    apply(&client, &ns, endpoint(1, 2)).await;
    settled_on(&client, &ns, 1).await;

    let load = Load::start(vec![gateway.base.clone()], PATH, BODY, 2);
    load.wait_for(50, Duration::from_secs(30)).await;
    let before = load.answered();
    let away = cp.restart_apiserver().await.expect("restart");
    let during = load.answered() - before;
    // The watches resume: a rollout after the restart completes. Each step's time says which
    // component's watch resumed when.
    let rollout = Instant::now();
    apply(&client, &ns, endpoint(2, 2)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut phases = Vec::new();
    eventually("the operator's new Deployment", || async {
        (deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            >= 2)
            .then_some(())
    })
    .await;
    phases.push(("operator applied the new revision", rollout.elapsed()));
    eventually("the new revision's pods", || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() >= 4).then_some(())
    })
    .await;
    phases.push(("controller-manager created its pods", rollout.elapsed()));
    eventually("the new pods scheduled", || async {
        let bound = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (bound >= 4).then_some(())
    })
    .await;
    phases.push(("scheduler bound them", rollout.elapsed()));
    settled_on(&client, &ns, 2).await;
    phases.push(("READY on version 2", rollout.elapsed()));
    eprintln!("FIGURE rollout after the restart: {phases:?}");
    load.wait_for(50, Duration::from_secs(30)).await;
    let outcome = load.stop().await;
    eprintln!(
        "FIGURE kube-apiserver restarted under load: away {:.1} s, {during} requests answered \
         meanwhile, {} in all, {} failed; a rollout after the restart completed",
        away.as_secs_f64(),
        outcome.answered,
        outcome.failed.len()
    );
    assert!(
        during > 0,
        "no request answered while the API server restarted"
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
}
