//! Causal language models (candle): Llama and Qwen2 from safetensors, or GGUF quantised
//! weights of either, answering chat and text completions, streamed or whole.
//!
//! - [`weights`]: loading the model, tokenizer, chat template and end-of-sequence tokens.
//! - [`gguf_vocab`]: the tokenizer a GGUF file carries in its metadata.
//! - [`unsupported`]: request fields that would change the answer and are refused by name.
//! - [`logprobs`]: log-probabilities of generated tokens.
//! - [`json_mode`]: `response_format` (`json_object`, `json_schema`) by constrained decoding;
//!   [`json_schema`] compiles a schema into its recognizer.
//! - [`template`]: the chat template (minijinja).
//! - [`decode`]: sampling parameters and the incremental detokenizer with stop sequences.
//! - [`scheduler`]: the generation worker, which advances the running sequences in turn.
//!
//! A request becomes one job per choice; its answer is assembled from the job's events here,
//! as one OpenAI body or as `chat.completion.chunk` / `text_completion` server-sent events.

mod decode;
mod gguf_vocab;
mod json_mode;
mod json_schema;
mod logprobs;
mod scheduler;
mod template;
mod unsupported;
mod weights;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use sluice_protocol::openai::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatMessage, ChatRequest, ChatResponse,
    CompletionChoice, CompletionChunk, CompletionRequest, CompletionResponse, SSE_DONE, Sampling,
    Usage, completion_id, sse_error, sse_event, unix_seconds,
};
use sluice_protocol::scoring::{ScoringInput, ScoringRequest, json_kind};
use sluice_protocol::{ApiError, ErrorKind};
use tokio::sync::mpsc;

use self::decode::GenerationParams;
use self::json_mode::ResponseFormat;
use self::logprobs::{Asked, TokenLogprob};
use self::scheduler::{Event, FinishReason, Job, Scheduler};
use self::unsupported::Route;
use self::weights::Weights;
use super::{LoadContext, LoadError, Reply};
use crate::model_dir::{ModelSignature, ModelSpec};
use crate::signature;

/// Most choices (`n`) one request may ask for.
const MAX_CHOICES: u32 = 8;
/// The `params` of `/invocations` (the sampling fields of a completion).
const PREDICT_PARAMS: [&str; 5] = ["max_tokens", "temperature", "top_p", "stop", "seed"];

/// A loaded causal language model with its generation worker.
pub struct LlmModel {
    name: String,
    weights: Arc<Weights>,
    scheduler: Scheduler,
    signature: Option<ModelSignature>,
    request_timeout: Duration,
}

/// One finished choice.
struct Generated {
    text: String,
    reason: FinishReason,
    completion_tokens: usize,
    /// Each token's log-probability, when asked for.
    logprobs: Vec<TokenLogprob>,
}

/// What the streams of chat and completions differ in: how a piece of text, the end of a
/// choice and the usage are written as events.
trait ChunkShape: Send + 'static {
    fn first(&self) -> Option<bytes::Bytes>;
    fn text(&self, text: String) -> bytes::Bytes;
    fn end(&self, reason: FinishReason, usage: Usage) -> bytes::Bytes;
    fn usage(&self, usage: Usage) -> bytes::Bytes;
}

/// The id, time and model every chunk of one answer repeats.
#[derive(Clone)]
struct ChunkHeader {
    id: String,
    created: u64,
    model: String,
}

struct ChatChunks(ChunkHeader);

impl ChatChunks {
    fn chunk(
        &self,
        delta: ChatDelta,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> bytes::Bytes {
        let header = &self.0;
        let choices = if delta == ChatDelta::default() && finish.is_none() {
            Vec::new()
        } else {
            vec![ChatChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(|reason| reason.as_str().to_string()),
            }]
        };
        sse_event(&ChatChunk {
            id: header.id.clone(),
            object: "chat.completion.chunk".to_string(),
            created: header.created,
            model: header.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkShape for ChatChunks {
    fn first(&self) -> Option<bytes::Bytes> {
        let delta = ChatDelta {
            role: Some("assistant".to_string()),
            content: Some(String::new()),
        };
        Some(self.chunk(delta, None, None))
    }

    fn text(&self, text: String) -> bytes::Bytes {
        let delta = ChatDelta {
            role: None,
            content: Some(text),
        };
        self.chunk(delta, None, None)
    }

    fn end(&self, reason: FinishReason, usage: Usage) -> bytes::Bytes {
        self.chunk(ChatDelta::default(), Some(reason), Some(usage))
    }

    fn usage(&self, usage: Usage) -> bytes::Bytes {
        self.chunk(ChatDelta::default(), None, Some(usage))
    }
}

struct CompletionChunks(ChunkHeader);

impl CompletionChunks {
    fn chunk(&self, choice: Option<CompletionChoice>, usage: Option<Usage>) -> bytes::Bytes {
        let header = &self.0;
        sse_event(&CompletionChunk {
            id: header.id.clone(),
            object: "text_completion".to_string(),
            created: header.created,
            model: header.model.clone(),
            choices: choice.into_iter().collect(),
            usage,
        })
    }
}

impl ChunkShape for CompletionChunks {
    fn first(&self) -> Option<bytes::Bytes> {
        None
    }

    fn text(&self, text: String) -> bytes::Bytes {
        self.chunk(Some(completion_choice(0, text, None)), None)
    }

    fn end(&self, reason: FinishReason, usage: Usage) -> bytes::Bytes {
        self.chunk(
            Some(completion_choice(0, String::new(), Some(reason))),
            Some(usage),
        )
    }

    fn usage(&self, usage: Usage) -> bytes::Bytes {
        self.chunk(None, Some(usage))
    }
}

fn completion_choice(index: u32, text: String, reason: Option<FinishReason>) -> CompletionChoice {
    CompletionChoice {
        index,
        text,
        logprobs: None,
        finish_reason: reason.map(|reason| reason.as_str().to_string()),
    }
}

/// Log-probabilities are answered whole, not streamed (yet): a streamed request asking for
/// them is refused rather than answered without them.
fn refuse_streamed_logprobs(asked: Option<Asked>) -> Result<(), ApiError> {
    match asked {
        Some(_) => Err(ApiError::invalid(
            "`logprobs` is answered only without `stream`; leave one of them out",
        )),
        None => Ok(()),
    }
}

impl LlmModel {
    /// Loads the weights on a blocking thread and starts the generation worker.
    pub async fn load(spec: &ModelSpec, context: &LoadContext) -> Result<Self, LoadError> {
        let loading = spec.clone();
        let weights = tokio::task::spawn_blocking(move || Weights::load(&loading))
            .await
            .map_err(|error| {
                LoadError::Unsupported(format!("the language model loader crashed: {error}"))
            })??;
        let weights = Arc::new(weights);
        let scheduler = Scheduler::start(
            Arc::clone(&weights),
            context.batch.max_items,
            context.metrics.clone(),
        )
        .map_err(|error| {
            LoadError::Unsupported(format!("cannot start the generation thread: {error}"))
        })?;
        Ok(Self {
            name: spec.name.clone(),
            weights,
            scheduler,
            signature: spec.signature.clone(),
            request_timeout: context.request_timeout,
        })
    }

    /// `/v1/chat/completions`: the messages through the chat template, then generation.
    pub async fn chat(&self, request: ChatRequest) -> Result<Reply<ChatResponse>, ApiError> {
        unsupported::refuse(&request.extra)?;
        let asked = logprobs::asked(&request.extra, Route::Chat)?;
        let format = json_mode::response_format(&request.extra)?;
        let prompt = self.weights.template.render(&request.messages)?;
        // Templates print the special tokens themselves (as `apply_chat_template` does).
        let tokens = self.tokenize(&prompt, false)?;
        if request.sampling.stream {
            refuse_streamed_logprobs(asked)?;
            let header = self.header("chatcmpl");
            return self
                .stream(tokens, &request.sampling, format, ChatChunks(header))
                .await
                .map(Reply::Stream);
        }
        let choices = self
            .generate_choices(&tokens, &request.sampling, asked, format)
            .await?;
        let usage = usage_of(tokens.len(), &choices);
        let tokenizer = &self.weights.tokenizer;
        Ok(Reply::Full(ChatResponse {
            id: completion_id("chatcmpl"),
            object: "chat.completion".to_string(),
            created: unix_seconds(),
            model: self.name.clone(),
            choices: choices
                .into_iter()
                .zip(0..)
                .map(|(choice, index)| ChatChoice {
                    index,
                    logprobs: asked.map(|asked| logprobs::chat(&choice.logprobs, tokenizer, asked)),
                    message: ChatMessage::text("assistant", choice.text),
                    finish_reason: Some(choice.reason.as_str().to_string()),
                })
                .collect(),
            usage,
        }))
    }

    /// `/v1/completions`: each prompt continued; a streamed answer takes one prompt.
    pub async fn completions(
        &self,
        request: CompletionRequest,
    ) -> Result<Reply<CompletionResponse>, ApiError> {
        unsupported::refuse(&request.extra)?;
        let asked = logprobs::asked(&request.extra, Route::Completions)?;
        let format = json_mode::response_format(&request.extra)?;
        let prompts = request.prompt.into_vec();
        if prompts.is_empty() {
            return Err(ApiError::invalid(
                "`prompt` is an empty list; send at least one prompt",
            ));
        }
        if request.sampling.stream {
            refuse_streamed_logprobs(asked)?;
            let [prompt] = prompts.as_slice() else {
                return Err(ApiError::invalid(format!(
                    "a streamed completion takes one prompt; this request has {}",
                    prompts.len()
                )));
            };
            let tokens = self.tokenize(prompt, true)?;
            let header = self.header("cmpl");
            return self
                .stream(tokens, &request.sampling, format, CompletionChunks(header))
                .await
                .map(Reply::Stream);
        }
        let calls = prompts.iter().map(|prompt| async {
            let tokens = self.tokenize(prompt, true)?;
            let choices = self
                .generate_choices(&tokens, &request.sampling, asked, format.clone())
                .await?;
            Ok::<_, ApiError>((tokens.len(), choices))
        });
        let answers = futures::future::try_join_all(calls).await?;
        let prompt_tokens = answers.iter().map(|(tokens, _)| tokens).sum();
        let choices: Vec<Generated> = answers
            .into_iter()
            .flat_map(|(_, choices)| choices)
            .collect();
        let usage = usage_of(prompt_tokens, &choices);
        Ok(Reply::Full(CompletionResponse {
            id: completion_id("cmpl"),
            object: "text_completion".to_string(),
            created: unix_seconds(),
            model: self.name.clone(),
            choices: choices
                .into_iter()
                .zip(0..)
                .map(|(choice, index)| {
                    let logprobs = asked.map(|asked| {
                        logprobs::completion(&choice.logprobs, &self.weights.tokenizer, asked)
                    });
                    CompletionChoice {
                        logprobs,
                        ..completion_choice(index, choice.text, Some(choice.reason))
                    }
                })
                .collect(),
            usage,
        }))
    }

    /// `/invocations` with prompts (`inputs`/`instances` strings, or a one-column frame): one
    /// generated text per row. `params` may set the sampling fields of a completion.
    pub async fn predict(&self, request: ScoringRequest) -> Result<Value, ApiError> {
        if let Some(signature) = &self.signature {
            signature::check_input(signature, &request.input)?;
        }
        if let Some(unknown) = request
            .params
            .keys()
            .find(|name| !PREDICT_PARAMS.contains(&name.as_str()))
        {
            return Err(ApiError::invalid(format!(
                "unknown param `{unknown}`; a language model takes {}",
                PREDICT_PARAMS.join(", ")
            )));
        }
        let sampling: Sampling = serde_json::from_value(Value::Object(request.params))
            .map_err(|error| ApiError::invalid(format!("bad `params`: {error}")))?;
        let rows = match request.input {
            ScoringInput::Rows(rows) => rows,
            ScoringInput::Frame(frame) => match frame.columns.as_slice() {
                [_] => frame
                    .rows
                    .into_iter()
                    .filter_map(|row| row.into_iter().next())
                    .collect(),
                columns => {
                    return Err(ApiError::invalid(format!(
                        "a language model takes one prompt column; the request has {} ({})",
                        columns.len(),
                        columns.join(", ")
                    )));
                }
            },
        };
        let calls = rows.into_iter().enumerate().map(|(row, value)| {
            let sampling = &sampling;
            async move {
                let Value::String(prompt) = value else {
                    return Err(ApiError::invalid(format!(
                        "row {row}: expected a prompt string, got {}",
                        json_kind(&value)
                    )));
                };
                let tokens = self.tokenize(&prompt, true)?;
                let params = self.params(sampling, tokens.len())?;
                Ok(self.generate(tokens, params).await?.text)
            }
        });
        Ok(Value::from(futures::future::try_join_all(calls).await?))
    }

    fn header(&self, prefix: &str) -> ChunkHeader {
        ChunkHeader {
            id: completion_id(prefix),
            created: unix_seconds(),
            model: self.name.clone(),
        }
    }

    fn tokenize(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>, ApiError> {
        let encoding = self
            .weights
            .tokenizer
            .encode(text, special_tokens)
            .map_err(|error| ApiError::invalid(format!("cannot tokenize the prompt: {error}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn params(
        &self,
        sampling: &Sampling,
        prompt_tokens: usize,
    ) -> Result<GenerationParams, ApiError> {
        GenerationParams::new(sampling, prompt_tokens, self.weights.context)
    }

    /// Queues one generation; answers its events.
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerationParams,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.scheduler.submit(Job {
            prompt,
            params,
            deadline: Instant::now() + self.request_timeout,
            events,
        })?;
        Ok(receiver)
    }

    /// `n` choices of one prompt, generated side by side (seeds `seed`, `seed + 1`, ...).
    async fn generate_choices(
        &self,
        tokens: &[u32],
        sampling: &Sampling,
        asked: Option<Asked>,
        format: Option<ResponseFormat>,
    ) -> Result<Vec<Generated>, ApiError> {
        let n = sampling.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(ApiError::invalid(format!(
                "`n` is {n}; it must be 1 to {MAX_CHOICES}"
            )));
        }
        let mut params = self.params(sampling, tokens.len())?;
        params.logprobs = asked.map(|asked| asked.top);
        params.format = format;
        let calls = (0..u64::from(n)).map(|choice| {
            let params = params.with_seed(params.seed.wrapping_add(choice));
            self.generate(tokens.to_vec(), params)
        });
        futures::future::try_join_all(calls).await
    }

    /// One whole generation.
    async fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenerationParams,
    ) -> Result<Generated, ApiError> {
        let mut events = self.submit(prompt, params)?;
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Started { .. } => {}
                Event::Token(logprob) => logprobs.push(logprob),
                Event::Text(piece) => text.push_str(&piece),
                Event::Finished {
                    reason,
                    completion_tokens,
                } => {
                    return Ok(Generated {
                        text,
                        reason,
                        completion_tokens,
                        logprobs,
                    });
                }
                Event::Failed(error) => return Err(error),
            }
        }
        Err(ApiError::internal(
            "the generation worker dropped the request",
        ))
    }

    /// A streamed generation: waits for a slot (so a queue wait past the deadline is still a
    /// 504), then answers events as they come. Dropping the stream (the client went away)
    /// stops the generation.
    async fn stream(
        &self,
        tokens: Vec<u32>,
        sampling: &Sampling,
        format: Option<ResponseFormat>,
        shape: impl ChunkShape,
    ) -> Result<BoxStream<'static, Result<bytes::Bytes, std::io::Error>>, ApiError> {
        if sampling.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "a streamed answer has one choice; leave `n` at 1",
            ));
        }
        let include_usage = sampling.include_usage();
        let mut params = self.params(sampling, tokens.len())?;
        params.format = format;
        let mut events = self.submit(tokens, params)?;
        let prompt_tokens = match events.recv().await {
            Some(Event::Started { prompt_tokens }) => prompt_tokens,
            Some(Event::Failed(error)) => return Err(error),
            _ => {
                return Err(ApiError::internal(
                    "the generation worker dropped the request",
                ));
            }
        };
        let first = shape.first();
        let body = futures::stream::unfold(
            (events, Some(shape)),
            move |(mut events, shape)| async move {
                let shape = shape?;
                let mut out: Vec<bytes::Bytes> = Vec::new();
                let mut keep = true;
                match events.recv().await {
                    Some(Event::Text(text)) => out.push(shape.text(text)),
                    Some(Event::Finished {
                        reason,
                        completion_tokens,
                    }) => {
                        let usage = Usage::new(prompt_tokens as u64, completion_tokens as u64);
                        out.push(shape.end(reason, usage));
                        if include_usage {
                            out.push(shape.usage(usage));
                        }
                        out.push(bytes::Bytes::from_static(SSE_DONE));
                        keep = false;
                    }
                    Some(Event::Failed(error)) => {
                        out.push(sse_error(&error));
                        keep = false;
                    }
                    Some(Event::Started { .. } | Event::Token(_)) => {}
                    None => {
                        out.push(sse_error(&ApiError::new(
                            ErrorKind::Internal,
                            "the generation worker dropped the request",
                        )));
                        keep = false;
                    }
                }
                let bytes: bytes::Bytes = out.concat().into();
                Some((Ok(bytes), (events, keep.then_some(shape))))
            },
        );
        Ok(futures::stream::iter(first.map(Ok)).chain(body).boxed())
    }
}

/// Usage of prompts of `prompt_tokens` tokens in all and their generations.
fn usage_of(prompt_tokens: usize, choices: &[Generated]) -> Usage {
    let completion = choices
        .iter()
        .map(|choice| choice.completion_tokens)
        .sum::<usize>();
    Usage::new(prompt_tokens as u64, completion as u64)
}
