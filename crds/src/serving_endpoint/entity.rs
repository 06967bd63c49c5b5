//! Served entities: what one endpoint serves, and how each one runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// One model served by an endpoint: a ModelVersion named by `model` plus `version` or `alias`,
/// or an external model provider.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.version) ? 1 : 0) + (has(self.alias) ? 1 : 0) + (has(self.externalModel) ? 1 : 0) == 1")
        .message("a served entity must name exactly one of version, alias or externalModel"),
    validation = Rule::new("has(self.model) != has(self.externalModel)")
        .message("model is required with version or alias, and must not be set with externalModel"),
    validation = Rule::new("!has(self.externalModel) || !(has(self.workloadSize) || has(self.workloadType) || has(self.scaleToZeroEnabled) || has(self.runtime) || has(self.minProvisionedConcurrency) || has(self.maxProvisionedConcurrency) || has(self.scheduling) || has(self.autoscaling))")
        .message("an externalModel entity runs no pods: workloadSize, workloadType, scaleToZeroEnabled, runtime, scheduling, autoscaling and provisioned concurrency must not be set"),
    validation = Rule::new("!(has(self.workloadSize) && (has(self.minProvisionedConcurrency) || has(self.maxProvisionedConcurrency)))")
        .message("set either workloadSize or min/maxProvisionedConcurrency, not both"),
    validation = Rule::new("!has(self.minProvisionedConcurrency) || !has(self.maxProvisionedConcurrency) || self.minProvisionedConcurrency <= self.maxProvisionedConcurrency")
        .message("minProvisionedConcurrency must not exceed maxProvisionedConcurrency")
        .field_path(".minProvisionedConcurrency"),
)]
pub struct ServedEntity {
    /// Name of the entity, unique in the endpoint, used by routes, the `served-model-name`
    /// response header, the `/served-models/{name}/invocations` path and the names of its
    /// Deployment and Service (a DNS label of at most 32 characters). Required: unlike the
    /// upstream API there is no `<model>-<version>` default, so routes never depend on a
    /// computed name.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Registered model name: the `spec.model` of the ModelVersion to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub model: Option<String>,

    /// Serve this exact version of `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub version: Option<i64>,

    /// Serve whichever version of `model` holds this alias; when the alias moves, the entity
    /// rolls (blue/green) to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub alias: Option<String>,

    /// A model hosted by an outside provider, called through the gateway with a key from a
    /// Secret. Runs no pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_model: Option<ExternalModel>,

    /// Provisioned concurrency range: `Small` 4–4, `Medium` 8–16, `Large` 16–64 requests in
    /// flight (lower bound 0 with scaleToZeroEnabled). Defaults to `Small`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_size: Option<WorkloadSize>,

    /// Explicit lower bound of provisioned concurrency (requests in flight); instead of
    /// workloadSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_provisioned_concurrency: Option<i32>,

    /// Explicit upper bound of provisioned concurrency (requests in flight); instead of
    /// workloadSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_provisioned_concurrency: Option<i32>,

    /// Compute class. The GPU count, node selector, tolerations and runtime class of each
    /// type come from the operator's admin-editable workload table. Defaults to `CPU`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_type: Option<WorkloadType>,

    /// Scale the entity to zero replicas when idle and wake it on the first request, which the
    /// gateway holds until a pod is ready. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_enabled: Option<bool>,

    /// Which server runs the model: the builtin Rust runtime (default) or an engine image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,

    /// Environment variables of the model container. A value of the form
    /// `{{secrets/<secret-name>/<key>}}` is read from that Secret in the endpoint's namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))")
        .message("environmentVars: names must be valid environment variable names ([A-Za-z_][A-Za-z0-9_]*)"))]
    pub environment_vars: BTreeMap<String, String>,

    /// Per-entity override of the scheduling that workloadType selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,

    /// Per-entity autoscaling knobs; unset fields take the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// ServiceAccount the entity pods run as (the Kubernetes counterpart of an instance
    /// profile: workload identity for cloud credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

// Provisioned concurrency presets.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum WorkloadSize {
    /// 4 requests in flight (0–4 with scale to zero).
    Small,
    /// 8–16 requests in flight (0–16 with scale to zero).
    Medium,
    /// 16–64 requests in flight (0–64 with scale to zero).
    Large,
}

// Compute classes, mapped to resources by the operator's workload table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[allow(non_camel_case_types)]
pub enum WorkloadType {
    /// CPU only.
    CPU,
    /// CPU, more cores and memory.
    CPU_MEDIUM,
    /// CPU, most cores and memory.
    CPU_LARGE,
    /// One small GPU (T4 class).
    GPU_SMALL,
    /// One medium GPU (A10G class).
    GPU_MEDIUM,
    /// One large GPU (A100 80GB class).
    GPU_LARGE,
    /// One H100 class GPU.
    GPU_XLARGE,
    /// Eight H100 class GPUs.
    GPU_XLARGE_8,
    /// Four medium GPUs.
    MULTIGPU_MEDIUM,
}

/// The server that runs a model.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.engine != 'custom' || has(self.image)")
        .message("runtime.image is required when runtime.engine is custom")
        .field_path(".image"),
)]
pub struct Runtime {
    /// Engine: `builtin` (the Rust runtime: ONNX, embeddings, small LLMs, prompts), `vllm`,
    /// `sglang`, `tgi`, `llamacpp`, `mlflow` (MLflow pyfunc scoring server) or `custom`.
    pub engine: Engine,
    /// Container image; defaults to the engine's image from the operator config. Required for
    /// `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Extra command-line arguments for the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Port the model server listens on inside the pod; defaults per engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// HTTP path that answers 200 once the model is loaded; defaults per engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/.*"))]
    pub health_path: Option<String>,
}

// Model server engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Sluice's own Rust runtime (`inference-server serve`).
    #[default]
    Builtin,
    /// vLLM OpenAI-compatible server.
    Vllm,
    /// SGLang server.
    Sglang,
    /// Hugging Face Text Generation Inference.
    Tgi,
    /// llama.cpp server.
    Llamacpp,
    /// MLflow pyfunc scoring server (`mlflow models serve`).
    Mlflow,
    /// Any image; set `image`, `port` and `healthPath`.
    Custom,
}

/// Overrides of the scheduling a workloadType selects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Number of `nvidia.com/gpu` each replica requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpu_count: Option<i32>,
    /// Node labels each replica requires (replaces the table's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of each replica (replace the table's tolerations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
    /// RuntimeClass of each replica (for example `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
}

/// Per-entity autoscaling knobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Requests in flight one replica handles well; replicas are sized against it. Defaults to
    /// the runtime's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub per_replica_concurrency: Option<i32>,
    /// Seconds without requests before a scale-to-zero entity goes to zero replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub idle_timeout_seconds: Option<i32>,
    /// Most requests the gateway holds for this entity while it wakes from zero; beyond it,
    /// 503 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_held_requests: Option<i32>,
    /// Longest a held request waits for a ready pod before it gets 503 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub hold_timeout_seconds: Option<i32>,
}

/// A model served by an outside provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalModel {
    /// Provider: `openai`, `anthropic`, `cohere`, `amazon-bedrock`, `google-cloud-vertex-ai`,
    /// `ai21labs`, `databricks-model-serving` or `custom` (any OpenAI-compatible server).
    pub provider: ExternalProvider,
    /// The provider's model name, e.g. `gpt-4o-mini`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Task of the model; all external models of an endpoint share one task.
    pub task: ExternalTask,
    /// Secret key holding the provider's API key. It stays in the gateway; clients never see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Base URL of the provider's API; defaults to the provider's public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://.+"))]
    pub api_base: Option<String>,
    /// Other non-secret provider settings (API version, deployment name, organisation, region).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

// External model providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalProvider {
    /// OpenAI (or Azure OpenAI through `config`).
    #[default]
    Openai,
    /// Anthropic.
    Anthropic,
    /// Cohere.
    Cohere,
    /// Amazon Bedrock.
    AmazonBedrock,
    /// Google Cloud Vertex AI.
    GoogleCloudVertexAi,
    /// AI21 Labs.
    Ai21labs,
    /// A Databricks model serving endpoint.
    DatabricksModelServing,
    /// Any OpenAI-compatible server at `apiBase`.
    Custom,
}

// Tasks an external model may serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExternalTask {
    /// Chat completions.
    #[default]
    #[serde(rename = "llm/v1/chat")]
    Chat,
    /// Text completions.
    #[serde(rename = "llm/v1/completions")]
    Completions,
    /// Embeddings.
    #[serde(rename = "llm/v1/embeddings")]
    Embeddings,
}
