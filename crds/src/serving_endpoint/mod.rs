//! `ServingEndpoint`: one URL, several served entities, one traffic split.

mod ai_gateway;
mod capture;
mod cel;
mod entity;
mod monitoring;
mod status;
mod traffic;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Tag;
use cel::cel_route_target;

pub use ai_gateway::*;
pub use capture::*;
pub use entity::*;
pub use monitoring::*;
pub use status::*;
pub use traffic::*;

/// Most entities one endpoint may serve (the upstream limit).
pub const MAX_SERVED_ENTITIES: usize = 15;

/// One model-serving URL: the served entities (model versions, aliases or external models), how
/// traffic splits between them, request capture into an inference table, and gateway policies.
///
/// Changing the spec rolls out blue/green: the operator builds a pending config and promotes it
/// only when all its entities are ready; the gateway routes by `status.config`, never by spec.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "serving.sluice.dev",
    version = "v1alpha1",
    kind = "ServingEndpoint",
    plural = "servingendpoints",
    singular = "servingendpoint",
    shortname = "se",
    shortname = "sep",
    category = "sluice",
    namespaced,
    status = "ServingEndpointStatus",
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 24")
        .message("metadata.name must be a DNS-1035 label of at most 24 characters (it prefixes the names of the entity Deployments and Services)"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.state.ready"}"#,
    printcolumn = r#"{"name":"Config Update","type":"string","jsonPath":".status.state.configUpdate"}"#,
    printcolumn = r#"{"name":"Traffic","type":"string","jsonPath":".status.trafficSummary"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Config","type":"integer","jsonPath":".status.config.configVersion","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.servedEntities.all(a, self.servedEntities.exists_one(b, b.name == a.name))")
        .message("servedEntities: names must be unique")
        .field_path(".servedEntities"),
    validation = Rule::new("size(self.servedEntities) == 1 || has(self.trafficConfig)")
        .message("trafficConfig is required when more than one entity is served")
        .field_path(".trafficConfig"),
    validation = Rule::new(concat!("!has(self.trafficConfig) || self.trafficConfig.routes.all(r, self.servedEntities.exists(e, e.name == ", cel_route_target!("r"), "))"))
        .message("trafficConfig.routes: every route must name a served entity of this endpoint")
        .field_path(".trafficConfig.routes"),
    validation = Rule::new("!has(self.monitoring) || (has(self.autoCapture) && self.autoCapture.enabled)")
        .message("monitoring reads the inference table: it needs autoCapture.enabled")
        .field_path(".monitoring"),
    validation = Rule::new("!has(self.trafficConfig) || !has(self.trafficConfig.shadowRoutes) || self.trafficConfig.shadowRoutes.all(s, self.servedEntities.exists(e, e.name == s.servedEntityName))")
        .message("trafficConfig.shadowRoutes: every shadow route must name a served entity of this endpoint")
        .field_path(".trafficConfig.shadowRoutes"),
)]
pub struct ServingEndpointSpec {
    /// Free-text description shown to users of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Key/value tags, carried into usage records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tags: Vec<Tag>,

    /// The models this endpoint serves: registered model versions (by version or alias) or
    /// external models. Each becomes its own Deployment (external models run no pods).
    #[schemars(length(min = 1, max = 15))]
    pub served_entities: Vec<ServedEntity>,

    /// How live traffic splits between the served entities, plus optional shadow (mirror)
    /// routes. Optional with a single entity, which then receives all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_config: Option<TrafficConfig>,

    /// Request/response capture into an inference table by a sidecar beside every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_capture: Option<AutoCaptureConfig>,

    /// Gateway policies: rate limits, usage tracking, guardrails and fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_gateway: Option<AiGatewayConfig>,

    /// Monitoring of the inference table (requires `autoCapture`): a CronJob refreshes
    /// `<table>_profile_metrics` and `<table>_drift_metrics` beside the payload table, and
    /// thresholds set the `Drifting` and `QualityDegraded` conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringConfig>,
}
