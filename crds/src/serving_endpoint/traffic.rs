//! Traffic split between served entities.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::cel::cel_route_target;

/// How requests to the endpoint are split between its served entities.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.routes.map(r, r.trafficPercentage).sum() == 100")
        .message("trafficConfig.routes: trafficPercentage values must add up to 100")
        .field_path(".routes"),
    validation = Rule::new(concat!("!has(self.shadowRoutes) || self.shadowRoutes.all(s, !self.routes.exists(r, ", cel_route_target!("r"), " == s.servedEntityName && r.trafficPercentage > 0))"))
        .message("trafficConfig.shadowRoutes: a shadow route must not target an entity that also receives live traffic")
        .field_path(".shadowRoutes"),
    validation = Rule::new(concat!("self.routes.all(a, self.routes.exists_one(b, ", cel_route_target!("b"), " == ", cel_route_target!("a"), "))"))
        .message("trafficConfig.routes: each served entity may appear in at most one route")
        .field_path(".routes"),
)]
pub struct TrafficConfig {
    /// Live routes: each names a served entity and the share of requests it answers.
    #[schemars(length(min = 1, max = 15))]
    pub routes: Vec<Route>,
    /// Shadow routes: a share of requests is copied to another entity, whose responses are
    /// captured but never returned to the caller and never delay it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub shadow_routes: Option<Vec<ShadowRoute>>,
}

/// A live route.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.servedEntityName) != has(self.servedModelName)")
        .message("a route names its entity with exactly one of servedEntityName or servedModelName"),
)]
pub struct Route {
    /// Name of the served entity this route sends traffic to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub served_entity_name: Option<String>,
    /// Upstream spelling of `servedEntityName`, accepted for configs carried over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub served_model_name: Option<String>,
    /// Percentage of requests (0–100) this entity answers; all routes add up to 100.
    #[schemars(range(min = 0, max = 100))]
    pub traffic_percentage: i32,
}

impl Route {
    /// The entity this route points at, whichever spelling named it.
    pub fn target(&self) -> &str {
        self.served_entity_name
            .as_deref()
            .or(self.served_model_name.as_deref())
            .unwrap_or_default()
    }
}

/// A shadow (mirror) route.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRoute {
    /// Name of the served entity that receives the mirrored copies.
    #[schemars(length(min = 1, max = 32))]
    pub served_entity_name: String,
    /// Percentage of all requests (1–100) that are mirrored.
    #[schemars(range(min = 1, max = 100))]
    pub mirror_percentage: i32,
}
