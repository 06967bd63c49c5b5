//! The model directory contract: what `serve` reads to decide how to serve a directory.
//!
//! 1. An MLflow `MLmodel` file, when present. The `onnx` flavor is served by the ONNX runtime;
//!    a `sentence_transformers` flavor, or a `transformers` flavor whose task is feature
//!    extraction, by the embeddings runtime when its safetensors weights are found. The
//!    `signature` (JSON strings inside the YAML) is read as MLflow writes it.
//! 2. Otherwise `sluice-model.yaml`: format, task, signature (the ModelVersion CRD's structure),
//!    files and, for prompt models, the template and its upstream.
//!
//! Reading the contract is synchronous and cheap; loading weights happens later, in the
//! background ([`super::runtime::load`]). A directory that breaks the contract is a
//! [`ModelDirError`], which makes the process exit at startup; weights that fail to load only
//! make `/health` fail.
//! The full contract, with an example per runtime, is in `docs/model-directory.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
pub use sluice_crds::model_version::{
    ModelFormat, ModelSignature, ModelTask, SignatureField, SignatureParam, SignatureType,
};

/// File name of an MLflow model manifest.
pub const MLMODEL_FILE: &str = "MLmodel";
/// File name of our own manifest.
pub const SLUICE_MANIFEST_FILE: &str = "sluice-model.yaml";

/// Why a model directory cannot be served at all.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    /// The directory or a manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither manifest is there.
    #[error("{dir} has neither an `{MLMODEL_FILE}` nor a `{SLUICE_MANIFEST_FILE}` file")]
    NoManifest {
        /// The model directory.
        dir: PathBuf,
    },
    /// A manifest is not valid YAML of the expected structure.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A manifest parsed but describes something `serve` cannot serve.
    #[error("{path}: {message}")]
    Unsupported {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, and what would work instead.
        message: String,
    },
}

/// The runtime a model needs, decided from its format and task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// An ONNX graph over tabular inputs (tract).
    Onnx,
    /// A BERT-family sentence-embedding model from safetensors (candle).
    Embeddings,
    /// A causal language model from safetensors or GGUF weights (candle).
    CausalLm,
    /// A prompt template bound to an OpenAI-compatible chat upstream.
    Prompt,
}

/// Everything `serve` knows about a model directory before loading weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The model's name, reported as `model` in OpenAI answers.
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// The runtime to load.
    pub runtime: RuntimeKind,
    /// The task, which decides the routes that make sense.
    pub task: ModelTask,
    /// The signature, when the manifest has one.
    pub signature: Option<ModelSignature>,
    /// Files, resolved against `dir`.
    pub files: ModelFiles,
    /// The prompt of a prompt model.
    pub prompt: Option<PromptSpec>,
}

/// Files of a model, relative to the model directory in a manifest and absolute here.
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

/// `sluice-model.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SluiceManifest {
    #[serde(default)]
    name: Option<String>,
    format: ModelFormat,
    task: ModelTask,
    #[serde(default)]
    signature: Option<ModelSignature>,
    #[serde(default)]
    files: ModelFiles,
    #[serde(default)]
    prompt: Option<PromptSpec>,
}

/// The parts of an MLflow `MLmodel` file that `serve` reads.
#[derive(Debug, Deserialize)]
struct MlModel {
    #[serde(default)]
    flavors: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    signature: Option<MlflowSignature>,
}

/// MLflow's signature: each part a JSON string.
#[derive(Debug, Default, Deserialize)]
struct MlflowSignature {
    #[serde(default)]
    inputs: Option<String>,
    #[serde(default)]
    outputs: Option<String>,
    #[serde(default)]
    params: Option<String>,
}

/// Reads the model directory contract of `dir`.
pub fn read(dir: &Path) -> Result<ModelSpec, ModelDirError> {
    std::fs::read_dir(dir).map_err(|source| ModelDirError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".to_string());
    let mlmodel = dir.join(MLMODEL_FILE);
    if mlmodel.is_file() {
        return read_mlmodel(dir, &mlmodel, name);
    }
    let manifest = dir.join(SLUICE_MANIFEST_FILE);
    if manifest.is_file() {
        return read_sluice_manifest(dir, &manifest, name);
    }
    Err(ModelDirError::NoManifest {
        dir: dir.to_path_buf(),
    })
}

fn read_text(path: &Path) -> Result<String, ModelDirError> {
    std::fs::read_to_string(path).map_err(|source| ModelDirError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_sluice_manifest(
    dir: &Path,
    path: &Path,
    default_name: String,
) -> Result<ModelSpec, ModelDirError> {
    let manifest: SluiceManifest =
        serde_norway::from_str(&read_text(path)?).map_err(|error| ModelDirError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    let unsupported = |message: String| ModelDirError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    let runtime = match (manifest.format, manifest.task) {
        (ModelFormat::Onnx, ModelTask::Predict) => RuntimeKind::Onnx,
        (ModelFormat::Safetensors, ModelTask::Embeddings) => RuntimeKind::Embeddings,
        (
            ModelFormat::Safetensors | ModelFormat::Gguf,
            ModelTask::Chat | ModelTask::Completions,
        ) => RuntimeKind::CausalLm,
        (ModelFormat::Prompt, ModelTask::Chat | ModelTask::Completions | ModelTask::Predict) => {
            RuntimeKind::Prompt
        }
        (ModelFormat::Mlflow, _) => {
            return Err(unsupported(format!(
                "format `mlflow` means an `{MLMODEL_FILE}` file, and there is none in {}",
                dir.display()
            )));
        }
        (format, task) => {
            return Err(unsupported(format!(
                "the builtin runtime cannot serve format `{}` with task `{}`; it serves onnx + \
                 predict, safetensors + llm/v1/embeddings, safetensors|gguf + llm/v1/chat|\
                 llm/v1/completions, and prompt + llm/v1/chat|llm/v1/completions|predict",
                enum_name(&format),
                enum_name(&task)
            )));
        }
    };
    if runtime == RuntimeKind::Prompt && manifest.prompt.is_none() {
        return Err(unsupported(
            "format `prompt` needs a `prompt` section".to_string(),
        ));
    }
    if runtime != RuntimeKind::Prompt && manifest.files.model.is_none() {
        return Err(unsupported(format!(
            "format `{}` needs `files.model`",
            enum_name(&manifest.format)
        )));
    }
    Ok(ModelSpec {
        name: manifest.name.unwrap_or(default_name),
        dir: dir.to_path_buf(),
        runtime,
        task: manifest.task,
        signature: manifest.signature,
        files: resolve_files(dir, manifest.files),
        prompt: manifest.prompt,
    })
}

fn resolve_files(dir: &Path, files: ModelFiles) -> ModelFiles {
    let resolve = |file: Option<PathBuf>| file.map(|file| dir.join(file));
    ModelFiles {
        model: resolve(files.model),
        tokenizer: resolve(files.tokenizer),
        config: resolve(files.config),
        chat_template: resolve(files.chat_template),
    }
}

/// The serde name of a unit enum value (`llm/v1/chat`, `onnx`).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn read_mlmodel(dir: &Path, path: &Path, name: String) -> Result<ModelSpec, ModelDirError> {
    let mlmodel: MlModel =
        serde_norway::from_str(&read_text(path)?).map_err(|error| ModelDirError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    let signature = mlmodel
        .signature
        .map(|signature| mlflow_signature(&signature))
        .transpose()
        .map_err(|message| ModelDirError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
    let flavor_data = |flavor: &str| {
        mlmodel
            .flavors
            .get(flavor)
            .and_then(|config| config.get("data").or_else(|| config.get("model_path")))
            .and_then(|data| data.as_str())
            .map(|data| dir.join(data))
    };
    let spec = |runtime, task, files| ModelSpec {
        name: name.clone(),
        dir: dir.to_path_buf(),
        runtime,
        task,
        signature: signature.clone(),
        files,
        prompt: None,
    };
    if mlmodel.flavors.contains_key("onnx") {
        let model = flavor_data("onnx").unwrap_or_else(|| dir.join("model.onnx"));
        let files = ModelFiles {
            model: Some(model),
            ..ModelFiles::default()
        };
        return Ok(spec(RuntimeKind::Onnx, ModelTask::Predict, files));
    }
    let embeddings_flavor = ["sentence_transformers", "transformers"]
        .into_iter()
        .find(|flavor| {
            mlmodel.flavors.get(*flavor).is_some_and(|config| {
                *flavor == "sentence_transformers"
                    || config
                        .get("task")
                        .and_then(|task| task.as_str())
                        .is_some_and(|task| {
                            task == "feature-extraction" || task == "llm/v1/embeddings"
                        })
            })
        });
    if let Some(flavor) = embeddings_flavor {
        let mut roots: Vec<PathBuf> = flavor_data(flavor).into_iter().collect();
        roots.extend([dir.join("model"), dir.to_path_buf()]);
        if let Some(files) = roots.iter().find_map(|root| safetensors_files(dir, root)) {
            return Ok(spec(RuntimeKind::Embeddings, ModelTask::Embeddings, files));
        }
        return Err(ModelDirError::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "flavor `{flavor}` has no model.safetensors with config.json beside it; the \
                 builtin runtime serves safetensors weights only"
            ),
        });
    }
    Err(ModelDirError::Unsupported {
        path: path.to_path_buf(),
        message: format!(
            "flavors [{}] need an MLflow runtime image; the builtin runtime serves the `onnx`, \
             `sentence_transformers` and feature-extraction `transformers` flavors",
            mlmodel
                .flavors
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The files of a safetensors model under `root`, if its weights and config are there. The
/// tokenizer may sit beside them or, as MLflow's transformers flavor writes it, under
/// `components/tokenizer`.
fn safetensors_files(dir: &Path, root: &Path) -> Option<ModelFiles> {
    let model = root.join("model.safetensors");
    let config = root.join("config.json");
    if !model.is_file() || !config.is_file() {
        return None;
    }
    let tokenizer = [
        root.join("tokenizer.json"),
        dir.join("components/tokenizer/tokenizer.json"),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .unwrap_or_else(|| root.join("tokenizer.json"));
    Some(ModelFiles {
        model: Some(model),
        tokenizer: Some(tokenizer),
        config: Some(config),
        chat_template: None,
    })
}

/// Converts MLflow's JSON-string signature into the CRD's structure.
fn mlflow_signature(signature: &MlflowSignature) -> Result<ModelSignature, String> {
    let parse = |part: &str, text: &Option<String>| -> Result<Vec<Value>, String> {
        match text {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(text)
                .map_err(|error| format!("signature `{part}` is not a JSON list: {error}")),
        }
    };
    let fields = |part: &str, text: &Option<String>| -> Result<Vec<SignatureField>, String> {
        parse(part, text)?
            .iter()
            .map(|spec| mlflow_field(part, spec))
            .collect()
    };
    let params = parse("params", &signature.params)?
        .iter()
        .map(|spec| {
            let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                return Err(format!("signature param without a name: {spec}"));
            }
            let data_type = mlflow_type(spec.get("type").and_then(Value::as_str).unwrap_or(""))
                .ok_or_else(|| format!("signature param `{name}` has an unknown type: {spec}"))?;
            let default = spec
                .get("default")
                .filter(|value| !value.is_null())
                .map(Value::to_string);
            Ok(SignatureParam {
                name: name.to_string(),
                data_type,
                default,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ModelSignature {
        inputs: fields("inputs", &signature.inputs)?,
        outputs: fields("outputs", &signature.outputs)?,
        params,
    })
}

/// One MLflow column spec (`{"type", "name", "required"}`) or tensor spec
/// (`{"type": "tensor", "tensor-spec": {"dtype", "shape"}}`).
fn mlflow_field(part: &str, spec: &Value) -> Result<SignatureField, String> {
    let name = spec.get("name").and_then(Value::as_str).map(str::to_string);
    let required = spec.get("required").and_then(Value::as_bool);
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "tensor" {
        let tensor = spec.get("tensor-spec").cloned().unwrap_or(Value::Null);
        let dtype = tensor.get("dtype").and_then(Value::as_str).unwrap_or("");
        let data_type = numpy_type(dtype)
            .ok_or_else(|| format!("signature {part}: unknown tensor dtype `{dtype}` in {spec}"))?;
        let shape = tensor
            .get("shape")
            .and_then(Value::as_array)
            .map(|dims| dims.iter().filter_map(Value::as_i64).collect());
        return Ok(SignatureField {
            name,
            data_type,
            shape,
            required,
        });
    }
    let data_type = mlflow_type(kind)
        .ok_or_else(|| format!("signature {part}: unknown column type `{kind}` in {spec}"))?;
    Ok(SignatureField {
        name,
        data_type,
        shape: None,
        required,
    })
}

fn mlflow_type(name: &str) -> Option<SignatureType> {
    Some(match name {
        "string" => SignatureType::String,
        "double" => SignatureType::Double,
        "float" => SignatureType::Float,
        "long" => SignatureType::Long,
        "integer" => SignatureType::Integer,
        "boolean" => SignatureType::Boolean,
        "binary" => SignatureType::Binary,
        "datetime" => SignatureType::Datetime,
        _ => return None,
    })
}

fn numpy_type(dtype: &str) -> Option<SignatureType> {
    Some(match dtype {
        "float32" | "float16" => SignatureType::Float,
        "float64" => SignatureType::Double,
        "int64" | "uint64" | "uint32" => SignatureType::Long,
        "int32" | "int16" | "int8" | "uint16" | "uint8" => SignatureType::Integer,
        "bool" => SignatureType::Boolean,
        "str" | "object" => SignatureType::String,
        "bytes" => SignatureType::Binary,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-model-dir-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn mlmodel_onnx_flavor_with_json_signature() {
        let dir = dir_with(&[(
            "MLmodel",
            r#"
flavors:
  onnx: {data: iris.onnx, onnx_version: 1.17.0}
  python_function: {loader_module: mlflow.onnx, data: iris.onnx}
signature:
  inputs: '[{"type": "float", "name": "sepal_length", "required": true}, {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
  params: '[{"name": "threshold", "type": "double", "default": 0.5, "shape": null}]'
"#,
        )]);
        let spec = read(&dir).unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Onnx);
        assert_eq!(spec.files.model, Some(dir.join("iris.onnx")));
        let signature = spec.signature.unwrap();
        assert_eq!(signature.inputs[0].name.as_deref(), Some("sepal_length"));
        assert_eq!(signature.inputs[1].shape, Some(vec![-1, 4]));
        assert_eq!(signature.outputs[0].data_type, SignatureType::Long);
        assert_eq!(signature.params[0].default.as_deref(), Some("0.5"));
    }

    #[test]
    fn sluice_manifest_for_each_runtime() {
        let onnx = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: onnx\ntask: predict\nfiles: {model: m.onnx}\nsignature:\n  inputs: [{name: x, type: float}]\n",
        )]);
        let spec = read(&onnx).unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Onnx);
        assert_eq!(
            spec.signature.unwrap().inputs[0].data_type,
            SignatureType::Float
        );
        let prompt = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: prompt\ntask: llm/v1/chat\nprompt:\n  template: 'Say {{input}}'\n  upstream: {url: 'http://127.0.0.1:1/v1', model: m}\n",
        )]);
        assert_eq!(read(&prompt).unwrap().runtime, RuntimeKind::Prompt);
        let gguf = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: gguf\ntask: llm/v1/chat\nfiles: {model: m.gguf}\n",
        )]);
        assert_eq!(read(&gguf).unwrap().runtime, RuntimeKind::CausalLm);
    }

    #[test]
    fn contract_errors_name_the_problem() {
        let missing = std::env::temp_dir().join("sluice-no-such-model-dir");
        assert!(matches!(read(&missing), Err(ModelDirError::Read { .. })));
        let empty = dir_with(&[]);
        assert!(matches!(
            read(&empty),
            Err(ModelDirError::NoManifest { .. })
        ));
        let garbage = dir_with(&[(SLUICE_MANIFEST_FILE, "format: [\n")]);
        assert!(matches!(read(&garbage), Err(ModelDirError::Parse { .. })));
        let typo = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: onnx\ntask: predict\nfile: {}\n",
        )]);
        assert!(read(&typo).unwrap_err().to_string().contains("file"));
        let sklearn = dir_with(&[("MLmodel", "flavors:\n  sklearn: {pickled_model: m.pkl}\n")]);
        assert!(
            read(&sklearn)
                .unwrap_err()
                .to_string()
                .contains("MLflow runtime image")
        );
        let no_prompt = dir_with(&[(SLUICE_MANIFEST_FILE, "format: prompt\ntask: llm/v1/chat\n")]);
        assert!(
            read(&no_prompt)
                .unwrap_err()
                .to_string()
                .contains("`prompt` section")
        );
    }
}
