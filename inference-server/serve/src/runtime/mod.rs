//! The builtin runtimes, one submodule each, behind one [`Runtime`] enum the HTTP layer calls.
//!
//! - [`onnx`]: tabular and classic-ML ONNX graphs (tract), micro-batched.
//! - [`embeddings`]: BERT-family sentence embeddings (candle), micro-batched.
//! - [`llm`]: causal language models (candle; Llama and Qwen2, safetensors or GGUF).
//! - [`prompt`]: a prompt template sent to an OpenAI-compatible chat upstream.
//!
//! A runtime answers only the requests that make sense for it; the others get a 400 that says
//! which routes the model does serve.

pub mod embeddings;
pub mod llm;
mod mlflow_answer;
pub mod onnx;
mod onnx_ml;
pub mod prompt;

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use futures::stream::BoxStream;
use serde_json::Value;
use sluice_protocol::ApiError;
use sluice_protocol::openai::{
    ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, EmbeddingsRequest,
    EmbeddingsResponse,
};
use sluice_protocol::scoring::ScoringRequest;

use super::batcher::BatchPolicy;
use super::model_dir::{ModelSpec, RuntimeKind};
use crate::metrics::ServeMetrics;

/// Why a model's weights or files could not be loaded; `/health` reports it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but is not what the runtime needs.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The manifest names something this build cannot run.
    #[error("{0}")]
    Unsupported(String),
}

/// What every runtime gets at load time.
#[derive(Clone, Debug)]
pub struct LoadContext {
    /// Micro-batching window and size.
    pub batch: BatchPolicy,
    /// The serve metrics (batch sizes).
    pub metrics: ServeMetrics,
    /// Deadline of one request, also used for upstream calls.
    pub request_timeout: Duration,
}

/// An answer that may be streamed: a whole response body, or server-sent events.
pub enum Reply<T> {
    /// The whole body.
    Full(T),
    /// `text/event-stream` bytes, ending with `data: [DONE]`.
    Stream(BoxStream<'static, Result<Bytes, std::io::Error>>),
}

/// A chat answer.
pub type ChatReply = Reply<ChatResponse>;
/// A text completion answer.
pub type CompletionReply = Reply<CompletionResponse>;

/// A loaded model.
pub enum Runtime {
    /// An ONNX graph.
    Onnx(onnx::OnnxModel),
    /// A sentence-embedding model.
    Embeddings(embeddings::EmbeddingsModel),
    /// A prompt template with its upstream.
    Prompt(prompt::PromptModel),
    /// A causal language model.
    Llm(llm::LlmModel),
}

/// Loads the model `spec` describes. Heavy work runs on blocking threads.
pub async fn load(spec: &ModelSpec, context: &LoadContext) -> Result<Runtime, LoadError> {
    match spec.runtime {
        RuntimeKind::Onnx => Ok(Runtime::Onnx(onnx::OnnxModel::load(spec, context).await?)),
        RuntimeKind::Embeddings => Ok(Runtime::Embeddings(
            embeddings::EmbeddingsModel::load(spec, context).await?,
        )),
        RuntimeKind::Prompt => Ok(Runtime::Prompt(prompt::PromptModel::load(spec, context)?)),
        RuntimeKind::CausalLm => Ok(Runtime::Llm(llm::LlmModel::load(spec, context).await?)),
    }
}

impl Runtime {
    /// The runtime's name, as in metrics and `/health`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Onnx(_) => "onnx",
            Self::Embeddings(_) => "embeddings",
            Self::Prompt(_) => "prompt",
            Self::Llm(_) => "llm",
        }
    }

    /// `/invocations` with a scoring body: the value of `predictions`.
    pub async fn predict(&self, request: ScoringRequest) -> Result<Value, ApiError> {
        match self {
            Self::Onnx(model) => model.predict(request).await,
            Self::Embeddings(model) => model.predict(request).await,
            Self::Prompt(model) => model.predict(request).await,
            Self::Llm(model) => model.predict(request).await,
        }
    }

    /// A chat completion.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatReply, ApiError> {
        match self {
            Self::Prompt(model) => model.chat(request).await,
            Self::Llm(model) => model.chat(request).await,
            _ => Err(self.not_served("chat completions")),
        }
    }

    /// A text completion.
    pub async fn completions(
        &self,
        request: CompletionRequest,
    ) -> Result<CompletionReply, ApiError> {
        match self {
            Self::Prompt(model) => model.completions(request).await.map(Reply::Full),
            Self::Llm(model) => model.completions(request).await,
            _ => Err(self.not_served("text completions")),
        }
    }

    /// Embeddings.
    pub async fn embeddings(
        &self,
        request: EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, ApiError> {
        match self {
            Self::Embeddings(model) => model.embeddings(request).await,
            _ => Err(self.not_served("embeddings")),
        }
    }

    fn not_served(&self, what: &str) -> ApiError {
        let serves = match self {
            Self::Onnx(_) => {
                "/invocations with dataframe_split, dataframe_records, instances, inputs or CSV"
            }
            Self::Embeddings(_) => {
                "/v1/embeddings, and /invocations with `input`, `inputs` or `instances` of strings"
            }
            Self::Prompt(_) | Self::Llm(_) => {
                "/v1/chat/completions, /v1/completions and /invocations"
            }
        };
        ApiError::bad_request(format!(
            "this model ({} runtime) does not serve {what}; it serves {serves}",
            self.name()
        ))
    }
}
