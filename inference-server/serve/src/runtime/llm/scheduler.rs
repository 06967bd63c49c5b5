//! The generation worker: one thread that owns every running sequence and advances them in
//! turn, one token each per round, so a long answer does not hold up a short one and a new
//! request starts within one round. (The model itself runs one sequence at a time: on a CPU
//! the matrix kernels already use every core.)
//!
//! Requests wait in a bounded queue (429 when it is full) until a slot among the
//! `max_active` running sequences frees up. A sequence stops when its caller goes away (the
//! client disconnected, or its deadline answered 504), when its own deadline passes, at an
//! end-of-sequence token, a stop sequence or `max_tokens`. Tokens are counted in the metrics
//! as they are read and generated, so cancelled work is counted too.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;
use sluice_protocol::{ApiError, ErrorKind};
use tokio::sync::mpsc;

use super::decode::{Delta, GenerationParams, TextStream};
use super::json_mode::JsonConstraint;
use super::logprobs::{self, TokenLogprob};
use super::weights::{Sequence, Weights};
use crate::metrics::ServeMetrics;

/// Requests waiting for a slot before callers are refused with 429.
const QUEUE_CAPACITY: usize = 256;

/// Why a generation ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What a running generation tells its caller, in order: `Started`, any number of `Token`
/// and `Text`, then `Finished` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// The sequence got a slot; its prompt is this many tokens.
    Started {
        /// Prompt tokens.
        prompt_tokens: usize,
    },
    /// A generated token's log-probability (only when the job asked), sent before the text
    /// it makes.
    Token(TokenLogprob),
    /// More text.
    Text(String),
    /// The end.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The generation failed (deadline, model error); nothing follows.
    Failed(ApiError),
}

/// One generation request.
pub struct Job {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// How to generate.
    pub params: GenerationParams,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Where the events go; dropping the receiver cancels the job.
    pub events: mpsc::UnboundedSender<Event>,
}

/// A handle to the worker; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    jobs: mpsc::Sender<Job>,
}

impl Scheduler {
    /// Starts the worker thread for `weights`, running at most `max_active` sequences.
    pub fn start(
        weights: Arc<Weights>,
        max_active: usize,
        metrics: ServeMetrics,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let max_active = weights
            .max_sequences()
            .map_or(max_active, |most| most.min(max_active));
        std::thread::Builder::new()
            .name("sluice-generate".to_string())
            .spawn(move || worker(&weights, max_active.max(1), &metrics, receiver))?;
        Ok(Self { jobs })
    }

    /// Queues a job; 429 when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                ErrorKind::RequestLimitExceeded,
                format!("{QUEUE_CAPACITY} generations are already waiting; retry later"),
            )
            .with_retry_after(Duration::from_secs(1)),
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::internal("the generation worker stopped")
            }
        })
    }
}

/// The worker loop: admit waiting jobs into free slots, then advance every running sequence
/// by one token. Ends when every [`Scheduler`] handle is gone.
fn worker(
    weights: &Weights,
    max_active: usize,
    metrics: &ServeMetrics,
    mut jobs: mpsc::Receiver<Job>,
) {
    let mut active: Vec<Running> = Vec::new();
    loop {
        if active.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => active.extend(Running::admit(job, weights, metrics)),
                None => return,
            }
        }
        while active.len() < max_active {
            match jobs.try_recv() {
                Ok(job) => active.extend(Running::admit(job, weights, metrics)),
                Err(_) => break,
            }
        }
        active.retain_mut(|running| {
            let step =
                std::panic::catch_unwind(AssertUnwindSafe(|| running.step(weights, metrics)));
            step.unwrap_or_else(|panic| {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                tracing::error!(reason, "the model panicked during generation");
                running.fail(ApiError::internal(format!(
                    "the model failed during generation: {reason}"
                )))
            })
        });
    }
}

/// A sequence with a slot.
struct Running {
    model: Sequence,
    /// Tokens to run next: the prompt, then the last generated token.
    pending: Vec<u32>,
    position: usize,
    generated: usize,
    text: TextStream,
    sampler: LogitsProcessor,
    /// Alternatives to report per token, when log-probabilities are asked for.
    logprobs: Option<usize>,
    /// JSON mode's constraint, when the answer must be a JSON object.
    json: Option<JsonConstraint>,
    greedy: bool,
    max_tokens: usize,
    deadline: Instant,
    started: Instant,
    events: mpsc::UnboundedSender<Event>,
    span: tracing::Span,
}

impl Running {
    /// Takes a job into a slot, unless its caller is gone or its deadline passed.
    fn admit(job: Job, weights: &Weights, metrics: &ServeMetrics) -> Option<Self> {
        if job.events.is_closed() {
            return None;
        }
        if Instant::now() >= job.deadline {
            let _ = job.events.send(Event::Failed(ApiError::new(
                ErrorKind::DeadlineExceeded,
                "the request waited past its deadline for a generation slot",
            )));
            return None;
        }
        let prompt_tokens = job.prompt.len();
        metrics.observe_tokens(prompt_tokens as u64, 0);
        job.events.send(Event::Started { prompt_tokens }).ok()?;
        let span = tracing::debug_span!(
            "generate",
            prompt_tokens,
            max_tokens = job.params.max_tokens,
            temperature = job.params.temperature,
        );
        Some(Self {
            model: weights.sequence(),
            pending: job.prompt,
            position: 0,
            generated: 0,
            text: TextStream::new(job.params.stop.clone()),
            sampler: job.params.sampler(),
            logprobs: job.params.logprobs,
            json: job.params.format.as_ref().map(JsonConstraint::new),
            greedy: job.params.greedy(),
            max_tokens: job.params.max_tokens,
            deadline: job.deadline,
            started: Instant::now(),
            events: job.events,
            span,
        })
    }

    /// Generates one token; false once the sequence is over.
    fn step(&mut self, weights: &Weights, metrics: &ServeMetrics) -> bool {
        let _entered = self.span.clone().entered();
        if self.events.is_closed() {
            tracing::debug!(generated = self.generated, "the caller went away; stopped");
            return false;
        }
        if Instant::now() >= self.deadline {
            return self.fail(ApiError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "the generation passed the request deadline after {} tokens",
                    self.generated
                ),
            ));
        }
        let next = self
            .model
            .forward(&self.pending, self.position)
            .and_then(|logits| self.choose(weights, logits));
        let (next, logprob) = match next {
            Ok(Some(next)) => next,
            Ok(None) => {
                return self.fail(ApiError::internal(format!(
                    "no token can continue the JSON answer after {} tokens",
                    self.generated
                )));
            }
            Err(error) => {
                return self.fail(ApiError::internal(format!(
                    "the model failed during generation: {error}"
                )));
            }
        };
        self.position += self.pending.len();
        if weights.eos.contains(&next) {
            return self.finish(weights, FinishReason::Stop);
        }
        self.generated += 1;
        metrics.observe_tokens(0, 1);
        if let Some(logprob) = logprob
            && self.events.send(Event::Token(logprob)).is_err()
        {
            return false;
        }
        match self.text.push(&weights.tokenizer, next) {
            Ok(Delta::Text(text)) => {
                if !text.is_empty() && self.events.send(Event::Text(text)).is_err() {
                    return false;
                }
            }
            Ok(Delta::Stop(text)) => {
                if !text.is_empty() {
                    let _ = self.events.send(Event::Text(text));
                }
                return self.end(FinishReason::Stop);
            }
            Err(message) => return self.fail(ApiError::internal(message)),
        }
        if let Some(json) = &mut self.json {
            json.advance(weights.json_vocabulary(), next);
            if json.is_done() {
                return self.finish(weights, FinishReason::Stop);
            }
        }
        if self.generated >= self.max_tokens {
            return self.finish(weights, FinishReason::Length);
        }
        self.pending = vec![next];
        true
    }

    /// The next token from the step's logits (masked in JSON mode, where `None` means no
    /// token fits) and, when asked, its log-probability in the model's own distribution.
    fn choose(
        &mut self,
        weights: &Weights,
        logits: Tensor,
    ) -> candle_core::Result<Option<(u32, Option<TokenLogprob>)>> {
        let (next, raw) = match &self.json {
            None => (self.sampler.sample(&logits)?, None),
            Some(json) => {
                let raw = logits.to_vec1::<f32>()?;
                let mut masked = raw.clone();
                // The answer ends when its object closes, never at an end-of-sequence token.
                for &eos in &weights.eos {
                    if let Some(logit) = masked.get_mut(eos as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
                if !json.mask(weights.json_vocabulary(), &mut masked, self.greedy) {
                    return Ok(None);
                }
                let masked = Tensor::new(masked, logits.device())?;
                (self.sampler.sample(&masked)?, Some(raw))
            }
        };
        let logprob = match (self.logprobs, raw) {
            (None, _) => None,
            (Some(top), Some(raw)) => Some(logprobs::of(&raw, next, top)),
            (Some(top), None) => Some(logprobs::of(&logits.to_vec1::<f32>()?, next, top)),
        };
        Ok(Some((next, logprob)))
    }

    /// Sends the text held back so far, then ends.
    fn finish(&mut self, weights: &Weights, reason: FinishReason) -> bool {
        let reason = match self.text.finish(&weights.tokenizer) {
            Ok(Delta::Text(text)) => {
                if !text.is_empty() {
                    let _ = self.events.send(Event::Text(text));
                }
                reason
            }
            Ok(Delta::Stop(text)) => {
                if !text.is_empty() {
                    let _ = self.events.send(Event::Text(text));
                }
                FinishReason::Stop
            }
            Err(message) => return self.fail(ApiError::internal(message)),
        };
        self.end(reason)
    }

    fn end(&mut self, reason: FinishReason) -> bool {
        tracing::debug!(
            generated = self.generated,
            reason = reason.as_str(),
            seconds = self.started.elapsed().as_secs_f64(),
            "generation finished"
        );
        let _ = self.events.send(Event::Finished {
            reason,
            completion_tokens: self.generated,
        });
        false
    }

    fn fail(&mut self, error: ApiError) -> bool {
        tracing::debug!(generated = self.generated, %error, "generation failed");
        let _ = self.events.send(Event::Failed(error));
        false
    }
}
