//! Auto-capture: the inference table every request and response is recorded in.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

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
}
