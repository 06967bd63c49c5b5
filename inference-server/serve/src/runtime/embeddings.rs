//! Sentence embeddings from a BERT-family model (candle), micro-batched.
//!
//! The files are those of a sentence-transformers directory: `model.safetensors`,
//! `config.json`, `tokenizer.json`, and optionally `modules.json` (does a `Normalize` module
//! follow?), `1_Pooling/config.json` (mean, CLS or max pooling) and
//! `sentence_bert_config.json` (`max_seq_length`). Without them: mean pooling, L2
//! normalisation, and the model's `max_position_embeddings`, as for all-MiniLM-L6-v2.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use serde_json::Value;
use sluice_protocol::ApiError;
use sluice_protocol::openai::{EmbeddingsRequest, EmbeddingsResponse};
use sluice_protocol::scoring::{ScoringInput, ScoringRequest, json_kind};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::{LoadContext, LoadError};
use crate::batcher::Batcher;
use crate::model_dir::{ModelSignature, ModelSpec};
use crate::signature;

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pooling {
    /// Average of the real (unpadded) tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
}

/// The model, tokenizer and post-processing of one embedding model.
struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
}

/// Vectors of one request, and how many tokens they took.
type Embedded = (Vec<Vec<f32>>, u64);

/// A loaded sentence-embedding model.
pub struct EmbeddingsModel {
    name: String,
    signature: Option<ModelSignature>,
    batcher: Batcher<Vec<String>, Embedded>,
    metrics: crate::metrics::ServeMetrics,
}

impl EmbeddingsModel {
    /// Loads weights and tokenizer on a blocking thread, then starts the batching worker.
    pub async fn load(spec: &ModelSpec, context: &LoadContext) -> Result<Self, LoadError> {
        let files = spec.files.clone();
        let dir = spec.dir.clone();
        let encoder = tokio::task::spawn_blocking(move || Encoder::load(&dir, &files))
            .await
            .map_err(|error| {
                LoadError::Unsupported(format!("the embeddings loader crashed: {error}"))
            })??;
        let encoder = Arc::new(encoder);
        let batcher = Batcher::spawn(
            "embeddings",
            context.batch,
            context.metrics.clone(),
            Arc::new(move |jobs: Vec<Vec<String>>| encoder.embed_jobs(jobs)),
        );
        Ok(Self {
            name: spec.name.clone(),
            signature: spec.signature.clone(),
            batcher,
            metrics: context.metrics.clone(),
        })
    }

    /// `/v1/embeddings`.
    pub async fn embeddings(
        &self,
        request: EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, ApiError> {
        let encoding = request.encoding()?;
        let texts = request.input.into_vec();
        if texts.is_empty() {
            return Err(ApiError::invalid(
                "`input` is an empty list; send at least one text",
            ));
        }
        let (vectors, tokens) = self.embed(texts).await?;
        Ok(EmbeddingsResponse::new(
            &self.name, vectors, tokens, encoding,
        ))
    }

    /// `/invocations` with strings (`inputs`/`instances` lists, or a one-column frame):
    /// one vector per row.
    pub async fn predict(&self, request: ScoringRequest) -> Result<Value, ApiError> {
        if let Some(signature) = &self.signature {
            signature::check_input(signature, &request.input)?;
            signature::resolve_params(signature, request.params)?;
        } else if let Some(name) = request.params.keys().next() {
            return Err(ApiError::invalid(format!(
                "unknown param `{name}`: this model declares no params"
            )));
        }
        let texts = match request.input {
            ScoringInput::Rows(rows) => rows,
            ScoringInput::Frame(frame) => match frame.columns.as_slice() {
                [_] => frame
                    .rows
                    .into_iter()
                    .filter_map(|row| row.into_iter().next())
                    .collect(),
                columns => {
                    return Err(ApiError::invalid(format!(
                        "an embedding model takes one text column; the request has {} ({})",
                        columns.len(),
                        columns.join(", ")
                    )));
                }
            },
        };
        let texts = texts
            .into_iter()
            .enumerate()
            .map(|(row, value)| match value {
                Value::String(text) => Ok(text),
                other => Err(ApiError::invalid(format!(
                    "row {row}: expected a string to embed, got {}",
                    json_kind(&other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (vectors, _) = self.embed(texts).await?;
        Ok(serde_json::to_value(vectors).unwrap_or(Value::Null))
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Embedded, ApiError> {
        let items = texts.len();
        let embedded = self.batcher.call(texts, items).await?;
        self.metrics.observe_tokens(embedded.1, 0);
        Ok(embedded)
    }
}

/// `modules.json` entries.
#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// `1_Pooling/config.json`.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

impl Encoder {
    fn load(dir: &Path, files: &crate::model_dir::ModelFiles) -> Result<Self, LoadError> {
        let weights = files
            .model
            .clone()
            .unwrap_or_else(|| dir.join("model.safetensors"));
        let root = weights
            .parent()
            .map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
        let config_path = files
            .config
            .clone()
            .unwrap_or_else(|| root.join("config.json"));
        let tokenizer_path = files
            .tokenizer
            .clone()
            .unwrap_or_else(|| root.join("tokenizer.json"));

        let config_text = read_text(&config_path)?;
        let model_type = serde_json::from_str::<Value>(&config_text)
            .ok()
            .and_then(|config| {
                config
                    .get("model_type")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if let Some(other) = model_type.filter(|kind| kind != "bert") {
            return Err(LoadError::Unsupported(format!(
                "{}: model_type `{other}` is not served; the embeddings runtime runs BERT-family models",
                config_path.display()
            )));
        }
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|error| invalid(&config_path, format!("not a BERT config: {error}")))?;
        let bytes = std::fs::read(&weights).map_err(|source| LoadError::Read {
            path: weights.clone(),
            source,
        })?;
        let device = Device::Cpu;
        let variables = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .map_err(|error| invalid(&weights, format!("not readable safetensors: {error}")))?;
        let model = BertModel::load(variables, &config).map_err(|error| {
            invalid(
                &weights,
                format!("weights do not fit the BERT config: {error}"),
            )
        })?;

        let max_tokens = sentence_config(&root).unwrap_or(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|error| invalid(&tokenizer_path, format!("not a tokenizer.json: {error}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            pad_id: config.pad_token_id as u32,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|error| invalid(&tokenizer_path, format!("bad truncation: {error}")))?;
        let (pooling, normalize) = post_processing(&root)?;
        tracing::info!(?pooling, normalize, max_tokens, "embedding model ready");
        Ok(Self {
            model,
            tokenizer,
            pooling,
            normalize,
        })
    }

    /// Embeds every job's texts in one forward pass and splits the vectors back.
    fn embed_jobs(&self, jobs: Vec<Vec<String>>) -> Vec<Result<Embedded, ApiError>> {
        let sizes: Vec<usize> = jobs.iter().map(Vec::len).collect();
        let texts: Vec<String> = jobs.into_iter().flatten().collect();
        match self.embed(texts) {
            Ok((vectors, tokens)) => {
                let mut vectors = vectors.into_iter();
                let mut tokens = tokens.into_iter();
                sizes
                    .iter()
                    .map(|&size| {
                        let job_tokens = tokens.by_ref().take(size).sum();
                        Ok((vectors.by_ref().take(size).collect(), job_tokens))
                    })
                    .collect()
            }
            Err(error) => {
                let error = ApiError::internal(format!("the embedding model failed: {error}"));
                sizes.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    /// One vector per text, and the token count of each.
    fn embed(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Vec<u64>), String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|error| error.to_string())?;
        let device = &self.model.device;
        let stack = |rows: Vec<&[u32]>| -> candle_core::Result<Tensor> {
            let rows = rows
                .into_iter()
                .map(|row| Tensor::new(row, device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        };
        let tokens: Vec<u64> = encodings
            .iter()
            .map(|encoding| {
                encoding
                    .get_attention_mask()
                    .iter()
                    .map(|&m| u64::from(m))
                    .sum()
            })
            .collect();
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = stack(encodings.iter().map(|e| e.get_ids()).collect())?;
            let type_ids = stack(encodings.iter().map(|e| e.get_type_ids()).collect())?;
            let mask = stack(encodings.iter().map(|e| e.get_attention_mask()).collect())?;
            let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let pooled = match self.pooling {
                Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
                Pooling::Mean => {
                    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                    summed.broadcast_div(&counts)?
                }
                Pooling::Max => {
                    // Padded positions get a large negative value so they never win.
                    let penalty = ((mask.ones_like()? - &mask)? * -1e9f64)?;
                    hidden.broadcast_add(&penalty)?.max(1)?
                }
            };
            let pooled = if self.normalize {
                let norms = pooled
                    .sqr()?
                    .sum_keepdim(D::Minus1)?
                    .sqrt()?
                    .clamp(1e-12f32, f32::MAX)?;
                pooled.broadcast_div(&norms)?
            } else {
                pooled
            };
            pooled.to_vec2::<f32>()
        };
        let vectors = run().map_err(|error| error.to_string())?;
        Ok((vectors, tokens))
    }
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, message: String) -> LoadError {
    LoadError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

/// `max_seq_length` from `sentence_bert_config.json`, when there is one.
fn sentence_config(root: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(root.join("sentence_bert_config.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    config
        .get("max_seq_length")?
        .as_u64()
        .and_then(|max| usize::try_from(max).ok())
}

/// Pooling and normalisation as sentence-transformers' `modules.json` says; mean pooling and
/// normalisation when it is absent.
fn post_processing(root: &Path) -> Result<(Pooling, bool), LoadError> {
    let modules_path = root.join("modules.json");
    let Ok(text) = std::fs::read_to_string(&modules_path) else {
        return Ok((Pooling::Mean, true));
    };
    let modules: Vec<Module> = serde_json::from_str(&text).map_err(|error| {
        invalid(
            &modules_path,
            format!("not a sentence-transformers modules list: {error}"),
        )
    })?;
    let normalize = modules
        .iter()
        .any(|module| module.kind.ends_with(".Normalize"));
    let pooling_dir: Option<PathBuf> = modules
        .iter()
        .find(|module| module.kind.ends_with(".Pooling"))
        .map(|module| root.join(&module.path));
    let pooling = match pooling_dir {
        None => Pooling::Mean,
        Some(dir) => {
            let path = dir.join("config.json");
            let config: PoolingConfig = serde_json::from_str(&read_text(&path)?)
                .map_err(|error| invalid(&path, format!("not a pooling config: {error}")))?;
            match (
                config.pooling_mode_mean_tokens,
                config.pooling_mode_cls_token,
                config.pooling_mode_max_tokens,
            ) {
                (true, false, false) => Pooling::Mean,
                (false, true, false) => Pooling::Cls,
                (false, false, true) => Pooling::Max,
                _ => {
                    return Err(LoadError::Unsupported(format!(
                        "{}: only one of mean, CLS or max pooling is served",
                        path.display()
                    )));
                }
            }
        }
    };
    Ok((pooling, normalize))
}
