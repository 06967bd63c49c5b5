//! Calls to an external model are rows of the inference and usage tables like any entity's:
//! the gateway (standalone, `autoCapture` and `usageTracking` on) calls the Anthropic stand-in
//! for the external entity, and sends each exchange, once its answer ended, to the entity's
//! recorder (`inference-server capture --record-only`, which the operator runs per external
//! entity on a cluster). Read back by DuckDB: one payload row per call (the failed one too),
//! marked with the provider, the OpenAI-format answer the caller got, and usage rows with the
//! provider's own token counts — for the stream too, whose usage chunk the gateway asked for
//! and kept from the caller, who did not ask. The provider key is in no row.

mod capture_support;

use std::process::Command;
use std::time::Duration;

use capture_support::{BINARY, Sidecar, duckdb, temp_dir};
use serde_json::json;
use sluice_tests::providers::Providers;

const KEY: &str = "sk-ant-recorded-7d1e2f3a4b5c6d7e";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_calls_are_rows_with_the_providers_token_counts() {
    let providers = Providers::start(KEY).await;
    let (payload, usage) = (temp_dir("external-payload"), temp_dir("external-usage"));
    // The sidecar helper names its rows endpoint `iris`, entity `iris-1`: so does the manifest.
    let recorder = Sidecar::start(
        "",
        payload.to_str().unwrap(),
        &temp_dir("external-spool"),
        &[
            "--usage-table",
            usage.to_str().unwrap(),
            "--usage-price",
            "USD:input=1,output=2",
        ],
        &[],
    )
    .await;
    let refused = recorder
        .client
        .post(recorder.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404, "a recorder serves no model");
    assert!(refused.text().await.unwrap().contains("--record-only"));
    let health = recorder
        .client
        .get(recorder.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "a recorder is ready on its own");

    let dir = temp_dir("external-gateway");
    let manifest = dir.join("endpoints.yaml");
    let endpoint = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: provider-keys}}\nstringData:\n  key: {KEY}\n---\n\
         apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {{name: iris}}\nspec:\n  servedEntities:\n  - name: iris-1\n    externalModel: {{provider: anthropic, name: claude-sonnet-4-5, task: llm/v1/chat, apiBase: 'http://{}/anthropic', apiKeySecretRef: {{name: provider-keys, key: key}}}}\n  autoCapture: {{enabled: true}}\n  aiGateway:\n    usageTracking: {{enabled: true}}\n",
        providers.addr
    );
    std::fs::write(&manifest, &endpoint).unwrap();
    let start = |upstream: Option<&str>| {
        let output = dir.join(format!("stdout-{}", upstream.is_some()));
        let mut command = Command::new(BINARY);
        command
            .args(["gateway", "--standalone"])
            .arg(&manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .env("SLUICE_LOG", "warn")
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        if let Some(upstream) = upstream {
            command.args(["--upstream", &format!("iris-1={upstream}")]);
        }
        (command.spawn().unwrap(), output)
    };
    // Without its recorder the endpoint is refused, by name.
    let (mut unrecorded, _) = start(None);
    let status = unrecorded.wait().unwrap();
    assert!(!status.success());
    let said = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(
        said.contains("the external entity iris-1 is recorded") && said.contains("--record-only"),
        "{said}"
    );

    let recorder_addr = recorder.base.trim_start_matches("http://").to_string();
    let (mut gateway, output) = start(Some(&recorder_addr));
    let bound =
        sluice_tests::process::announced(&output, &["gateway", "admin"], Duration::from_secs(30))
            .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/serving-endpoints/v1/chat/completions", bound[0]);
    let chat = |extra: serde_json::Value| {
        let mut body = json!({"model": "iris", "max_tokens": 64,
                              "messages": [{"role": "user", "content": "Say hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        client.post(&url).json(&body).send()
    };
    let whole = chat(json!({})).await.unwrap();
    assert_eq!(whole.status(), 200);
    let whole: serde_json::Value = whole.json().await.unwrap();
    assert_eq!(whole["usage"]["prompt_tokens"], 2095, "{whole}");
    let stream = chat(json!({"stream": true})).await.unwrap();
    assert_eq!(stream.status(), 200);
    let events = stream.text().await.unwrap();
    assert!(events.contains("[DONE]"), "{events}");
    assert!(
        !events.contains("prompt_tokens"),
        "the caller did not ask for usage: {events}"
    );
    let refused = chat(json!({"logit_bias": {"1": 2}})).await.unwrap();
    assert_eq!(refused.status(), 400);

    recorder
        .wait_metric(
            "sluice_capture_records_written_total",
            3.0,
            Duration::from_secs(30),
        )
        .await;
    let glob = format!("{}/*/*.parquet", payload.display());
    let row = duckdb(&format!(
        "select count(*), count(*) filter (where request_metadata['provider'] = 'anthropic'), \
         list(status_code order by status_code), count(distinct request_id), \
         count(*) filter (where response like '%chat.completion%'), \
         count(*) filter (where request like '%{KEY}%' or response like '%{KEY}%'), \
         min(execution_time_ms) >= 0, max(served_entity), max(model), sum(input_token_count) \
         from read_parquet('{glob}', hive_partitioning = true)"
    ));
    assert_eq!(
        row,
        json!([3, 3, [200, 200, 400], 3, 2, 0, true, "iris-1", "iris", 2120]),
        "{row}"
    );
    recorder
        .wait_metric(
            "sluice_capture_usage_records_written_total",
            3.0,
            Duration::from_secs(30),
        )
        .await;
    let usage_row = duckdb(&format!(
        "select count(*), sum(input_token_count), sum(output_token_count), round(sum(cost), 3) \
         from read_parquet('{}/*/*.parquet', hive_partitioning = true)",
        usage.display()
    ));
    // 2095 + 25 in and 503 + 15 out (the stand-in's documented samples) at 1 and 2 per 1k.
    assert_eq!(usage_row, json!([3, 2120, 518, 3.156]), "{usage_row}");
    let _ = gateway.kill();
    let _ = gateway.wait();
}
