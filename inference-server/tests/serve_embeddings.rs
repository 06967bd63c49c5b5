//! `serve` with the real all-MiniLM-L6-v2 (fetched by tests/fetch-models.sh into
//! $SLUICE_MODEL_CACHE, default ~/.cache/sluice/models). Skipped, saying so, when the files
//! are missing; CI runs the fetch script first.
//!
//! Reference: sentence-transformers gives cosine 0.7553 between "A man is eating food." and
//! "A man is eating a piece of bread." with this model (its documentation's semantic search
//! example); vectors are L2-normalised.

mod common;

use std::path::PathBuf;

use common::{Server, assert_error, model_dir};
use serde_json::{Value, json};

fn model_files() -> Option<PathBuf> {
    let cache = std::env::var_os("SLUICE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/models")
        });
    let dir = cache.join("all-minilm-l6-v2");
    if dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: all-MiniLM-L6-v2 is not in {}; run inference-server/tests/fetch-models.sh",
            dir.display()
        );
        None
    }
}

/// A model directory whose manifest points at the cached files (sentence-transformers
/// modules.json and pooling config sit beside the weights).
fn minilm_dir(files: &std::path::Path) -> PathBuf {
    let manifest = format!(
        "name: all-minilm-l6-v2\nformat: safetensors\ntask: llm/v1/embeddings\nfiles:\n  model: {0}/model.safetensors\n  tokenizer: {0}/tokenizer.json\n  config: {0}/config.json\n",
        files.display()
    );
    model_dir("minilm", &[("sluice-model.yaml", manifest.as_bytes())])
}

fn vectors(answer: &Value) -> Vec<Vec<f64>> {
    answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {answer}"))
        .iter()
        .map(|item| {
            item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn minilm_embeddings_match_sentence_transformers() {
    let Some(files) = model_files() else { return };
    let server = Server::start(&minilm_dir(&files), &[]).await;
    server.wait_ready().await;
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
    ];
    let (status, answer) = server
        .post_json("/v1/embeddings", &json!({"input": texts, "model": "x"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "all-minilm-l6-v2");
    let v = vectors(&answer);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 384);
    for vector in &v {
        assert!((dot(vector, vector) - 1.0).abs() < 1e-4);
    }
    let related = dot(&v[0], &v[1]);
    assert!((related - 0.7553).abs() < 0.005, "cosine {related}");
    assert!(related > dot(&v[0], &v[2]) + 0.3);
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 10);

    // The same text alone, or batched with others, gives the same vector.
    let (_, single) = server
        .post_json("/v1/embeddings", &json!({"input": texts[0]}))
        .await;
    assert!((dot(&vectors(&single)[0], &v[0]) - 1.0).abs() < 1e-4);

    let (status, answer) = server
        .post_json("/invocations", &json!({"inputs": [texts[0]]}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let predicted: Vec<f64> = answer["predictions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((dot(&predicted, &v[0]) - 1.0).abs() < 1e-4);
    let (status, answer) = server
        .post_json("/invocations", &json!({"input": texts[1]}))
        .await;
    assert_eq!(
        (status, answer["object"].clone()),
        (200, json!("list")),
        "{answer}"
    );

    let (status, answer) = server
        .post_json("/v1/embeddings", &json!({"input": []}))
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "empty list",
    );
    let (status, answer) = server
        .post_json("/invocations", &json!({"inputs": [1, 2]}))
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "row 0: expected a string",
    );
}

#[tokio::test]
async fn concurrent_embedding_requests_share_model_calls() {
    let Some(files) = model_files() else { return };
    let server = Server::start(&minilm_dir(&files), &["--batch-window-ms", "20"]).await;
    server.wait_ready().await;
    let calls = (0..16).map(|index| {
        let server = &server;
        async move {
            let (status, answer) = server
                .post_json(
                    "/v1/embeddings",
                    &json!({"input": format!("sentence number {index}")}),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
        }
    });
    futures::future::join_all(calls).await;
    let (_, metrics) = server.get("/metrics").await;
    let count: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_serve_batch_size_count{runtime=\"embeddings\"}"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    assert!(
        count < 16.0,
        "16 concurrent requests took {count} model calls"
    );
}
