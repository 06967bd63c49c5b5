//! The official `openai` Python client (pinned in .ci/setup, in the repository's .venv) used
//! unchanged against `serve`: chat, streaming chat and text completions on the tiny Llama,
//! embeddings on all-MiniLM-L6-v2, and a 400 raised as the client's own error type.
//! Skipped, saying so, when the venv has no `openai` or the MiniLM files are not cached.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tiny_llm::{self, Model, Rope, chat_prompt, encode};
use common::{Server, model_dir};
use serde_json::Value;

const SCRIPT: &str = r#"
import json, os, sys
import openai

llm = openai.OpenAI(base_url=os.environ["LLM_URL"] + "/v1", api_key="unused", max_retries=0)
out = {}
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hello there "}]
chat = llm.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=12, temperature=0)
out["chat"] = chat.choices[0].message.content
out["chat_finish"] = chat.choices[0].finish_reason
out["chat_usage"] = [chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens]

pieces, finish, usage = [], None, None
stream = llm.chat.completions.create(
    model="tiny-llama", messages=messages, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = "".join(pieces)
out["stream_pieces"] = len(pieces)
out["stream_finish"] = finish
out["stream_usage"] = usage

completion = llm.completions.create(model="tiny-llama", prompt="The quick brown fox", max_tokens=10, temperature=0)
out["completion"] = completion.choices[0].text

try:
    llm.chat.completions.create(model="tiny-llama", messages=messages, temperature=5)
    out["bad"] = "accepted"
except openai.BadRequestError as error:
    out["bad"] = [error.status_code, error.body.get("error_code") if isinstance(error.body, dict) else str(error.body)]

if os.environ.get("EMBED_URL"):
    embed = openai.OpenAI(base_url=os.environ["EMBED_URL"] + "/v1", api_key="unused", max_retries=0)
    answer = embed.embeddings.create(model="all-minilm-l6-v2", input=["A man is eating food.", "A man is eating a piece of bread."])
    vectors = [item.embedding for item in answer.data]
    out["embeddings"] = [len(vectors), len(vectors[0])]
    out["cosine"] = sum(a * b for a, b in zip(vectors[0], vectors[1]))
    # The client asks for base64 by default when no format is given; float must work too.
    answer = embed.embeddings.create(model="all-minilm-l6-v2", input="hi", encoding_format="float")
    out["single"] = len(answer.data[0].embedding)
print(json.dumps(out))
"#;

fn python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|status| status.success());
    if has_openai {
        Some(python)
    } else {
        eprintln!(
            "SKIPPED: {} has no `openai` package; run .ci/setup",
            python.display()
        );
        None
    }
}

fn minilm() -> Option<PathBuf> {
    let cache = std::env::var_os("SLUICE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/models")
        });
    let dir = cache.join("all-minilm-l6-v2");
    dir.join("model.safetensors").is_file().then_some(dir)
}

#[tokio::test]
async fn the_openai_python_client_works_unchanged() {
    let Some(python) = python() else { return };
    let model = Model::random(7);
    let (dir, reference) = tiny_llm::model_dir("openai-llm", "safetensors", "llm/v1/chat", &model);
    let llm = Server::start(&dir, &[]).await;
    llm.wait_ready().await;
    let embedder = match minilm() {
        Some(files) => {
            let manifest = format!(
                "name: all-minilm-l6-v2\nformat: safetensors\ntask: llm/v1/embeddings\nfiles:\n  model: {0}/model.safetensors\n  tokenizer: {0}/tokenizer.json\n  config: {0}/config.json\n",
                files.display()
            );
            let server = Server::start(
                &model_dir(
                    "openai-minilm",
                    &[("sluice-model.yaml", manifest.as_bytes())],
                ),
                &[],
            )
            .await;
            server.wait_ready().await;
            Some(server)
        }
        None => {
            eprintln!(
                "SKIPPED (embeddings part): all-MiniLM-L6-v2 is not cached; run inference-server/tests/fetch-models.sh"
            );
            None
        }
    };
    let mut command = Command::new(&python);
    command.args(["-c", SCRIPT]).env("LLM_URL", &llm.base);
    if let Some(server) = &embedder {
        command.env("EMBED_URL", &server.base);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    let prompt = chat_prompt(&[("system", "Be brief."), ("user", "  Hello there ")]);
    let (expected, _) = reference.greedy(&prompt, 12, Rope::Halves);
    assert_eq!(out["chat"], expected.as_str(), "{out}");
    assert_eq!(out["chat_finish"], "length");
    assert_eq!(
        out["chat_usage"],
        serde_json::json!([prompt.len(), 12, prompt.len() + 12])
    );
    assert_eq!(out["stream"], expected.as_str());
    assert!(out["stream_pieces"].as_u64().unwrap() > 1, "{out}");
    assert_eq!(out["stream_finish"], "length");
    assert_eq!(out["stream_usage"], serde_json::json!([prompt.len(), 12]));
    let (completion, _) = reference.greedy(&encode("The quick brown fox"), 10, Rope::Halves);
    assert_eq!(out["completion"], completion.as_str());
    assert_eq!(
        out["bad"],
        serde_json::json!([400, "INVALID_PARAMETER_VALUE"])
    );
    if embedder.is_some() {
        assert_eq!(out["embeddings"], serde_json::json!([2, 384]), "{out}");
        let cosine = out["cosine"].as_f64().unwrap();
        assert!((cosine - 0.7553).abs() < 1e-3, "{cosine}");
        assert_eq!(out["single"], 384);
    }
}
