//! The wire formats shared by `serve`, `gateway` and `capture` (the subcommands of
//! `inference-server`): what a client sends, what a model answers, and the files a model
//! directory describes itself with. Pure parsing and rendering, with no I/O, so that every parser
//! here is unit-tested and fuzzed (`fuzz/` at the repository root) without the server around it.
//!
//! - [`anthropic`]: OpenAI chat completions to and from Anthropic's Messages API, streams event
//!   by event (the gateway's external Anthropic entities).
//! - [`error`]: the error body `{"error_code", "message"}` and its HTTP status.
//! - [`scoring`]: the MLflow scoring protocol (`/invocations`): JSON and CSV inputs, normalised
//!   into a [`scoring::ScoringInput`].
//! - [`openai`]: OpenAI-compatible chat, completions and embeddings bodies, including the
//!   server-sent event chunks of a streamed chat completion.
//! - [`sse`]: server-sent events read as they arrive, and a streamed OpenAI answer reassembled
//!   into one body, as the capture sidecar records it.
//! - [`pii`]: personal data found in text (Presidio's kind names) and masked with typed
//!   placeholders: the gateway's guardrails, and the capture sidecar's masking of answers.
//! - [`manifest`]: the layout of a model directory's manifests, MLflow's `MLmodel` and our
//!   `sluice-model.yaml`.
//! - [`usage`]: the token counts of an answer, read while it streams past.
//! - [`units`]: sizes and durations as flags spell them (`16MiB`, `500ms`).
//! - [`process`]: the line a server prints once bound, for whoever started it on port 0.
//! - [`fuzz`]: what must hold for any input of each parser, as the fuzz targets check it.

pub mod anthropic;
pub mod error;
pub mod fuzz;
pub mod manifest;
pub mod openai;
pub mod pii;
pub mod process;
pub mod scoring;
pub mod sse;
pub mod units;
pub mod usage;

pub use error::{ApiError, ErrorKind};
