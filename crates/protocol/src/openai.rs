//! OpenAI-compatible bodies: chat completions, text completions and embeddings, the
//! `chat.completion.chunk` events of a streamed chat, and token usage.
//!
//! Requests keep fields they do not know in `extra` so that a passthrough to an upstream loses
//! nothing; responses carry exactly the fields the `openai` client reads.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text; OpenAI also allows a list of content parts, which is kept as is.
    #[serde(default)]
    pub content: Value,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: Value::String(content.into()),
        }
    }

    /// The message text: the string content, or the `text` parts joined.
    pub fn text_content(&self) -> String {
        match &self.content {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        }
    }
}

/// `stop`: one string or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// Sampling fields shared by chat and completions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Maximum tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// 0.0–2.0; 0 means greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Whether to answer with server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Options of a streamed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Seed of sampled decoding: the same seed, prompt and parameters give the same text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Sampling {
    /// The stop sequences, as a list.
    pub fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(StopSequences::One(stop)) => vec![stop.clone()],
            Some(StopSequences::Many(stops)) => stops.clone(),
        }
    }

    /// Whether a streamed answer ends with a chunk that carries only `usage`.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name; informational for a pod that serves one model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Any other field, kept for passthrough (`extra_params`, `user`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `prompt`: one string or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    /// A single text.
    One(String),
    /// Several texts, answered in order.
    Many(Vec<String>),
}

impl TextInput {
    /// The texts, in order.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: TextInput,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// The model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text(s) to embed.
    pub input: TextInput,
    /// `float` (the default) is the only encoding served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read.
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with `total_tokens` filled in.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One choice of a chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Position among the choices.
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// Log-probabilities of the answer's tokens, when asked for (`{"content": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// `stop`, `length`, ...
    pub finish_reason: Option<String>,
}

/// The answer to a chat request (`object: "chat.completion"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// A unique id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The generated choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Usage,
}

/// One choice of a text completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Position among the choices.
    pub index: u32,
    /// The generated text.
    pub text: String,
    /// Log-probabilities of the answer's tokens, when asked for; else null.
    pub logprobs: Option<Value>,
    /// `stop`, `length`, ...
    pub finish_reason: Option<String>,
}

/// The answer to a completions request (`object: "text_completion"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// A unique id.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The generated choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One vector of an embeddings answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input text.
    pub index: usize,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// A vector as `encoding_format` asks: a list of floats, or base64 of little-endian float32
/// (which the `openai` Python client requests unless told otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `float`.
    Float(Vec<f32>),
    /// `base64`.
    Base64(String),
}

/// How embeddings are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodingFormat {
    /// Lists of floats.
    #[default]
    Float,
    /// Base64 of little-endian float32.
    Base64,
}

impl EmbeddingsRequest {
    /// The requested encoding; 400 for one not served.
    pub fn encoding(&self) -> Result<EncodingFormat, super::ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(EncodingFormat::Float),
            Some("base64") => Ok(EncodingFormat::Base64),
            Some(other) => Err(super::ApiError::invalid(format!(
                "encoding_format `{other}` is not served; use `float` or `base64`"
            ))),
        }
    }
}

/// Standard base64 (with padding) of `values` as little-endian float32.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The answer to an embeddings request (`object: "list"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    /// One entry per input text, in order.
    pub data: Vec<Embedding>,
    /// The model that answered.
    pub model: String,
    /// Token counts (`completion_tokens` is 0).
    pub usage: Usage,
}

impl EmbeddingsResponse {
    /// Wraps vectors, in input order, as the OpenAI body.
    pub fn new(
        model: &str,
        vectors: Vec<Vec<f32>>,
        prompt_tokens: u64,
        encoding: EncodingFormat,
    ) -> Self {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| Embedding {
                object: "embedding".to_string(),
                index,
                embedding: match encoding {
                    EncodingFormat::Float => EmbeddingVector::Float(vector),
                    EncodingFormat::Base64 => EmbeddingVector::Base64(base64_f32(&vector)),
                },
            })
            .collect();
        Self {
            object: "list".to_string(),
            data,
            model: model.to_string(),
            usage: Usage::new(prompt_tokens, 0),
        }
    }
}

/// The text of a chunk's `delta`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a `chat.completion.chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    /// Position among the choices.
    pub index: u32,
    /// What this chunk adds.
    pub delta: ChatDelta,
    /// Set in the last chunk of the choice.
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed chat (`object: "chat.completion.chunk"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The same id in every chunk of one answer.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// The choices this chunk adds to (none in a usage-only chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts, in the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One server-sent event of a streamed text completion (`object: "text_completion"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    /// The same id in every chunk of one answer.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// The choices this chunk adds to (none in a usage-only chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts, in the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The last event of every stream.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// One server-sent event carrying `value` as JSON.
pub fn sse_event<T: Serialize>(value: &T) -> bytes::Bytes {
    // Serialising these plain structs cannot fail; an empty object would still be valid JSON.
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
    bytes::Bytes::from(format!("data: {json}\n\n"))
}

/// The event that ends a stream which failed after it started: OpenAI's error shape, which
/// the `openai` client raises as an `APIError`.
pub fn sse_error(error: &super::ApiError) -> bytes::Bytes {
    sse_event(&serde_json::json!({
        "error": {"message": error.message, "type": error.kind.code(), "code": error.kind.code()}
    }))
}

/// A fresh completion id such as `chatcmpl-18c6a1f0e2b3`.
pub fn completion_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{count:04x}", unix_seconds())
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_request_keeps_unknown_fields_and_reads_sampling() {
        let request: ChatRequest = serde_json::from_value(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5, "stop": "\n", "stream": true, "user": "ana"
        }))
        .unwrap();
        assert_eq!(request.sampling.temperature, Some(0.5));
        assert_eq!(request.sampling.stop, Some(StopSequences::One("\n".into())));
        assert!(request.sampling.stream);
        assert_eq!(request.extra["user"], json!("ana"));
        assert_eq!(request.messages[0].text_content(), "hi");
    }

    #[test]
    fn sampling_reads_seed_stop_lists_and_stream_options() {
        let request: CompletionRequest = serde_json::from_value(json!({
            "prompt": "x", "seed": 7, "stop": ["a", "b"],
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(request.sampling.seed, Some(7));
        assert_eq!(request.sampling.stop_sequences(), vec!["a", "b"]);
        assert!(request.sampling.include_usage());
        assert!(request.extra.is_empty(), "{:?}", request.extra);
        let chunk = ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: None,
                    content: Some("hi".into()),
                },
                finish_reason: None,
            }],
            usage: None,
        };
        assert_eq!(
            sse_event(&chunk),
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n"
        );
    }

    #[test]
    fn base64_embeddings_are_little_endian_float32() {
        // Python: base64.b64encode(array.array("f", [1.0, -2.5]).tobytes())
        assert_eq!(base64_f32(&[1.0, -2.5]), "AACAPwAAIMA=");
        assert_eq!(base64_f32(&[0.5]), "AAAAPw==");
        assert_eq!(base64_f32(&[]), "");
        let request: EmbeddingsRequest =
            serde_json::from_value(json!({"input": "a", "encoding_format": "int8"})).unwrap();
        assert!(request.encoding().unwrap_err().message.contains("int8"));
    }

    #[test]
    fn embeddings_input_is_one_or_many() {
        let one: EmbeddingsRequest = serde_json::from_value(json!({"input": "a"})).unwrap();
        let many: EmbeddingsRequest = serde_json::from_value(json!({"input": ["a", "b"]})).unwrap();
        assert_eq!(one.input.into_vec(), vec!["a"]);
        assert_eq!(many.input.into_vec(), vec!["a", "b"]);
    }
}
