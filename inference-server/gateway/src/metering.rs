//! Tokens of each answer, read as it streams to the client: counted per entity
//! (`sluice_gateway_tokens_total`) and charged to the caller's token budgets when it ends.
//!
//! Only answers that can carry token counts are metered: those of the OpenAI routes, and any
//! answer of an endpoint with a token budget. An answer that reports no usage is counted in
//! `sluice_gateway_uncounted_answers_total` and charges nothing. A streamed chat or completion
//! that a token budget applies to is made to report its usage (`stream_options.include_usage`)
//! even when the client did not ask, and the usage chunk is then removed from what the client
//! gets: a caller cannot stream past a token budget by not asking for usage.

use std::sync::Arc;

use http::HeaderMap;
use sluice_protocol::usage::{AnswerFormat, UsageMeter};

use crate::metrics::{EntityMetrics, TokenDirection};
use crate::ratelimit::{Admission, RateLimiter};

/// How one answer is metered.
#[derive(Debug, Default)]
pub struct Metering {
    /// The token budgets to charge, if the endpoint has any.
    pub charge: Option<Charge>,
    /// The gateway asked the model for a usage chunk the client did not ask for
    /// ([`sluice_protocol::usage::request_usage`]): remove it from the answer.
    pub strip_usage_chunk: bool,
}

/// The token budgets an answer is charged to.
#[derive(Debug)]
pub struct Charge {
    /// The limiter that admitted the request.
    pub limiter: Arc<RateLimiter>,
    /// What it admitted.
    pub admission: Admission,
}

/// Meters one answer; its counts are used when it is dropped (the body ended, failed, or the
/// client went away).
#[derive(Debug)]
pub struct TokenMeter {
    meter: Option<UsageMeter>,
    metrics: EntityMetrics,
    charge: Option<Charge>,
}

impl TokenMeter {
    /// A meter for an answer with `headers`, when it can carry token counts.
    pub fn of(
        headers: &HeaderMap,
        metrics: &EntityMetrics,
        charge: Option<Charge>,
    ) -> Option<Self> {
        let format = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(AnswerFormat::of_content_type)?;
        Some(Self {
            meter: Some(UsageMeter::new(format)),
            metrics: metrics.clone(),
            charge,
        })
    }

    /// Takes the next bytes of the answer.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(meter) = self.meter.as_mut() {
            meter.feed(bytes);
        }
    }
}

impl Drop for TokenMeter {
    fn drop(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let Some(counts) = meter.finish() else {
            self.metrics.uncounted.inc();
            return;
        };
        self.metrics
            .tokens(TokenDirection::Input, counts.input.unwrap_or(0));
        self.metrics
            .tokens(TokenDirection::Output, counts.output.unwrap_or(0));
        if let Some(Charge { limiter, admission }) = self.charge.take() {
            limiter.charge(admission, counts.total());
        }
    }
}
