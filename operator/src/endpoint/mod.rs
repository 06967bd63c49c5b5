//! The ServingEndpoint controller pipeline: resolve → validate → build desired objects (pure),
//! then apply → prune → status (side effects).

pub mod claims;
pub mod controller;
pub mod desired;
pub mod plan;
pub mod pods;
pub mod resolve;
