//! Faults injected under load on the local cluster (real API server, real containers), each
//! with its figure printed for docs/reliability.md:
//! - the lease-holding operator SIGKILLed in the middle of a blue/green rollout: the standby
//!   takes the Lease and finishes the rollout; no request through the gateway fails;
//! - a model container SIGKILLed (as the OOM killer ends one) while two pods serve: the gateway
//!   retries refused connections on the other pod; only requests already sent to the dead
//!   process can fail;
//! - one of two gateway replicas SIGKILLed: only requests it had in flight fail (the client
//!   load balancer then ejects it), the other replica answers the rest.
//!
//! The API server restart is in `faults_apiserver` (a control plane of its own).

mod faults_support;

use std::time::{Duration, Instant};

use faults_support::{BODY, PATH, apply, endpoint, eventually, settled_on, version};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{Api, api::ListParams};
use sluice_tests::{
    cluster::{
        OPERATOR_NAMESPACE, OperatorOptions, OperatorProcess, fresh_namespace, random_suffix,
        shared, shared_nodes,
    },
    gateway::GatewayProcess,
    load::Load,
    models::iris_on_claim,
};

/// An operator candidate for `lease` managing `ns`, reading demand from `gateway`.
fn candidate(ns: &str, lease: &str, identity: &str, gateway: &GatewayProcess) -> OperatorProcess {
    shared().start_operator_with(&OperatorOptions {
        namespace: Some(ns.to_string()),
        lease: Some(lease.to_string()),
        identity: Some(identity.to_string()),
        args: [
            "--lease-duration-seconds",
            "4",
            "--renew-deadline-seconds",
            "3",
            "--retry-period-seconds",
            "0.5",
            "--gateway-admin-url",
            &gateway.admin,
        ]
        .map(String::from)
        .to_vec(),
        ..OperatorOptions::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_rollout_hands_over_and_no_request_fails() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let client = shared().client().await.expect("client");
    let ns = fresh_namespace(&client, "fault-leader").await;
    let uri = iris_on_claim(&client, &ns).await;
    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &ns).await;
    let lease = format!("fault-{}", random_suffix());
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let mut alpha = candidate(&ns, &lease, "alpha", &gateway);
    eventually("alpha holds the Lease", || async {
        let holder = leases.get(&lease).await.ok()?.spec?.holder_identity?;
        (holder == "alpha").then_some(())
    })
    .await;
    let _beta = candidate(&ns, &lease, "beta", &gateway);

    apply(&client, &ns, version(1, &uri)).await;
    apply(&client, &ns, version(2, &uri)).await;
    apply(&client, &ns, endpoint(1, 2)).await;
    settled_on(&client, &ns, 1).await;

    let load = Load::start(vec![gateway.base.clone()], PATH, BODY, 2);
    load.wait_for(50, Duration::from_secs(30)).await;
    apply(&client, &ns, endpoint(2, 2)).await;
    // Mid-rollout: the new revision's Deployment exists beside the serving one.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually("the new revision's Deployment", || async {
        let list = deployments.list(&ListParams::default()).await.ok()?;
        (list.items.len() >= 2).then_some(())
    })
    .await;
    alpha.child.start_kill().expect("SIGKILL alpha");
    let killed = Instant::now();
    eventually("beta holds the Lease", || async {
        let holder = leases.get(&lease).await.ok()?.spec?.holder_identity?;
        (holder == "beta").then_some(())
    })
    .await;
    let handed_over = killed.elapsed();
    settled_on(&client, &ns, 2).await;
    let finished = killed.elapsed();
    load.wait_for(50, Duration::from_secs(30)).await;
    let outcome = load.stop().await;
    eprintln!(
        "FIGURE leader killed mid-rollout: Lease handed over after {:.1} s, rollout finished \
         {:.1} s after the kill; {} requests answered, {} failed",
        handed_over.as_secs_f64(),
        finished.as_secs_f64(),
        outcome.answered,
        outcome.failed.len()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
}

/// `(pod name, pid)` of the `model` container of each running pod of `ns`.
fn model_processes(ns: &str) -> Vec<(String, u32)> {
    shared_nodes()
        .kubelet
        .running_processes()
        .into_iter()
        .filter_map(|(key, pid)| {
            let mut parts = key.splitn(3, '/');
            let (pod_ns, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
            (pod_ns == ns && container == "model").then(|| (pod.to_string(), pid))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_container_killed_under_load_fails_at_most_what_it_was_answering() {
    const WORKERS: usize = 2;
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let client = shared().client().await.expect("client");
    let ns = fresh_namespace(&client, "fault-model").await;
    let uri = iris_on_claim(&client, &ns).await;
    let gateway = GatewayProcess::start(shared(), &shared().kubeconfig, &ns).await;
    let _operator = shared().start_operator_with(&OperatorOptions {
        namespace: Some(ns.clone()),
        identity: Some(ns.clone()),
        args: vec!["--gateway-admin-url".into(), gateway.admin.clone()],
        ..OperatorOptions::default()
    });
    apply(&client, &ns, version(1, &uri)).await;
    apply(&client, &ns, endpoint(1, 2)).await;
    settled_on(&client, &ns, 1).await;
    let pods = eventually("two model containers running", || async {
        let running = model_processes(&ns);
        (running.len() == 2).then_some(running)
    })
    .await;

    let load = Load::start(vec![gateway.base.clone()], PATH, BODY, WORKERS);
    load.wait_for(100, Duration::from_secs(30)).await;
    let (victim, pid) = &pods[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(*pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the model");
    let killed_at = load.answered();
    // The other pod answers meanwhile; the kubelet restarts the killed container.
    load.wait_for(200, Duration::from_secs(60)).await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let restarts = eventually("the killed container restarted and Ready", || async {
        let pod = pod_api.get(victim).await.ok()?;
        let status = pod.status?;
        let model = status
            .container_statuses?
            .into_iter()
            .find(|c| c.name == "model")?;
        (model.restart_count >= 1 && model.ready).then_some(model.restart_count)
    })
    .await;
    let outcome = load.stop().await;
    eprintln!(
        "FIGURE model container SIGKILLed: {} answered before, {} in all, {} failed ({:?}); \
         restarted {restarts} time(s)",
        killed_at,
        outcome.answered,
        outcome.failed.len(),
        outcome.failed
    );
    assert!(
        outcome.failed.len() <= WORKERS,
        "more failed than were in flight: {:?}",
        outcome.failed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_replica_killed_under_load_fails_only_what_it_had_in_flight() {
    const WORKERS: usize = 4;
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let client = shared().client().await.expect("client");
    let ns = fresh_namespace(&client, "fault-gateway").await;
    let uri = iris_on_claim(&client, &ns).await;
    let mut doomed = GatewayProcess::start(shared(), &shared().kubeconfig, &ns).await;
    let survivor = GatewayProcess::start(shared(), &shared().kubeconfig, &ns).await;
    let _operator = shared().start_operator_with(&OperatorOptions {
        namespace: Some(ns.clone()),
        identity: Some(ns.clone()),
        args: vec![
            "--gateway-admin-url".into(),
            doomed.admin.clone(),
            "--gateway-admin-url".into(),
            survivor.admin.clone(),
        ],
        ..OperatorOptions::default()
    });
    apply(&client, &ns, version(1, &uri)).await;
    apply(&client, &ns, endpoint(1, 1)).await;
    settled_on(&client, &ns, 1).await;

    let load = Load::start(
        vec![doomed.base.clone(), survivor.base.clone()],
        PATH,
        BODY,
        WORKERS,
    );
    load.wait_for(100, Duration::from_secs(30)).await;
    doomed.sigkill();
    let killed_at = load.answered();
    load.wait_for(200, Duration::from_secs(30)).await;
    let outcome = load.stop().await;
    eprintln!(
        "FIGURE gateway replica SIGKILLed: {} answered before, {} in all, {} failed ({:?})",
        killed_at,
        outcome.answered,
        outcome.failed.len(),
        outcome.failed
    );
    assert!(outcome.answered >= killed_at + 200);
    // Each worker has at most one request in flight on the killed replica, plus its one
    // refused connection that ejects it.
    assert!(
        outcome.failed.len() <= 2 * WORKERS,
        "more failed than were in flight: {:?}",
        outcome.failed
    );
}
