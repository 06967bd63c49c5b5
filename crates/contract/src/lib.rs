//! The contract between the Sluice operator and its data plane, one owner for each rule.
//!
//! The operator is the only place that resolves a ServingEndpoint: it publishes every entity
//! fully resolved in `status.config.servedEntities[]`, and the gateway (cluster mode), the
//! autoscaler and the capture sidecar read those values instead of applying defaults of their
//! own. Standalone mode, which has no operator, calls the same [`resolve`] step.
//!
//! - [`config`]: the operator configuration, where every default comes from.
//! - [`resolve`]: the spec's entities with every default filled in ([`resolve::ResolvedEntity`]),
//!   and the endpoint's capture settings.
//! - [`published`]: what of a resolved entity is published in status, and how readers get it
//!   back ([`published::HoldPolicy`], [`sluice_crds::ResolvedAutoscaling`]).
//! - [`labels`]: label names, child naming (`<endpoint>-<entity>-<revision>`) and ports.
//! - [`claim`]: `pvc://<claim>/<path>` URIs and the volumes that show them to containers.
//! - [`demand`]: what a gateway's `GET /demand` answers and the autoscaler reads.
//! - [`external`]: which external providers and settings the gateway calls, and where.
//! - [`feedback`]: human feedback on a request, as clients post it and sidecars record it.
//! - [`metadata`]: the `request_metadata` keys of an inference-table row that the capture
//!   sidecar writes and the monitor reads.
//! - [`mlflow`]: how MLflow and Databricks names (AI Gateway endpoints, registered models,
//!   served entities) become Kubernetes names.
//! - [`record`]: how the gateway hands an exchange no pod answered (a cache hit, a provider's
//!   answer) or a feedback to a capture sidecar, so it still becomes a row.
//! - [`support`]: the accepted fields this version does not act on, refused by name.
//! - [`usage`]: the admin price table and the cost of one request, for usage rows.
//! - [`headers`]: the header names the gateway and the capture sidecar agree on, and the one
//!   hop-by-hop filter both proxies use.

pub mod claim;
pub mod config;
pub mod demand;
pub mod external;
pub mod feedback;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod headers;
pub mod labels;
pub mod metadata;
pub mod mlflow;
pub mod published;
pub mod record;
pub mod resolve;
pub mod support;
pub mod usage;
