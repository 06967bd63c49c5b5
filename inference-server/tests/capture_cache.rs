//! A response-cache hit still becomes a row of the inference table: the gateway (standalone,
//! `responseCache` and `autoCapture` on) answers the repeated chat from its cache, the model is
//! not called, and the capture sidecar in front of the model records the hit from what the
//! gateway sends it, marked `request_metadata['cache'] = 'hit'`, with the caller's request and
//! the answer it got; no usage row, since no model ran. Read back by DuckDB.

mod capture_support;

use std::time::Duration;

use capture_support::{Sidecar, StandaloneGateway, Upstream, duckdb, temp_dir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_hit_is_a_row_marked_as_a_hit() {
    let upstream = Upstream::start().await;
    let (payload, usage) = (temp_dir("cache-payload"), temp_dir("cache-usage"));
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        payload.to_str().unwrap(),
        &temp_dir("cache-spool"),
        &["--usage-table", usage.to_str().unwrap()],
        &[],
    )
    .await;
    let sidecar_addr = sidecar.base.trim_start_matches("http://").to_string();
    let gateway = StandaloneGateway::start(
        "cache-gateway",
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: iris}\nspec:\n  servedEntities:\n  - {name: iris-1, model: iris, version: 1}\n  autoCapture: {enabled: true}\n  aiGateway:\n    responseCache: {enabled: true}\n",
        &[("iris-1", &sidecar_addr)],
    )
    .await;
    let client = reqwest::Client::new();
    let chat = json!({"model": "iris", "temperature": 0,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response =
            capture_support::eventually(Duration::from_secs(20), "the gateway answers", || {
                let request = client
                    .post(format!(
                        "{}/serving-endpoints/v1/chat/completions",
                        gateway.base
                    ))
                    .json(&chat);
                async move {
                    let response = request.send().await.ok()?;
                    (response.status() == 200).then_some(response)
                }
            })
            .await;
        let cache = response.headers()["x-sluice-cache"]
            .to_str()
            .unwrap()
            .to_string();
        answers.push((cache, response.text().await.unwrap()));
    }
    let caches: Vec<&str> = answers.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(caches, ["miss", "hit", "hit"]);
    assert_eq!(answers[1].1, answers[0].1, "a hit is the first answer");

    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            3.0,
            Duration::from_secs(30),
        )
        .await;
    let glob = format!("{}/*/*.parquet", payload.display());
    let row = duckdb(&format!(
        "select count(*), count(*) filter (where request_metadata['cache'] = 'hit'), \
         count(distinct request_id), min(status_code), \
         count(*) filter (where response = (select min(response) from read_parquet('{glob}', hive_partitioning = true))), \
         count(*) filter (where request like '%\"hi\"%') \
         from read_parquet('{glob}', hive_partitioning = true)"
    ));
    assert_eq!(row, json!([3, 2, 3, 200, 3, 3]), "{row}");
    sidecar
        .wait_metric(
            "sluice_capture_usage_records_written_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    let usage_rows = duckdb(&format!(
        "select count(*) from read_parquet('{}/*/*.parquet', hive_partitioning = true)",
        usage.display()
    ));
    assert_eq!(
        usage_rows,
        json!([1]),
        "only the model's answer used anything"
    );
}
