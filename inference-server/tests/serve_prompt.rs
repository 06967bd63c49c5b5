//! `serve` with prompt models bound to a local OpenAI-compatible upstream (an axum server in
//! the test, on 127.0.0.1): chat, streaming passthrough, completions, `/invocations`, and the
//! deadline (504) and slow-client (408) paths.

mod common;

use std::time::Duration;

use axum::Json;
use axum::response::IntoResponse;
use axum::routing::post;
use common::{Server, assert_error, model_dir};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fake upstream: answers every chat with the messages it got, joined; streams when asked.
async fn fake_upstream() -> String {
    async fn chat(Json(body): Json<Value>) -> axum::response::Response {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let seen = messages
            .iter()
            .map(|m| {
                format!(
                    "{}:{}",
                    m["role"].as_str().unwrap_or(""),
                    m["content"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("|");
        if body["stream"] == json!(true) {
            let chunk = |content: &str| {
                json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                       "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
            };
            let events = format!(
                "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
                chunk("echo "),
                chunk(&seen)
            );
            return ([("content-type", "text/event-stream")], events).into_response();
        }
        Json(json!({
            "id": "up-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": seen}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        }))
        .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/v1/chat/completions", post(chat));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/v1")
}

fn prompt_dir(upstream: &str, task: &str) -> std::path::PathBuf {
    let manifest = format!(
        "format: prompt\ntask: {task}\nprompt:\n  system: 'You answer in {{{{language}}}}.'\n  template: 'Q: {{{{input}}}}'\n  upstream: {{url: '{upstream}', model: tiny-chat}}\n"
    );
    model_dir("prompt", &[("sluice-model.yaml", manifest.as_bytes())])
}

async fn prompt_server(upstream: &str, task: &str, extra: &[&str]) -> Server {
    let server = Server::start(&prompt_dir(upstream, task), extra).await;
    server.wait_ready().await;
    server
}

#[tokio::test]
async fn chat_is_rendered_sent_upstream_and_answered_in_openai_shape() {
    let upstream = fake_upstream().await;
    let server = prompt_server(&upstream, "llm/v1/chat", &[]).await;
    let request = json!({
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}],
        "temperature": 0.1, "extra_params": {"language": "Spanish"}
    });
    for path in ["/v1/chat/completions", "/invocations"] {
        let (status, answer) = server.post_json(path, &request).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "system:You answer in Spanish.|user:hi|assistant:hello|user:Q: 2+2?"
        );
        assert_eq!(answer["usage"]["total_tokens"], 10);
    }
    let (status, answer) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "needs `language`",
    );
    let (status, answer) = server
        .post_json("/v1/chat/completions", &json!({"messages": []}))
        .await;
    assert_error(
        status,
        &answer,
        400,
        "INVALID_PARAMETER_VALUE",
        "`messages` is empty",
    );
    let (status, answer) = server
        .post_json("/v1/chat/completions", &json!({"messages": "hi"}))
        .await;
    assert_error(status, &answer, 400, "BAD_REQUEST", "invalid chat request");
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("sluice_serve_completion_tokens_total 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_streamed_chat_passes_the_upstream_events_through() {
    let upstream = fake_upstream().await;
    let server = prompt_server(&upstream, "llm/v1/chat", &[]).await;
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "go"}], "stream": true, "extra_params": {"language": "Quechua"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("chat.completion.chunk") && text.contains("user:Q: go"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn completions_and_invocations_render_one_chat_per_prompt_or_row() {
    let upstream = fake_upstream().await;
    let server = prompt_server(&upstream, "llm/v1/completions", &[]).await;
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": ["a", "b"], "extra_params": {"language": "Aymara"}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(
        answer["choices"][1]["text"],
        "system:You answer in Aymara.|user:Q: b"
    );
    assert_eq!(answer["usage"]["prompt_tokens"], 14);
    let (status, answer) = server
        .post_json("/invocations", &json!({"dataframe_records": [{"input": "x", "language": "Latin"}, {"input": "y", "language": "Greek"}]}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["predictions"],
        json!([
            "system:You answer in Latin.|user:Q: x",
            "system:You answer in Greek.|user:Q: y"
        ])
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_gives_504_past_the_deadline() {
    // Accepts connections and reads, but never writes a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let server = prompt_server(
        &format!("http://{address}/v1"),
        "llm/v1/chat",
        &["--request-timeout", "1s"],
    )
    .await;
    let started = std::time::Instant::now();
    let request = json!({"messages": [{"role": "user", "content": "hi"}], "extra_params": {"language": "Basque"}});
    let (status, answer) = server.post_json("/v1/chat/completions", &request).await;
    assert_error(status, &answer, 504, "DEADLINE_EXCEEDED", "1s");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _) = server.get("/ping").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_slow_client_gets_408_and_an_unreachable_upstream_502() {
    let server = prompt_server(
        "http://127.0.0.1:9/v1",
        "llm/v1/chat",
        &["--request-timeout", "1s"],
    )
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\""
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
        .await
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("REQUEST_TIMEOUT") && answer.contains("not received"),
        "{answer}"
    );
    // Nothing listens on port 9 (discard) of loopback here: the upstream is unreachable.
    let request = json!({"messages": [{"role": "user", "content": "hi"}], "extra_params": {"language": "Welsh"}});
    let (status, answer) = server.post_json("/v1/chat/completions", &request).await;
    assert_error(
        status,
        &answer,
        502,
        "UPSTREAM_ERROR",
        "cannot reach the upstream",
    );
}
