//! Benchmark (ignored by default): N ServingEndpoints reconciled to READY on the local cluster.
//!
//! ```text
//! SLUICE_BENCH_ENDPOINTS=1000 cargo test -p sluice-tests --test operator_bench -- --ignored --nocapture
//! ```
//!
//! Each endpoint has one engine entity (vLLM image, not mapped to a local binary), so its pod
//! runs no process on the test kubelet: the benchmark measures the control path (operator,
//! API server, controller-manager, scheduler, kubelet status), not model servers. The operator
//! runs as its ServiceAccount with the chart's rules, confined to the benchmark namespace, and
//! reports: wall time from the first create to the last READY, API requests per reconcile (from
//! its own `sluice_operator_api_requests_total`, counted by a client middleware) and its peak
//! RSS (`VmHWM` in `/proc/<pid>/status`).

mod operator_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use operator_support::{NO_PROCESS_CONFIG, endpoint, engine_entity, model_version};
use serde_json::json;
use sluice_tests::{
    cluster::{OperatorOptions, fresh_namespace, metric_value, shared},
    kubelet::{Kubelet, KubeletConfig, NodeConfig},
};

/// Entity pods request almost nothing, so a thousand fit on the benchmark's nodes.
const TINY_CPU_TABLE: &str = "workloadTypes:\n  CPU: {cpu: 5m, memory: 8Mi}\n";

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn many_endpoints_reconcile_to_ready() {
    let n: usize = std::env::var("SLUICE_BENCH_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let cp = shared();
    let client = cp.client().await.expect("client");

    // Two roomy nodes of our own (the shared test nodes hold 110 pods each).
    let mut config = KubeletConfig::standard(
        "bench",
        cp.state_dir.join("kubelet-bench"),
        cp.apiserver_port(),
    );
    config.nodes = ["bench-a", "bench-b"]
        .map(|name| NodeConfig {
            cpu: "256".into(),
            memory: "1Ti".into(),
            pods: u32::try_from(n).unwrap_or(u32::MAX).saturating_add(50),
            ..NodeConfig::cpu(name)
        })
        .to_vec();
    config.ip_base = 40;
    let kubelet = Kubelet::start(cp.client().await.expect("client"), config)
        .await
        .expect("bench kubelet");

    let ns = fresh_namespace(&client, "bench").await;
    let operator = cp.start_operator_with(&OperatorOptions {
        namespace: Some(ns.clone()),
        config_yaml: Some(format!("{NO_PROCESS_CONFIG}{TINY_CPU_TABLE}")),
        ..Default::default()
    });
    let pid = operator.child.id().expect("operator pid");
    let logs = || {
        format!(
            "{}{}{}",
            cp.dump_logs(),
            operator.log_tail(),
            kubelet.dump_logs()
        )
    };
    sluice_tests::wait::eventually("operator ready", Duration::from_secs(60), logs, || async {
        (operator.probe("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let (_, before) = operator.probe("/metrics").await.expect("metrics");
    let rss_idle = peak_rss_kib(pid);

    let apply = |doc: serde_json::Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let ar = sluice_tests::apply::api_resource(&doc).expect("kind");
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            kube::Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &ar)
                .patch(
                    &name,
                    &kube::api::PatchParams::apply("bench"),
                    &kube::api::Patch::Apply(&doc),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        }
    };
    apply(model_version("m-1", "m", 1, &[])).await;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            apply(endpoint(
                &format!("ep-{i:04}"),
                vec![engine_entity("e", "m", json!({"version": 1}), json!({}))],
                &[],
            ))
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let created = started.elapsed();

    let endpoints: kube::Api<sluice_crds::ServingEndpoint> =
        kube::Api::namespaced(client.clone(), &ns);
    sluice_tests::wait::eventually(
        &format!("{n} endpoints READY"),
        Duration::from_secs(3600),
        logs,
        || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let list = endpoints.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|ep| {
                    ep.status
                        .as_ref()
                        .and_then(|s| s.state.as_ref())
                        .is_some_and(|s| {
                            format!("{:?}/{:?}", s.ready, s.config_update) == "READY/NOT_UPDATING"
                        })
                })
                .count();
            (ready == n).then_some(())
        },
    )
    .await;
    let total = started.elapsed();

    let (_, after) = operator.probe("/metrics").await.expect("metrics");
    let delta = |series: &str| metric_value(&after, series) - metric_value(&before, series);
    let verbs = ["get", "watch", "create", "update", "patch", "delete"];
    let requests: Vec<(&str, f64)> = verbs
        .iter()
        .map(|v| {
            (
                *v,
                delta(&format!(
                    "sluice_operator_api_requests_total{{verb=\"{v}\"}}"
                )),
            )
        })
        .collect();
    let all_requests: f64 = requests.iter().map(|(_, c)| c).sum();
    let ep_reconciles = delta("sluice_operator_reconciles_total{controller=\"servingendpoint\"}");
    let mv_reconciles = delta("sluice_operator_reconciles_total{controller=\"modelversion\"}");
    let status_writes =
        delta("sluice_operator_status_writes_total{controller=\"servingendpoint\"}");
    let errors: f64 = ["kube_api", "invalid_object", "serialize"]
        .iter()
        .map(|c| {
            delta(&format!(
                "sluice_operator_reconcile_errors_total{{controller=\"servingendpoint\",category=\"{c}\"}}"
            ))
        })
        .sum();
    let rss_peak = peak_rss_kib(pid);
    println!(
        "BENCH endpoints={n} create_s={:.1} ready_s={:.1} endpoint_reconciles={ep_reconciles} \
         (per endpoint {:.2}) modelversion_reconciles={mv_reconciles} status_writes={status_writes} \
         errors={errors} api_requests={all_requests} per_reconcile={:.2} per_endpoint={:.2} \
         by_verb={requests:?} operator_rss_idle_kib={rss_idle:?} operator_peak_rss_kib={rss_peak:?}",
        created.as_secs_f64(),
        total.as_secs_f64(),
        ep_reconciles / n as f64,
        all_requests / (ep_reconciles + mv_reconciles).max(1.0),
        all_requests / n as f64,
    );
}
