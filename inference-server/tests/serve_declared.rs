//! `serve` with a model folder that has no manifest, described by what the ModelVersion
//! declares (`--declared-format`, `--declared-task`, `--declared-signature`, or their
//! `SLUICE_MODEL_*` variables): a bare `model.onnx` (tests/fixtures/iris.onnx), a
//! sentence-transformers folder (all-MiniLM-L6-v2 from tests/fetch-models.sh; skipped, saying
//! so, when missing), and the tiny random Llama of tests/common/tiny_llm.rs as a Hugging Face
//! checkpoint and as GGUF. Also how a declared format that contradicts a manifest, or a folder
//! that does not fit its declared format, ends the process.

mod common;

use std::path::{Path, PathBuf};

use common::tiny_llm::{Model, Rope, chat_prompt, encode};
use common::{Server, assert_error, iris_onnx, model_dir, temp_dir};
use serde_json::{Value, json};

const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
const ROWS: [[f64; 4]; 3] = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
];
/// onnxruntime's labels for ROWS (as in serve_onnx.rs).
const LABELS: [i64; 3] = [0, 2, 1];

/// The iris signature as the ModelVersion CRD writes it, serialised to JSON.
fn iris_signature() -> String {
    json!({"inputs": COLUMNS.map(|name| json!({"name": name, "type": "double"}))}).to_string()
}

/// The same signature in a `sluice-model.yaml`.
const IRIS_MANIFEST: &str = "
format: onnx
task: predict
files: {model: model.onnx}
signature:
  inputs:
    - {name: sepal_length, type: double}
    - {name: sepal_width, type: double}
    - {name: petal_length, type: double}
    - {name: petal_width, type: double}
";

fn labels(body: &Value) -> Vec<i64> {
    body["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {body}"))
        .iter()
        .map(|prediction| prediction["label"].as_i64().unwrap())
        .collect()
}

async fn ready(dir: &Path, flags: &[&str]) -> Server {
    let server = Server::start(dir, flags).await;
    server.wait_ready().await;
    server
}

/// Requests that break the iris signature: a missing column, and a string where a double goes.
fn signature_breakers() -> [Value; 2] {
    [
        json!({"dataframe_split": {"columns": &COLUMNS[..3], "data": [[5.1, 3.5, 1.4]]}}),
        json!({"dataframe_split": {"columns": COLUMNS, "data": [[5.1, "wide", 1.4, 0.2]]}}),
    ]
}

#[tokio::test]
async fn a_bare_onnx_file_is_served_with_the_declared_signature() {
    let signature = iris_signature();
    let bare = model_dir("declared-onnx", &[("model.onnx", &iris_onnx())]);
    let server = ready(
        &bare,
        &[
            "--declared-format",
            "onnx",
            "--declared-signature",
            &signature,
        ],
    )
    .await;
    // The signature names the feature columns, so their order in the request does not matter.
    let reversed: Vec<&str> = COLUMNS.iter().rev().copied().collect();
    let data: Vec<Vec<f64>> = ROWS
        .iter()
        .map(|row| row.iter().rev().copied().collect())
        .collect();
    let (status, answer) = server
        .post_json(
            "/invocations",
            &json!({"dataframe_split": {"columns": reversed, "data": data}}),
        )
        .await;
    assert_eq!(
        (status, labels(&answer)),
        (200, LABELS.to_vec()),
        "{answer}"
    );

    // The same 400s as a manifest with that signature gives, and as a manifest without a
    // signature gives once the signature is declared.
    let manifest = ready(
        &model_dir(
            "declared-onnx-manifest",
            &[
                ("sluice-model.yaml", IRIS_MANIFEST.as_bytes()),
                ("model.onnx", &iris_onnx()),
            ],
        ),
        &[],
    )
    .await;
    let unsigned_manifest = IRIS_MANIFEST
        .split("signature:")
        .next()
        .unwrap()
        .to_string();
    let filled_in = ready(
        &model_dir(
            "declared-onnx-fill-in",
            &[
                ("sluice-model.yaml", unsigned_manifest.as_bytes()),
                ("model.onnx", &iris_onnx()),
            ],
        ),
        &[
            "--declared-format",
            "onnx",
            "--declared-signature",
            &signature,
        ],
    )
    .await;
    let needles = [
        "missing required column `petal_width`",
        "column `sepal_width` row 0: expected a double, got a string",
    ];
    for (request, needle) in signature_breakers().iter().zip(needles) {
        let (status, answer) = server.post_json("/invocations", request).await;
        assert_error(status, &answer, 400, "INVALID_PARAMETER_VALUE", needle);
        assert_eq!(
            manifest.post_json("/invocations", request).await,
            (status, answer.clone())
        );
        assert_eq!(
            filled_in.post_json("/invocations", request).await,
            (status, answer)
        );
    }
}

#[tokio::test]
async fn a_bare_onnx_file_without_a_signature_takes_the_graph_inputs() {
    let bare = model_dir("declared-onnx-unsigned", &[("model.onnx", &iris_onnx())]);
    let server = ready(&bare, &["--declared-format", "onnx"]).await;
    let (status, answer) = server
        .post_json("/invocations", &json!({"inputs": ROWS}))
        .await;
    assert_eq!(
        (status, labels(&answer)),
        (200, LABELS.to_vec()),
        "{answer}"
    );
    // Without a signature the request's columns, in its order, make the feature vector.
    let (status, answer) = server
        .post_json(
            "/invocations",
            &json!({"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": ROWS}}),
        )
        .await;
    assert_eq!(
        (status, labels(&answer)),
        (200, LABELS.to_vec()),
        "{answer}"
    );
}

/// all-MiniLM-L6-v2's folder (sentence-transformers: modules.json, 1_Pooling/), if fetched.
fn minilm_files() -> Option<PathBuf> {
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

/// Copies `from` into `to`, folders included, leaving out any manifest.
fn copy_without_manifest(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "MLmodel" || name == "sluice-model.yaml" {
            continue;
        }
        let target = to.join(&name);
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_without_manifest(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
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
async fn a_sentence_transformers_folder_without_a_manifest_serves_embeddings() {
    let Some(files) = minilm_files() else { return };
    let dir = temp_dir("declared-minilm");
    copy_without_manifest(&files, &dir);
    // The declared task; and none, which a BERT `architectures` turns into embeddings.
    let flag_sets: [&[&str]; 2] = [
        &[
            "--declared-format",
            "safetensors",
            "--declared-task",
            "llm/v1/embeddings",
        ],
        &["--declared-format", "safetensors"],
    ];
    for flags in flag_sets {
        let server = ready(&dir, flags).await;
        let texts = ["A man is eating food.", "A man is eating a piece of bread."];
        let (status, answer) = server
            .post_json("/v1/embeddings", &json!({"input": texts}))
            .await;
        assert_eq!(status, 200, "{flags:?}: {answer}");
        let v = vectors(&answer);
        assert_eq!(v[0].len(), 384);
        // modules.json's Normalize module was read: unit vectors, as sentence-transformers gives.
        for vector in &v {
            assert!((dot(vector, vector) - 1.0).abs() < 1e-4, "{flags:?}");
        }
        let related = dot(&v[0], &v[1]);
        assert!(
            (related - 0.7553).abs() < 0.005,
            "{flags:?}: cosine {related}"
        );
    }
}

const MESSAGES: [(&str, &str); 2] = [("system", "Be brief."), ("user", "  Hello there ")];

fn messages() -> Value {
    MESSAGES
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

#[tokio::test]
async fn bare_causal_lm_folders_answer_chat_and_completions() {
    let model = Model::random(7);
    // A Hugging Face checkpoint; no task declared: `LlamaForCausalLM` makes it chat.
    let checkpoint = temp_dir("declared-llm");
    model.write_safetensors(&checkpoint);
    let server = ready(&checkpoint, &["--declared-format", "safetensors"]).await;
    let prompt = chat_prompt(&MESSAGES);
    let (expected, _) = model.greedy(&prompt, 12, Rope::Halves);
    let (status, answer) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages(), "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], expected);
    drop(server);

    // One GGUF file with tokenizer.json beside it, declared for completions.
    let gguf = temp_dir("declared-gguf");
    let dequantized = model.write_gguf(&gguf);
    let server = ready(
        &gguf,
        &[
            "--declared-format",
            "gguf",
            "--declared-task",
            "llm/v1/completions",
        ],
    )
    .await;
    let (expected, _) = dequantized.greedy(&encode("The quick brown fox"), 12, Rope::Interleaved);
    let (status, answer) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected, "{answer}");
}

/// A folder's files: name and contents.
type Files<'a> = &'a [(&'a str, &'a [u8])];

/// Runs `serve` on a folder of `files` with `args` and `envs`; asserts it exits with `code`
/// and says every one of `needles` on stderr.
fn assert_exit(code: i32, files: Files, args: &[&str], envs: &[(&str, &str)], needles: &[&str]) {
    let output = common::run_to_exit_with(&model_dir("declared-bad", files), args, envs);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?} {envs:?}: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
}

#[test]
fn folders_that_do_not_fit_what_is_declared_end_the_process_with_the_reason() {
    let onnx = iris_onnx();
    let onnx = onnx.as_slice();
    // Nothing declared, no manifest: the old error, now pointing at the declared format.
    assert_exit(
        1,
        &[("model.onnx", onnx)],
        &[],
        &[],
        &[
            "neither an `MLmodel` nor a `sluice-model.yaml`",
            "no format was declared",
            "--declared-format",
        ],
    );
    // A declared format that contradicts the manifest names both (here from the variable).
    assert_exit(
        1,
        &[
            ("sluice-model.yaml", IRIS_MANIFEST.as_bytes()),
            ("model.onnx", onnx),
        ],
        &[],
        &[("SLUICE_MODEL_FORMAT", "gguf")],
        &[
            "declares format `gguf`",
            "sluice-model.yaml describes format `onnx`",
        ],
    );
    assert_exit(
        1,
        &[
            ("MLmodel", b"flavors:\n  onnx: {data: model.onnx}\n"),
            ("model.onnx", onnx),
        ],
        &["--declared-format", "safetensors"],
        &[],
        &[
            "declares format `safetensors`",
            "MLmodel describes an MLflow model",
        ],
    );
    assert_exit(
        1,
        &[("a.onnx", onnx), ("b.onnx", onnx)],
        &["--declared-format", "onnx"],
        &[],
        &["exactly one `*.onnx`", "found 2: a.onnx, b.onnx"],
    );
    assert_exit(
        1,
        &[("README.md", b"hi"), ("weights.bin", b"0")],
        &["--declared-format", "onnx"],
        &[],
        &["found none (the folder holds: README.md, weights.bin)"],
    );
    assert_exit(
        1,
        &[("model.onnx", onnx)],
        &[
            "--declared-format",
            "onnx",
            "--declared-task",
            "llm/v1/chat",
        ],
        &[],
        &["format `onnx` cannot serve task `llm/v1/chat`"],
    );
    assert_exit(
        1,
        &[("model.safetensors", b"{}"), ("tokenizer.json", b"{}")],
        &["--declared-format", "safetensors"],
        &[],
        &["has no `config.json`"],
    );
    assert_exit(
        1,
        &[("model.onnx", onnx)],
        &["--declared-format", "mlflow"],
        &[],
        &["format `mlflow` needs an `MLmodel` file"],
    );
    assert_exit(
        1,
        &[("notes.txt", b"x")],
        &[],
        &[("SLUICE_MODEL_FORMAT", "prompt")],
        &["format `prompt` needs a `sluice-model.yaml`"],
    );
    assert_exit(
        1,
        &[("notes.txt", b"x")],
        &["--declared-format", "custom"],
        &[],
        &["custom engine image"],
    );
}

#[test]
fn bad_declared_values_are_refused_naming_the_flag_and_the_accepted_values() {
    let onnx = iris_onnx();
    let files: Files = &[("model.onnx", onnx.as_slice())];
    assert_exit(
        2,
        files,
        &["--declared-format", "pickle"],
        &[],
        &["--declared-format", "`onnx`", "`safetensors`", "`gguf`"],
    );
    assert_exit(
        2,
        files,
        &[],
        &[("SLUICE_MODEL_TASK", "chat")],
        &["--declared-task", "`llm/v1/chat`", "`predict`"],
    );
    assert_exit(
        2,
        files,
        &[
            "--declared-format",
            "onnx",
            "--declared-signature",
            "{inputs",
        ],
        &[],
        &["--declared-signature", "not a ModelSignature"],
    );
}
