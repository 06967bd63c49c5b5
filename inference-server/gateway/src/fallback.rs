//! `spec.aiGateway.fallback`: a request whose entity fails before any byte reached the caller
//! (a 5xx or 429 answer, a timeout, no pod that takes it) is sent to the next entity of the
//! config, in served-entity order after the one that failed, each entity at most once. Shadow
//! targets are never fallbacks; entities with no live traffic are (a standby model at 0 %). The
//! answer names the entity that gave it (`served-model-name`), and each fallback is counted by
//! reason (`sluice_gateway_fallbacks_total`). A request to one entity
//! (`/served-models/<entity>/invocations`) never falls back.

use std::sync::Arc;

use axum::response::Response;
use sluice_protocol::{ApiError, ErrorKind};

use crate::metrics::FallbackReason;
use crate::state::{EntityPool, LiveConfig};

/// Why the answer of an entity calls for the next one; `None` when it stands.
pub fn reason(answer: &Result<Response, ApiError>) -> Option<FallbackReason> {
    match answer {
        Ok(response) if response.status().as_u16() == 429 => Some(FallbackReason::RateLimited),
        Ok(response) if response.status().is_server_error() => Some(FallbackReason::ServerError),
        Ok(_) => None,
        Err(error) => match error.kind {
            ErrorKind::DeadlineExceeded => Some(FallbackReason::Timeout),
            ErrorKind::BadGateway | ErrorKind::Unavailable => Some(FallbackReason::Unavailable),
            _ => None,
        },
    }
}

/// The entity to try after those of `tried`: the first in served-entity order after the last
/// one tried, wrapping around, that is not a shadow target and was not tried.
pub fn next<'a>(config: &'a LiveConfig, tried: &[usize]) -> Option<(usize, &'a Arc<EntityPool>)> {
    let last = *tried.last()?;
    let count = config.entities.len();
    (1..count)
        .map(|step| (last + step) % count)
        .find(|&i| {
            let pool = &config.entities[i];
            !tried.contains(&i)
                && !config
                    .shadows
                    .iter()
                    .any(|(shadow, _)| Arc::ptr_eq(shadow, pool))
        })
        .map(|i| (i, &config.entities[i]))
}
