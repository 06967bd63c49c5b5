//! Human feedback, end to end with real processes: the gateway (standalone, `autoCapture` on)
//! takes `POST /serving-endpoints/{name}/feedback`, checks it, and hands it to the capture
//! sidecar in front of the model, which writes it to the feedback table beside the payload
//! table. DuckDB joins the two on `request_id`; `inference-server monitor` then reads the
//! newest label of each request from the feedback table (`feedback.label`) and scores the
//! model's answers against it. A request the input guardrail refuses is recorded too (masked),
//! and the entity's price puts each request's cost in the operational profile.

mod capture_support;

use std::process::Command;
use std::time::Duration;

use capture_support::{BINARY, CHAT_WORDS, Sidecar, StandaloneGateway, Upstream, duckdb, temp_dir};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_becomes_rows_joinable_on_request_id_and_labels_for_the_monitor() {
    let upstream = Upstream::start().await;
    let root = temp_dir("feedback");
    let (payload, feedback) = (root.join("iris_payload"), root.join("iris_feedback"));
    let usage = root.join("iris_usage");
    let sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        payload.to_str().unwrap(),
        &temp_dir("feedback-spool"),
        &[
            "--feedback-table",
            feedback.to_str().unwrap(),
            "--usage-table",
            usage.to_str().unwrap(),
            // 11 tokens in, 5 out: 11 + 10 = 21 per answer.
            "--usage-price",
            "USD:input=1000,output=2000",
        ],
        &[],
    )
    .await;
    let sidecar_addr = sidecar.base.trim_start_matches("http://").to_string();
    let gateway = StandaloneGateway::start(
        "feedback-gateway",
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: iris}\nspec:\n  servedEntities:\n  - {name: iris-1, model: iris, version: 1}\n  autoCapture: {enabled: true}\n  aiGateway: {guardrails: {input: {pii: {behavior: MASK}, invalidKeywords: [project falcon]}}}\n",
        &[("iris-1", &sidecar_addr)],
    )
    .await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        // One question holds an e-mail address: the input guardrail masks it.
        let question = if i == 3 {
            "what is it? ask ann@example.com"
        } else {
            "what is it?"
        };
        let chat = json!({"model": "iris", "messages": [{"role": "user", "content": question}]});
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
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        response.bytes().await.unwrap();
    }
    // A refused request still becomes a row: the refusal, the request masked.
    let refused = client
        .post(format!(
            "{}/serving-endpoints/v1/chat/completions",
            gateway.base
        ))
        .json(&json!({"model": "iris", "messages": [
            {"role": "user", "content": "project falcon: mail bob@example.com"}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer = CHAT_WORDS.concat();
    let post = |body: Value| {
        let request = client
            .post(format!("{}/serving-endpoints/iris/feedback", gateway.base))
            .header("x-sluice-requester", "spoofed")
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // Request 0 right, request 1 wrong, then corrected; request 2 only rated; request 3 none.
    let sent = [
        json!({"request_id": ids[0], "label": answer, "rating": 5}),
        json!({"request_id": ids[1], "label": "a tree", "comment": "it is a flower"}),
        json!({"request_id": ids[2], "rating": 1}),
        json!({"request_id": ids[1], "label": answer}),
    ];
    for body in &sent {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["request_id"], body["request_id"]);
        // The feedback calls are told apart from each other.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, refused) = post(json!({"request_id": ids[3], "label": ["x"]})).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("label"),
        "{refused}"
    );

    sidecar
        .wait_metric(
            "sluice_capture_feedback_records_written_total",
            4.0,
            Duration::from_secs(30),
        )
        .await;
    sidecar
        .wait_metric(
            "sluice_capture_records_written_total",
            5.0,
            Duration::from_secs(30),
        )
        .await;
    sidecar
        .wait_metric(
            "sluice_capture_usage_records_written_total",
            4.0,
            Duration::from_secs(30),
        )
        .await;
    let payload_glob = format!("{}/*/*.parquet", payload.display());
    let refusal = duckdb(&format!(
        "select status_code, request_metadata['guardrails'], request_metadata['cost'], \
         request like '%<EMAIL_ADDRESS>%' and request not like '%bob@%', \
         response like '%project falcon%' \
         from read_parquet('{payload_glob}') where request_id = '{refused_id}'"
    ));
    assert_eq!(
        refusal,
        json!([400, "input=refused", null, true, true]),
        "the refusal is a row, its personal data masked, with no cost: {refusal}"
    );
    let usage_rows = duckdb(&format!(
        "select count(*), sum(cost) from read_parquet('{}/*/*.parquet')",
        usage.display()
    ));
    assert_eq!(usage_rows, json!([4, 84.0]), "no model ran for the refusal");
    let feedback_glob = format!("{}/*/*.parquet", feedback.display());
    let row = duckdb(&format!(
        "select count(*), count(distinct f.request_id), count(distinct feedback_id), \
         count(*) filter (where f.requester = 'spoofed'), count(label), sum(rating), \
         min(comment), min(typeof(feedback_time)), min(endpoint_name), min(served_entity_name) \
         from read_parquet('{feedback_glob}', hive_partitioning = true) f \
         join read_parquet('{payload_glob}', hive_partitioning = true) p using (request_id)"
    ));
    assert_eq!(
        row,
        json!([
            4,
            3,
            4,
            0,
            3,
            6.0,
            "it is a flower",
            "TIMESTAMP WITH TIME ZONE",
            "iris",
            "iris-1"
        ]),
        "every feedback joins its request; the spoofed requester header is not taken: {row}"
    );

    // The monitor scores the answers against the newest label of each request: request 0
    // right, request 1 corrected to right, requests 2 and 3 without a label.
    let config = json!({
        "granularities": ["1 day"],
        "problemType": "classification",
        "prediction": {"name": "answer", "path": "response.choices[0].message.content"},
        "label": {"name": "label", "path": "feedback.label"},
        "features": [{"name": "rating", "path": "feedback.rating"}],
    });
    let monitor = || {
        let out = Command::new(BINARY)
            .args(["monitor", "--table"])
            .arg(&payload)
            .arg("--feedback-table")
            .arg(&feedback)
            .args(["--config", &config.to_string(), "--work-dir"])
            .arg(root.join("work"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "monitor: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let profile_glob = format!(
        "{}/**/*.parquet",
        root.join("iris_payload_profile_metrics").display()
    );
    let table = || {
        duckdb(&format!(
            "select count, accuracy_score from read_parquet('{profile_glob}') \
             where column_name = ':table' and slice_key is null"
        ))
    };
    let summary = monitor();
    assert_eq!(summary["rowsRead"], 5, "{summary}");
    assert_eq!(table(), json!([5, 1.0]), "two labelled answers, both right");
    let rating = duckdb(&format!(
        "select count, num_nulls, avg from read_parquet('{profile_glob}') \
         where column_name = 'rating' and slice_key is null"
    ));
    assert_eq!(rating, json!([5, 3, 3.0]), "ratings 5 and 1: {rating}");
    // The operational profile: the sidecar's time to each answer's first byte (none for the
    // refusal, which no model answered).
    let first_byte = duckdb(&format!(
        "select count, num_nulls, min >= 0 from read_parquet('{profile_glob}') \
         where column_name = 'time_to_first_byte_ms' and slice_key is null"
    ));
    assert_eq!(first_byte, json!([5, 1, true]), "{first_byte}");
    // The gateway's input guardrail verdicts, the refusal among them.
    let verdicts = duckdb(&format!(
        "select count, num_nulls, \
         list_sort(list_transform(frequent_items, lambda x: x.item || ' #' || x.count)) \
         from read_parquet('{profile_glob}') \
         where column_name = 'guardrails' and slice_key is null"
    ));
    assert_eq!(
        verdicts,
        json!([
            5,
            0,
            [
                "input=masked:EMAIL_ADDRESS #1",
                "input=pass #3",
                "input=refused #1"
            ]
        ]),
        "{verdicts}"
    );
    // And what each answer cost at the entity's price.
    let cost = duckdb(&format!(
        "select count, num_nulls, avg, max from read_parquet('{profile_glob}') \
         where column_name = 'cost' and slice_key is null"
    ));
    assert_eq!(cost, json!([5, 1, 21.0, 21.0]), "{cost}");

    // A late, wrong label for request 2: the next refresh reads only the new feedback file
    // and recomputes the window of the request it is about.
    let (status, answer) = post(json!({"request_id": ids[2], "label": "a stone"})).await;
    assert_eq!(status, 200, "{answer}");
    sidecar
        .wait_metric(
            "sluice_capture_feedback_records_written_total",
            5.0,
            Duration::from_secs(30),
        )
        .await;
    let summary = monitor();
    assert_eq!(
        (
            summary["newFiles"].as_u64(),
            summary["windowsWritten"].as_u64()
        ),
        (Some(1), Some(1)),
        "{summary}"
    );
    let after = table();
    assert_eq!(after[0], json!(5));
    assert!(
        (after[1].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "two of three labelled answers right: {after}"
    );
}
