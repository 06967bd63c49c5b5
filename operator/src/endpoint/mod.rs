//! The ServingEndpoint controller pipeline: resolve (in `sluice-contract`) → plan, which renders
//! the final children ([`desired`]) and the status (pure), then apply → status → prune → events
//! ([`controller`], side effects).

pub mod children;
pub mod claims;
pub mod controller;
pub mod desired;
pub mod events;
pub mod monitor;
pub mod plan;
pub mod pods;
pub mod requeue;
