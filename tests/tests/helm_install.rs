//! `helm install` of the chart as a release publishes it (an OCI artifact in the loopback
//! registry whose default values pin, by digest, the image indexes the release steps built)
//! into the local control plane (real apiserver, RBAC on), its pods run by the test kubelet as
//! real containers (uid 65532, read-only roots): both operator replicas and both gateway
//! replicas become Ready under the chart's own ServiceAccounts and RBAC, one operator holds the
//! Lease, the quickstart endpoint reaches READY and answers through the gateway, `helm test`
//! passes (every operator and gateway pod ready, one query of the endpoint), `helm upgrade`
//! rolls both Deployments under steady load without a failed request, and `helm uninstall`
//! removes the release's pods and RBAC but keeps the CRDs (and so every custom resource).

mod helm_support;

use helm_support::{WAIT, helm_on_cluster as helm, ready_replicas};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::Pod,
        rbac::v1::{ClusterRole, RoleBinding},
    },
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
    http,
    wait::on_nodes,
};

const RELEASE: &str = "sluice";

/// The quickstart endpoint's query, sent to the gateway at `ip` with `headers`: its status and
/// body, `None` when nothing answers.
async fn query_iris(ip: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let path = "/serving-endpoints/iris/invocations";
    let body = r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#;
    http::post_json_with(ip, 8000, path, body, headers).await
}

/// Runs `inference-server api-key <args> --namespace <namespace>` as the cluster admin; its
/// stdout (for `create`, the key).
fn api_key(namespace: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(sluice_tests::binaries::built(
        "inference-server",
        "inference-server",
    ))
    .arg("api-key")
    .args(args)
    .args(["--namespace", namespace])
    .env("KUBECONFIG", &shared().kubeconfig)
    .output()
    .expect("inference-server api-key");
    assert!(
        output.status.success(),
        "api-key {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Pod UIDs of the release's operator and gateway, by component.
async fn component_pods(pods: &Api<Pod>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for component in ["operator", "gateway"] {
        let list = pods
            .list(
                &ListParams::default().labels(&format!("app.kubernetes.io/component={component}")),
            )
            .await
            .expect("pods");
        out.insert(
            component.to_string(),
            list.items
                .into_iter()
                .filter_map(|p| p.metadata.uid)
                .collect(),
        );
    }
    out
}

/// The `pod-template-hash` labels (one per ReplicaSet) of `component`'s pods.
async fn template_hashes(pods: &Api<Pod>, component: &str) -> BTreeSet<String> {
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.labels?.get("pod-template-hash").cloned())
        .collect()
}

/// Whether `component` rolled: its Deployment observed the new spec and reports 2 replicas, all
/// updated, ready and available; exactly two pods exist, all Ready, carrying the new annotation,
/// from a new ReplicaSet (a `pod-template-hash` not seen before), and none of the pods from
/// `before` is left (terminating ones included).
async fn rolled(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
    component: &str,
    before: &BTreeMap<String, Vec<String>>,
    old_hashes: &BTreeSet<String>,
) -> Option<()> {
    let d = deployments.get(&format!("sluice-{component}")).await.ok()?;
    let status = d.status?;
    let settled = status.observed_generation >= d.metadata.generation
        && [
            status.replicas,
            status.updated_replicas,
            status.ready_replicas,
            status.available_replicas,
        ]
        .iter()
        .all(|n| *n == Some(2));
    if !settled {
        return None;
    }
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
        .await
        .ok()?
        .items;
    let old = &before[component];
    let done = list.len() == 2
        && list.iter().all(|p| {
            let new = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("rollout"))
                .is_some_and(|v| v == "2");
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let new_rs = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .is_some_and(|h| !old_hashes.contains(h));
            new && new_rs && serving(p) && !old.contains(&uid)
        });
    done.then_some(())
}

/// Ready and not terminating: what a Service's endpoints would list.
fn serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How far behind the API server the load client's view of the gateway pods is: a real
/// Service's endpoints reach kube-proxy and load balancers with a lag, so a terminating pod still
/// gets new connections for a while. The gateway's drain delay (5 s in the chart) must cover it.
const PROPAGATION_LAG: Duration = Duration::from_secs(1);

/// Steady requests through the gateway, spread over its serving pods the way a Service is: the
/// pod list is read every 100 ms, only Ready, non-terminating pods count, and the workers use the
/// list as it was [`PROPAGATION_LAG`] ago; each request goes on a new connection.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far, all workers together.
    answered: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(pods: Api<Pod>, bearer: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicUsize::new(0));
        let targets: Arc<RwLock<Vec<String>>> = Arc::default();
        let refresher = {
            let (stop, targets) = (stop.clone(), targets.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    let selector =
                        ListParams::default().labels("app.kubernetes.io/component=gateway");
                    if let Ok(list) = pods.list(&selector).await {
                        let ips: Vec<String> = list
                            .items
                            .iter()
                            .filter(|p| serving(p))
                            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                            .collect();
                        let now = std::time::Instant::now();
                        if seen.is_empty() {
                            // The first view is used at once (the pods were Ready long before).
                            *targets.write().unwrap_or_else(|e| e.into_inner()) = ips.clone();
                        }
                        seen.push_back((now, ips));
                        while seen
                            .front()
                            .is_some_and(|(at, _)| now.duration_since(*at) >= PROPAGATION_LAG)
                        {
                            let (_, ips) = seen.pop_front().expect("front");
                            *targets.write().unwrap_or_else(|e| e.into_inner()) = ips;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                (0, Vec::new())
            })
        };
        let mut workers = vec![refresher];
        for worker in 0..4usize {
            let (stop, targets, total) = (stop.clone(), targets.clone(), total.clone());
            let bearer = bearer.clone();
            workers.push(tokio::spawn(async move {
                let (mut answered, mut failed) = (0, Vec::new());
                let mut turn = worker;
                while !stop.load(Ordering::Relaxed) {
                    let ip = {
                        let ips = targets.read().unwrap_or_else(|e| e.into_inner());
                        turn += 1;
                        (!ips.is_empty()).then(|| ips[turn % ips.len()].clone())
                    };
                    let Some(ip) = ip else {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    };
                    match query_iris(&ip, &[("authorization", &bearer)]).await {
                        Some((200, _)) => {
                            answered += 1;
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.push(format!("{ip}: {other:?}")),
                    }
                }
                (answered, failed)
            }));
        }
        Self {
            stop,
            answered: total,
            workers,
        }
    }

    /// Stops the load: requests answered 200, and every other outcome.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut answered, mut failed) = (0, Vec::new());
        for worker in self.workers {
            let (a, f) = worker.await.expect("load worker");
            answered += a;
            failed.extend(f);
        }
        (answered, failed)
    }
}

/// The uid, and whether the root filesystem is read-only, of each running container of
/// `component`'s pods in `ns` (from the container's process and podman).
fn container_identities(nodes: &LocalNodes, ns: &str, pods: &[String]) -> Vec<(String, String)> {
    nodes
        .kubelet
        .running_processes()
        .into_iter()
        .filter(|(key, _)| pods.iter().any(|p| key.starts_with(&format!("{ns}/{p}/"))))
        .map(|(key, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            (key, uid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_operator_and_gateway_and_uninstall_keeps_the_crds() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "sluice-system").await;
    let values = helm_support::chart().join("ci/local-cluster-values.yaml");
    // The chart as a release publishes it, from the loopback registry the test kubelet also
    // pulls the images from: its default values name them by digest, so no image value is set.
    let release = sluice_tests::images::release_chart(&helm_support::helm());
    let chart = release.reference.clone();
    let pinned: serde_json::Value = serde_norway::from_str(&helm(&[
        "show",
        "values",
        &chart,
        "--version",
        &release.version,
        "--plain-http",
    ]))
    .expect("the chart's values parse");
    for (key, image) in [
        ("operator", &release.operator),
        ("inferenceServer", &release.inference_server),
    ] {
        assert_eq!(
            pinned["images"][key]["repository"],
            image.repository.as_str()
        );
        assert_eq!(pinned["images"][key]["digest"], image.digest.as_str());
    }

    // The harness applied the CRDs already (as a platform pipeline might); the release takes
    // them over.
    helm(&[
        "install",
        RELEASE,
        &chart,
        "--version",
        &release.version,
        "--plain-http",
        "--namespace",
        &ns,
        "--values",
        values.to_str().unwrap_or_default(),
        "--take-ownership",
        // What `helm test` queries (the quickstart endpoint, applied below).
        "--set",
        "tests.queryEndpoint=iris",
    ]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    on_nodes(nodes, "2 ready operator replicas", WAIT, || {
        ready_replicas(&deployments, "sluice-operator", 2)
    })
    .await;
    on_nodes(nodes, "2 ready gateway replicas", WAIT, || {
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
    let holder = on_nodes(nodes, "the operator Lease to be held", WAIT, || async {
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

    // Both components run as containers of our images, as the distroless nonroot user, on a
    // read-only root.
    let all_pods: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let identities = container_identities(nodes, &ns, &all_pods);
    assert_eq!(identities.len(), 4, "{identities:?}");
    for (key, uid) in &identities {
        assert_eq!(uid, "65532", "{key}");
    }
    for p in pods.list(&ListParams::default()).await.expect("pods").items {
        for c in p.spec.map(|s| s.containers).unwrap_or_default() {
            let image = c.image.unwrap_or_default();
            assert!(
                [
                    release.operator.reference(),
                    release.inference_server.reference()
                ]
                .contains(&image),
                "{image} is one of the release's image indexes, by digest"
            );
            let sc = c.security_context.unwrap_or_default();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{image}");
        }
    }

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

    // The quickstart, its model on a claim: the installed operator makes it READY and the
    // installed gateway answers for it.
    let app = fresh_namespace(&client, "quickstart").await;
    let uri = sluice_tests::models::iris_on_claim(&client, &app).await;
    let apply = PatchParams::apply("test-user");
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &app);
    mvs.patch(
        "iris-classifier-1",
        &apply,
        &Patch::Apply(json!({
            "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-classifier-1"},
            "spec": {"model": "iris-classifier", "version": 1, "format": "onnx", "task": "predict",
                     "source": {"uri": uri}}})),
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
    on_nodes(
        nodes,
        "the quickstart endpoint to be READY",
        WAIT,
        || async {
            let s = endpoints.get("iris").await.ok()?.status?;
            let state = s.state?;
            (format!("{:?}", state.ready) == "READY").then_some(())
        },
    )
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
    // Callers are checked: none without credentials; with an API key minted by the CLI (a
    // Secret in the release namespace, read by the gateway under the chart's own Role).
    let key = api_key(&ns, &["create", "--principal", "helm-install-test"]);
    let bearer = format!("Bearer {key}");
    for ip in &gateway_ips {
        let (code, body) = query_iris(ip, &[]).await.expect("an answer");
        assert_eq!(code, 401, "gateway {ip} without credentials: {body}");
        assert!(body.contains("UNAUTHENTICATED"), "{body}");
        let (code, body) = on_nodes(
            nodes,
            "the gateway to route to the endpoint",
            WAIT,
            || async {
                let answer = query_iris(ip, &[("authorization", &bearer)]).await?;
                (answer.0 == 200).then_some(answer)
            },
        )
        .await;
        assert_eq!(code, 200, "gateway {ip}: {body}");
    }

    // `helm test`: the release's own check, from a pod of the release's image, finds every
    // operator and gateway pod ready and queries the endpoint through a gateway with its own
    // ServiceAccount token. Until that account may `query` the endpoint, the query is refused
    // (403, naming the verb) and the test fails; the failed pod stays for its log.
    let failed = helm_support::helm_on_cluster_result(&["test", RELEASE, "--namespace", &ns])
        .expect_err("helm test without the right to query fails");
    assert!(failed.contains("Phase:          Failed"), "{failed}");
    let log = nodes
        .kubelet
        .container_log(&ns, "sluice-test", "check")
        .unwrap_or_default();
    assert!(
        log.contains("FAIL query iris")
            && log.contains("PERMISSION_DENIED")
            && log.contains("`query`")
            && log.contains("1 of 5 checks failed"),
        "{log}"
    );
    pods.delete("sluice-test", &Default::default())
        .await
        .expect("deleting the failed test pod");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &app);
    bindings
        .patch(
            "helm-test-may-query",
            &PatchParams::apply("test-user"),
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "helm-test-may-query"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "sluice-query"},
                "subjects": [{"kind": "ServiceAccount", "name": "sluice-test", "namespace": ns}]})),
        )
        .await
        .expect("RoleBinding");
    // The pod passed, so Helm deleted it; its log is read from the test kubelet's files.
    let tested = helm(&["test", RELEASE, "--namespace", &ns]);
    assert!(tested.contains("Phase:          Succeeded"), "{tested}");
    let log = nodes
        .kubelet
        .container_log(&ns, "sluice-test", "check")
        .unwrap_or_default();
    for line in ["all 5 checks passed", "iris answered"] {
        assert!(
            log.contains(line),
            "the helm test pod's log lacks {line:?}:\n{log}"
        );
    }

    // `helm upgrade` under steady load: both Deployments roll (a new pod annotation), and no
    // request through the gateway fails meanwhile.
    let upgrade = [
        "upgrade",
        RELEASE,
        chart.as_str(),
        "--version",
        &release.version,
        "--plain-http",
        "--namespace",
        ns.as_str(),
        "--values",
        values.to_str().unwrap_or_default(),
        "--set-string",
        "operator.podAnnotations.rollout=2",
        "--set-string",
        "gateway.podAnnotations.rollout=2",
    ];
    let before = component_pods(&pods).await;
    let mut old_hashes = BTreeMap::new();
    for component in ["operator", "gateway"] {
        old_hashes.insert(component, template_hashes(&pods, component).await);
    }
    // The endpoint's state, sampled every 100 ms through the roll: anything but READY is kept.
    let watch_stop = Arc::new(AtomicBool::new(false));
    let state_watch = {
        let (endpoints, stop) = (endpoints.clone(), watch_stop.clone());
        tokio::spawn(async move {
            let (mut samples, mut not_ready) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                if let Ok(e) = endpoints.get("iris").await {
                    samples += 1;
                    let ready = e
                        .status
                        .and_then(|s| s.state)
                        .map(|s| format!("{:?}", s.ready));
                    if ready.as_deref() != Some("READY") {
                        not_ready.push(format!("{ready:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (samples, not_ready)
        })
    };
    let load = Load::start(pods.clone(), bearer.clone());
    // Steady load on the old gateways first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let answered_before = load.answered.load(Ordering::Relaxed);
    helm(&upgrade);
    for component in ["operator", "gateway"] {
        on_nodes(
            nodes,
            &format!("the {component} rollout to finish"),
            WAIT,
            || {
                rolled(
                    &deployments,
                    &pods,
                    component,
                    &before,
                    &old_hashes[component],
                )
            },
        )
        .await;
    }
    let roll = started.elapsed();
    let during = load.answered.load(Ordering::Relaxed) - answered_before;
    // A little more load on the new gateways (the client sees them with its lag), then the
    // verdict.
    tokio::time::sleep(PROPAGATION_LAG + Duration::from_secs(1)).await;
    let (answered, failed) = load.stop().await;
    watch_stop.store(true, Ordering::Relaxed);
    let (samples, not_ready) = state_watch.await.expect("state watch");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during helm upgrade: {:?}",
        failed.len(),
        answered + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        during >= 100,
        "only {during} requests answered during the upgrade ({roll:.1?})"
    );
    eprintln!(
        "helm upgrade: both Deployments rolled in {roll:.1?} with {during} requests answered meanwhile \
         ({answered} in all), none failed; endpoint READY in all {samples} samples"
    );
    assert!(samples >= 10, "only {samples} endpoint samples");
    assert!(
        not_ready.is_empty(),
        "the endpoint left READY during the upgrade ({} of {samples} samples): {:?}",
        not_ready.len(),
        &not_ready[..not_ready.len().min(5)]
    );
    let s = endpoints
        .get("iris")
        .await
        .expect("endpoint")
        .status
        .expect("status");
    assert_eq!(
        format!("{:?}", s.state.map(|s| s.ready)),
        "Some(READY)",
        "the endpoint stays READY through the upgrade"
    );

    // Revoking the key (its Secret deleted) refuses it from the gateways.
    let id = key
        .strip_prefix("sluice_")
        .and_then(|rest| rest.split('_').next())
        .expect("key id");
    api_key(&ns, &["revoke", id]);
    let new_ips: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
        .await
        .expect("gateway pods")
        .items
        .into_iter()
        .filter(serving)
        .filter_map(|p| p.status?.pod_ip)
        .collect();
    for ip in &new_ips {
        let body = on_nodes(nodes, "the revoked key to be refused", WAIT, || async {
            let (code, body) = query_iris(ip, &[("authorization", &bearer)]).await?;
            (code == 401).then_some(body)
        })
        .await;
        assert!(body.contains("revoked"), "{body}");
    }

    // Uninstall: the release's pods and RBAC go, the CRDs and the custom resources stay.
    helm(&["uninstall", RELEASE, "--namespace", &ns, "--wait"]);
    on_nodes(nodes, "the release's pods to be gone", WAIT, || async {
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

/// The chart's operator Deployment, rendered with a misspelled image repository and applied
/// with the ServiceAccount and ConfigMap it needs: its pod waits in `ImagePullBackOff` with the
/// registry's message, as on a cluster.
#[tokio::test(flavor = "multi_thread")]
async fn a_misspelled_image_in_the_values_leaves_the_pod_in_image_pull_back_off() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "typo").await;
    let pushed = sluice_tests::images::ours("operator");
    let wrong = format!("{}x", pushed.repository);
    let sets = [
        format!("images.operator.repository={wrong}"),
        format!("images.operator.digest={}", pushed.digest),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let rendered = helm_support::template(&[], &sets).expect("helm template");
    let docs = helm_support::documents(&rendered);
    let apply = PatchParams::apply("test-user");
    for (kind, name) in [
        ("ServiceAccount", "sluice-operator"),
        ("ConfigMap", "sluice-operator"),
        ("Deployment", "sluice-operator"),
    ] {
        let mut doc = helm_support::object(&docs, kind, name).clone();
        doc["metadata"]["namespace"] = json!(ns);
        let resource = sluice_tests::apply::api_resource(&doc).expect("kind");
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &resource);
        api.patch(name, &apply, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = on_nodes(
        nodes,
        "the operator pod in ImagePullBackOff",
        WAIT,
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|p| {
                let statuses = p.status?.container_statuses?;
                statuses.into_iter().find_map(|c| {
                    let waiting = c.state?.waiting?;
                    (waiting.reason.as_deref() == Some("ImagePullBackOff"))
                        .then_some(waiting.message)
                })
            })
        },
    )
    .await
    .unwrap_or_default();
    assert!(message.contains(&wrong), "{message}");
    assert!(message.to_lowercase().contains("unknown"), "{message}");
}
