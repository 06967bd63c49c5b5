//! Usage tracking in the capture sidecar: every request, sampled for the payload table or not,
//! becomes one row of the usage table, with the verified caller, the tokens the answer reported
//! (plain and streamed), the latency, the status and the cost at the entity's price; read back
//! by DuckDB (Parquet) and by the Python `deltalake` package (Delta, usage tracking alone).

mod capture_support;

use std::time::Duration;

use capture_support::{Sidecar, Upstream, duckdb, run_python, temp_dir};
use serde_json::{Value, json};

const PRICE: &str = "USD:input=1,output=2";
/// What one chat of the test upstream costs: 11 input and 5 output tokens at [`PRICE`].
const CHAT_COST: f64 = 11.0 / 1000.0 + 5.0 * 2.0 / 1000.0;

async fn chat(sidecar: &Sidecar, i: usize, stream: bool) -> u16 {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "stream": stream});
    if i.is_multiple_of(2) {
        body["usage_context"] = json!({"project": format!("p{}", i % 4), "run": i});
    }
    let response = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .header("x-sluice-requester", format!("user-{}", i % 3))
        .header("x-sluice-groups", "team-a,system:authenticated")
        .header("x-sluice-key-id", "k-0123")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_a_priced_usage_row_beside_the_sampled_payload_rows() {
    let upstream = Upstream::start().await;
    let (payload, usage) = (temp_dir("usage-payload"), temp_dir("usage-table"));
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        payload.to_str().unwrap(),
        &temp_dir("usage-spool"),
        &[
            "--usage-table",
            usage.to_str().unwrap(),
            "--usage-price",
            PRICE,
            "--sampling-fraction",
            "0.3",
        ],
        &[],
    )
    .await;
    // 20 plain chats, 10 streamed ones and 5 failures.
    let mut sent = 0;
    for i in 0..30 {
        assert_eq!(chat(&sidecar, i, i >= 20).await, 200);
        sent += 1;
    }
    for _ in 0..5 {
        let response = sidecar
            .client
            .post(sidecar.url("/status/500"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500);
        sent += 1;
    }
    sidecar
        .wait_metric(
            "sluice_capture_usage_records_written_total",
            f64::from(sent),
            Duration::from_secs(30),
        )
        .await;
    let usage_glob = format!("{}/*/*.parquet", usage.display());
    let row = duckdb(&format!(
        "select count(*), count(distinct request_id), sum(input_token_count), \
         sum(output_token_count), round(sum(cost), 9), count(cost), min(currency), \
         count(distinct requester), min(api_key_id), min(requester_groups), \
         count(*) filter (where status_code = 500), \
         count(*) filter (where usage_context['project'] = 'p0'), \
         min(typeof(request_time)), min(entity_name), min(served_entity_name), \
         count(*) filter (where execution_time_ms >= 0) \
         from read_parquet('{usage_glob}', hive_partitioning = true)"
    ));
    let chats = 30.0;
    assert_eq!(row[0], json!(sent), "one usage row per request: {row}");
    assert_eq!(row[1], json!(sent), "{row}");
    assert_eq!(
        row[2].as_f64(),
        Some(11.0 * chats),
        "input tokens, plain and streamed: {row}"
    );
    assert_eq!(row[3].as_f64(), Some(5.0 * chats), "{row}");
    let cost: f64 = row[4]
        .as_str()
        .map_or_else(|| row[4].as_f64().unwrap(), |s| s.parse().unwrap());
    assert!(
        (cost - CHAT_COST * chats).abs() < 1e-9,
        "cost {cost}: {row}"
    );
    assert_eq!(
        row[5],
        json!(30),
        "a failure reported no tokens: its cost is unknown, not 0: {row}"
    );
    assert_eq!(row[6], "USD");
    assert_eq!(row[7], json!(3), "the verified callers: {row}");
    assert_eq!(row[8], "k-0123");
    assert_eq!(row[9], "team-a,system:authenticated");
    assert_eq!(row[10], json!(5));
    // i = 0, 4, 8, ..., 28: project p0.
    assert_eq!(
        row[11],
        json!(8),
        "usage_context from the request body: {row}"
    );
    assert_eq!(row[12], "TIMESTAMP WITH TIME ZONE");
    assert_eq!((&row[13], &row[14]), (&json!("iris"), &json!("iris-1")));
    assert_eq!(row[15], json!(sent));

    // The payload table holds the sampled requests, and each is a usage row marked sampled.
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    let payload_glob = format!("{}/*/*.parquet", payload.display());
    let joined = duckdb(&format!(
        "select (select count(*) from read_parquet('{payload_glob}', hive_partitioning = true)), \
           (select count(*) from read_parquet('{payload_glob}', hive_partitioning = true) p \
              join read_parquet('{usage_glob}', hive_partitioning = true) u using (request_id) \
              where u.sampled), \
           (select count(*) from read_parquet('{usage_glob}', hive_partitioning = true) where sampled)"
    ));
    let sampled = joined[0].as_i64().unwrap();
    assert!(
        sampled > 0 && sampled < i64::from(sent),
        "about 30% sampled: {joined}"
    );
    assert_eq!(joined[1], json!(sampled), "{joined}");
    assert_eq!(joined[2], json!(sampled), "{joined}");

    // Prometheus: by endpoint and entity, never by caller.
    let metrics = sidecar.metrics().await;
    let series = |name: &str| {
        metrics
            .get(&format!(
                "{name}{{endpoint=\"iris\",entity=\"iris-1\",currency=\"USD\"}}"
            ))
            .copied()
    };
    assert_eq!(
        series("sluice_capture_usage_requests_total"),
        Some(f64::from(sent))
    );
    assert_eq!(
        series("sluice_capture_usage_input_tokens_total"),
        Some(11.0 * chats)
    );
    assert_eq!(
        series("sluice_capture_usage_output_tokens_total"),
        Some(5.0 * chats)
    );
    let counted = series("sluice_capture_usage_cost_total").unwrap();
    assert!((counted - CHAT_COST * chats).abs() < 1e-9, "{counted}");
    assert!(
        metrics.keys().all(|k| !k.contains("user-")),
        "no principal in a label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_tracking_alone_writes_a_delta_usage_table_and_no_payload() {
    let upstream = Upstream::start().await;
    let usage = temp_dir("usage-only");
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        "",
        &temp_dir("usage-only-spool"),
        &[
            "--usage-table",
            usage.to_str().unwrap(),
            "--table-format",
            "delta",
        ],
        &[],
    )
    .await;
    for i in 0..12 {
        assert_eq!(chat(&sidecar, i, i % 2 == 1).await, 200);
    }
    sidecar
        .wait_metric(
            "sluice_capture_usage_records_written_total",
            12.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        sidecar.metric("sluice_capture_records_written_total").await,
        0.0
    );
    let code = format!(
        r#"
import json, os, sys
from deltalake import DeltaTable
t = DeltaTable({path:?}).to_pyarrow_table()
print(json.dumps({{"rows": t.num_rows, "tokens": sum(t.column("output_token_count").to_pylist()),
  "costs": t.column("cost").null_count, "sampled": sum(t.column("sampled").to_pylist()),
  "columns": t.column_names}}))
sys.stdout.flush()
os._exit(0)
"#,
        path = usage.to_str().unwrap()
    );
    let read: Value = serde_json::from_str(run_python(&code).trim()).unwrap();
    assert_eq!(read["rows"], 12, "{read}");
    assert_eq!(read["tokens"], 60, "{read}");
    assert_eq!(read["costs"], 12, "no price, no cost: {read}");
    assert_eq!(read["sampled"], 0, "{read}");
    for column in [
        "request_id",
        "request_time",
        "requester",
        "input_token_count",
        "cost",
    ] {
        assert!(
            read["columns"].as_array().unwrap().contains(&json!(column)),
            "{column}: {read}"
        );
    }
}
