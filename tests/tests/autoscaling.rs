//! Autoscaling and scale-to-zero on the local cluster: the real operator's autoscaler reads the
//! demand of a real gateway and sizes entity Deployments whose pods run `serve` through the
//! test kubelet. An idle scale-to-zero entity goes to zero pods; requests sent then are held
//! and answered once a pod is up, none lost; load adds replicas and its end removes them; an
//! entity without scale to zero stays at its minimum.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_crds::{ModelVersion, ReplicaStatus, ServingEndpoint};
use sluice_tests::cluster::{
    OperatorOptions, OperatorProcess, fresh_namespace, shared, shared_nodes,
};
use sluice_tests::gateway::GatewayProcess;
use sluice_tests::models::iris_on_claim;
use sluice_tests::wait::eventually;

const IRIS: &str = r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#;

fn endpoint(name: &str, entity: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint", "metadata": {"name": name},
           "spec": {"servedEntities": [entity]}})
}

async fn post(http: &reqwest::Client, base: &str, endpoint: &str) -> (u16, Option<String>) {
    match http
        .post(format!("{base}/serving-endpoints/{endpoint}/invocations"))
        .header("content-type", "application/json")
        .body(IRIS)
        .send()
        .await
    {
        Ok(response) => {
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (response.status().as_u16(), retry)
        }
        Err(_) => (0, None),
    }
}

/// A namespace with a gateway, an operator reading its demand (short windows: stable 6 s,
/// panic 2 s) and the iris model as ModelVersion `iris-1`.
struct Scene {
    client: kube::Client,
    ns: String,
    gateway: GatewayProcess,
    operator: OperatorProcess,
}

impl Scene {
    async fn start(prefix: &str) -> Scene {
        // The test kubelet's nodes run the entity pods.
        shared_nodes();
        let cp = shared();
        let client = cp.client().await.expect("client");
        let ns = fresh_namespace(&client, prefix).await;
        let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
        let operator = cp.start_operator_with(&OperatorOptions {
            namespace: Some(ns.clone()),
            args: [
                "--gateway-admin-url",
                &gateway.admin,
                "--stable-window-seconds",
                "6",
                "--panic-window-seconds",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            ..OperatorOptions::default()
        });
        let uri = iris_on_claim(&client, &ns).await;
        let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
        mvs.patch(
            "iris-1",
            &PatchParams::apply("test-user"),
            &Patch::Apply(json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": "iris-1"},
                "spec": {"model": "iris", "version": 1, "source": {"uri": uri}, "format": "onnx", "task": "predict"}})),
        )
        .await
        .expect("model version");
        Scene {
            client,
            ns,
            gateway,
            operator,
        }
    }

    /// Applies endpoint `name` serving `iris-1` as entity `iris` with the extra entity fields.
    async fn serve_iris(&self, name: &str, fields: serde_json::Value) {
        let mut entity = json!({"name": "iris", "model": "iris", "version": 1});
        for (key, value) in fields.as_object().into_iter().flatten() {
            entity[key] = value.clone();
        }
        Api::<ServingEndpoint>::namespaced(self.client.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::apply("test-user"),
                &Patch::Apply(endpoint(name, entity)),
            )
            .await
            .unwrap_or_else(|e| panic!("endpoint {name}: {e}"));
    }

    /// `spec.replicas` of the (first) Deployment of `endpoint`, -1 when there is none.
    async fn replicas(&self, endpoint: &str) -> i32 {
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("serving.sluice.dev/endpoint={endpoint}")))
            .await
            .ok()
            .and_then(|l| l.items.first().and_then(|d| d.spec.replicas))
            .unwrap_or(-1)
    }

    fn logs(&self) -> String {
        format!(
            "{}{}{}{}",
            shared().dump_logs(),
            shared_nodes().kubelet.dump_logs(),
            sluice_tests::log_tail(&self.operator.log, 80),
            sluice_tests::log_tail(&self.gateway.log, 40)
        )
    }
}

/// The phases of the operator's cold-start histogram, `total` last.
const COLD_START_PHASES: [&str; 7] = [
    "detect",
    "scale",
    "schedule",
    "start",
    "model_load",
    "first_byte",
    "total",
];

/// The replica status of the first entity of `endpoint` once its last scaling reason is
/// `reason`.
async fn last_scale(
    endpoints: &Api<ServingEndpoint>,
    endpoint: &str,
    reason: &str,
) -> Option<ReplicaStatus> {
    let status = endpoints.get(endpoint).await.ok()?.status?;
    let replicas = status.config?.served_entities.first()?.replicas.clone()?;
    (replicas.last_scale_reason.as_deref() == Some(reason)).then_some(replicas)
}

#[tokio::test(flavor = "multi_thread")]
async fn entities_scale_to_zero_wake_on_requests_and_follow_load() {
    let scene = Scene::start("autoscale").await;
    let (client, ns, gateway) = (scene.client.clone(), scene.ns.clone(), &scene.gateway);
    let logs = || scene.logs();
    scene
        .serve_iris(
            "wakes",
            json!({"scaleToZeroEnabled": true,
                   "minProvisionedConcurrency": 0, "maxProvisionedConcurrency": 3,
                   "autoscaling": {"perReplicaConcurrency": 1, "idleTimeoutSeconds": 10,
                                   "maxHeldRequests": 50, "holdTimeoutSeconds": 120}}),
        )
        .await;
    scene
        .serve_iris(
            "steady",
            json!({"minProvisionedConcurrency": 2, "maxProvisionedConcurrency": 4,
                   "autoscaling": {"perReplicaConcurrency": 1, "idleTimeoutSeconds": 10}}),
        )
        .await;
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = |endpoint: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(
                &ListParams::default().labels(&format!("serving.sluice.dev/endpoint={endpoint}")),
            )
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count()
            })
            .unwrap_or(usize::MAX)
        }
    };
    let ready = |name: &'static str| {
        let endpoints = endpoints.clone();
        async move {
            let status = endpoints.get(name).await.ok()?.status?;
            let state = status.state?;
            (format!("{:?}", state.ready) == "READY").then_some(())
        }
    };
    for name in ["wakes", "steady"] {
        eventually(
            &format!("endpoint {name} READY"),
            Duration::from_secs(180),
            logs,
            || ready(name),
        )
        .await;
    }

    // Idle: the scale-to-zero entity goes to zero pods, and its status says why.
    eventually(
        "the idle entity to have no pod",
        Duration::from_secs(120),
        logs,
        || async { (running("wakes").await == 0).then_some(()) },
    )
    .await;
    let scaled_to_zero = eventually(
        "status to show the scale to zero",
        Duration::from_secs(30),
        logs,
        || async {
            let r = last_scale(&endpoints, "wakes", "ScaleToZero").await?;
            ((r.desired, r.current, r.ready) == (0, 0, 0)).then_some(r)
        },
    )
    .await;
    assert!(
        scaled_to_zero
            .last_scale_message
            .as_deref()
            .is_some_and(|m| m.contains("-> 0 replicas")),
        "{scaled_to_zero:?}"
    );
    assert!(scaled_to_zero.last_scale_time.is_some());

    // Requests now are held, the entity wakes, and every one is answered.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(150))
        .build()
        .expect("client");
    let held: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), gateway.base.clone());
            tokio::spawn(async move { post(&http, &base, "wakes").await })
        })
        .collect();
    for request in held {
        let (status, retry_after) = request.await.expect("request");
        assert!(
            status == 200 || (status == 503 && retry_after.is_some()),
            "a held request got {status}\n{}",
            logs()
        );
        assert_eq!(
            status, 200,
            "the cap (50) was not reached, so every request is answered"
        );
    }
    // The wake is in status and its cold start in the operator's histogram, phase by phase.
    eventually(
        "status to show the wake",
        Duration::from_secs(30),
        logs,
        || last_scale(&endpoints, "wakes", "Wake"),
    )
    .await;
    for phase in COLD_START_PHASES {
        let series =
            format!("sluice_operator_autoscaler_cold_start_seconds_count{{phase=\"{phase}\"}}");
        let operator = &scene.operator;
        eventually(
            &format!("a cold start recorded ({series})"),
            Duration::from_secs(30),
            logs,
            || async { (operator.metric(&series).await? >= 1.0).then_some(()) },
        )
        .await;
    }

    // Load: 6 requests in flight for a while add replicas; no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (http, base, stop) = (http.clone(), gateway.base.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = post(&http, &base, "wakes").await;
                    if status != 200 {
                        failures.push(status);
                    }
                }
                failures
            })
        })
        .collect();
    let wanted = |endpoint: &'static str| scene.replicas(endpoint);
    eventually(
        "load to add replicas",
        Duration::from_secs(90),
        logs,
        || async { (wanted("wakes").await > 1).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let failures = worker.await.expect("worker");
        assert!(
            failures.is_empty(),
            "requests failed under load: {failures:?}"
        );
    }
    // The load ends: replicas go back down, then to zero.
    eventually(
        "replicas to go back to zero",
        Duration::from_secs(120),
        logs,
        || async { (wanted("wakes").await == 0).then_some(()) },
    )
    .await;

    // The entity without scale to zero never went below its minimum of two.
    assert_eq!(wanted("steady").await, 2, "{}", logs());
    assert_eq!(running("steady").await, 2);
}

/// Cold-start benchmark: first request to first byte for an entity at zero, split into phases
/// seen by polling the API every 20 ms (replicas written, pod created, scheduled, container
/// started, ready), then the success rate of a load ramp 1 → 8 → 1 clients. Writes
/// docs/benchmarks/cold-start.md.
///
/// `cargo test -p sluice-tests --test autoscaling -- --ignored --nocapture cold_start`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run on demand"]
async fn cold_start_benchmark() {
    let scene = Scene::start("coldstart").await;
    let (client, ns, gateway) = (scene.client.clone(), scene.ns.clone(), &scene.gateway);
    let logs = || scene.logs();
    scene
        .serve_iris(
            "cold",
            json!({"scaleToZeroEnabled": true,
                   "minProvisionedConcurrency": 0, "maxProvisionedConcurrency": 4,
                   "autoscaling": {"perReplicaConcurrency": 1, "idleTimeoutSeconds": 10}}),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels("serving.sluice.dev/endpoint=cold");
    let replicas = || scene.replicas("cold");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let mut rows = Vec::new();
    let mut operator_rows = Vec::new();
    let phase_sums = || async {
        let mut sums = Vec::new();
        for phase in COLD_START_PHASES {
            let series =
                format!("sluice_operator_autoscaler_cold_start_seconds_sum{{phase=\"{phase}\"}}");
            sums.push(scene.operator.metric(&series).await.unwrap_or_default());
        }
        sums
    };
    for round in 1..=3 {
        let before = phase_sums().await;
        eventually(
            "the entity to be at zero",
            Duration::from_secs(180),
            logs,
            || async {
                let live = pods.list(&selector).await.ok()?.items.len();
                (replicas().await == 0 && live == 0).then_some(())
            },
        )
        .await;
        let start = std::time::Instant::now();
        let request = {
            let (http, base) = (http.clone(), gateway.base.clone());
            tokio::spawn(async move {
                let answer = post(&http, &base, "cold").await;
                (answer, std::time::Instant::now())
            })
        };
        // Phases, as seen polling the API every 20 ms.
        let (mut scaled, mut created, mut scheduled, mut started, mut ready) =
            (None, None, None, None, None);
        while !request.is_finished() {
            let at = start.elapsed();
            if scaled.is_none() && replicas().await > 0 {
                scaled = Some(at);
            }
            if let Ok(list) = pods.list(&selector).await
                && let Some(pod) = list.items.first()
            {
                created.get_or_insert(at);
                let status = pod.status.clone().unwrap_or_default();
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    scheduled.get_or_insert(at);
                }
                let running = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .any(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
                if running {
                    started.get_or_insert(at);
                }
                let is_ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if is_ready {
                    ready.get_or_insert(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ((status, _), answered) = request.await.expect("request");
        assert_eq!(status, 200, "{}", logs());
        // The operator's own account of the same cold start (its histogram sums grow by it).
        let total_before = before[COLD_START_PHASES.len() - 1];
        let after = eventually(
            "the operator to record the cold start",
            Duration::from_secs(30),
            logs,
            || async {
                let after = phase_sums().await;
                (after[COLD_START_PHASES.len() - 1] > total_before).then_some(after)
            },
        )
        .await;
        let phases: Vec<String> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| format!("{:.0}", (a - b) * 1000.0))
            .collect();
        operator_rows.push(format!("| {round} | {} |", phases.join(" | ")));
        let total = answered.duration_since(start);
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}", d.as_millis()));
        rows.push(format!(
            "| {round} | {} | {} | {} | {} | {} | {} | {} |",
            ms(scaled),
            ms(created),
            ms(scheduled),
            ms(started),
            ms(ready),
            total.as_millis(),
            ms(ready.map(|r| total.saturating_sub(r)))
        ));
    }

    // A ramp 1 → 8 → 1 clients, 5 s per step; every answer counted.
    let mut ok = 0usize;
    let mut failed = Vec::new();
    for clients in [1usize, 2, 4, 8, 4, 2, 1] {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (http, base) = (http.clone(), gateway.base.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while std::time::Instant::now() < until {
                        answers.push(post(&http, &base, "cold").await.0);
                    }
                    answers
                })
            })
            .collect();
        for worker in workers {
            for status in worker.await.expect("worker") {
                if status == 200 {
                    ok += 1;
                } else {
                    failed.push(status);
                }
            }
        }
    }
    let machine = format!(
        "{} cores; debug builds of the operator, gateway and serve; the local cluster of tests/",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let doc = format!(
        "# Cold start and load ramp (scale from zero)\n\n\
         Command: `cargo test -p sluice-tests --test autoscaling -- --ignored --nocapture cold_start`\n\n\
         Machine: {machine}. Entity: the iris ONNX model on the builtin runtime, scale to zero,\n\
         perReplicaConcurrency 1, max 4 replicas. Phases are the first time a 20 ms API poll saw\n\
         each step, in ms after the first request was sent (so each is accurate to about 20 ms):\n\
         autoscaler wrote replicas, pod created (ReplicaSet), scheduled, container running\n\
         (after the fetch init step), Ready (model loaded), first byte at the client.\n\n\
         | round | replicas written | pod created | scheduled | running | ready | first byte | ready → first byte |\n\
         |---|---|---|---|---|---|---|---|\n{}\n\n\
         The same cold starts as the operator's `sluice_operator_autoscaler_cold_start_seconds`\n\
         histogram recorded them (ms per phase: the first held request at the gateway → the wake\n\
         decision → replicas written → pod bound → containers running → Ready → a held\n\
         request's first byte at the gateway):\n\n\
         | round | {} |\n|---|{}\n{}\n\n\
         Load ramp 1 → 2 → 4 → 8 → 4 → 2 → 1 clients, 5 s per step, through the gateway: \
         {ok} answered 200, {} failed ({:?}); success rate {:.3}%.\n",
        rows.join("\n"),
        COLD_START_PHASES.join(" | "),
        "---|".repeat(COLD_START_PHASES.len()),
        operator_rows.join("\n"),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        100.0 * ok as f64 / (ok + failed.len()).max(1) as f64
    );
    let path = sluice_tests::repo_root().join("docs/benchmarks/cold-start.md");
    std::fs::create_dir_all(path.parent().expect("docs")).expect("docs dir");
    // Earlier runs written up by hand under `## History` stay.
    let history = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.find("\n## History").map(|i| old[i..].to_string()))
        .unwrap_or_default();
    std::fs::write(&path, format!("{doc}{history}")).expect("write");
    println!("{doc}");
}
