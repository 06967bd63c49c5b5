//! The Sluice API: the `ServingEndpoint` and `ModelVersion` custom resources
//! (group `serving.sluice.dev`, version `v1alpha1`).
//!
//! Field names follow Kubernetes conventions and map one-to-one onto the upstream managed
//! model-serving API, so configurations carry across. Validation lives in the generated schema
//! (OpenAPI bounds, patterns and CEL rules), so the API server itself rejects bad objects; the
//! operator only re-checks what needs other objects (alias uniqueness across versions).

pub mod common;
pub mod generate;
pub mod model_version;
pub mod serving_endpoint;

pub use common::{API_GROUP, API_VERSION};
pub use model_version::{
    ModelFormat, ModelSource, ModelTask, ModelVersion, ModelVersionSpec, ModelVersionStatus,
};
pub use serving_endpoint::*;
