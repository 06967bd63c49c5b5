//! Observed state of a ServingEndpoint, mirroring the upstream `state`, `config` and
//! `pending_config` objects. Defaults are published here, never written into the spec.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{
    CaptureOverflow, CaptureTableFormat, Engine, ExternalModel, MonitoringRefresh, ShadowRoute,
    WorkloadSize, WorkloadType,
};

/// Observed state of a ServingEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingEndpointStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Readiness of the active config and progress of any update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EndpointState>,
    /// The config being served now; the gateway routes by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<EndpointConfigStatus>,
    /// The config being rolled out; promoted to `config` when all its entities are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_config: Option<EndpointConfigStatus>,
    /// Where the endpoint is called: the gateway path of its invocations route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// One-line summary of the active traffic split, e.g. `champion:90,challenger:10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_summary: Option<String>,
    /// `Ready`, `ConfigUpdated`, `Degraded` and others, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The monitoring's CronJob and its newest refresh, when `spec.monitoring` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringStatus>,
}

/// The state of an endpoint's monitoring.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringStatus {
    /// The CronJob that refreshes the tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// The Job of the newest finished refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// What the newest finished refresh did and found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<MonitoringRefresh>,
    /// The value of the `serving.sluice.dev/refresh-monitoring` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_requested: Option<String>,
}

/// Endpoint readiness and update progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointState {
    /// `READY` when every entity of the active config is ready, else `NOT_READY`.
    pub ready: ReadyState,
    /// `NOT_UPDATING`, `IN_PROGRESS` (a pending config is rolling out), `UPDATE_FAILED` (it
    /// failed; the old config keeps serving) or `UPDATE_CANCELED`.
    pub config_update: ConfigUpdateState,
}

// Endpoint readiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum ReadyState {
    /// Every entity of the active config is ready.
    READY,
    /// At least one entity of the active config is not ready.
    #[default]
    NOT_READY,
}

// Config update progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(non_camel_case_types)]
pub enum ConfigUpdateState {
    /// No update is rolling out.
    #[default]
    NOT_UPDATING,
    /// A pending config is rolling out.
    IN_PROGRESS,
    /// The last update failed; the previous config keeps serving.
    UPDATE_FAILED,
    /// The last update was cancelled.
    UPDATE_CANCELED,
}

/// A resolved config: entities with their defaults filled in, and the traffic split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConfigStatus {
    /// Increases by one with every config the endpoint rolls out.
    pub config_version: i64,
    /// The `metadata.generation` of the spec this config was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_generation: Option<i64>,
    /// When the rollout of this config started (pending configs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// The entities of this config, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_entities: Vec<ServedEntityStatus>,
    /// Live routes by entity name, percentages adding up to 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ResolvedRoute>,
    /// Shadow routes by entity name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_routes: Vec<ShadowRoute>,
    /// Resolved capture settings, when capture is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_capture: Option<ResolvedCapture>,
    /// The usage table, when `aiGateway.usageTracking` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_tracking: Option<ResolvedUsageTracking>,
}

/// Where the capture sidecars write one usage row per request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedUsageTracking {
    /// Root URI of the usage table: `<prefix>_usage` beside the payload table (under the
    /// operator's `lakeRoot` when capture is off). It is written with the capture settings'
    /// store, format and Secret when capture is on, else with the lake root's defaults.
    pub table_uri: String,
}

/// The price of an entity's usage, from the operator config's `usagePricing`: what each
/// usage row's `cost` is computed with. Changing it rolls the entity's pods, so every row is
/// priced with the price in force when it was served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePrice {
    /// Currency of the prices (an ISO 4217 code such as `USD`), written beside each cost.
    pub currency: String,
    /// Price of 1,000 input (prompt) tokens, when the model is priced by token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_per_1k_tokens: Option<f64>,
    /// Price of 1,000 output (generated) tokens, when the model is priced by token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_per_1k_tokens: Option<f64>,
    /// Price of one second of a request's execution time on one replica of the entity's
    /// workload type (its `perSecond` plus `perGpuSecond` times its GPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
}

/// A live route by resolved entity name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedRoute {
    /// Entity name.
    pub served_entity_name: String,
    /// Share of requests, 0–100.
    pub traffic_percentage: i32,
}

/// Capture settings with defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedCapture {
    /// Root URI of the payload table.
    pub table_uri: String,
    /// Fraction of requests recorded.
    pub sampling_fraction: f64,
    /// `parquet` or `delta` (absent: `parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_format: Option<CaptureTableFormat>,
    /// The Secret whose keys the capture sidecars get as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Object-store settings passed to the capture sidecars.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub store_options: BTreeMap<String, String>,
    /// The persistent spool the capture sidecars share (absent: an `emptyDir` per pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<ResolvedSpool>,
    /// `dropOldest` or `block` (absent: `dropOldest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<CaptureOverflow>,
}

/// The persistent capture spool of an endpoint, with defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSpool {
    /// The PersistentVolumeClaim every capture sidecar of the endpoint mounts as its spool.
    pub claim_name: String,
    /// Its requested size.
    pub size: String,
    /// Its StorageClass (absent: the cluster's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// One served entity of a config, with every default resolved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedEntityStatus {
    /// Entity name.
    pub name: String,
    /// Registered model name (absent for external models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Resolved model version (aliases are resolved to the version they pointed at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The alias the version was resolved from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Resolved artifact location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_uri: Option<String>,
    /// The external model the gateway calls, for external entities (its key stays in the
    /// Secret the spec names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_model: Option<ExternalModel>,
    /// Effective workload size (absent when explicit concurrency bounds were given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_size: Option<WorkloadSize>,
    /// Effective workload type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_type: Option<WorkloadType>,
    /// Effective engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Whether the entity may scale to zero.
    #[serde(default)]
    pub scale_to_zero_enabled: bool,
    /// Lower bound of provisioned concurrency.
    #[serde(default)]
    pub min_provisioned_concurrency: i32,
    /// Upper bound of provisioned concurrency.
    #[serde(default)]
    pub max_provisioned_concurrency: i32,
    /// Revision of the entity's pods: a hash of their rendered pod template, so it changes
    /// exactly when the pods must change. It is the suffix of `deploymentName` and the value of
    /// the pods' `serving.sluice.dev/revision` label, which the gateway routes by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Name of the Deployment (and Service) running the entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_name: Option<String>,
    /// Scaling and hold settings with every default resolved: the values the autoscaler and
    /// every gateway act on. Changing them rolls no pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<ResolvedAutoscaling>,
    /// The price the entity's usage rows are costed with, when usage tracking is on and the
    /// operator config prices the model or the workload type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_price: Option<UsagePrice>,
    /// Deployment progress of the entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServedEntityState>,
    /// Replica counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaStatus>,
}

/// Scaling and hold settings of one entity, resolved from its `autoscaling` overrides and the
/// operator config's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAutoscaling {
    /// Requests in flight one replica handles; demand divided by it gives replicas.
    pub per_replica_concurrency: i32,
    /// Fewest replicas (0 with scale to zero).
    pub min_replicas: i32,
    /// Most replicas.
    pub max_replicas: i32,
    /// Idle seconds before a scale-to-zero entity goes to zero.
    pub idle_timeout_seconds: i32,
    /// Requests a gateway holds while the entity has no ready pod; more are answered 503.
    pub max_held_requests: i32,
    /// Seconds a held request waits before a 503.
    pub hold_timeout_seconds: i32,
}

/// Deployment progress of one entity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedEntityState {
    /// `DEPLOYMENT_CREATING`, `DEPLOYMENT_READY`, `DEPLOYMENT_FAILED`, `DEPLOYMENT_ABORTED` or
    /// `DEPLOYMENT_RECOVERING`.
    pub deployment: DeploymentState,
    /// Human-readable detail of the state: replica counts, or why the first failing pod fails
    /// (its container, exit code and last message line; the scheduler's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_state_message: Option<String>,
    /// Machine-readable cause while pods fail, as Kubernetes names it (`Unschedulable`,
    /// `ImagePullBackOff`, `ErrImagePull`, `CreateContainerConfigError`, `CrashLoopBackOff`,
    /// `OOMKilled`, `ProgressDeadlineExceeded`, …), or `NotSupported` for an entity this version
    /// does not serve. Absent when nothing fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// Upstream deployment states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(non_camel_case_types)]
pub enum DeploymentState {
    /// Pods are being created or are loading the model.
    #[default]
    DEPLOYMENT_CREATING,
    /// Serving.
    DEPLOYMENT_READY,
    /// Cannot become ready (bad artifact, unschedulable, crashing).
    DEPLOYMENT_FAILED,
    /// Replaced before it became ready.
    DEPLOYMENT_ABORTED,
    /// Was ready, lost pods, and is coming back.
    DEPLOYMENT_RECOVERING,
}

/// Replica counts of one entity and the autoscaler's last decision about them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas the autoscaler wants (the entity Deployment's `spec.replicas`).
    pub desired: i32,
    /// Replicas that exist now, ready or not (pods starting or loading the model included).
    #[serde(default)]
    pub current: i32,
    /// Replicas ready to serve.
    pub ready: i32,
    /// Why the autoscaler last changed `desired`: `Wake` (requests held at zero), `Panic` (a
    /// burst, sized by the panic window), `Stable` (sized by the stable window), `ScaleToZero`
    /// (idle past `idleTimeoutSeconds`) or `WaitForLoading`. Absent until the first change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// The last scaling decision in words: replicas before and after and the demand seen
    /// (requests in flight and held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_message: Option<String>,
    /// When the autoscaler last changed `desired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}
