//! `serve` with causal language models made in the test (tests/common/tiny_llm.rs): a tiny
//! random Llama written as safetensors and as a Q8_0 GGUF file. Greedy answers are checked
//! against an independent plain-Rust forward pass of the same weights; streaming, sampling,
//! stop sequences, deadlines, disconnects, shutdown and bad input over real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::tiny_llm::{self, Model, Rope, chat_prompt, encode};
use common::{Server, assert_error};
use futures::StreamExt;
use serde_json::{Value, json};

const SEED: u64 = 7;
const PROMPT: &str = "The quick brown fox";
const MESSAGES: [(&str, &str); 2] = [("system", "Be brief."), ("user", "  Hello there ")];

fn messages() -> Value {
    MESSAGES
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

async fn serve(label: &str, format: &str, model: &Model, extra: &[&str]) -> (Server, Model) {
    let (dir, reference) = tiny_llm::model_dir(label, format, "llm/v1/chat", model);
    let server = Server::start(&dir, extra).await;
    server.wait_ready().await;
    (server, reference)
}

/// The `data:` payloads of a server-sent event stream.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// POSTs `body` and answers the response without reading it.
async fn send(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A whole stream: its JSON chunks, and whether it ended with `[DONE]`.
async fn stream(server: &Server, path: &str, body: &Value) -> (Vec<Value>, bool) {
    let response = send(server, path, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let payloads = events(&response.text().await.unwrap());
    let done = payloads.last().is_some_and(|last| last == "[DONE]");
    let chunks = payloads
        .iter()
        .filter(|payload| *payload != "[DONE]")
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect();
    (chunks, done)
}

fn chat_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn greedy_answers_match_an_independent_forward_pass() {
    let (server, reference) = serve("llm", "safetensors", &Model::random(SEED), &[]).await;
    let (expected, ended) = reference.greedy(&encode(PROMPT), 20, Rope::Halves);
    assert!(!ended && expected.len() == 20, "{expected:?}");
    let body = json!({"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 20, "temperature": 0});
    for _ in 0..2 {
        let (status, answer) = server.post_json("/v1/completions", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"], expected, "{answer}");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert_eq!(
            answer["usage"],
            json!({"prompt_tokens": PROMPT.len(), "completion_tokens": 20, "total_tokens": PROMPT.len() + 20})
        );
    }

    let prompt = chat_prompt(&MESSAGES);
    let (expected_chat, _) = reference.greedy(&prompt, 16, Rope::Halves);
    let (status, answer) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages(), "max_tokens": 16, "temperature": 0.0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "tiny-llama");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["message"]["content"], expected_chat);
    assert_eq!(answer["usage"]["prompt_tokens"], prompt.len());

    // MLflow's scoring protocol: one completion per row, sampling fields as params.
    let (status, answer) = server
        .post_json(
            "/invocations",
            &json!({"inputs": [PROMPT, PROMPT], "params": {"max_tokens": 20, "temperature": 0}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"], json!([expected, expected]));

    let tokens_in = server.metric("sluice_serve_prompt_tokens_total").await;
    let tokens_out = server.metric("sluice_serve_completion_tokens_total").await;
    assert_eq!(tokens_in as usize, 4 * PROMPT.len() + prompt.len());
    assert_eq!(tokens_out as usize, 4 * 20 + 16);
}

#[tokio::test]
async fn gguf_quantised_weights_decode_like_the_reference() {
    let (server, dequantized) = serve("llm-gguf", "gguf", &Model::random(SEED), &[]).await;
    let (expected, _) = dequantized.greedy(&encode(PROMPT), 24, Rope::Interleaved);
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected, "{answer}");
    let prompt = chat_prompt(&MESSAGES);
    let (expected_chat, _) = dequantized.greedy(&prompt, 12, Rope::Interleaved);
    let (status, answer) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages(), "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], expected_chat);
}

#[tokio::test]
async fn qwen2_safetensors_and_gguf_decode_like_the_reference() {
    let model = Model::random(SEED).qwen2(SEED + 1);
    for (format, quantized) in [("safetensors", false), ("gguf", true)] {
        let (server, reference) = serve("llm-qwen2", format, &model, &[]).await;
        assert_eq!(reference.quantize_activations, quantized);
        let (expected, _) = reference.greedy(&encode(PROMPT), 16, Rope::Halves);
        let (status, answer) = server
            .post_json(
                "/v1/completions",
                &json!({"prompt": PROMPT, "max_tokens": 16, "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["choices"][0]["text"], expected, "{format}: {answer}");
    }
}

#[tokio::test]
async fn an_end_of_sequence_token_ends_the_answer() {
    let model = Model::random(SEED);
    let (text, _) = model.greedy(&encode(PROMPT), 8, Rope::Halves);
    let ending = model.ending_at(encode(&text[5..6])[0]);
    let (expected, ended) = ending.greedy(&encode(PROMPT), 8, Rope::Halves);
    assert!(ended && expected.len() <= 5, "{expected:?}");
    let (server, _) = serve("llm-eos", "safetensors", &ending, &[]).await;
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"], expected.len());
}

#[tokio::test]
async fn streams_are_openai_chunks_with_usage_and_done() {
    let (server, reference) = serve("llm-stream", "safetensors", &Model::random(SEED), &[]).await;
    let prompt = chat_prompt(&MESSAGES);
    let (expected, _) = reference.greedy(&prompt, 16, Rope::Halves);
    let body = json!({
        "messages": messages(), "max_tokens": 16, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}
    });
    let (chunks, done) = stream(&server, "/v1/chat/completions", &body).await;
    assert!(done, "{chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chat_text(&chunks), expected);
    assert!(chunks.len() > 4, "text arrives in pieces: {chunks:?}");
    let id = &chunks[0]["id"];
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
    }
    let usage = json!({"prompt_tokens": prompt.len(), "completion_tokens": 16, "total_tokens": prompt.len() + 16});
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], usage);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");

    let (text, _) = reference.greedy(&encode(PROMPT), 10, Rope::Halves);
    let body = json!({"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stream": true});
    let (chunks, done) = stream(&server, "/v1/completions", &body).await;
    assert!(done);
    let streamed: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 10);
}

#[tokio::test]
async fn sampling_is_seeded_and_stop_sequences_end_the_answer() {
    let (server, reference) = serve("llm-sampling", "safetensors", &Model::random(SEED), &[]).await;
    let complete = |body: Value| {
        let server = &server;
        async move {
            let (status, answer) = server.post_json("/v1/completions", &body).await;
            assert_eq!(status, 200, "{body} -> {answer}");
            answer
        }
    };
    let text = |answer: &Value| answer["choices"][0]["text"].as_str().unwrap().to_string();
    let sampled =
        |seed: u64| json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 1.5, "seed": seed});
    let first = text(&complete(sampled(1)).await);
    assert_eq!(
        text(&complete(sampled(1)).await),
        first,
        "same seed, same text"
    );
    let mut distinct = std::collections::BTreeSet::from([first]);
    for seed in 2..6 {
        distinct.insert(text(&complete(sampled(seed)).await));
    }
    assert!(
        distinct.len() > 1,
        "every seed gave the same text: {distinct:?}"
    );
    let nucleus =
        json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 1.0, "top_p": 0.5, "seed": 3});
    assert_eq!(
        text(&complete(nucleus.clone()).await),
        text(&complete(nucleus).await)
    );

    let choices =
        complete(json!({"prompt": PROMPT, "max_tokens": 6, "temperature": 1.5, "n": 3})).await;
    let indexes: Vec<&Value> = choices["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["index"])
        .collect();
    assert_eq!(indexes, [&json!(0), &json!(1), &json!(2)]);
    assert_eq!(choices["usage"]["completion_tokens"], 18);

    // A stop sequence taken from the greedy answer cuts it where it first occurs.
    let (greedy, _) = reference.greedy(&encode(PROMPT), 30, Rope::Halves);
    let stop = &greedy[10..12];
    let cut = greedy.find(stop).unwrap();
    let body =
        json!({"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": [stop, "never"]});
    let answer = complete(body.clone()).await;
    assert_eq!(text(&answer), greedy[..cut]);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (chunks, done) = stream(&server, "/v1/completions", &streamed).await;
    assert!(done);
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, greedy[..cut]);
}

#[tokio::test]
async fn bad_requests_get_reasons_and_the_server_stays_up() {
    let (server, _) = serve(
        "llm-bad",
        "safetensors",
        &Model::random(SEED),
        &["--max-body-bytes", "1KiB"],
    )
    .await;
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`messages` is empty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}),
            400,
            "BAD_REQUEST",
            "invalid chat request",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "temperature": 3}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`temperature` is 3",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "top_p": 0}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`top_p`",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "n": 9}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`n` is 9",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "stream": true, "n": 2}),
            400,
            "INVALID_PARAMETER_VALUE",
            "one choice",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 100_000}),
            400,
            "INVALID_PARAMETER_VALUE",
            "leaves room for",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 0}),
            400,
            "INVALID_PARAMETER_VALUE",
            "at least 1",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "INVALID_PARAMETER_VALUE",
            "at most 4",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"], "stream": true}),
            400,
            "INVALID_PARAMETER_VALUE",
            "one prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": []}),
            400,
            "INVALID_PARAMETER_VALUE",
            "empty list",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}),
            400,
            "INVALID_PARAMETER_VALUE",
            "prompt is empty",
        ),
        (
            "/v1/completions",
            json!({"prompt": 42}),
            400,
            "BAD_REQUEST",
            "invalid completions request",
        ),
        (
            "/v1/embeddings",
            json!({"input": "x"}),
            400,
            "BAD_REQUEST",
            "does not serve embeddings",
        ),
        (
            "/invocations",
            json!({"inputs": [1]}),
            400,
            "INVALID_PARAMETER_VALUE",
            "row 0: expected a prompt string",
        ),
        (
            "/invocations",
            json!({"inputs": ["x"], "params": {"depth": 1}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "unknown param `depth`",
        ),
        (
            "/invocations",
            json!({"dataframe_split": {"columns": ["a", "b"], "data": [["x", "y"]]}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "one prompt column",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(2000)}),
            413,
            "REQUEST_TOO_LARGE",
            "1024 bytes",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "tools": [{"type": "function",
                   "function": {"name": "f"}}]}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`tools` is not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages(), "response_format": {"type": "grammar"}}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`response_format.type` `grammar` is not supported",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "frequency_penalty": 1.5}),
            400,
            "INVALID_PARAMETER_VALUE",
            "`frequency_penalty` is not supported",
        ),
        ("/v2/chat", json!({}), 404, "ENDPOINT_NOT_FOUND", "/v2/chat"),
    ];
    for (path, body, status, code, needle) in cases {
        let (got, answer) = server.post_json(path, &body).await;
        assert_error(got, &answer, status, code, needle);
    }
    let (status, answer) = server
        .post(
            "/v1/chat/completions",
            "application/json",
            "{\"messages\": [",
        )
        .await;
    assert_error(status, &answer, 400, "BAD_REQUEST", "malformed JSON");
    let (status, answer) = server
        .post("/v1/chat/completions", "application/json", " ")
        .await;
    assert_error(status, &answer, 400, "BAD_REQUEST", "empty");
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_generation_past_its_deadline_gets_504_and_frees_its_slot() {
    let (server, _) = serve(
        "llm-deadline",
        "safetensors",
        &Model::random(SEED),
        &["--request-timeout", "1s"],
    )
    .await;
    let long = json!({"prompt": PROMPT, "max_tokens": 8000, "temperature": 0});
    let started = Instant::now();
    let (status, answer) = server.post_json("/v1/completions", &long).await;
    assert_error(status, &answer, 504, "DEADLINE_EXCEEDED", "deadline");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A stream past its deadline ends with an error event instead of [DONE].
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) = stream(&server, "/v1/completions", &streamed).await;
    assert!(!done);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "DEADLINE_EXCEEDED", "{last}");
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_client_that_disconnects_stops_its_generation() {
    let (server, _) = serve("llm-disconnect", "safetensors", &Model::random(SEED), &[]).await;
    let body = json!({"prompt": PROMPT, "max_tokens": 8000, "temperature": 0, "stream": true});
    let response = send(&server, "/v1/completions", &body).await;
    let mut bytes = response.bytes_stream();
    let mut received = 0;
    while received < 3 {
        let chunk = bytes.next().await.unwrap().unwrap();
        received += events(std::str::from_utf8(&chunk).unwrap()).len();
    }
    drop(bytes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_disconnect = server.metric("sluice_serve_completion_tokens_total").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = server.metric("sluice_serve_completion_tokens_total").await;
    assert_eq!(
        after_disconnect, later,
        "generation went on after the client left"
    );
    assert!(later < 8000.0, "{later}");
    let (status, _) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish_then_exits_zero() {
    let (mut server, reference) =
        serve("llm-shutdown", "safetensors", &Model::random(SEED), &[]).await;
    let max_tokens = 200;
    let (expected, _) = reference.greedy(&encode(PROMPT), 40, Rope::Halves);
    let body =
        json!({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": true});
    let response = send(&server, "/v1/completions", &body).await;
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    text.push_str(std::str::from_utf8(&bytes.next().await.unwrap().unwrap()).unwrap());
    server.terminate();
    let signalled = Instant::now();
    while let Some(chunk) = bytes.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let in_flight_for = signalled.elapsed();
    let payloads = events(&text);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert!(
        streamed.starts_with(&expected),
        "{streamed:?} vs {expected:?}"
    );
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        max_tokens
    );
    assert!(
        in_flight_for > Duration::from_millis(50),
        "the stream ended {in_flight_for:?} after SIGTERM"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("serve did not exit");
    assert!(status.success(), "{status:?}");
}

/// Damages a model directory.
type Breakage = Box<dyn Fn(&std::path::Path)>;

#[tokio::test]
async fn a_model_that_fails_to_load_says_why_in_health() {
    let model = Model::random(SEED);
    let cases: [(&str, Breakage, &str); 3] = [
        (
            "llm-garbage",
            Box::new(|dir| std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap()),
            "not readable safetensors",
        ),
        (
            "llm-gpt2",
            Box::new(|dir| {
                let path = dir.join("config.json");
                let mut config: Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                config["model_type"] = json!("gpt2");
                std::fs::write(path, config.to_string()).unwrap();
            }),
            "model_type `gpt2` is not served",
        ),
        (
            "llm-template",
            Box::new(|dir| {
                std::fs::write(
                    dir.join("tokenizer_config.json"),
                    r#"{"chat_template": "{% for %}"}"#,
                )
                .unwrap()
            }),
            "the chat template does not compile",
        ),
    ];
    for (label, break_it, needle) in cases {
        let (dir, _) = tiny_llm::model_dir(label, "safetensors", "llm/v1/chat", &model);
        break_it(&dir);
        let server = Server::start(&dir, &[]).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            let (status, text) = server.get("/health").await;
            assert_eq!(status, 503, "{text}");
            if text.contains("failed to load") || Instant::now() > deadline {
                break serde_json::from_str::<Value>(&text).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_error(503, &body, 503, "TEMPORARILY_UNAVAILABLE", needle);
        let (status, _) = server.get("/ping").await;
        assert_eq!(status, 200, "the process stays up");
    }
}
