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
    /// Always null: log probabilities are not served.
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
    pub embedding: Vec<f32>,
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
    pub fn new(model: &str, vectors: Vec<Vec<f32>>, prompt_tokens: u64) -> Self {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| Embedding {
                object: "embedding".to_string(),
                index,
                embedding,
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
    fn embeddings_input_is_one_or_many() {
        let one: EmbeddingsRequest = serde_json::from_value(json!({"input": "a"})).unwrap();
        let many: EmbeddingsRequest = serde_json::from_value(json!({"input": ["a", "b"]})).unwrap();
        assert_eq!(one.input.into_vec(), vec!["a"]);
        assert_eq!(many.input.into_vec(), vec!["a", "b"]);
    }
}
