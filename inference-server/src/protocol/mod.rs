//! Request and response formats shared by every subcommand of the data plane.
//!
//! - [`error`]: the error body `{"error_code", "message"}` and its HTTP status.
//! - [`scoring`]: the MLflow scoring protocol (`/invocations`): JSON and CSV inputs, normalised
//!   into a [`scoring::ScoringInput`].
//! - [`openai`]: OpenAI-compatible chat, completions and embeddings bodies, including the
//!   server-sent event chunks of a streamed chat completion.

pub mod error;
pub mod openai;
pub mod scoring;

pub use error::{ApiError, ErrorKind};
