//! The operator's configuration: an admin-editable file (a ConfigMap in a cluster) read once at
//! startup, never inside reconcile. It holds the workload table (workloadType → GPUs, node
//! selector, tolerations, runtime class, CPU and memory), the workload sizes (→ provisioned
//! concurrency), default images, the lake root of inference tables and autoscaling defaults.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};
use sluice_crds::{Engine, WorkloadSize, WorkloadType};

use crate::claim::ClaimUri;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading operator config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("parsing operator config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong, with the line.
        message: String,
    },
    /// The configuration is well-formed but inconsistent.
    #[error("operator config {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is inconsistent.
        message: String,
    },
}

/// The whole operator configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Images of Sluice's own containers and of the engines.
    pub images: Images,
    /// Root URI under which `catalogName/schemaName/<prefix>_payload` inference tables live:
    /// an object store (`s3://`, `gs://`, `az://`, `abfss://`) or `pvc://<claim>[/<path>]`, a
    /// PersistentVolumeClaim in each endpoint's namespace that the capture sidecars mount
    /// (created from [`Self::lake_volume`] when missing). `file://` is refused: a capture
    /// container's root filesystem is read-only.
    pub lake_root: String,
    /// The claim the operator creates in an endpoint's namespace when its inference table lives
    /// on `pvc://<claim>/…` and that claim does not exist yet.
    pub lake_volume: LakeVolume,
    /// Resources and placement of each workload type.
    pub workload_types: BTreeMap<WorkloadType, WorkloadClass>,
    /// Provisioned concurrency of each workload size.
    pub workload_sizes: BTreeMap<WorkloadSize, ConcurrencyRange>,
    /// Autoscaling defaults.
    pub autoscaling: AutoscalingDefaults,
    /// How long a new entity revision may take to make progress (its Deployment's
    /// `progressDeadlineSeconds`): past it, the entity is `DEPLOYMENT_FAILED` and a pending
    /// config `UPDATE_FAILED` while the previous config keeps serving. Why pods fail shows in
    /// status within seconds regardless; this decides when the rollout gives up. Large model
    /// downloads need it above their fetch time.
    pub progress_deadline_seconds: u32,
    /// The NetworkPolicy beside every entity: only the gateways (and the namespaces listed)
    /// may reach model pods, so no caller skips the gateway and the capture sidecar.
    pub network_policy: NetworkPolicyConfig,
    /// The price table of usage tracking: what each usage row's `cost` is computed with.
    pub usage_pricing: crate::usage::UsagePricing,
    /// MLflow model registries the operator mirrors into ModelVersions: every version and
    /// alias of the models named, kept in step (an alias moved in MLflow rolls every endpoint
    /// that follows it; a version deleted in MLflow is reported, never removed).
    pub registries: Vec<RegistryMirror>,
}

/// One MLflow registry mirrored into a namespace. An operator setting, not a resource: the
/// registry is a shared service whose credentials the platform team holds, mounted into the
/// operator's pod from a Secret (the operator reads no Secret through the API), and which team
/// namespace mirrors which models is theirs to decide.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryMirror {
    /// Name of the mirror: the value of the `serving.sluice.dev/registry` label of the
    /// ModelVersions it makes, and of the `registry` metric label.
    pub name: String,
    /// The tracking server's base URL (`http(s)://…`).
    pub tracking_uri: String,
    /// Namespace the ModelVersions are made in.
    pub namespace: String,
    /// Registered models mirrored, by their MLflow names; every model of the registry when
    /// empty.
    #[serde(default)]
    pub models: Vec<String>,
    /// Seconds between two reads of the registry. Defaults to 30.
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// Folder of the operator's credentials for the registry: files named
    /// `MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`
    /// (a Secret with those keys, mounted by the chart). No credentials when unset.
    #[serde(default)]
    pub credentials_dir: Option<String>,
    /// Secret in `namespace` (same keys) the made ModelVersions name in `source.secretRef`,
    /// for their source check and fetch steps.
    #[serde(default)]
    pub secret_name: Option<String>,
    /// Format of the made ModelVersions; `mlflow` (a model folder with an `MLmodel`) unless
    /// set.
    #[serde(default)]
    pub format: Option<sluice_crds::ModelFormat>,
}

impl RegistryMirror {
    /// Seconds between two reads.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_seconds.unwrap_or(30))
    }
}

/// Who may reach entity pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkPolicyConfig {
    /// Render a NetworkPolicy per entity revision (it takes effect where the cluster's network
    /// plugin enforces NetworkPolicies).
    pub enabled: bool,
    /// Namespace of the gateway pods; any namespace when unset (the chart sets its release's).
    pub gateway_namespace: Option<String>,
    /// Labels of the gateway pods (the chart sets its release's gateway selector labels).
    pub gateway_labels: BTreeMap<String, String>,
    /// More namespaces whose pods may reach entity pods (e.g. the Prometheus that scrapes
    /// `/capture/metrics`).
    pub allowed_namespaces: Vec<String>,
}

impl Default for NetworkPolicyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gateway_namespace: None,
            gateway_labels: BTreeMap::from([(
                "app.kubernetes.io/component".to_string(),
                "gateway".to_string(),
            )]),
            allowed_namespaces: Vec::new(),
        }
    }
}

/// The PersistentVolumeClaim template of `pvc://` inference tables. The claim has no owner: it
/// outlives the endpoints that write to it, as a table should.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LakeVolume {
    /// Requested size (a Kubernetes quantity).
    pub size: String,
    /// StorageClass; the cluster's default class when unset.
    pub storage_class_name: Option<String>,
    /// Access modes. `ReadWriteMany` lets replicas on different nodes append to one table;
    /// with a `ReadWriteOnce`-only class, replicas of an endpoint must share a node.
    pub access_modes: Vec<String>,
}

impl Default for LakeVolume {
    fn default() -> Self {
        Self {
            size: "20Gi".into(),
            storage_class_name: None,
            access_modes: vec!["ReadWriteMany".into()],
        }
    }
}

/// Container images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Images {
    /// The data-plane image: `serve`, `capture`, `fetch` and the gateway.
    pub inference_server: String,
    /// Default image per engine (`vllm`, `sglang`, `tgi`, `llamacpp`, `mlflow`).
    pub engines: BTreeMap<String, String>,
}

/// Resources and placement of one workload type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadClass {
    /// `nvidia.com/gpu` per replica.
    pub gpu_count: u32,
    /// CPU request per replica (Kubernetes quantity).
    pub cpu: String,
    /// Memory request and limit per replica (Kubernetes quantity).
    pub memory: String,
    /// Node labels replicas require.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations replicas carry.
    pub tolerations: Vec<Toleration>,
    /// RuntimeClass of replicas, e.g. `nvidia`.
    pub runtime_class_name: Option<String>,
}

/// A provisioned concurrency range (requests in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConcurrencyRange {
    /// Lower bound.
    pub min: u32,
    /// Upper bound.
    pub max: u32,
}

/// Autoscaling defaults, overridable per entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AutoscalingDefaults {
    /// Requests in flight one replica of the builtin runtime handles.
    pub per_replica_concurrency: u32,
    /// Per-replica concurrency of engine runtimes (continuous batching takes more).
    pub engine_per_replica_concurrency: u32,
    /// Idle seconds before a scale-to-zero entity goes to zero.
    pub idle_timeout_seconds: u32,
    /// Requests the gateway holds per waking entity.
    pub max_held_requests: u32,
    /// Seconds a held request waits.
    pub hold_timeout_seconds: u32,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        let gpu = |count: u32, cpu: &str, memory: &str| WorkloadClass {
            gpu_count: count,
            cpu: cpu.into(),
            memory: memory.into(),
            node_selector: BTreeMap::from([(
                "nvidia.com/gpu.present".to_string(),
                "true".to_string(),
            )]),
            tolerations: vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
            runtime_class_name: None,
        };
        let cpu = |cpu: &str, memory: &str| WorkloadClass {
            cpu: cpu.into(),
            memory: memory.into(),
            ..Default::default()
        };
        Self {
            images: Images::default(),
            lake_root: "pvc://sluice-lake".into(),
            lake_volume: LakeVolume::default(),
            // Seeded from the upstream table (T4 / A10G / A100 / H100 classes); edit per cluster.
            workload_types: BTreeMap::from([
                (WorkloadType::CPU, cpu("1", "2Gi")),
                (WorkloadType::CPU_MEDIUM, cpu("4", "8Gi")),
                (WorkloadType::CPU_LARGE, cpu("8", "16Gi")),
                (WorkloadType::GPU_SMALL, gpu(1, "4", "16Gi")),
                (WorkloadType::GPU_MEDIUM, gpu(1, "8", "32Gi")),
                (WorkloadType::GPU_LARGE, gpu(1, "12", "96Gi")),
                (WorkloadType::GPU_XLARGE, gpu(1, "16", "128Gi")),
                (WorkloadType::GPU_XLARGE_8, gpu(8, "96", "1Ti")),
                (WorkloadType::MULTIGPU_MEDIUM, gpu(4, "32", "128Gi")),
            ]),
            workload_sizes: BTreeMap::from([
                (WorkloadSize::Small, ConcurrencyRange { min: 4, max: 4 }),
                (WorkloadSize::Medium, ConcurrencyRange { min: 8, max: 16 }),
                (WorkloadSize::Large, ConcurrencyRange { min: 16, max: 64 }),
            ]),
            autoscaling: AutoscalingDefaults::default(),
            progress_deadline_seconds: 600,
            network_policy: NetworkPolicyConfig::default(),
            usage_pricing: crate::usage::UsagePricing::default(),
            registries: Vec::new(),
        }
    }
}

impl Default for Images {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        let mut engines: BTreeMap<String, String> = [
            ("vllm", "vllm/vllm-openai:v0.11.0"),
            ("sglang", "lmsysorg/sglang:v0.5.3"),
            ("tgi", "ghcr.io/huggingface/text-generation-inference:3.3.6"),
            ("llamacpp", "ghcr.io/ggml-org/llama.cpp:server"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        // Ours (images/mlflow): MLflow's scoring server with the flavors' libraries.
        engines.insert(
            "mlflow".into(),
            format!("ghcr.io/sluice-dev/mlflow-runtime:{version}"),
        );
        Self {
            inference_server: format!("ghcr.io/sluice-dev/inference-server:{version}"),
            engines,
        }
    }
}

impl Default for AutoscalingDefaults {
    fn default() -> Self {
        Self {
            per_replica_concurrency: 4,
            engine_per_replica_concurrency: 32,
            idle_timeout_seconds: 300,
            max_held_requests: 100,
            hold_timeout_seconds: 120,
        }
    }
}

impl OperatorConfig {
    /// Reads and checks a config file; absent keys take the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        for (size, range) in &self.workload_sizes {
            if range.min > range.max || range.max == 0 {
                return Err(format!(
                    "workloadSizes.{size:?}: min {} must be ≤ max {} and max > 0",
                    range.min, range.max
                ));
            }
        }
        if self.autoscaling.per_replica_concurrency == 0
            || self.autoscaling.engine_per_replica_concurrency == 0
        {
            return Err("autoscaling: per-replica concurrency must be positive".into());
        }
        check_table_root(&self.lake_root).map_err(|e| format!("lakeRoot: {e}"))?;
        self.usage_pricing.check()?;
        if self.lake_volume.access_modes.is_empty() {
            return Err("lakeVolume.accessModes: at least one access mode".into());
        }
        for (i, mirror) in self.registries.iter().enumerate() {
            let at = format!("registries[{i}]");
            if crate::mlflow::entity_name(&mirror.name).as_deref() != Some(mirror.name.as_str()) {
                return Err(format!(
                    "{at}.name: {:?} is not a label value of at most 32 lower-case letters, \
                     digits and `-`",
                    mirror.name
                ));
            }
            if self.registries[..i].iter().any(|m| m.name == mirror.name) {
                return Err(format!(
                    "{at}.name: {} is the name of two mirrors",
                    mirror.name
                ));
            }
            if !(mirror.tracking_uri.starts_with("http://")
                || mirror.tracking_uri.starts_with("https://"))
            {
                return Err(format!(
                    "{at}.trackingUri: {:?} is not an http(s):// URL",
                    mirror.tracking_uri
                ));
            }
            if mirror.namespace.is_empty() {
                return Err(format!("{at}.namespace: required"));
            }
            if mirror.interval_seconds.is_some_and(|s| s < 5) {
                return Err(format!("{at}.intervalSeconds: at least 5"));
            }
        }
        if !(1..=i32::MAX as u32).contains(&self.progress_deadline_seconds) {
            return Err(format!(
                "progressDeadlineSeconds: {} is not a positive number of seconds",
                self.progress_deadline_seconds
            ));
        }
        Ok(())
    }

    /// The workload class of a type (a type missing from the table falls back to `CPU`).
    pub fn workload_class(&self, workload_type: WorkloadType) -> WorkloadClass {
        self.workload_types
            .get(&workload_type)
            .or_else(|| self.workload_types.get(&WorkloadType::CPU))
            .cloned()
            .unwrap_or_default()
    }

    /// Default image of an engine (`None` for builtin, which uses the inference-server image,
    /// and for custom, whose image is in the spec).
    pub fn engine_image(&self, engine: Engine) -> Option<&str> {
        let key = match engine {
            Engine::Builtin | Engine::Custom => return None,
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::Tgi => "tgi",
            Engine::Llamacpp => "llamacpp",
            Engine::Mlflow => "mlflow",
        };
        self.images.engines.get(key).map(String::as_str)
    }
}

/// Where an inference table may live, as a pod can write it: an object store, or a claim
/// (`pvc://<claim>[/<path>]`, the claim a DNS-1123 name). Used for `lakeRoot` and for an
/// endpoint's `autoCapture.uri`.
pub fn check_table_root(uri: &str) -> Result<(), String> {
    let Some((scheme, _)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} has no scheme (pvc://, s3://, gs://, az://, abfss://)"
        ));
    };
    match scheme {
        "s3" | "s3a" | "gs" | "az" | "abfss" | "adl" | "azure" => Ok(()),
        "pvc" => match ClaimUri::of(uri).and_then(|c| c.problem()) {
            Some(problem) => Err(format!("{uri:?}: {problem}")),
            None => Ok(()),
        },
        "file" => Err(format!(
            "{uri:?} is a path inside the capture container, whose root filesystem is read-only; \
             use pvc://<claim>/<path> or an object store (s3://, gs://, az://)"
        )),
        other => Err(format!(
            "{uri:?}: scheme {other:?} is not supported (pvc://, s3://, gs://, az://, abfss://)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_roots_are_writable_places() {
        assert!(check_table_root("pvc://sluice-lake").is_ok());
        assert!(check_table_root("pvc://lake/tables/x").is_ok());
        assert!(check_table_root("s3://bucket/lake").is_ok());
        let err = check_table_root("file:///var/lib/sluice/lake").unwrap_err();
        assert!(err.contains("read-only"), "{err}");
        assert!(check_table_root("pvc://Bad_Claim/x").is_err());
        assert!(check_table_root("/no/scheme").is_err());
        let err = OperatorConfig::parse("lakeRoot: file:///x\n", "cfg.yaml").unwrap_err();
        assert!(err.to_string().contains("lakeRoot"), "{err}");
    }

    #[test]
    fn defaults_map_gpu_types_to_gpus_and_tolerations() {
        let c = OperatorConfig::default();
        let medium = c.workload_class(WorkloadType::GPU_MEDIUM);
        assert_eq!(medium.gpu_count, 1);
        assert_eq!(medium.tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(c.workload_class(WorkloadType::MULTIGPU_MEDIUM).gpu_count, 4);
        assert_eq!(c.workload_class(WorkloadType::CPU).gpu_count, 0);
        assert_eq!(
            c.workload_sizes[&WorkloadSize::Medium],
            ConcurrencyRange { min: 8, max: 16 }
        );
    }

    #[test]
    fn an_admin_table_replaces_the_defaults_and_bad_values_are_named() {
        let c = OperatorConfig::parse(
            "workloadTypes:\n  GPU_SMALL:\n    gpuCount: 2\n    nodeSelector: {accelerator: l4}\n    runtimeClassName: nvidia\n",
            "test",
        )
        .expect("valid");
        let small = c.workload_class(WorkloadType::GPU_SMALL);
        assert_eq!(
            (small.gpu_count, small.runtime_class_name.as_deref()),
            (2, Some("nvidia"))
        );
        assert_eq!(small.node_selector["accelerator"], "l4");

        let err = OperatorConfig::parse("workloadSizes:\n  Small: {min: 8, max: 4}\n", "cfg.yaml")
            .expect_err("refused");
        assert!(err.to_string().contains("workloadSizes.Small"), "{err}");
        let err =
            OperatorConfig::parse("lakeRot: x\n", "cfg.yaml").expect_err("unknown key refused");
        assert!(err.to_string().contains("lakeRot"), "{err}");
    }
}
