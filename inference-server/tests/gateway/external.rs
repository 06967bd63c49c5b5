//! External model entities: a standalone gateway calls local stand-ins for OpenAI, Azure
//! OpenAI and Anthropic (`providers.py`, which checks every request against the provider's
//! official SDK types), with keys from a Secret in the manifest. Answers come back in the
//! OpenAI format, streams event by event; provider errors keep the status a caller can act
//! on; the key shows nowhere; a failing provider falls back to the next entity; a streamed
//! answer is masked by the output guardrails across event boundaries; and our own `serve` is
//! an OpenAI-compatible (`custom`) provider.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::Server;
use crate::common::tiny_llm::{self, Model};
use crate::harness::{Gateway, Providers};

const KEY: &str = "sk-test-7f3a9c2e41d84b6f90aa";
const WRONG_KEY: &str = "sk-wrong-0b1c2d3e4f5a6b7c8d";

/// The Secret with both keys, then `endpoints`.
fn manifest(endpoints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: provider-keys}}\nstringData:\n  key: {KEY}\n  wrong: {WRONG_KEY}\n---\n{endpoints}"
    )
}

/// An endpoint with one external entity `a`.
fn endpoint(name: &str, external: &str, extra: &str) -> String {
    format!(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {{name: {name}}}\nspec:\n  servedEntities:\n  - name: a\n    externalModel: {external}\n{extra}---\n"
    )
}

fn openai(addr: SocketAddr, model: &str, task: &str, key: &str) -> String {
    format!(
        "{{provider: openai, name: {model}, task: {task}, apiBase: 'http://{addr}/openai/v1', apiKeySecretRef: {{name: provider-keys, key: {key}}}}}"
    )
}

fn anthropic(addr: SocketAddr, model: &str) -> String {
    format!(
        "{{provider: anthropic, name: {model}, task: llm/v1/chat, apiBase: 'http://{addr}/anthropic', apiKeySecretRef: {{name: provider-keys, key: key}}}}"
    )
}

fn chat(endpoint: &str, text: &str) -> String {
    json!({"model": endpoint, "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": text}
    ], "max_tokens": 64})
    .to_string()
}

#[tokio::test]
async fn each_provider_answers_in_the_openai_format() {
    let providers = Providers::start(KEY).await;
    let p = providers.addr;
    let azure = format!(
        "{{provider: openai, name: gpt-4o, task: llm/v1/chat, apiBase: 'http://{p}', apiKeySecretRef: {{name: provider-keys, key: key}}, config: {{apiType: azure, deploymentName: gpt4o-prod, apiVersion: '2024-10-21'}}}}"
    );
    let endpoints = [
        endpoint("gpt", &openai(p, "gpt-4o-mini", "llm/v1/chat", "key"), ""),
        endpoint("azure", &azure, ""),
        endpoint("claude", &anthropic(p, "claude-sonnet-4-5"), ""),
        endpoint(
            "embed",
            &openai(p, "text-embedding-3-small", "llm/v1/embeddings", "key"),
            "",
        ),
        endpoint(
            "complete",
            &openai(p, "gpt-3.5-turbo-instruct", "llm/v1/completions", "key"),
            "",
        ),
    ]
    .concat();
    let gateway = Gateway::start(&manifest(&endpoints), &[], &[]).await;

    for (name, said) in [
        ("gpt", "Hello! How can I assist you today?"),
        ("azure", "Hello! How can I assist you today?"),
        ("claude", "Hi! My name is Claude."),
    ] {
        let answer = gateway
            .post(
                "/serving-endpoints/v1/chat/completions",
                &chat(name, "Hello"),
            )
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        assert_eq!(answer.entity, "a");
        let body = answer.json();
        assert_eq!(body["object"], "chat.completion", "{name}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], said, "{name}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{name}");
    }
    // Anthropic's token counts, in OpenAI's names.
    let claude = gateway
        .post(
            "/serving-endpoints/v1/chat/completions",
            &chat("claude", "Hello"),
        )
        .await
        .json();
    assert_eq!(
        claude["usage"],
        json!({"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598})
    );
    // The endpoint's own route serves the entity's task (as MLflow's gateway does).
    let invoked = gateway
        .post(
            "/serving-endpoints/claude/invocations",
            &chat("claude", "Hello"),
        )
        .await;
    assert_eq!(invoked.status, 200, "{}", invoked.body);
    let embedded = gateway
        .post(
            "/serving-endpoints/v1/embeddings",
            &json!({"model": "embed", "input": ["a", "b"]}).to_string(),
        )
        .await;
    assert_eq!(embedded.status, 200, "{}", embedded.body);
    assert_eq!(embedded.json()["data"].as_array().map(Vec::len), Some(2));
    let completed = gateway
        .post(
            "/serving-endpoints/v1/completions",
            &json!({"model": "complete", "prompt": "Say this is a test", "max_tokens": 7})
                .to_string(),
        )
        .await;
    assert_eq!(completed.status, 200, "{}", completed.body);
    assert_eq!(completed.json()["object"], "text_completion");
    // A route the entity does not serve is refused here, not sent.
    let wrong = gateway
        .post(
            "/serving-endpoints/v1/embeddings",
            &json!({"model": "claude", "input": "x"}).to_string(),
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(wrong.body.contains("llm/v1/embeddings"), "{}", wrong.body);

    let calls = providers.calls().await;
    assert_eq!(
        calls["/openai/v1/chat/completions gpt-4o-mini"], 1,
        "{calls}"
    );
    assert_eq!(
        calls["/openai/deployments/gpt4o-prod/chat/completions gpt4o-prod"], 1,
        "{calls}"
    );
    assert_eq!(
        calls["/anthropic/v1/messages claude-sonnet-4-5"], 3,
        "{calls}"
    );
    assert_eq!(
        calls["/openai/v1/embeddings text-embedding-3-small"], 1,
        "{calls}"
    );
    assert_eq!(
        calls["/openai/v1/completions gpt-3.5-turbo-instruct"], 1,
        "{calls}"
    );
}

/// Runs `script` with the project's Python (which has the `openai` client); its stdout as JSON.
fn python(script: &str, base_url: &str) -> Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let output = Command::new(python)
        .args(["-c", script, base_url])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

const OPENAI_CLIENT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
whole = client.chat.completions.create(model="claude", messages=messages, max_tokens=32)
stream = client.chat.completions.create(
    model="claude", messages=[{"role": "user", "content": "echo:Streamed, event by event."}],
    max_tokens=32, stream=True, stream_options={"include_usage": True})
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
print(json.dumps({
    "content": whole.choices[0].message.content,
    "finish": whole.choices[0].finish_reason,
    "usage": whole.usage.model_dump(),
    "streamed": text, "stream_finish": finish, "stream_usage": usage,
}))
"#;

#[tokio::test]
async fn the_openai_client_talks_to_anthropic_through_the_gateway() {
    let providers = Providers::start(KEY).await;
    let gateway = Gateway::start(
        &manifest(&endpoint(
            "claude",
            &anthropic(providers.addr, "claude-haiku-4-5"),
            "",
        )),
        &[],
        &[],
    )
    .await;
    let out = python(
        OPENAI_CLIENT,
        &format!("{}/serving-endpoints/v1", gateway.base),
    );
    assert_eq!(out["content"], "Hi! My name is Claude.");
    assert_eq!(out["finish"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], 2095);
    assert_eq!(out["streamed"], "Streamed, event by event.");
    assert_eq!(out["stream_finish"], "stop");
    assert_eq!(out["stream_usage"]["prompt_tokens"], 25);
    assert_eq!(out["stream_usage"]["completion_tokens"], 15);
    assert_eq!(
        providers.calls().await["/anthropic/v1/messages claude-haiku-4-5"],
        2
    );
}

#[tokio::test]
async fn provider_errors_keep_their_meaning_and_the_key_shows_nowhere() {
    let providers = Providers::start(KEY).await;
    let p = providers.addr;
    let endpoints = [
        endpoint(
            "limited",
            &openai(p, "rate-limited", "llm/v1/chat", "key"),
            "",
        ),
        endpoint("overloaded", &anthropic(p, "overloaded"), ""),
        endpoint("broken", &openai(p, "fail-500", "llm/v1/chat", "key"), ""),
        endpoint(
            "badkey",
            &openai(p, "gpt-4o-mini", "llm/v1/chat", "wrong"),
            "",
        ),
        endpoint(
            "nokey",
            &openai(p, "gpt-4o-mini", "llm/v1/chat", "missing"),
            "",
        ),
        endpoint("claude", &anthropic(p, "claude-x"), ""),
    ]
    .concat();
    let gateway = Gateway::start_logged(&manifest(&endpoints), &[], "debug").await;
    let mut said = String::new();
    let mut ask = async |name: &str, stream: bool| {
        let mut body: Value = serde_json::from_str(&chat(name, "Hello")).unwrap();
        body["stream"] = json!(stream);
        let answer = gateway
            .post("/serving-endpoints/v1/chat/completions", &body.to_string())
            .await;
        said.push_str(&answer.body);
        answer
    };

    let limited = ask("limited", false).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.retry_after.as_deref(), Some("7"));
    assert!(
        limited.body.contains("Rate limit reached"),
        "{}",
        limited.body
    );
    let overloaded = ask("overloaded", true).await;
    assert_eq!(overloaded.status, 503, "{}", overloaded.body);
    assert!(
        overloaded.body.contains("Overloaded"),
        "{}",
        overloaded.body
    );
    assert_eq!(ask("broken", false).await.status, 502);
    // The provider refuses the gateway's key: the gateway's fault, not the caller's.
    let badkey = ask("badkey", false).await;
    assert_eq!(badkey.status, 502, "{}", badkey.body);
    assert!(badkey.body.contains("API key"), "{}", badkey.body);
    let nokey = ask("nokey", false).await;
    assert_eq!(nokey.status, 502, "{}", nokey.body);
    let message = nokey.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("entity \"a\"")
            && message.contains("provider-keys")
            && message.contains("\"missing\""),
        "{message}"
    );
    // A parameter Anthropic has no counterpart for is named, not dropped.
    let refused = gateway
        .post(
            "/serving-endpoints/v1/chat/completions",
            &json!({"model": "claude", "messages": [{"role": "user", "content": "x"}], "logprobs": true}).to_string(),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("logprobs"), "{}", refused.body);
    let streamed = ask("claude", true).await;
    assert_eq!(streamed.status, 200);

    let log = std::fs::read_to_string(gateway.log.as_ref().expect("logged")).expect("log");
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "the log was written"
    );
    for key in [KEY, WRONG_KEY] {
        let head: String = key.chars().take(12).collect();
        for (what, text) in [("log", &log), ("answers", &said)] {
            assert!(!text.contains(&head), "a key shows in the {what}: {text}");
        }
    }
}

/// Endpoint `ep` with two external entities, `first` taking all live traffic, and `extra`
/// (more `trafficConfig`, then `spec`) after its routes.
fn two_external(first: (&str, &str), second: (&str, &str), extra: &str) -> String {
    format!(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {{name: ep}}\nspec:\n  servedEntities:\n  - {{name: {}, externalModel: {}}}\n  - {{name: {}, externalModel: {}}}\n  trafficConfig:\n    routes:\n    - {{servedEntityName: {}, trafficPercentage: 100}}\n{extra}",
        first.0, first.1, second.0, second.1, first.0
    )
}

/// Sends `count` chats to `ep`; each must be answered 200 by `entity`.
async fn answered_by(gateway: &Gateway, count: usize, entity: &str) {
    for _ in 0..count {
        let answer = gateway
            .post(
                "/serving-endpoints/v1/chat/completions",
                &chat("ep", "Hello"),
            )
            .await;
        assert_eq!(
            (answer.status, answer.entity.as_str()),
            (200, entity),
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_failing_provider_falls_back_with_no_failed_request() {
    let providers = Providers::start(KEY).await;
    let p = providers.addr;
    let fallback = two_external(
        ("primary", &openai(p, "fail-500", "llm/v1/chat", "key")),
        ("standby", &anthropic(p, "claude-standby")),
        "    - {servedEntityName: standby, trafficPercentage: 0}\n  aiGateway:\n    fallback: {enabled: true}\n",
    );
    let gateway = Gateway::start(&manifest(&fallback), &[], &[]).await;
    answered_by(&gateway, 10, "standby").await;
    let calls = providers.calls().await;
    assert_eq!(calls["/openai/v1/chat/completions fail-500"], 10, "{calls}");
    assert_eq!(
        calls["/anthropic/v1/messages claude-standby"], 10,
        "{calls}"
    );
    let handed = gateway
        .metric("sluice_gateway_fallbacks_total{namespace=\"default\",endpoint=\"ep\",entity=\"primary\",reason=\"server_error\"}")
        .await;
    assert_eq!(handed, 10.0);
}

#[tokio::test]
async fn personal_data_split_across_streamed_events_is_masked() {
    let providers = Providers::start(KEY).await;
    let guarded = endpoint(
        "claude",
        &anthropic(providers.addr, "claude-x"),
        "  aiGateway:\n    guardrails:\n      output:\n        pii: {behavior: MASK}\n",
    );
    let gateway = Gateway::start(&manifest(&guarded), &[], &[]).await;
    // The stand-in streams three characters per event: the address arrives in pieces.
    let body = json!({"model": "claude", "stream": true, "messages": [
        {"role": "user", "content": "echo:Write to jane.doe@example.com or call 415-555-0132 today."}
    ]});
    let answer = gateway
        .post("/serving-endpoints/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.body.contains("example.com"), "{}", answer.body);
    let assembled = sluice_protocol::sse::reassemble(&answer.body).expect("an SSE answer");
    let content = assembled["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        content,
        "Write to <EMAIL_ADDRESS> or call <PHONE_NUMBER> today."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn our_own_serve_is_an_openai_compatible_provider() {
    let (dir, _) = tiny_llm::model_dir(
        "external-serve",
        "safetensors",
        "llm/v1/chat",
        &Model::random(5),
    );
    let server = Server::start(&dir, &[]).await;
    server.wait_ready().await;
    let custom = format!(
        "{{provider: custom, name: tiny-llama, task: llm/v1/chat, apiBase: '{}/v1'}}",
        server.base.trim_end_matches('/')
    );
    let gateway = Gateway::start(&manifest(&endpoint("local", &custom, "")), &[], &[]).await;
    let body = json!({"model": "local", "messages": [{"role": "user", "content": "Hello there"}],
                      "max_tokens": 8, "temperature": 0});
    let through = gateway
        .post("/serving-endpoints/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(through.status, 200, "{}", through.body);
    let (status, direct) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let through = through.json();
    assert_eq!(
        through["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "the gateway passes the provider's answer through"
    );
    assert_eq!(through["usage"], direct["usage"]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let answer = gateway
        .post(
            "/serving-endpoints/v1/chat/completions",
            &streamed.to_string(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let assembled = sluice_protocol::sse::reassemble(&answer.body).expect("an SSE answer");
    assert_eq!(
        assembled["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn an_mlflow_gateway_config_is_served_where_mlflow_clients_call() {
    let providers = Providers::start(KEY).await;
    let p = providers.addr;
    let config = format!(
        r#"
endpoints:
  - name: chat_gpt
    endpoint_type: llm/v1/chat
    model:
      provider: openai
      name: gpt-4o-mini
      config:
        openai_api_key: $OPENAI_API_KEY
        openai_api_base: http://{p}/openai/v1
    limit: {{renewal_period: minute, calls: 2}}
  - name: azure-chat
    endpoint_type: llm/v1/chat
    model:
      provider: azure
      name: gpt-35-turbo
      config:
        openai_api_key: ${{AZURE_OPENAI_API_KEY}}
        openai_api_base: http://{p}/
        openai_api_version: "2023-05-15"
        openai_deployment_name: my-deployment
  - name: embeddings
    endpoint_type: llm/v1/embeddings
    model:
      provider: openai
      name: text-embedding-3-small
      config:
        openai_api_key: $OPENAI_API_KEY
        openai_api_base: http://{p}/openai/v1
"#
    );
    let dir = crate::common::temp_dir("mlflow-import");
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).expect("config");
    let output = Command::new(crate::common::BINARY)
        .args([
            "import-mlflow-gateway",
            "--secret",
            "provider-keys",
            "--config",
        ])
        .arg(&path)
        .output()
        .expect("import runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("--from-literal=AZURE_OPENAI_API_KEY=")
            && stdout.contains("--from-literal=OPENAI_API_KEY="),
        "{stdout}"
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: provider-keys}}\nstringData:\n  OPENAI_API_KEY: {KEY}\n  AZURE_OPENAI_API_KEY: {KEY}\n{stdout}"
    );
    let gateway = Gateway::start(&manifest, &[], &[]).await;
    let chat = json!({"messages": [{"role": "user", "content": "Hello"}], "temperature": 0.0, "max_tokens": 10}).to_string();
    // MLflow's own route and names (`chat_gpt` is the endpoint `chat-gpt`).
    for name in ["chat_gpt", "azure-chat"] {
        let answer = gateway
            .post(&format!("/endpoints/{name}/invocations"), &chat)
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        assert_eq!(
            answer.json()["choices"][0]["message"]["content"],
            "Hello! How can I assist you today?"
        );
    }
    let embedded = gateway
        .post(
            "/endpoints/embeddings/invocations",
            &json!({"input": ["a", "b"]}).to_string(),
        )
        .await;
    assert_eq!(embedded.status, 200, "{}", embedded.body);
    assert_eq!(embedded.json()["data"].as_array().map(Vec::len), Some(2));
    // MLflow's `limit` became the endpoint's rate limit: 2 calls a minute.
    let second = gateway.post("/endpoints/chat_gpt/invocations", &chat).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let third = gateway.post("/endpoints/chat_gpt/invocations", &chat).await;
    assert_eq!(third.status, 429, "{}", third.body);

    // What Sluice would not call is named, and nothing is written.
    std::fs::write(&path, "endpoints:\n  - name: c\n    endpoint_type: llm/v1/chat\n    model: {provider: cohere, name: command, config: {cohere_api_key: $K}}\n").expect("config");
    let refused = Command::new(crate::common::BINARY)
        .args(["import-mlflow-gateway", "--config"])
        .arg(&path)
        .output()
        .expect("import runs");
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("provider \"cohere\""));
}

#[tokio::test]
async fn a_shadow_route_mirrors_to_an_external_provider() {
    let providers = Providers::start(KEY).await;
    let p = providers.addr;
    let shadowed = two_external(
        ("live", &openai(p, "gpt-4o-mini", "llm/v1/chat", "key")),
        ("candidate", &anthropic(p, "claude-candidate")),
        "    shadowRoutes:\n    - {servedEntityName: candidate, mirrorPercentage: 100}\n",
    );
    let gateway = Gateway::start(&manifest(&shadowed), &[], &[]).await;
    answered_by(&gateway, 5, "live").await;
    let ok = "sluice_gateway_shadow_requests_total{namespace=\"default\",endpoint=\"ep\",entity=\"candidate\",outcome=\"ok\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway.metric(ok).await < 5.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gateway.metrics().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let calls = providers.calls().await;
    assert_eq!(
        calls["/anthropic/v1/messages claude-candidate"], 5,
        "{calls}"
    );
    assert_eq!(
        calls["/openai/v1/chat/completions gpt-4o-mini"], 5,
        "{calls}"
    );
}
