//! The layout of the two manifests a model directory describes itself with: MLflow's `MLmodel`
//! and our `sluice-model.yaml`. Only their structure lives here (field names, defaults, unknown
//! fields refused); what they mean (the runtime, the files resolved against the directory, the
//! MLflow signature converted into the ModelVersion's) is decided by `serve`'s model directory
//! contract (`inference-server/serve/src/model_dir.rs`, `docs/model-directory.md`).
//!
//! `sluice-model.yaml` embeds types of the ModelVersion API (its format, task and signature),
//! which live in `sluice-crds` together with Kubernetes; [`SluiceManifest`] takes them as type
//! parameters so that this crate stays free of Kubernetes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// File name of an MLflow model manifest.
pub const MLMODEL_FILE: &str = "MLmodel";
/// File name of our own manifest.
pub const SLUICE_MANIFEST_FILE: &str = "sluice-model.yaml";

/// Files of a model, relative to the model directory in a manifest (`serve` resolves them).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFiles {
    /// The weights or graph (`model.onnx`, `model.safetensors`, `model.gguf`).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// `tokenizer.json`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// The architecture's `config.json`.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// A Jinja chat template (causal language models); by default the model's own
    /// (`chat_template.jinja`, `tokenizer_config.json`, the GGUF metadata).
    #[serde(default)]
    pub chat_template: Option<PathBuf>,
}

/// A prompt template and the chat endpoint it is sent to.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// The user message, with `{{variable}}` placeholders.
    pub template: String,
    /// An optional system message (may use placeholders too).
    #[serde(default)]
    pub system: Option<String>,
    /// The OpenAI-compatible chat upstream.
    pub upstream: UpstreamSpec,
}

/// An OpenAI-compatible chat upstream.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Base URL; `/chat/completions` is appended (e.g. `https://api.openai.com/v1`).
    pub url: String,
    /// The upstream model name.
    pub model: String,
    /// Name of the environment variable holding the API key, if the upstream needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// `sluice-model.yaml`. `Format`, `Task` and `Signature` are the ModelVersion's `ModelFormat`,
/// `ModelTask` and `ModelSignature` in `serve`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SluiceManifest<Format, Task, Signature> {
    /// The name reported as `model` in OpenAI answers; by default the directory's name.
    #[serde(default)]
    pub name: Option<String>,
    /// How the weights are stored.
    pub format: Format,
    /// What the model does, which decides the runtime.
    pub task: Task,
    /// The inputs, outputs and parameters the model accepts.
    #[serde(default = "none")]
    pub signature: Option<Signature>,
    /// The files, relative to the directory.
    #[serde(default)]
    pub files: ModelFiles,
    /// The prompt of a `prompt` model.
    #[serde(default)]
    pub prompt: Option<PromptSpec>,
}

// `#[serde(default)]` on a generic field would ask `Signature: Default`; `None` needs nothing.
fn none<T>() -> Option<T> {
    None
}

/// The parts of an MLflow `MLmodel` file that `serve` reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct MlModel {
    /// Each flavor's configuration, kept as YAML (`onnx.data`, `transformers.task`, ...).
    #[serde(default)]
    pub flavors: BTreeMap<String, serde_norway::Value>,
    /// The signature, if the model was logged with one.
    #[serde(default)]
    pub signature: Option<MlflowSignature>,
}

impl MlModel {
    /// The flavor the builtin runtime serves this model by, if any: `onnx` first, then
    /// `sentence_transformers`, then `transformers` with a feature-extraction (or
    /// `llm/v1/embeddings`) task. Any other model needs MLflow's own scoring server (its
    /// `python_function` flavor). `serve` loads by this rule and the source check reports it,
    /// so the operator picks the same runtime the model directory would be served by.
    pub fn builtin_flavor(&self) -> Option<&'static str> {
        if self.flavors.contains_key("onnx") {
            return Some("onnx");
        }
        if self.flavors.contains_key("sentence_transformers") {
            return Some("sentence_transformers");
        }
        let embedding_task = |config: &serde_norway::Value| {
            config
                .get("task")
                .and_then(|task| task.as_str())
                .is_some_and(|task| task == "feature-extraction" || task == "llm/v1/embeddings")
        };
        self.flavors
            .get("transformers")
            .is_some_and(embedding_task)
            .then_some("transformers")
    }
}

/// MLflow's signature: each part a JSON string (a list of column or tensor specs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct MlflowSignature {
    /// The input specs.
    #[serde(default)]
    pub inputs: Option<String>,
    /// The output specs.
    #[serde(default)]
    pub outputs: Option<String>,
    /// The inference parameter specs.
    #[serde(default)]
    pub params: Option<String>,
}

/// Parses the text of an `MLmodel` file.
pub fn parse_mlmodel(text: &str) -> Result<MlModel, serde_norway::Error> {
    serde_norway::from_str(text)
}

/// Parses the text of a `sluice-model.yaml` file.
pub fn parse_sluice_manifest<Format, Task, Signature>(
    text: &str,
) -> Result<SluiceManifest<Format, Task, Signature>, serde_norway::Error>
where
    Format: DeserializeOwned,
    Task: DeserializeOwned,
    Signature: DeserializeOwned,
{
    serde_norway::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Manifest = SluiceManifest<String, String, serde_norway::Value>;

    #[test]
    fn the_builtin_flavor_is_onnx_then_embeddings() {
        let flavor = |text: &str| parse_mlmodel(text).unwrap().builtin_flavor();
        assert_eq!(
            flavor("flavors:\n  python_function: {}\n  onnx: {data: m.onnx}\n"),
            Some("onnx")
        );
        assert_eq!(
            flavor("flavors:\n  sentence_transformers: {}\n"),
            Some("sentence_transformers")
        );
        assert_eq!(
            flavor("flavors:\n  transformers: {task: feature-extraction}\n"),
            Some("transformers")
        );
        assert_eq!(
            flavor("flavors:\n  transformers: {task: text-generation}\n"),
            None
        );
        assert_eq!(
            flavor("flavors:\n  python_function: {}\n  sklearn: {}\n"),
            None
        );
    }

    #[test]
    fn a_sluice_manifest_reads_its_sections_and_refuses_unknown_keys() {
        let manifest: Manifest = parse_sluice_manifest(
            "format: prompt\ntask: llm/v1/chat\nprompt:\n  template: 'Hi {{name}}'\n  \
             upstream: {url: 'http://127.0.0.1:9/v1', model: m}\n",
        )
        .unwrap();
        assert_eq!(manifest.format, "prompt");
        assert_eq!(manifest.signature, None);
        assert_eq!(manifest.files, ModelFiles::default());
        let prompt = manifest.prompt.unwrap();
        assert_eq!(prompt.template, "Hi {{name}}");
        assert_eq!(prompt.upstream.api_key_env, None);

        let error = parse_sluice_manifest::<String, String, serde_norway::Value>(
            "format: onnx\ntask: predict\nfile: {model: m.onnx}\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `file`"),
            "{error}"
        );
        assert!(
            parse_sluice_manifest::<String, String, serde_norway::Value>("format: [onnx\n")
                .is_err()
        );
    }

    #[test]
    fn an_mlmodel_keeps_flavors_and_the_signature_strings() {
        let mlmodel = parse_mlmodel(
            "artifact_path: model\nflavors:\n  onnx:\n    data: model.onnx\n    onnx_version: 1.17.0\n\
             signature:\n  inputs: '[{\"type\": \"double\", \"name\": \"x\"}]'\n  outputs: null\n",
        )
        .unwrap();
        assert_eq!(mlmodel.flavors["onnx"]["data"].as_str(), Some("model.onnx"));
        let signature = mlmodel.signature.unwrap();
        assert_eq!(
            signature.inputs.as_deref(),
            Some("[{\"type\": \"double\", \"name\": \"x\"}]")
        );
        assert_eq!(signature.outputs, None);
        // An empty file is a manifest with no flavors (which `serve` then refuses, naming none).
        assert_eq!(parse_mlmodel("").unwrap(), MlModel::default());
    }
}
