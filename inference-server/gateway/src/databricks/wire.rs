//! The request bodies of the Databricks serving-endpoints API as its SDK sends them
//! (snake_case). Unknown fields are refused by name, so a setting Sluice would not act on
//! never passes silently.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sluice_crds::{
    ExternalProvider, ExternalTask, PiiBehavior, RateLimitKey, RenewalPeriod, WorkloadSize,
    WorkloadType,
};

/// `POST /api/2.0/serving-endpoints`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// The endpoint's name (`<namespace>.<name>` picks the namespace).
    pub name: String,
    /// Entities, traffic and capture.
    #[serde(default)]
    pub config: Option<ConfigInput>,
    /// Gateway policies.
    #[serde(default)]
    pub ai_gateway: Option<AiGatewayInput>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<TagInput>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Deprecated spelling of `ai_gateway.rate_limits`.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitInput>,
    /// Refused when true: Sluice has one URL per endpoint.
    #[serde(default)]
    pub route_optimized: Option<bool>,
    /// Refused when set: Sluice sends no e-mail (Kubernetes events say what happened).
    #[serde(default)]
    pub email_notifications: Option<Value>,
    /// Refused when set.
    #[serde(default)]
    pub budget_policy_id: Option<String>,
    /// Refused when set.
    #[serde(default)]
    pub telemetry_config: Option<Value>,
    /// Refused when set.
    #[serde(default)]
    pub uc_system_metrics_export_state: Option<String>,
}

/// `config` of a create, and the whole body of `PUT …/{name}/config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    /// The endpoint's name, when the client repeats it.
    #[serde(default)]
    pub name: Option<String>,
    /// The served entities.
    #[serde(default)]
    pub served_entities: Vec<ServedEntityInput>,
    /// The older spelling of `served_entities`.
    #[serde(default)]
    pub served_models: Vec<ServedEntityInput>,
    /// The traffic split.
    #[serde(default)]
    pub traffic_config: Option<TrafficInput>,
    /// The legacy inference table.
    #[serde(default)]
    pub auto_capture_config: Option<TableInput>,
}

/// One of `served_entities` (or `served_models`, whose `model_name`/`model_version` are
/// `entity_name`/`entity_version`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedEntityInput {
    /// The entity's name; `<model>-<version>` when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// The registered model.
    #[serde(default, alias = "model_name")]
    pub entity_name: Option<String>,
    /// Its version.
    #[serde(default, alias = "model_version")]
    pub entity_version: Option<String>,
    /// `Small`, `Medium` or `Large`.
    #[serde(default)]
    pub workload_size: Option<WorkloadSize>,
    /// The compute class.
    #[serde(default)]
    pub workload_type: Option<WorkloadType>,
    /// Scale to zero when idle.
    #[serde(default)]
    pub scale_to_zero_enabled: Option<bool>,
    /// Lower bound of provisioned concurrency.
    #[serde(default)]
    pub min_provisioned_concurrency: Option<i32>,
    /// Upper bound of provisioned concurrency.
    #[serde(default)]
    pub max_provisioned_concurrency: Option<i32>,
    /// Environment of the model container.
    #[serde(default)]
    pub environment_vars: BTreeMap<String, String>,
    /// A model of an outside provider.
    #[serde(default)]
    pub external_model: Option<ExternalModelInput>,
    /// Refused: the Kubernetes counterpart is a ServiceAccount (`serviceAccountName`).
    #[serde(default)]
    pub instance_profile_arn: Option<String>,
    /// Refused: provisioned throughput is not a Sluice mode.
    #[serde(default)]
    pub min_provisioned_throughput: Option<i64>,
    /// Refused, as `min_provisioned_throughput`.
    #[serde(default)]
    pub max_provisioned_throughput: Option<i64>,
    /// Refused, as `min_provisioned_throughput`.
    #[serde(default)]
    pub provisioned_model_units: Option<i64>,
    /// Refused, as `min_provisioned_throughput`.
    #[serde(default)]
    pub burst_scaling_enabled: Option<bool>,
}

/// `external_model`: the provider, its model and task, and the provider's config object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalModelInput {
    /// The provider.
    pub provider: ExternalProvider,
    /// The provider's model name.
    pub name: String,
    /// The task.
    pub task: ExternalTask,
    /// `openai_config`.
    #[serde(default)]
    pub openai_config: Option<BTreeMap<String, Value>>,
    /// `anthropic_config`.
    #[serde(default)]
    pub anthropic_config: Option<BTreeMap<String, Value>>,
    /// `cohere_config`.
    #[serde(default)]
    pub cohere_config: Option<BTreeMap<String, Value>>,
    /// `databricks_model_serving_config`.
    #[serde(default)]
    pub databricks_model_serving_config: Option<BTreeMap<String, Value>>,
    /// `custom_provider_config`.
    #[serde(default)]
    pub custom_provider_config: Option<BTreeMap<String, Value>>,
    /// `amazon_bedrock_config`.
    #[serde(default)]
    pub amazon_bedrock_config: Option<BTreeMap<String, Value>>,
    /// `google_cloud_vertex_ai_config`.
    #[serde(default)]
    pub google_cloud_vertex_ai_config: Option<BTreeMap<String, Value>>,
    /// `ai21labs_config`.
    #[serde(default)]
    pub ai21labs_config: Option<BTreeMap<String, Value>>,
    /// `palm_config`.
    #[serde(default)]
    pub palm_config: Option<BTreeMap<String, Value>>,
}

/// `traffic_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficInput {
    /// The live routes.
    #[serde(default)]
    pub routes: Vec<RouteInput>,
}

/// One route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    /// The entity (older spelling).
    #[serde(default)]
    pub served_model_name: Option<String>,
    /// The entity.
    #[serde(default)]
    pub served_entity_name: Option<String>,
    /// Its share, 0–100.
    pub traffic_percentage: i32,
}

/// `auto_capture_config`, and `ai_gateway.inference_table_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableInput {
    /// Catalog.
    #[serde(default)]
    pub catalog_name: Option<String>,
    /// Schema.
    #[serde(default)]
    pub schema_name: Option<String>,
    /// Table name prefix.
    #[serde(default)]
    pub table_name_prefix: Option<String>,
    /// On or off; on when unset.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `ai_gateway`, and the whole body of `PUT …/{name}/ai-gateway`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiGatewayInput {
    /// Usage tracking.
    #[serde(default)]
    pub usage_tracking_config: Option<Switch>,
    /// The AI-gateway inference table (the same table as `auto_capture_config` in Sluice).
    #[serde(default)]
    pub inference_table_config: Option<TableInput>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitInput>,
    /// Guardrails.
    #[serde(default)]
    pub guardrails: Option<GuardrailsInput>,
    /// Fallback.
    #[serde(default)]
    pub fallback_config: Option<Switch>,
}

/// `{"enabled": bool}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// On or off.
    pub enabled: bool,
}

/// One rate limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    /// Calls per period.
    #[serde(default)]
    pub calls: Option<i64>,
    /// Tokens per period.
    #[serde(default)]
    pub tokens: Option<i64>,
    /// What the budget is counted per; `endpoint` when unset.
    #[serde(default)]
    pub key: Option<RateLimitKey>,
    /// One principal only.
    #[serde(default)]
    pub principal: Option<String>,
    /// `minute`.
    #[serde(default)]
    pub renewal_period: Option<RenewalPeriod>,
}

/// `guardrails`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsInput {
    /// On requests.
    #[serde(default)]
    pub input: Option<GuardrailInput>,
    /// On answers.
    #[serde(default)]
    pub output: Option<GuardrailInput>,
}

/// One direction's guardrails.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailInput {
    /// `{"behavior": "NONE" | "BLOCK" | "MASK"}`.
    #[serde(default)]
    pub pii: Option<PiiInput>,
    /// Refused when true: Sluice has no safety classifier.
    #[serde(default)]
    pub safety: Option<bool>,
    /// Keywords refused.
    #[serde(default)]
    pub invalid_keywords: Vec<String>,
    /// Topics allowed.
    #[serde(default)]
    pub valid_topics: Vec<String>,
}

/// `pii`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiInput {
    /// What to do with personal data.
    pub behavior: PiiBehavior,
}

/// A tag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagInput {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: Option<String>,
}

/// `PATCH …/{name}/tags`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTags {
    /// Tags set (a key already present gets the new value).
    #[serde(default)]
    pub add_tags: Vec<TagInput>,
    /// Keys removed.
    #[serde(default)]
    pub delete_tags: Vec<String>,
}
