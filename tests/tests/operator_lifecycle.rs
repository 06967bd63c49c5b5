//! The operator as a process: leader election on a Lease between two real processes (only the
//! holder writes; killing it hands over), the probe server (`/healthz`, `/readyz`, `/metrics`),
//! graceful shutdown on SIGTERM (the Lease is released, so a successor takes over at once), and
//! no status write when nothing changed.

mod operator_support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use nix::sys::signal::Signal;
use operator_support::{NO_PROCESS_CONFIG, Scene, endpoint, engine_entity, model_version};
use serde_json::json;
use sluice_tests::{
    cluster::{
        OPERATOR_NAMESPACE, OperatorOptions, OperatorProcess, fresh_namespace, random_suffix,
        shared,
    },
    wait::eventually,
};

const RECONCILES: &str = "sluice_operator_reconciles_total{controller=\"servingendpoint\"}";
const EP_STATUS_WRITES: &str =
    "sluice_operator_status_writes_total{controller=\"servingendpoint\"}";
const MV_STATUS_WRITES: &str = "sluice_operator_status_writes_total{controller=\"modelversion\"}";
const MV_RECONCILES: &str = "sluice_operator_reconciles_total{controller=\"modelversion\"}";
const PATCHES: &str = "sluice_operator_api_requests_total{verb=\"patch\"}";

/// A candidate for `lease` watching `ns`, with short timings (lease 4 s).
fn candidate(ns: &str, lease: &str, identity: &str, lease_seconds: &str) -> OperatorProcess {
    shared().start_operator_with(&OperatorOptions {
        namespace: Some(ns.to_string()),
        lease: Some(lease.to_string()),
        identity: Some(identity.to_string()),
        config_yaml: Some(NO_PROCESS_CONFIG.into()),
        args: [
            "--lease-duration-seconds",
            lease_seconds,
            "--renew-deadline-seconds",
            "3",
            "--retry-period-seconds",
            "0.5",
        ]
        .map(String::from)
        .to_vec(),
    })
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get(name).await.ok()?.spec?.holder_identity
}

/// How long each step may take.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_writes_and_killing_it_hands_over() {
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "leader").await;
    let lease = format!("leader-{}", random_suffix());
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);

    let mut alpha = candidate(&ns, &lease, "alpha", "4");
    let logs = || format!("{}{}", cp.dump_logs(), alpha.log_tail());
    eventually("alpha to hold the Lease", WAIT, logs, || async {
        (holder(&leases, &lease).await.as_deref() == Some("alpha")).then_some(())
    })
    .await;
    let beta = candidate(&ns, &lease, "beta", "4");
    let logs = || format!("{}{}{}", cp.dump_logs(), alpha.log_tail(), beta.log_tail());
    // Both are ready: the leader once its watches synced, the standby with the Lease in sight.
    for p in [&alpha, &beta] {
        eventually("/readyz 200", WAIT, logs, || async {
            (p.probe("/readyz").await?.0 == 200).then_some(())
        })
        .await;
    }
    assert_eq!(beta.metric("sluice_operator_leader").await, Some(0.0));
    assert_eq!(alpha.metric("sluice_operator_leader").await, Some(1.0));

    let scene_apply = |doc: serde_json::Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let ar = sluice_tests::apply::api_resource(&doc).expect("kind");
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &ar)
                .patch(&name, &PatchParams::apply("test-user"), &Patch::Apply(&doc))
                .await
                .expect("apply");
        }
    };
    let endpoints: Api<sluice_crds::ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    scene_apply(model_version("m-1", "m", 1, &[])).await;
    let first = endpoint(
        "first",
        vec![engine_entity("e", "m", json!({"version": 1}), json!({}))],
        &[],
    );
    scene_apply(first).await;
    eventually("alpha to write first's status", WAIT, logs, || async {
        endpoints
            .get("first")
            .await
            .ok()?
            .status?
            .pending_config
            .map(|_| ())
    })
    .await;
    assert!(alpha.metric(EP_STATUS_WRITES).await.unwrap_or(0.0) >= 1.0);
    for series in [RECONCILES, MV_RECONCILES, PATCHES] {
        assert_eq!(
            beta.metric(series).await,
            Some(0.0),
            "the standby must not reconcile or write ({series})"
        );
    }

    // Kill the leader without a chance to release: the standby takes over after the lease
    // duration and writes from then on.
    alpha.child.start_kill().expect("kill alpha");
    let _ = alpha.child.wait().await;
    let logs = || format!("{}{}", cp.dump_logs(), beta.log_tail());
    eventually("beta to take the Lease", WAIT, logs, || async {
        (holder(&leases, &lease).await.as_deref() == Some("beta")).then_some(())
    })
    .await;
    let transitions = leases
        .get(&lease)
        .await
        .ok()
        .and_then(|l| l.spec?.lease_transitions);
    assert!(transitions >= Some(1), "a take-over counts a transition");
    let second = endpoint(
        "second",
        vec![engine_entity("e", "m", json!({"version": 1}), json!({}))],
        &[],
    );
    scene_apply(second).await;
    eventually("beta to write second's status", WAIT, logs, || async {
        endpoints
            .get("second")
            .await
            .ok()?
            .status?
            .pending_config
            .map(|_| ())
    })
    .await;
    assert_eq!(beta.metric("sluice_operator_leader").await, Some(1.0));
    assert!(beta.metric(EP_STATUS_WRITES).await.unwrap_or(0.0) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_answer_and_sigterm_drains_and_releases_the_lease() {
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "probes").await;
    let lease = format!("probes-{}", random_suffix());
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);

    // A long lease: only a release lets the successor in quickly.
    let mut gamma = candidate(&ns, &lease, "gamma", "60");
    let logs = || format!("{}{}", cp.dump_logs(), gamma.log_tail());
    eventually("gamma ready", WAIT, logs, || async {
        (gamma.probe("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(gamma.probe("/healthz").await.map(|r| r.0), Some(200));
    let (code, metrics) = gamma.probe("/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    for family in [
        "# TYPE sluice_operator_reconciles counter",
        "# TYPE sluice_operator_reconcile_errors counter",
        "# TYPE sluice_operator_reconcile_duration_seconds histogram",
        "# TYPE sluice_operator_api_requests counter",
        "sluice_operator_leader 1",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }
    assert!(
        !metrics.contains(&ns),
        "object names and namespaces never become labels"
    );
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("gamma"));

    gamma.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), gamma.child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .expect("exit status");
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}\n{}",
        gamma.log_tail()
    );
    assert_eq!(
        holder(&leases, &lease).await,
        None,
        "the Lease is released on shutdown"
    );

    let delta = candidate(&ns, &lease, "delta", "60");
    let logs = || format!("{}{}", cp.dump_logs(), delta.log_tail());
    let started = tokio::time::Instant::now();
    eventually("delta to take the released Lease", WAIT, logs, || async {
        (holder(&leases, &lease).await.as_deref() == Some("delta")).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a released Lease is taken without waiting out its duration"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconcile_that_changes_nothing_writes_no_status() {
    let scene = Scene::new("quiet", false).await;
    scene.apply(model_version("m-1", "m", 1, &[])).await;
    scene
        .apply(endpoint(
            "quiet",
            vec![engine_entity("e", "m", json!({"version": 1}), json!({}))],
            &[],
        ))
        .await;
    // No kubelet here: the first config stays pending, which is a stable status.
    let endpoints = scene.endpoints();
    scene
        .eventually("a pending config", || async {
            endpoints
                .get("quiet")
                .await
                .ok()?
                .status?
                .pending_config
                .map(|_| ())
        })
        .await;
    let op = &scene.operator;
    // Let the first reconciles settle: the status-write counters stop moving.
    let last = std::cell::Cell::new((-1.0, -1.0));
    let settled = scene
        .eventually("status writes to settle", || {
            let last = &last;
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now = (
                    op.metric(EP_STATUS_WRITES).await?,
                    op.metric(MV_STATUS_WRITES).await?,
                );
                (last.replace(now) == now).then_some(now)
            }
        })
        .await;
    let reconciles = (op.metric(RECONCILES).await, op.metric(MV_RECONCILES).await);

    // A metadata-only change triggers reconciles of both, which find nothing to change.
    let touch = json!({"metadata": {"annotations": {"test.sluice.dev/touched": "1"}}});
    scene
        .endpoints()
        .patch("quiet", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("annotate endpoint");
    scene
        .versions()
        .patch("m-1", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("annotate version");
    scene
        .eventually("both controllers to reconcile again", || async {
            let more = op.metric(RECONCILES).await > reconciles.0
                && op.metric(MV_RECONCILES).await > reconciles.1;
            more.then_some(())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (
            op.metric(EP_STATUS_WRITES).await.expect("metrics"),
            op.metric(MV_STATUS_WRITES).await.expect("metrics")
        ),
        settled,
        "no status write when nothing changed\n{}",
        op.log_tail()
    );
}
