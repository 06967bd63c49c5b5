//! The gateway binary, standalone mode, in front of real upstream processes (`serve` with the
//! iris ONNX model, and `upstream.py` standing in for an engine): weighted splits, config
//! changes under load, failing pods, holding, streaming, shadows, errors, draining, load
//! shedding, callers checked with API keys, rate limits counted in Redis and fallback to the
//! next entity.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod auth;
mod cache;
mod errors;
mod external;
mod failures;
mod fallback;
mod holding;
mod quickstart;
mod rate_limits;
mod shedding;
mod split;
mod streaming;
