//! The model directory contract: what `serve` reads to decide how to serve a directory.
//!
//! 1. An MLflow `MLmodel` file, when present. The `onnx` flavor is served by the ONNX runtime;
//!    a `sentence_transformers` flavor, or a `transformers` flavor whose task is feature
//!    extraction, by the embeddings runtime when its safetensors weights are found. The
//!    `signature` (JSON strings inside the YAML) is read as MLflow writes it.
//! 2. Otherwise `sluice-model.yaml`: format, task, signature (the ModelVersion CRD's structure),
//!    files and, for prompt models, the template and its upstream.
//! 3. Otherwise a bare folder, described by what the ModelVersion declares ([`Declared`]): its
//!    format picks the files (the single `*.onnx`; the single `*.gguf`, with a `tokenizer.json` if one is beside it; a
//!    Hugging Face checkpoint), its task the runtime.
//!
//! A declared format must agree with a manifest that is present; a declared signature stands in
//! for a manifest's missing one.
//!
//! Reading the contract is synchronous and cheap; loading weights happens later, in the
//! background ([`super::runtime::load`]). A directory that breaks the contract is a
//! [`ModelDirError`], which makes the process exit at startup; weights that fail to load only
//! make `/health` fail.
//! The full contract, with an example per runtime, is in `docs/model-directory.md`.

use std::path::{Path, PathBuf};

use serde_json::Value;
pub use sluice_crds::model_version::{
    ModelFormat, ModelSignature, ModelTask, SignatureField, SignatureParam, SignatureType,
};
use sluice_protocol::manifest::{
    MlflowSignature, SluiceManifest, parse_mlmodel, parse_sluice_manifest,
};
// The manifests' layout is owned by `sluice-protocol` (so that it is fuzzed); its paths stay here.
// `ModelFiles` is relative to the directory in a manifest and absolute in a [`ModelSpec`].
pub use sluice_protocol::manifest::{MLMODEL_FILE, ModelFiles, PromptSpec, SLUICE_MANIFEST_FILE};

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
    /// Neither manifest is there, and no format was declared.
    #[error(
        "{dir} has neither an `{MLMODEL_FILE}` nor a `{SLUICE_MANIFEST_FILE}` file, and no \
         format was declared; a bare folder (one `*.onnx`, one `*.gguf`, \
         or a Hugging Face checkpoint) is served when the ModelVersion's format and task \
         describe it (--declared-format/SLUICE_MODEL_FORMAT, \
         --declared-task/SLUICE_MODEL_TASK)"
    )]
    NoManifest {
        /// The model directory.
        dir: PathBuf,
    },
    /// The declared format contradicts the manifest.
    #[error(
        "the ModelVersion declares format `{}`, but {path} describes {manifest}",
        enum_name(.declared)
    )]
    Contradiction {
        /// The manifest.
        path: PathBuf,
        /// The declared format.
        declared: ModelFormat,
        /// What the manifest describes (e.g. "format `onnx`").
        manifest: String,
    },
    /// A bare folder does not hold exactly one weights file of the declared format.
    #[error(
        "declared format `{}` needs exactly one `*.{extension}` file in {dir}; {}{hint}",
        enum_name(.format),
        found_text(.found, .present)
    )]
    FileCount {
        /// The model directory.
        dir: PathBuf,
        /// The declared format.
        format: ModelFormat,
        /// The extension looked for.
        extension: &'static str,
        /// The files with that extension.
        found: Vec<String>,
        /// Every file of the folder, listed when none has the extension.
        present: Vec<String>,
        /// More about what would work, or empty.
        hint: &'static str,
    },
    /// A bare folder lacks a file its declared format needs.
    #[error("declared format `{}`: {dir} has no `{file}`; {why}", enum_name(.format))]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// The declared format.
        format: ModelFormat,
        /// The missing file.
        file: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
    /// The declared task does not fit the declared format of a bare folder.
    #[error(
        "declared format `{}` cannot serve task `{}`; it serves {accepted}",
        enum_name(.format),
        enum_name(.task)
    )]
    TaskMismatch {
        /// The declared format.
        format: ModelFormat,
        /// The declared task.
        task: ModelTask,
        /// The tasks it can serve.
        accepted: &'static str,
    },
    /// The declared format cannot describe a bare folder.
    #[error(
        "declared format `{}` needs {needs}; {dir} has neither an `{MLMODEL_FILE}` nor a \
         `{SLUICE_MANIFEST_FILE}`",
        enum_name(.format)
    )]
    NeedsManifest {
        /// The model directory.
        dir: PathBuf,
        /// The declared format.
        format: ModelFormat,
        /// What it needs instead.
        needs: &'static str,
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

/// What the ModelVersion declares about its model (`spec.format`, `spec.task`,
/// `spec.signature`), handed to `serve` by the operator (see [`super::ServeArgs`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    /// How to read a folder without a manifest; with one, it must agree with it.
    pub format: Option<ModelFormat>,
    /// The runtime of a folder without a manifest; a manifest's task wins over it.
    pub task: Option<ModelTask>,
    /// Used when the manifest has no signature, or there is no manifest.
    pub signature: Option<ModelSignature>,
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
    /// The signature: the manifest's, else the declared one.
    pub signature: Option<ModelSignature>,
    /// Files, resolved against `dir`.
    pub files: ModelFiles,
    /// The prompt of a prompt model.
    pub prompt: Option<PromptSpec>,
    /// How `/invocations` answers are shaped.
    pub answers: AnswerShape,
}

/// How `/invocations` answers are shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnswerShape {
    /// One prediction per row (`sluice-model.yaml` and bare folders).
    #[default]
    Rows,
    /// As MLflow's scoring server answers for the model's flavor (an `MLmodel` directory), so
    /// a client of `mlflow models serve` reads the same answer.
    Mlflow,
}

/// `sluice-model.yaml`, with the ModelVersion's types.
type Manifest = SluiceManifest<ModelFormat, ModelTask, ModelSignature>;

/// Reads the model directory contract of `dir`, with what the ModelVersion declares.
pub fn read(dir: &Path, declared: &Declared) -> Result<ModelSpec, ModelDirError> {
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
        let spec = read_mlmodel(dir, &mlmodel, name)?;
        return with_declared(spec, &mlmodel, ModelFormat::Mlflow, declared);
    }
    let manifest = dir.join(SLUICE_MANIFEST_FILE);
    if manifest.is_file() {
        let (spec, format) = read_sluice_manifest(dir, &manifest, name)?;
        return with_declared(spec, &manifest, format, declared);
    }
    match declared.format {
        Some(format) => read_bare(dir, name, format, declared),
        None => Err(ModelDirError::NoManifest {
            dir: dir.to_path_buf(),
        }),
    }
}

/// A manifest's spec, checked against the declared format and given the declared signature
/// when it has none.
fn with_declared(
    mut spec: ModelSpec,
    path: &Path,
    manifest_format: ModelFormat,
    declared: &Declared,
) -> Result<ModelSpec, ModelDirError> {
    if let Some(format) = declared.format
        && !agrees(format, manifest_format, spec.runtime)
    {
        let manifest = if manifest_format == ModelFormat::Mlflow {
            format!(
                "an MLflow model (format `mlflow`, served by the {} runtime)",
                runtime_name(spec.runtime)
            )
        } else {
            format!("format `{}`", enum_name(&manifest_format))
        };
        return Err(ModelDirError::Contradiction {
            path: path.to_path_buf(),
            declared: format,
            manifest,
        });
    }
    if spec.signature.is_none() {
        spec.signature.clone_from(&declared.signature);
    }
    Ok(spec)
}

/// Whether a declared format agrees with a manifest of `manifest` format served by `runtime`:
/// the same format; `custom` (anything); or, for an MLflow model, the format of the flavor
/// the builtin runtime serves (`onnx`, or `safetensors` for embeddings).
fn agrees(declared: ModelFormat, manifest: ModelFormat, runtime: RuntimeKind) -> bool {
    declared == manifest
        || declared == ModelFormat::Custom
        || matches!(
            (manifest, declared, runtime),
            (ModelFormat::Mlflow, ModelFormat::Onnx, RuntimeKind::Onnx)
                | (
                    ModelFormat::Mlflow,
                    ModelFormat::Safetensors,
                    RuntimeKind::Embeddings
                )
        )
}

fn runtime_name(runtime: RuntimeKind) -> &'static str {
    match runtime {
        RuntimeKind::Onnx => "onnx",
        RuntimeKind::Embeddings => "embeddings",
        RuntimeKind::CausalLm => "causal LM",
        RuntimeKind::Prompt => "prompt",
    }
}

/// `config.json` `architectures` (or, without them, `model_type`) of BERT-family encoders:
/// a safetensors folder of one defaults to the embeddings task.
const ENCODER_ARCHITECTURES: [&str; 5] = ["Bert", "Roberta", "XLMRoberta", "MPNet", "DistilBert"];
const ENCODER_MODEL_TYPES: [&str; 5] = ["bert", "roberta", "xlm-roberta", "mpnet", "distilbert"];

/// Serves a folder without a manifest as its declared format and task say.
fn read_bare(
    dir: &Path,
    name: String,
    format: ModelFormat,
    declared: &Declared,
) -> Result<ModelSpec, ModelDirError> {
    let present = folder_files(dir)?;
    let task_of = |default, accepted: &[ModelTask], accepted_text| {
        let task = declared.task.unwrap_or(default);
        if accepted.contains(&task) {
            Ok(task)
        } else {
            Err(ModelDirError::TaskMismatch {
                format,
                task,
                accepted: accepted_text,
            })
        }
    };
    let needs = |needs| ModelDirError::NeedsManifest {
        dir: dir.to_path_buf(),
        format,
        needs,
    };
    let (runtime, task, files) = match format {
        ModelFormat::Onnx => {
            let task = task_of(ModelTask::Predict, &[ModelTask::Predict], "predict")?;
            let model = single_file(dir, format, &present, "onnx", "")?;
            let files = ModelFiles {
                model: Some(model),
                ..ModelFiles::default()
            };
            (RuntimeKind::Onnx, task, files)
        }
        ModelFormat::Gguf => {
            let task = task_of(
                ModelTask::Chat,
                &[ModelTask::Chat, ModelTask::Completions],
                "llm/v1/chat and llm/v1/completions",
            )?;
            let model = single_file(dir, format, &present, "gguf", "")?;
            // A `tokenizer.json` beside the file wins over the GGUF metadata's vocabulary.
            let tokenizer = Some(dir.join("tokenizer.json")).filter(|path| path.is_file());
            let files = ModelFiles {
                model: Some(model),
                tokenizer,
                ..ModelFiles::default()
            };
            (RuntimeKind::CausalLm, task, files)
        }
        ModelFormat::Safetensors => {
            let model = single_file(
                dir,
                format,
                &present,
                "safetensors",
                " (the builtin runtimes read one weights file, not a sharded checkpoint)",
            )?;
            let config = required_file(
                dir,
                format,
                "config.json",
                "a Hugging Face checkpoint needs its architecture's config beside the weights",
            )?;
            let tokenizer = required_file(
                dir,
                format,
                "tokenizer.json",
                "the builtin runtimes need a Hugging Face tokenizer beside the weights",
            )?;
            let task = match declared.task {
                Some(task) => task,
                None if is_encoder(&config)? => ModelTask::Embeddings,
                None => ModelTask::Chat,
            };
            let runtime = match task {
                // The runtime of MLflow's sentence_transformers flavor: it reads modules.json
                // and 1_Pooling/config.json beside the weights.
                ModelTask::Embeddings => RuntimeKind::Embeddings,
                ModelTask::Chat | ModelTask::Completions => RuntimeKind::CausalLm,
                ModelTask::Predict => {
                    return Err(ModelDirError::TaskMismatch {
                        format,
                        task,
                        accepted: "llm/v1/embeddings (BERT-family encoders), llm/v1/chat and \
                                   llm/v1/completions (causal language models)",
                    });
                }
            };
            let files = ModelFiles {
                model: Some(model),
                tokenizer: Some(tokenizer),
                config: Some(config),
                chat_template: None,
            };
            (runtime, task, files)
        }
        ModelFormat::Mlflow => return Err(needs("an `MLmodel` file")),
        ModelFormat::Prompt => {
            return Err(needs(
                "a `sluice-model.yaml` with a `prompt` section (the template and its upstream)",
            ));
        }
        ModelFormat::Custom => {
            return Err(needs(
                "a custom engine image that knows how to read it (the builtin runtime reads an \
                 `MLmodel`, a `sluice-model.yaml`, or a bare onnx, safetensors or gguf folder)",
            ));
        }
    };
    Ok(ModelSpec {
        name,
        dir: dir.to_path_buf(),
        runtime,
        task,
        signature: declared.signature.clone(),
        files,
        prompt: None,
        answers: AnswerShape::Rows,
    })
}

/// The names of the plain files (or links to them) directly in `dir`, sorted.
fn folder_files(dir: &Path) -> Result<Vec<String>, ModelDirError> {
    let read_error = |source| ModelDirError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        if entry.path().is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The one file of `present` ending in `.extension`.
fn single_file(
    dir: &Path,
    format: ModelFormat,
    present: &[String],
    extension: &'static str,
    hint: &'static str,
) -> Result<PathBuf, ModelDirError> {
    let found: Vec<String> = present
        .iter()
        .filter(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case(extension))
        })
        .cloned()
        .collect();
    match found.as_slice() {
        [one] => Ok(dir.join(one)),
        _ => Err(ModelDirError::FileCount {
            dir: dir.to_path_buf(),
            format,
            extension,
            hint: if found.is_empty() { "" } else { hint },
            present: if found.is_empty() {
                present.to_vec()
            } else {
                Vec::new()
            },
            found,
        }),
    }
}

/// How [`ModelDirError::FileCount`] tells what it found.
fn found_text(found: &[String], present: &[String]) -> String {
    match (found, present) {
        ([], []) => "the folder is empty".to_string(),
        ([], present) => format!("found none (the folder holds: {})", present.join(", ")),
        (found, _) => format!("found {}: {}", found.len(), found.join(", ")),
    }
}

/// `dir/name`, which must be a file.
fn required_file(
    dir: &Path,
    format: ModelFormat,
    file: &'static str,
    why: &'static str,
) -> Result<PathBuf, ModelDirError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelDirError::MissingFile {
            dir: dir.to_path_buf(),
            format,
            file,
            why,
        })
    }
}

/// Whether `config.json` describes a BERT-family encoder.
fn is_encoder(config: &Path) -> Result<bool, ModelDirError> {
    let value: Value =
        serde_json::from_str(&read_text(config)?).map_err(|error| ModelDirError::Parse {
            path: config.to_path_buf(),
            message: error.to_string(),
        })?;
    let architectures: Vec<&str> = value
        .get("architectures")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !architectures.is_empty() {
        return Ok(architectures.iter().any(|name| {
            ENCODER_ARCHITECTURES
                .iter()
                .any(|family| name.contains(family))
        }));
    }
    Ok(value
        .get("model_type")
        .and_then(Value::as_str)
        .is_some_and(|kind| ENCODER_MODEL_TYPES.contains(&kind)))
}

fn read_text(path: &Path) -> Result<String, ModelDirError> {
    std::fs::read_to_string(path).map_err(|source| ModelDirError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `sluice-model.yaml`; answers the spec and the manifest's format.
fn read_sluice_manifest(
    dir: &Path,
    path: &Path,
    default_name: String,
) -> Result<(ModelSpec, ModelFormat), ModelDirError> {
    let manifest: Manifest =
        parse_sluice_manifest(&read_text(path)?).map_err(|error| ModelDirError::Parse {
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
    let spec = ModelSpec {
        name: manifest.name.unwrap_or(default_name),
        dir: dir.to_path_buf(),
        runtime,
        task: manifest.task,
        signature: manifest.signature,
        files: resolve_files(dir, manifest.files),
        prompt: manifest.prompt,
        answers: AnswerShape::Rows,
    };
    Ok((spec, manifest.format))
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
    let mlmodel = parse_mlmodel(&read_text(path)?).map_err(|error| ModelDirError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    let signature = mlmodel
        .signature
        .as_ref()
        .map(mlflow_signature)
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
        answers: AnswerShape::Mlflow,
    };
    match mlmodel.builtin_flavor() {
        Some("onnx") => {
            let model = flavor_data("onnx").unwrap_or_else(|| dir.join("model.onnx"));
            let files = ModelFiles {
                model: Some(model),
                ..ModelFiles::default()
            };
            return Ok(spec(RuntimeKind::Onnx, ModelTask::Predict, files));
        }
        Some(flavor) => {
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
        None => {}
    }
    Err(ModelDirError::Unsupported {
        path: path.to_path_buf(),
        message: format!(
            "flavors [{}] need MLflow's scoring server (`runtime.engine: mlflow`, chosen by the \
             operator from the flavors); the builtin runtime serves the `onnx`, \
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
        let spec = read(&dir, &Declared::default()).unwrap();
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
        let spec = read(&onnx, &Declared::default()).unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Onnx);
        assert_eq!(
            spec.signature.unwrap().inputs[0].data_type,
            SignatureType::Float
        );
        let prompt = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: prompt\ntask: llm/v1/chat\nprompt:\n  template: 'Say {{input}}'\n  upstream: {url: 'http://127.0.0.1:1/v1', model: m}\n",
        )]);
        assert_eq!(
            read(&prompt, &Declared::default()).unwrap().runtime,
            RuntimeKind::Prompt
        );
        let gguf = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: gguf\ntask: llm/v1/chat\nfiles: {model: m.gguf}\n",
        )]);
        assert_eq!(
            read(&gguf, &Declared::default()).unwrap().runtime,
            RuntimeKind::CausalLm
        );
    }

    #[test]
    fn contract_errors_name_the_problem() {
        let missing = std::env::temp_dir().join("sluice-no-such-model-dir");
        assert!(matches!(
            read(&missing, &Declared::default()),
            Err(ModelDirError::Read { .. })
        ));
        let empty = dir_with(&[]);
        assert!(matches!(
            read(&empty, &Declared::default()),
            Err(ModelDirError::NoManifest { .. })
        ));
        let garbage = dir_with(&[(SLUICE_MANIFEST_FILE, "format: [\n")]);
        assert!(matches!(
            read(&garbage, &Declared::default()),
            Err(ModelDirError::Parse { .. })
        ));
        let typo = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: onnx\ntask: predict\nfile: {}\n",
        )]);
        assert!(
            read(&typo, &Declared::default())
                .unwrap_err()
                .to_string()
                .contains("file")
        );
        let sklearn = dir_with(&[("MLmodel", "flavors:\n  sklearn: {pickled_model: m.pkl}\n")]);
        assert!(
            read(&sklearn, &Declared::default())
                .unwrap_err()
                .to_string()
                .contains("need MLflow's scoring server")
        );
        let no_prompt = dir_with(&[(SLUICE_MANIFEST_FILE, "format: prompt\ntask: llm/v1/chat\n")]);
        assert!(
            read(&no_prompt, &Declared::default())
                .unwrap_err()
                .to_string()
                .contains("`prompt` section")
        );
    }

    fn declared(format: ModelFormat, task: Option<ModelTask>) -> Declared {
        Declared {
            format: Some(format),
            task,
            signature: None,
        }
    }

    fn signature(column: &str) -> ModelSignature {
        ModelSignature {
            inputs: vec![SignatureField {
                name: Some(column.into()),
                data_type: SignatureType::Double,
                shape: None,
                required: None,
            }],
            ..ModelSignature::default()
        }
    }

    #[test]
    fn a_bare_onnx_file_is_served_as_declared() {
        let dir = dir_with(&[("iris.onnx", "graph"), ("README.md", "")]);
        let mut with_signature = declared(ModelFormat::Onnx, None);
        with_signature.signature = Some(signature("x"));
        let spec = read(&dir, &with_signature).unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Onnx);
        assert_eq!(spec.task, ModelTask::Predict);
        assert_eq!(spec.files.model, Some(dir.join("iris.onnx")));
        assert_eq!(spec.signature, Some(signature("x")));
        assert_eq!(
            read(&dir, &declared(ModelFormat::Onnx, None))
                .unwrap()
                .signature,
            None
        );

        let two = dir_with(&[("a.onnx", ""), ("b.ONNX", "")]);
        let error = read(&two, &declared(ModelFormat::Onnx, None)).unwrap_err();
        assert!(
            error.to_string().contains("found 2: a.onnx, b.ONNX"),
            "{error}"
        );
        let none = dir_with(&[("model.pkl", "")]);
        let error = read(&none, &declared(ModelFormat::Onnx, None)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("found none (the folder holds: model.pkl)"),
            "{error}"
        );
        let empty = dir_with(&[]);
        let error = read(&empty, &declared(ModelFormat::Onnx, None)).unwrap_err();
        assert!(error.to_string().contains("the folder is empty"), "{error}");
        let chat = read(&dir, &declared(ModelFormat::Onnx, Some(ModelTask::Chat))).unwrap_err();
        assert!(matches!(chat, ModelDirError::TaskMismatch { .. }), "{chat}");
    }

    #[test]
    fn a_bare_gguf_file_serves_alone_or_with_its_tokenizer_for_generation_tasks() {
        let dir = dir_with(&[("tiny.Q8_0.gguf", "GGUF"), ("tokenizer.json", "{}")]);
        let spec = read(&dir, &declared(ModelFormat::Gguf, None)).unwrap();
        assert_eq!(
            (spec.runtime, spec.task),
            (RuntimeKind::CausalLm, ModelTask::Chat)
        );
        assert_eq!(spec.files.model, Some(dir.join("tiny.Q8_0.gguf")));
        assert_eq!(spec.files.tokenizer, Some(dir.join("tokenizer.json")));
        let completions = declared(ModelFormat::Gguf, Some(ModelTask::Completions));
        assert_eq!(
            read(&dir, &completions).unwrap().task,
            ModelTask::Completions
        );
        for task in [ModelTask::Embeddings, ModelTask::Predict] {
            let error = read(&dir, &declared(ModelFormat::Gguf, Some(task))).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("it serves llm/v1/chat and llm/v1/completions"),
                "{error}"
            );
        }
        assert_eq!(spec.files.tokenizer, Some(dir.join("tokenizer.json")));
        // Alone, the file's own vocabulary is its tokenizer (read when the weights load).
        let alone = dir_with(&[("model.gguf", "GGUF")]);
        let spec = read(&alone, &declared(ModelFormat::Gguf, None)).unwrap();
        assert_eq!(spec.files.tokenizer, None);
    }

    #[test]
    fn a_bare_checkpoint_defaults_its_task_from_the_architecture() {
        let checkpoint = |config: &str| {
            dir_with(&[
                ("model.safetensors", ""),
                ("tokenizer.json", "{}"),
                ("config.json", config),
                ("modules.json", "[]"),
                ("1_Pooling/config.json", "{}"),
            ])
        };
        let safetensors = declared(ModelFormat::Safetensors, None);
        for (config, runtime, task) in [
            (
                r#"{"architectures": ["BertModel"]}"#,
                RuntimeKind::Embeddings,
                ModelTask::Embeddings,
            ),
            (
                r#"{"architectures": ["XLMRobertaModel"]}"#,
                RuntimeKind::Embeddings,
                ModelTask::Embeddings,
            ),
            (
                r#"{"architectures": ["MPNetForMaskedLM"]}"#,
                RuntimeKind::Embeddings,
                ModelTask::Embeddings,
            ),
            (
                r#"{"model_type": "distilbert"}"#,
                RuntimeKind::Embeddings,
                ModelTask::Embeddings,
            ),
            (
                r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#,
                RuntimeKind::CausalLm,
                ModelTask::Chat,
            ),
            (r#"{}"#, RuntimeKind::CausalLm, ModelTask::Chat),
        ] {
            let dir = checkpoint(config);
            let spec = read(&dir, &safetensors).unwrap();
            assert_eq!((spec.runtime, spec.task), (runtime, task), "{config}");
            assert_eq!(spec.files.model, Some(dir.join("model.safetensors")));
            assert_eq!(spec.files.config, Some(dir.join("config.json")));
            assert_eq!(spec.files.tokenizer, Some(dir.join("tokenizer.json")));
        }
        // A declared task wins over the architecture.
        let bert = checkpoint(r#"{"architectures": ["BertModel"]}"#);
        let chat = declared(ModelFormat::Safetensors, Some(ModelTask::Completions));
        assert_eq!(read(&bert, &chat).unwrap().runtime, RuntimeKind::CausalLm);
        let predict = declared(ModelFormat::Safetensors, Some(ModelTask::Predict));
        assert!(matches!(
            read(&bert, &predict),
            Err(ModelDirError::TaskMismatch { .. })
        ));
        let garbage = checkpoint("{not json");
        assert!(matches!(
            read(&garbage, &safetensors),
            Err(ModelDirError::Parse { .. })
        ));
        let sharded = dir_with(&[
            ("model-00001-of-00002.safetensors", ""),
            ("model-00002-of-00002.safetensors", ""),
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
        ]);
        let error = read(&sharded, &safetensors).unwrap_err().to_string();
        assert!(
            error.contains("found 2") && error.contains("sharded"),
            "{error}"
        );
        let no_tokenizer = dir_with(&[("model.safetensors", ""), ("config.json", "{}")]);
        let error = read(&no_tokenizer, &safetensors).unwrap_err().to_string();
        assert!(error.contains("has no `tokenizer.json`"), "{error}");
    }

    #[test]
    fn formats_that_cannot_describe_a_bare_folder_say_what_they_need() {
        let dir = dir_with(&[("model.onnx", "")]);
        for (format, needle) in [
            (
                ModelFormat::Mlflow,
                "format `mlflow` needs an `MLmodel` file",
            ),
            (
                ModelFormat::Prompt,
                "needs a `sluice-model.yaml` with a `prompt` section",
            ),
            (ModelFormat::Custom, "a custom engine image"),
        ] {
            let error = read(&dir, &declared(format, None)).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
        let error = read(&dir, &Declared::default()).unwrap_err().to_string();
        assert!(
            error.contains("neither an `MLmodel` nor a `sluice-model.yaml`")
                && error.contains("--declared-format"),
            "{error}"
        );
    }

    #[test]
    fn a_manifest_wins_but_must_agree_with_the_declared_format() {
        let manifest = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: onnx\ntask: predict\nfiles: {model: m.onnx}\n",
        )]);
        let mut agreeing = declared(ModelFormat::Onnx, Some(ModelTask::Chat));
        agreeing.signature = Some(signature("declared"));
        let spec = read(&manifest, &agreeing).unwrap();
        assert_eq!(spec.task, ModelTask::Predict, "the manifest's task wins");
        assert_eq!(spec.signature, Some(signature("declared")), "filled in");
        assert!(read(&manifest, &declared(ModelFormat::Custom, None)).is_ok());
        let error = read(&manifest, &declared(ModelFormat::Gguf, None))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("declares format `gguf`")
                && error.contains("sluice-model.yaml describes format `onnx`"),
            "{error}"
        );
        let error = read(&manifest, &declared(ModelFormat::Mlflow, None)).unwrap_err();
        assert!(
            matches!(error, ModelDirError::Contradiction { .. }),
            "{error}"
        );

        let signed = dir_with(&[(
            SLUICE_MANIFEST_FILE,
            "format: onnx\ntask: predict\nfiles: {model: m.onnx}\nsignature:\n  inputs: [{name: own, type: double}]\n",
        )]);
        assert_eq!(
            read(&signed, &agreeing).unwrap().signature,
            Some(signature("own")),
            "a manifest's signature wins"
        );

        let mlflow = dir_with(&[(MLMODEL_FILE, "flavors:\n  onnx: {data: m.onnx}\n")]);
        for format in [ModelFormat::Mlflow, ModelFormat::Onnx, ModelFormat::Custom] {
            let spec = read(&mlflow, &declared(format, None)).unwrap();
            assert_eq!(spec.runtime, RuntimeKind::Onnx);
        }
        for format in [
            ModelFormat::Safetensors,
            ModelFormat::Gguf,
            ModelFormat::Prompt,
        ] {
            let error = read(&mlflow, &declared(format, None))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(
                    "MLmodel describes an MLflow model (format `mlflow`, served by \
                                the onnx runtime)"
                ),
                "{error}"
            );
        }
    }
}
