//! `ModelVersion`: one immutable version of a registered model, with mutable aliases.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;

/// One immutable version of a registered model: where its artifact lives, its format and task.
///
/// Aliases (`champion`, `challenger`, ...) are the only mutable part: moving an alias rolls every
/// ServingEndpoint that follows it to this version.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "serving.sluice.dev",
    version = "v1alpha1",
    kind = "ModelVersion",
    plural = "modelversions",
    singular = "modelversion",
    shortname = "mv",
    shortname = "mver",
    category = "sluice",
    namespaced,
    status = "ModelVersionStatus",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Aliases","type":"string","jsonPath":".spec.aliases"}"#,
    printcolumn = r#"{"name":"Format","type":"string","jsonPath":".spec.format","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionSpec {
    /// Name of the registered model this version belongs to (a DNS label, e.g. `fraud-detector`).
    /// Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("model is immutable; create a new ModelVersion instead"))]
    pub model: String,

    /// Version number, a positive integer unique per model in the namespace. Immutable.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("version is immutable; create a new ModelVersion instead"))]
    pub version: i64,

    /// Mutable named pointers to this version, e.g. `champion` or `challenger`. An alias is unique
    /// per model: when two versions claim the same alias, both report an `AliasConflict`
    /// condition and endpoints keep serving the version they resolved before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 32), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")))]
    pub aliases: Vec<String>,

    /// Where the model artifact lives. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("source is immutable; create a new ModelVersion instead"))]
    pub source: ModelSource,

    /// Artifact format; selects the runtime that loads it. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("format is immutable; create a new ModelVersion instead"))]
    pub format: ModelFormat,

    /// What the model does; selects the request and response shapes. Defaults to `predict`
    /// (MLflow scoring: `{"predictions": ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ModelTask>,

    /// MLflow-style signature: the input columns or tensors, the outputs, and inference
    /// parameters. Requests are checked against it before they reach the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ModelSignature>,
}

/// The location of a model artifact.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Artifact URI: `s3://bucket/path`, `gs://bucket/path`, `az://container/path`,
    /// `https://host/path`, `pvc://claim/path`, `file:///path`, an MLflow registry reference
    /// resolved through `trackingUri` (`models:/<model>/<version>`, `models:/<model>@<alias>`,
    /// `runs:/<run id>/<path>`), an artifact the tracking server keeps
    /// (`mlflow-artifacts:/<path>`), or `mlflow://<registry-host>/<model>/<version>` (not
    /// resolved by this version: refused by name).
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^(s3://[^/]+/?.*|gs://[^/]+/?.*|az://[^/]+/?.*|https?://[^/]+/.*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.*|mlflow://.+|models:/.+|runs:/.+|mlflow-artifacts:.+)$"
        )
    )]
    pub uri: String,

    /// The MLflow tracking server (`https://mlflow.example.com`) that resolves a `models:/` or
    /// `runs:/` reference and serves `mlflow-artifacts:` locations; without it,
    /// `MLFLOW_TRACKING_URI` from the Secret. The resolved location is published in
    /// `status.resolvedUri` and is what pods fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^/]+.*$"))]
    pub tracking_uri: Option<String>,

    /// Secret holding the credentials the fetcher needs for `uri` (for example
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `GOOGLE_APPLICATION_CREDENTIALS_JSON`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, or for MLflow `MLFLOW_TRACKING_TOKEN` or
    /// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`); its keys become environment
    /// variables of the fetch step only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// SHA-256 digest of the artifact (64 hex digits), checked by the fetch step before the
    /// model starts; a mismatch fails the fetch and nothing is served. When the source is one
    /// file (an archive included, before unpacking) it is that file's `sha256sum`; when it is a
    /// folder or prefix, the SHA-256 of the `sha256sum` lines of its files sorted by relative
    /// path (see docs/model-directory.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

// The artifact format of a model version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// An MLflow model directory with an `MLmodel` file.
    Mlflow,
    /// An ONNX graph (tabular and classic ML).
    Onnx,
    /// Hugging Face style safetensors weights with `config.json` and `tokenizer.json`.
    Safetensors,
    /// GGUF quantised weights.
    Gguf,
    /// A prompt template bound to an OpenAI-compatible chat upstream.
    Prompt,
    /// Anything else: served by a custom or engine image that knows how to read it.
    Custom,
}

// The task of a model, which decides request and response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelTask {
    /// OpenAI-style chat completions.
    #[serde(rename = "llm/v1/chat")]
    Chat,
    /// OpenAI-style text completions.
    #[serde(rename = "llm/v1/completions")]
    Completions,
    /// OpenAI-style embeddings.
    #[serde(rename = "llm/v1/embeddings")]
    Embeddings,
    /// Plain predictions over the MLflow scoring protocol.
    #[serde(rename = "predict")]
    Predict,
}

/// An MLflow-style model signature.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSignature {
    /// Input columns (tabular) or tensors, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub inputs: Vec<SignatureField>,
    /// Output columns or tensors, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub outputs: Vec<SignatureField>,
    /// Inference parameters a request may pass in `params`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub params: Vec<SignatureParam>,
}

/// One column or tensor of a signature.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureField {
    /// Column name; may be empty for an unnamed tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub name: Option<String>,
    /// Data type: a column type or a tensor's element type.
    #[serde(rename = "type")]
    pub data_type: SignatureType,
    /// Tensor shape; `-1` marks a variable dimension. Absent for plain columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub shape: Option<Vec<i64>>,
    /// Whether the column must be present in every request row (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

/// One inference parameter of a signature.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureParam {
    /// Parameter name, as sent in the request's `params` object.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Parameter type.
    #[serde(rename = "type")]
    pub data_type: SignatureType,
    /// Default value, written as JSON text (for example `256` or `"greedy"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub default: Option<String>,
}

// MLflow column and tensor data types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureType {
    /// UTF-8 text.
    #[default]
    String,
    /// 64-bit float.
    Double,
    /// 32-bit float.
    Float,
    /// 64-bit integer.
    Long,
    /// 32-bit integer.
    Integer,
    /// Boolean.
    Boolean,
    /// Base64 bytes.
    Binary,
    /// ISO-8601 timestamp.
    Datetime,
}

/// Observed state of a ModelVersion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the source and format were checked), `AliasConflict` (another version of the
    /// same model claims one of this version's aliases), with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The artifact location the fetch step downloads, after registry references are resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_uri: Option<String>,
    /// Aliases this version holds without conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective_aliases: Vec<String>,
    /// The flavors of the artifact's MLflow `MLmodel` file (`python_function`, `sklearn`,
    /// `onnx`, ...), as the source check read them; empty when the artifact has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flavors: Vec<String>,
    /// The engine that serves this version for a served entity that names no `runtime`, chosen
    /// from the flavors as a runtime is chosen from a model format: `builtin` when it serves
    /// one of them (`onnx`, `sentence_transformers`, feature-extraction `transformers`),
    /// `mlflow` (MLflow's scoring server) for any other model with a `python_function`
    /// flavor. Unset when the artifact has no `MLmodel` (the builtin runtime serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::Engine>,
}
