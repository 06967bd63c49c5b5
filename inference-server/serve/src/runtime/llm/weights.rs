//! Loading a causal language model: the weights (Llama or Qwen2 from safetensors, or GGUF
//! quantised weights of either), its tokenizer (`tokenizer.json`, or a GGUF file's own
//! vocabulary: [`gguf_vocab`]), chat template and end-of-sequence tokens.
//!
//! The loaded [`Weights`] are shared and never run themselves; every request gets its own
//! [`Sequence`] model, a cheap copy whose tensors point at the same weights and which owns the
//! request's key/value cache.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::gguf_vocab;
use super::json_mode::Vocabulary;
use super::template::{self, ChatTemplate, TemplateSource};
use crate::model_dir::ModelSpec;
use crate::runtime::LoadError;

/// Context length assumed by candle's quantised Llama, which sizes its rotary tables so.
const QUANTIZED_LLAMA_CONTEXT: usize = 4096;

/// The architectures served.
#[derive(Clone)]
enum Architecture {
    /// Llama (also Mistral-style configs without sliding windows), from safetensors.
    Llama {
        model: llama::Llama,
        /// An empty cache whose rotary tables every sequence copies.
        cache: llama::Cache,
    },
    /// Qwen2 from safetensors.
    Qwen2(qwen2::ModelForCausalLM),
    /// GGUF `llama` architecture.
    QuantizedLlama(quantized_llama::ModelWeights),
    /// GGUF `qwen2` architecture. candle's model cannot be copied, so its sequences take
    /// turns: one runs at a time ([`Weights::max_sequences`]) and each starts with a cleared
    /// cache.
    QuantizedQwen2(Arc<Mutex<quantized_qwen2::ModelWeights>>),
}

/// A loaded model with everything generation needs besides the request.
pub struct Weights {
    architecture: Architecture,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template.
    pub template: ChatTemplate,
    /// Tokens that end a generation.
    pub eos: BTreeSet<u32>,
    /// Most tokens (prompt plus generated) one sequence may hold.
    pub context: usize,
    /// Every token's bytes, for JSON mode; read on first use.
    json_vocabulary: OnceLock<Vocabulary>,
}

/// One request's model: shares the weights, owns its cache.
pub struct Sequence(Architecture);

impl Sequence {
    /// Runs `tokens` (the prompt, then one token at a time) at position `position`; answers
    /// the next-token logits.
    pub fn forward(&mut self, tokens: &[u32], position: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match &mut self.0 {
            Architecture::Llama { model, cache } => model.forward(&input, position, cache)?,
            Architecture::Qwen2(model) => model.forward(&input, position)?,
            Architecture::QuantizedLlama(model) => model.forward(&input, position)?,
            Architecture::QuantizedQwen2(model) => model
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .forward(&input, position)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)
    }
}

impl Weights {
    /// A fresh sequence (empty cache).
    pub fn sequence(&self) -> Sequence {
        if let Architecture::QuantizedQwen2(model) = &self.architecture {
            model
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear_kv_cache();
        }
        Sequence(self.architecture.clone())
    }

    /// How many sequences may run side by side.
    pub fn max_sequences(&self) -> Option<usize> {
        match self.architecture {
            Architecture::QuantizedQwen2(_) => Some(1),
            _ => None,
        }
    }

    /// Loads the model `spec` describes. Blocking: call it off the async runtime.
    pub fn load(spec: &ModelSpec) -> Result<Self, LoadError> {
        let model_path =
            spec.files.model.clone().ok_or_else(|| {
                LoadError::Unsupported("the manifest names no `files.model`".into())
            })?;
        let root = model_path
            .parent()
            .map_or_else(|| spec.dir.clone(), Path::to_path_buf);
        let gguf = if is_gguf(&model_path)? {
            Some(read_gguf(&model_path)?)
        } else {
            None
        };
        // The named tokenizer, else `tokenizer.json` beside the weights, else (GGUF only) the
        // vocabulary in the file's metadata.
        let tokenizer_path = spec.files.tokenizer.clone().or_else(|| {
            let beside = root.join("tokenizer.json");
            let from_metadata = gguf
                .as_ref()
                .is_some_and(|(content, _)| gguf_vocab::has_vocab(&content.metadata));
            (!from_metadata || beside.is_file()).then_some(beside)
        });
        let (tokenizer, tokenizer_root, vocab_tokens) = match (&tokenizer_path, &gguf) {
            (Some(path), _) => {
                let tokenizer = Tokenizer::from_file(path).map_err(|error| {
                    invalid(path, format!("not a Hugging Face tokenizer.json: {error}"))
                })?;
                let parent = path
                    .parent()
                    .map_or_else(|| root.clone(), Path::to_path_buf);
                (tokenizer, parent, None)
            }
            (None, Some((content, _))) => {
                let vocab = gguf_vocab::read(&content.metadata)
                    .map_err(|error| invalid(&model_path, error.to_string()))?;
                let special = (vocab.bos_token, vocab.eos_token, vocab.end_of_generation);
                (vocab.tokenizer, root.clone(), Some(special))
            }
            (None, None) => {
                return Err(invalid(&model_path, "no tokenizer".to_string()));
            }
        };
        let tokenizer_config =
            read_json(&tokenizer_root.join("tokenizer_config.json"))?.unwrap_or(Value::Null);

        let mut eos = BTreeSet::new();
        let mut gguf_template = None;
        let (architecture, context, kind) = if let Some((content, reader)) = gguf {
            let gguf = load_gguf(&model_path, content, reader)?;
            eos.extend(gguf.eos);
            gguf_template = gguf.chat_template;
            (gguf.architecture, gguf.context, gguf.kind)
        } else {
            let config_path = spec
                .files
                .config
                .clone()
                .unwrap_or_else(|| root.join("config.json"));
            let config = read_json(&config_path)?.ok_or_else(|| LoadError::Read {
                path: config_path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            eos.extend(token_ids(config.get("eos_token_id")));
            if let Some(generation) = read_json(&root.join("generation_config.json"))? {
                eos.extend(token_ids(generation.get("eos_token_id")));
            }
            load_safetensors(&model_path, &config_path, &config)?
        };
        // The special tokens a template prints: tokenizer_config.json's, else the GGUF
        // vocabulary's.
        let special = |key: &str, from_vocab: Option<&String>| {
            template::special_token(&tokenizer_config, key)
                .or_else(|| from_vocab.cloned())
                .unwrap_or_default()
        };
        let (vocab_bos, vocab_eos, vocab_ends) = vocab_tokens.unwrap_or_default();
        eos.extend(vocab_ends);
        let bos_token = special("bos_token", vocab_bos.as_ref());
        let eos_token = special("eos_token", vocab_eos.as_ref());
        if let Some(id) = tokenizer.token_to_id(&eos_token) {
            eos.insert(id);
        }

        let template = chat_template(
            &spec.files.chat_template,
            &[tokenizer_root, root, spec.dir.clone()],
            &tokenizer_config,
            gguf_template,
            (bos_token, eos_token),
        )?;
        tracing::info!(
            kind,
            context,
            eos = ?eos,
            template = ?template.source,
            "causal language model loaded"
        );
        Ok(Self {
            architecture,
            tokenizer,
            template,
            eos,
            context,
            json_vocabulary: OnceLock::new(),
        })
    }

    /// Every token's bytes, for JSON mode (read from the tokenizer the first time).
    pub fn json_vocabulary(&self) -> &Vocabulary {
        self.json_vocabulary
            .get_or_init(|| Vocabulary::of(&self.tokenizer))
    }
}

/// Whether `path` starts with GGUF's magic bytes (else it is taken for safetensors).
fn is_gguf(path: &Path) -> Result<bool, LoadError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

/// What a GGUF file gives.
struct Gguf {
    architecture: Architecture,
    context: usize,
    kind: &'static str,
    eos: Option<u32>,
    chat_template: Option<String>,
}

/// A GGUF file's header (metadata and tensor index), and the open file its tensors are read
/// from.
fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>), LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|error| invalid(path, format!("not a GGUF file: {error}")))?;
    Ok((content, reader))
}

fn load_gguf(
    path: &Path,
    content: gguf_file::Content,
    mut reader: BufReader<File>,
) -> Result<Gguf, LoadError> {
    let text = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|value| value.to_string().ok())
            .cloned()
    };
    let number = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|value| value.to_u32().ok())
    };
    let arch = text("general.architecture").unwrap_or_default();
    let eos = number("tokenizer.ggml.eos_token_id");
    let chat_template = text("tokenizer.chat_template");
    let context = number(&format!("{arch}.context_length")).map(|n| n as usize);
    let unfit = |error: candle_core::Error| {
        invalid(
            path,
            format!("the weights do not make a {arch} model: {error}"),
        )
    };
    let device = Device::Cpu;
    let (architecture, context, kind) = match arch.as_str() {
        "llama" => (
            Architecture::QuantizedLlama(
                quantized_llama::ModelWeights::from_gguf(content, &mut reader, &device)
                    .map_err(unfit)?,
            ),
            context.map_or(QUANTIZED_LLAMA_CONTEXT, |n| n.min(QUANTIZED_LLAMA_CONTEXT)),
            "gguf/llama",
        ),
        "qwen2" => (
            Architecture::QuantizedQwen2(Arc::new(Mutex::new(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, &device)
                    .map_err(unfit)?,
            ))),
            context.ok_or_else(|| invalid(path, "no qwen2.context_length".to_string()))?,
            "gguf/qwen2",
        ),
        other => {
            return Err(LoadError::Unsupported(format!(
                "{}: GGUF architecture `{other}` is not served; the builtin runtime runs \
                 `llama` and `qwen2` (serve others with a llama.cpp engine)",
                path.display()
            )));
        }
    };
    Ok(Gguf {
        architecture,
        context,
        kind,
        eos,
        chat_template,
    })
}

fn load_safetensors(
    model_path: &Path,
    config_path: &Path,
    config: &Value,
) -> Result<(Architecture, usize, &'static str), LoadError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("llama");
    let bytes = std::fs::read(model_path).map_err(|source| LoadError::Read {
        path: model_path.to_path_buf(),
        source,
    })?;
    let device = Device::Cpu;
    let variables = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
        .map_err(|error| invalid(model_path, format!("not readable safetensors: {error}")))?;
    let unfit = |error: String| {
        invalid(
            model_path,
            format!("the weights do not fit the {model_type} config: {error}"),
        )
    };
    let config_error = |error: serde_json::Error| {
        invalid(config_path, format!("not a {model_type} config: {error}"))
    };
    match model_type {
        "llama" | "mistral" => {
            let config: llama::LlamaConfig =
                serde_json::from_value(config.clone()).map_err(config_error)?;
            let config = config.into_config(false);
            // candle's Llama loader unwraps a missing layer tensor; check them first so a
            // truncated file is an error, not a crash.
            for layer in 0..config.num_hidden_layers {
                let name = format!("model.layers.{layer}.self_attn.q_proj.weight");
                if !variables.contains_tensor(&name) {
                    return Err(unfit(format!("tensor `{name}` is missing")));
                }
            }
            let model = llama::Llama::load(variables, &config).map_err(|e| unfit(e.to_string()))?;
            let cache = llama::Cache::new(true, DType::F32, &config, &device)
                .map_err(|e| unfit(e.to_string()))?;
            Ok((
                Architecture::Llama { model, cache },
                config.max_position_embeddings,
                "llama",
            ))
        }
        "qwen2" => {
            let config: qwen2::Config =
                serde_json::from_value(config.clone()).map_err(config_error)?;
            let model = qwen2::ModelForCausalLM::new(&config, variables)
                .map_err(|e| unfit(e.to_string()))?;
            Ok((
                Architecture::Qwen2(model),
                config.max_position_embeddings,
                "qwen2",
            ))
        }
        other => Err(LoadError::Unsupported(format!(
            "{}: model_type `{other}` is not served; the builtin runtime runs `llama`, `mistral` \
             and `qwen2` causal language models",
            config_path.display()
        ))),
    }
}

/// The chat template: the manifest's file, else `chat_template.jinja` or
/// `tokenizer_config.json`'s `chat_template` beside the tokenizer or weights, else the GGUF
/// file's, else the plain default.
fn chat_template(
    named: &Option<PathBuf>,
    roots: &[PathBuf],
    tokenizer_config: &Value,
    gguf_template: Option<String>,
    (bos_token, eos_token): (String, String),
) -> Result<ChatTemplate, LoadError> {
    let compile = |source: String, from: TemplateSource, path: &Path| {
        ChatTemplate::new(source, bos_token.clone(), eos_token.clone(), from)
            .map_err(|message| invalid(path, message))
    };
    if let Some(path) = named {
        let source = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        return compile(
            source,
            TemplateSource::File(path.display().to_string()),
            path,
        );
    }
    for root in roots {
        let path = root.join("chat_template.jinja");
        let found = template::read_optional(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(source) = found {
            return compile(
                source,
                TemplateSource::File(path.display().to_string()),
                &path,
            );
        }
    }
    if let Some(source) = template::config_template(tokenizer_config) {
        let path = roots
            .first()
            .map_or_else(PathBuf::new, |root| root.join("tokenizer_config.json"));
        return compile(
            source,
            TemplateSource::File(path.display().to_string()),
            &path,
        );
    }
    if let Some(source) = gguf_template {
        return compile(
            source,
            TemplateSource::Gguf,
            Path::new("tokenizer.chat_template"),
        );
    }
    Ok(ChatTemplate::plain())
}

/// `eos_token_id` as configs write it: one id or a list.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(id)) => id
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(Value::as_u64)
            .filter_map(|id| u32::try_from(id).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// A JSON file if it is there.
fn read_json(path: &Path) -> Result<Option<Value>, LoadError> {
    let Some(text) = template::read_optional(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?
    else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| invalid(path, format!("not JSON: {error}")))
}

fn invalid(path: &Path, message: String) -> LoadError {
    LoadError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}
