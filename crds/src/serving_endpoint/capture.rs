//! Auto-capture: the inference table every request and response is recorded in.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;

/// Where and how much the capture sidecars record.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.uri) || (has(self.catalogName) && has(self.schemaName))")
        .message("autoCapture: set either uri or both catalogName and schemaName when enabled"),
    validation = Rule::new("!(has(self.uri) && (has(self.catalogName) || has(self.schemaName)))")
        .message("autoCapture: uri and catalogName/schemaName are mutually exclusive"),
)]
pub struct AutoCaptureConfig {
    /// Whether requests and responses are recorded.
    pub enabled: bool,
    /// Catalog of the table, mapped under the cluster-wide lake root as
    /// `<root>/<catalogName>/<schemaName>/<tableNamePrefix>_payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9_]+$"))]
    pub catalog_name: Option<String>,
    /// Schema (database) of the table under the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9_]+$"))]
    pub schema_name: Option<String>,
    /// Prefix of the table name; the payload table is `<prefix>_payload`. Defaults to the
    /// endpoint name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9_-]+$"))]
    pub table_name_prefix: Option<String>,
    /// Explicit table location instead of catalog/schema: an `s3://`, `gs://`, `az://` or
    /// `abfss://` URI of the table's root folder, or `pvc://<claim>/<path>`, a
    /// PersistentVolumeClaim of the endpoint's namespace that the capture sidecars mount
    /// read-write (the operator creates it when missing). `file://` is refused: the capture
    /// container's root filesystem is read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^((s3|gs|az|abfss)://.+|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?)$")
    )]
    pub uri: Option<String>,
    /// Fraction of requests recorded, from 0 (none) to 1 (all). Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_fraction: Option<f64>,
    /// Secret (in the endpoint's namespace) with the lake's credentials, in the variables each
    /// cloud's SDK reads (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`, …); its keys become
    /// environment variables of the capture sidecars only. Without it, the sidecars use the
    /// pod's own identity (IRSA, GKE or Azure workload identity) where the cluster gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Object-store settings for the table (the `object_store` configuration keys, e.g.
    /// `aws_endpoint`, `aws_region`, `aws_allow_http`, `aws_virtual_hosted_style_request`,
    /// `google_bucket`, `azure_storage_account_name`). Not for credentials: those go in the
    /// Secret of `secretRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[a-z][a-z0-9_]{0,63}$'))")
            .message("storeOptions keys are object_store configuration keys (lower case, digits, _)"),
        validation = Rule::new("self.all(k, !(k.contains('secret') || k.contains('key') || k.contains('token') || k.contains('password') || k.contains('credential')))")
            .message("credentials do not belong in storeOptions; put them in the Secret of autoCapture.secretRef"),
    )]
    pub store_options: BTreeMap<String, String>,
    /// `parquet` (default): Hive-partitioned Parquet files. `delta`: the same files, each also
    /// committed to a Delta Lake log at the table's location, safe for many sidecars appending
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_format: Option<CaptureTableFormat>,
    /// Where the capture sidecars keep rows the table has not taken yet (during a store
    /// outage, or at shutdown). Without it, each pod's spool is an `emptyDir`: it survives
    /// container restarts, and rows still in it when the pod is deleted are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<CaptureSpool>,
    /// What the capture sidecars do when rows come faster than the table takes them (a burst
    /// beyond what the writer keeps up with, or a store outage that fills the spool).
    /// `dropOldest` (default): the oldest rows are dropped and counted in
    /// `sluice_capture_records_dropped_total`; requests never wait for the table. `block`:
    /// no row is dropped; a request whose row would not fit waits before it reaches the model
    /// (up to 10 s, then 503 with `Retry-After`, counted in
    /// `sluice_capture_requests_refused_total`), so the endpoint slows down to what the table
    /// takes. For tables that must be complete (audit logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<CaptureOverflow>,
}

/// What a capture sidecar does when its rows do not fit in its queue or spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CaptureOverflow {
    /// Drop the oldest rows (counted); requests never wait.
    #[default]
    DropOldest,
    /// Drop nothing; requests wait for room, then 503.
    Block,
}

/// The spool of an endpoint's capture sidecars.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaptureSpool {
    /// Keep the spool on one PersistentVolumeClaim of the endpoint, `<endpoint>-capture-spool`
    /// (`ReadWriteMany`, created by the operator, never deleted by it), mounted by every
    /// capture sidecar of the endpoint instead of an `emptyDir`. Each sidecar writes its own
    /// locked folder on it; the rows of a deleted pod are written by another pod of the
    /// endpoint once the store is reachable, so none are lost. Needs a StorageClass with
    /// `ReadWriteMany` and working `flock` (NFSv4, CephFS); rows of a deleted pod wait while
    /// the endpoint has no pod (scaled to zero).
    #[serde(default)]
    pub persistent: bool,
    /// Requested size of the claim (a Kubernetes quantity), shared by all the endpoint's
    /// sidecars. Defaults to `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE]|([eE][0-9]+))?$"
    ))]
    pub size: Option<String>,
    /// StorageClass of the claim; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

// The file layout of an inference table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CaptureTableFormat {
    /// Hive-partitioned Parquet files.
    #[default]
    Parquet,
    /// Parquet files committed to a Delta Lake log.
    Delta,
}
