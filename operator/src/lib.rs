//! The Sluice operator: controllers that turn `ModelVersion` and `ServingEndpoint` objects into
//! running, observable model servers.
//!
//! Each controller is a pipeline: pure steps (evaluate, build desired objects, compute status)
//! that take plain values and are tested from fixtures, and thin side-effecting steps (apply,
//! prune, write status) that talk to the API server.

pub mod autoscaler;
pub mod backoff;
pub mod caches;
pub mod conditions;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod model_version;
pub mod monitoring_metrics;
pub mod registry;
pub mod runtime;

/// Field manager of every write the operator makes to a status subresource.
pub const STATUS_MANAGER: &str = "sluice-operator/status";
/// Name the operator reports events under.
pub const CONTROLLER_NAME: &str = "sluice-operator";
