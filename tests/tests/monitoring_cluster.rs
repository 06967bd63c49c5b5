//! Monitoring on the local cluster with real containers: requests sent through the gateway are
//! captured on the default lake claim; `spec.monitoring` makes the operator render a CronJob,
//! and the refresh annotation runs it at once as a Job whose `inference-server monitor`
//! container reads the table on the claim and writes the profile and drift tables beside it.
//! `status.monitoring` shows what the refresh read (from its termination message); after
//! drifted traffic the next refresh sets `Drifting` and sends a Warning event. Feedback posted
//! through the gateway lands in the feedback table beside the payload table, and a refresh
//! that reads its labels (`feedback.label`) sets `QualityDegraded`.

use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_crds::ServingEndpoint;
use sluice_tests::{
    cluster::{fresh_namespace, shared, shared_nodes},
    gateway::GatewayProcess,
    lake::{claim_folder, duckdb_row, parquet_table},
    models::iris_version_1,
};

const REQUESTS: usize = 120;

fn spec(monitoring: Option<Value>) -> Value {
    let mut spec = json!({
        "servedEntities": [{"name": "v1", "model": "iris", "version": 1}],
        "autoCapture": {"enabled": true, "catalogName": "ml", "schemaName": "prod"},
    });
    if let Some(monitoring) = monitoring {
        spec["monitoring"] = monitoring;
    }
    spec
}

/// Petal widths around `mean` (a fixed pseudo-random spread, the same each run).
fn widths(mean: f64, count: usize) -> Vec<f64> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            mean + ((state % 1000) as f64 / 1000.0 - 0.5) * 0.6
        })
        .collect()
}

/// Whether any Parquet file lies under `dir`.
fn has_parquet(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                has_parquet(&path)
            } else {
                path.extension().is_some_and(|e| e == "parquet")
            }
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_on_the_cluster_profiles_captured_rows_and_flags_drift() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "monitoring").await;
    let _operator = cp.start_operator();
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());

    iris_version_1(&client, &ns).await;
    let apply = PatchParams::apply("test-user");
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    let put = |monitoring: Option<Value>, refresh: Option<&str>| {
        let endpoints = endpoints.clone();
        let apply = apply.clone();
        let mut body = json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
            "metadata": {"name": "iris"}, "spec": spec(monitoring)});
        if let Some(refresh) = refresh {
            body["metadata"]["annotations"] =
                json!({"serving.sluice.dev/refresh-monitoring": refresh});
        }
        async move {
            endpoints
                .patch("iris", &apply, &Patch::Apply(body))
                .await
                .expect("endpoint")
        }
    };
    put(None, None).await;
    sluice_tests::wait::eventually(
        "the endpoint READY",
        Duration::from_secs(180),
        logs,
        || async {
            let status = endpoints.get("iris").await.ok()?.status?;
            (format!("{:?}", status.state?.ready) == "READY").then_some(())
        },
    )
    .await;

    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/iris/invocations", gateway.base);
    // Sends one request per width; the request ids the gateway answered with.
    let send = |widths: Vec<f64>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut ids = Vec::new();
            for width in widths {
                let body = format!(r#"{{"inputs": [[6.7, 3.0, 5.2, {width}]]}}"#);
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200);
                ids.push(
                    response.headers()["x-request-id"]
                        .to_str()
                        .expect("an id")
                        .to_string(),
                );
            }
            ids
        }
    };
    let folder = claim_folder(&client, &ns, "sluice-lake").await;
    let payload = folder.join("ml/prod/iris_payload");
    let table = parquet_table(&payload);
    let payload = payload.as_path();
    let rows_landed = |count: usize| {
        let table = table.clone();
        async move {
            sluice_tests::wait::eventually(
                &format!("{count} rows in the table"),
                // The sidecar writes a file a minute.
                Duration::from_secs(180),
                logs,
                || {
                    let table = table.clone();
                    let written = has_parquet(payload);
                    async move {
                        // DuckDB refuses a glob that matches no file.
                        if !written {
                            return None;
                        }
                        let found: usize = duckdb_row(&format!("select count(*) from {table}"))
                            .trim_matches(|c| c == '(' || c == ')' || c == ',')
                            .parse()
                            .ok()?;
                        (found >= count).then_some(())
                    }
                },
            )
            .await
        }
    };

    // Traffic as usual; it becomes the baseline.
    let start = Timestamp::now() - Duration::from_secs(60);
    send(widths(1.5, REQUESTS)).await;
    rows_landed(REQUESTS).await;
    let end = Timestamp::now();
    let monitoring = json!({
        "granularities": ["5 minutes", "1 day"],
        "features": [{"name": "petal_width", "path": "request.inputs[*][3]"}],
        "baseline": {"start": start.to_string(), "end": end.to_string()},
        "alerts": [{"metric": "ksPvalue", "column": "petal_width", "threshold": 0.001}],
    });
    put(Some(monitoring.clone()), Some("first")).await;
    let cronjob = Api::<CronJob>::namespaced(client.clone(), &ns)
        .get("iris-monitor")
        .await
        .ok();
    let first = sluice_tests::wait::eventually(
        "the first refresh in status",
        Duration::from_secs(240),
        logs,
        || async {
            let ep = endpoints.get("iris").await.ok()?;
            let refresh = ep
                .status
                .as_ref()?
                .monitoring
                .as_ref()?
                .last_refresh
                .clone()?;
            let drifting = ep
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Drifting")?;
            Some((refresh, drifting))
        },
    )
    .await;
    let cronjob = match cronjob {
        Some(cronjob) => cronjob,
        None => Api::<CronJob>::namespaced(client.clone(), &ns)
            .get("iris-monitor")
            .await
            .expect("the monitoring CronJob"),
    };
    assert_eq!(cronjob.spec.schedule, "17 * * * *");
    let (refresh, drifting) = first;
    assert_eq!(refresh.error, None, "{refresh:?}");
    assert_eq!(refresh.rows_read as usize, REQUESTS, "{refresh:?}");
    assert_eq!(drifting.status, "False", "{drifting:?}");
    let profile = parquet_table(&folder.join("ml/prod/iris_payload_profile_metrics"));
    assert_eq!(
        duckdb_row(&format!(
            "select sum(count) from {profile} where column_name = 'petal_width' and granularity = '1 day' and slice_key is null"
        )),
        format!("({REQUESTS},)")
    );

    // Wider petals: the next refresh flags the drift.
    let drifted = send(widths(2.5, REQUESTS)).await;
    rows_landed(2 * REQUESTS).await;
    put(Some(monitoring.clone()), Some("second")).await;
    let drifting =
        sluice_tests::wait::eventually("Drifting", Duration::from_secs(240), logs, || async {
            let ep = endpoints.get("iris").await.ok()?;
            ep.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Drifting" && c.status == "True")
        })
        .await;
    assert_eq!(drifting.reason, "DriftDetected");
    assert!(
        drifting.message.contains("ksPvalue of petal_width"),
        "{}",
        drifting.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    sluice_tests::wait::eventually(
        "a DriftDetected Warning",
        Duration::from_secs(30),
        logs,
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("DriftDetected")
                    && e.type_.as_deref() == Some("Warning")
            })
        },
    )
    .await;
    // People say 20 of the drifted answers were wrong, through the gateway's feedback route;
    // the capture sidecars write the feedback table beside the payload table, and the next
    // refresh scores the answers against it: accuracy 0, `QualityDegraded`, and the quality
    // in status (from which the operator's gauges are read).
    for id in &drifted[..20] {
        let response = http
            .post(format!("{}/serving-endpoints/iris/feedback", gateway.base))
            .json(&json!({"request_id": id, "label": "no-such-class", "comment": "wrong"}))
            .send()
            .await
            .expect("feedback");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    let feedback_dir = folder.join("ml/prod/iris_feedback");
    let joined = format!(
        "select count(*) from {} f join {table} p using (request_id)",
        parquet_table(&feedback_dir)
    );
    sluice_tests::wait::eventually("20 feedback rows", Duration::from_secs(180), logs, || {
        let written = has_parquet(&feedback_dir);
        let joined = joined.clone();
        async move {
            if !written {
                return None;
            }
            let found: usize = duckdb_row(&joined)
                .trim_matches(|c| c == '(' || c == ')' || c == ',')
                .parse()
                .ok()?;
            (found >= 20).then_some(())
        }
    })
    .await;
    let mut quality = monitoring;
    quality["problemType"] = json!("classification");
    quality["prediction"] = json!({"name": "prediction"});
    quality["label"] = json!({"name": "label", "path": "feedback.label"});
    quality["alerts"] = json!([{"metric": "accuracyScore", "threshold": 0.5}]);
    put(Some(quality), Some("third")).await;
    let degraded = sluice_tests::wait::eventually(
        "QualityDegraded",
        Duration::from_secs(240),
        logs,
        || async {
            let ep = endpoints.get("iris").await.ok()?;
            let status = ep.status?;
            let condition = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "QualityDegraded" && c.status == "True")?;
            let refresh = status.monitoring?.last_refresh?;
            Some((condition, refresh))
        },
    )
    .await;
    let (condition, refresh) = degraded;
    assert_eq!(condition.reason, "QualityBelowThreshold", "{condition:?}");
    let accuracy = refresh
        .quality
        .iter()
        .find(|v| v.metric == sluice_crds::AlertMetric::AccuracyScore)
        .map(|v| v.value);
    assert_eq!(accuracy, Some(0.0), "{refresh:?}");
}
