//! Resolve: the first pure step of the ServingEndpoint pipeline, and the only place defaults are
//! applied. Turns the spec's entities into fully specified ones: the ModelVersion each names (by
//! version or by alias), the operator config's defaults (workload class, concurrency range,
//! images, ports, autoscaling) and the entity's overrides; and the endpoint's capture settings.
//! The operator publishes the result in status; standalone gateways call it themselves.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_crds::model_version::ModelSignature;
use sluice_crds::{
    CaptureSpool, Engine, ExternalModel, ModelFormat, ModelTask, ModelVersion, ResolvedCapture,
    ResolvedRoute, ResolvedSpool, ResolvedUsageTracking, Runtime, ServedEntity, ServingEndpoint,
    ShadowRoute, UsagePrice, WorkloadSize, WorkloadType,
};

use crate::config::{OperatorConfig, WorkloadClass};
use crate::labels::MODEL_PORT;

/// One served entity with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedEntity {
    /// Effective entity name.
    pub name: String,
    /// What it serves.
    pub source: EntitySource,
    /// Workload type (CPU when unset).
    pub workload_type: WorkloadType,
    /// Workload size, when the range came from one.
    pub workload_size: Option<WorkloadSize>,
    /// Placement and resources after per-entity overrides.
    pub class: WorkloadClass,
    /// Provisioned concurrency lower bound (0 with scale to zero).
    pub min_concurrency: u32,
    /// Provisioned concurrency upper bound.
    pub max_concurrency: u32,
    /// Whether the entity may scale to zero.
    pub scale_to_zero: bool,
    /// Requests in flight one replica handles.
    pub per_replica_concurrency: u32,
    /// How the model is run (absent for external models).
    pub runtime: Option<ResolvedRuntime>,
    /// Model container environment (values may be `{{secrets/name/key}}` references).
    pub env: BTreeMap<String, String>,
    /// ServiceAccount of the pods.
    pub service_account: Option<String>,
    /// Idle seconds before scaling to zero.
    pub idle_timeout_seconds: u32,
    /// Requests the gateway may hold while waking.
    pub max_held_requests: u32,
    /// Seconds a held request waits.
    pub hold_timeout_seconds: u32,
    /// Set when the entity follows an alias that no ModelVersion holds alone (claimed by
    /// several, or by none since its version left the registry): it keeps the version it
    /// resolved to before, and this says so (the endpoint's `AliasConflict` condition).
    #[serde(skip)]
    pub alias_conflict: Option<String>,
    /// The price its usage rows are costed with (usage tracking on, and the operator config
    /// prices its model or workload type).
    pub usage_price: Option<UsagePrice>,
}

/// What an entity serves.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EntitySource {
    /// A registered model version.
    Registered {
        /// Model name.
        model: String,
        /// Resolved version.
        version: i64,
        /// Alias it was resolved from.
        alias: Option<String>,
        /// Artifact URI.
        artifact_uri: String,
        /// Secret with credentials for the artifact store.
        secret: Option<String>,
        /// The MLflow tracking server of `mlflow-artifacts:` locations (`spec.source.trackingUri`).
        tracking_uri: Option<String>,
        /// Artifact format.
        format: ModelFormat,
        /// Task.
        task: ModelTask,
        /// The task as the ModelVersion declares it (the runtime picks a default otherwise).
        #[serde(skip_serializing_if = "Option::is_none")]
        declared_task: Option<ModelTask>,
        /// The ModelVersion's signature, which `serve` checks requests against when the
        /// artifact carries none.
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<ModelSignature>,
        /// The artifact's expected SHA-256, checked by the fetch step.
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// A model at an outside provider.
    External(ExternalModel),
}

/// The container that runs the model.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedRuntime {
    /// Engine.
    pub engine: Engine,
    /// Image.
    pub image: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Port the model server listens on.
    pub port: i32,
    /// Readiness path.
    pub health_path: String,
}

/// Why an entity could not be resolved. The endpoint keeps its active config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveProblem {
    /// No ModelVersion has this model and version.
    #[error("entity {entity}: ModelVersion for model {model} version {version} not found")]
    VersionNotFound {
        /// Entity name.
        entity: String,
        /// Model.
        model: String,
        /// Version.
        version: i64,
    },
    /// No version holds the alias without conflict.
    #[error("entity {entity}: no ModelVersion of model {model} holds alias {alias}")]
    AliasNotFound {
        /// Entity name.
        entity: String,
        /// Model.
        model: String,
        /// Alias.
        alias: String,
    },
    /// The version exists but is not Ready.
    #[error("entity {entity}: ModelVersion {object} is not Ready: {reason}")]
    VersionNotReady {
        /// Entity name.
        entity: String,
        /// ModelVersion object name.
        object: String,
        /// Its Ready condition's message.
        reason: String,
    },
    /// A custom engine without an image (the schema refuses this too).
    #[error("entity {entity}: engine {engine:?} has no image configured")]
    NoImage {
        /// Entity name.
        entity: String,
        /// Engine.
        engine: Engine,
    },
}

/// Resolves every entity of `endpoint`. `models` are the ModelVersions of its namespace;
/// `previous` maps entity names to the version they resolved to before, which an alias in
/// conflict keeps serving.
pub fn resolve(
    endpoint: &ServingEndpoint,
    models: &[ModelVersion],
    previous: &BTreeMap<String, i64>,
    config: &OperatorConfig,
) -> Result<Vec<ResolvedEntity>, Vec<ResolveProblem>> {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    let tracked = usage_tracking_on(endpoint);
    for entity in &endpoint.spec.served_entities {
        match resolve_entity(entity, models, previous, config) {
            Ok(mut r) => {
                if tracked {
                    let model = match &r.source {
                        EntitySource::Registered { model, .. } => Some(model.as_str()),
                        EntitySource::External(_) => None,
                    };
                    r.usage_price =
                        config
                            .usage_pricing
                            .price(model, r.workload_type, r.class.gpu_count);
                }
                resolved.push(r);
            }
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

fn resolve_entity(
    entity: &ServedEntity,
    models: &[ModelVersion],
    previous: &BTreeMap<String, i64>,
    config: &OperatorConfig,
) -> Result<ResolvedEntity, ResolveProblem> {
    let name = entity.name.clone();
    let (source, alias_conflict, flavor_engine) = match &entity.external_model {
        Some(external) => (EntitySource::External(external.clone()), None, None),
        None => registered_source(&name, entity, models, previous)?,
    };
    let workload_type = entity.workload_type.unwrap_or(WorkloadType::CPU);
    let class = with_overrides(config.workload_class(workload_type), entity);
    let scale_to_zero = entity.scale_to_zero_enabled.unwrap_or(false);
    let (workload_size, min, max) = concurrency_range(entity, config);
    let runtime = match &source {
        EntitySource::External(_) => None,
        EntitySource::Registered { .. } => Some(runtime(&name, entity, flavor_engine, config)?),
    };
    let engine_default = match runtime.as_ref().map(|r| r.engine) {
        None | Some(Engine::Builtin) => config.autoscaling.per_replica_concurrency,
        Some(_) => config.autoscaling.engine_per_replica_concurrency,
    };
    let knobs = entity.autoscaling.clone().unwrap_or_default();
    let positive =
        |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
    Ok(ResolvedEntity {
        name,
        source,
        workload_type,
        workload_size,
        class,
        min_concurrency: if scale_to_zero { 0 } else { min },
        max_concurrency: max,
        scale_to_zero,
        per_replica_concurrency: positive(knobs.per_replica_concurrency, engine_default).max(1),
        runtime,
        env: entity.environment_vars.clone(),
        service_account: entity.service_account_name.clone(),
        idle_timeout_seconds: positive(
            knobs.idle_timeout_seconds,
            config.autoscaling.idle_timeout_seconds,
        ),
        max_held_requests: positive(
            knobs.max_held_requests,
            config.autoscaling.max_held_requests,
        ),
        hold_timeout_seconds: positive(
            knobs.hold_timeout_seconds,
            config.autoscaling.hold_timeout_seconds,
        ),
        alias_conflict,
        usage_price: None,
    })
}

fn registered_source(
    name: &str,
    entity: &ServedEntity,
    models: &[ModelVersion],
    previous: &BTreeMap<String, i64>,
) -> Result<(EntitySource, Option<String>, Option<Engine>), ResolveProblem> {
    let model = entity.model.clone().unwrap_or_default();
    let of_model = || models.iter().filter(|m| m.spec.model == model);
    let mut alias_conflict = None;
    let mv = match (entity.version, &entity.alias) {
        (Some(version), _) => of_model().find(|m| m.spec.version == version).ok_or(
            ResolveProblem::VersionNotFound {
                entity: name.into(),
                model: model.clone(),
                version,
            },
        )?,
        (None, Some(alias)) => {
            let holder = of_model().find(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.effective_aliases.contains(alias))
            });
            // An alias in conflict is held by nobody: keep serving what it resolved to before.
            let kept = || {
                let mut claimants: Vec<String> = of_model()
                    .filter(|m| m.spec.aliases.contains(alias))
                    .map(|m| m.metadata.name.clone().unwrap_or_default())
                    .collect();
                claimants.sort();
                let mv = previous
                    .get(name)
                    .and_then(|v| of_model().find(|m| m.spec.version == *v))?;
                let held_by = if claimants.is_empty() {
                    "held by no ModelVersion".to_string()
                } else {
                    format!("claimed by {}", claimants.join(", "))
                };
                alias_conflict = Some(format!(
                    "entity {name}: alias {alias} of model {model} is {held_by}; keeping version {}",
                    mv.spec.version
                ));
                Some(mv)
            };
            holder.or_else(kept).ok_or(ResolveProblem::AliasNotFound {
                entity: name.into(),
                model: model.clone(),
                alias: alias.clone(),
            })?
        }
        (None, None) => {
            return Err(ResolveProblem::VersionNotFound {
                entity: name.into(),
                model,
                version: 0,
            });
        }
    };
    let ready = mv
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if ready.is_none_or(|c| c.status != "True") {
        return Err(ResolveProblem::VersionNotReady {
            entity: name.into(),
            object: mv.metadata.name.clone().unwrap_or_default(),
            reason: ready
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "not yet checked".into()),
        });
    }
    let source = EntitySource::Registered {
        model,
        version: mv.spec.version,
        alias: entity.alias.clone(),
        artifact_uri: mv
            .status
            .as_ref()
            .and_then(|s| s.resolved_uri.clone())
            .unwrap_or_else(|| mv.spec.source.uri.clone()),
        secret: mv.spec.source.secret_ref.as_ref().map(|s| s.name.clone()),
        tracking_uri: mv.spec.source.tracking_uri.clone(),
        format: mv.spec.format,
        task: mv.spec.task.unwrap_or(ModelTask::Predict),
        declared_task: mv.spec.task,
        signature: mv.spec.signature.clone(),
        sha256: mv.spec.source.sha256.clone(),
    };
    // The engine the version's MLmodel flavors need, for an entity that names none.
    let engine = mv.status.as_ref().and_then(|s| s.engine);
    Ok((source, alias_conflict, engine))
}

fn with_overrides(mut class: WorkloadClass, entity: &ServedEntity) -> WorkloadClass {
    if let Some(s) = &entity.scheduling {
        if let Some(n) = s.gpu_count.and_then(|n| u32::try_from(n).ok()) {
            class.gpu_count = n;
        }
        if let Some(sel) = &s.node_selector {
            class.node_selector = sel.clone();
        }
        if let Some(t) = &s.tolerations {
            class.tolerations = t.clone();
        }
        if let Some(rc) = &s.runtime_class_name {
            class.runtime_class_name = Some(rc.clone());
        }
    }
    class
}

fn concurrency_range(
    entity: &ServedEntity,
    config: &OperatorConfig,
) -> (Option<WorkloadSize>, u32, u32) {
    let explicit = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
    match (
        explicit(entity.min_provisioned_concurrency),
        explicit(entity.max_provisioned_concurrency),
    ) {
        (None, None) => {
            let size = entity.workload_size.unwrap_or(WorkloadSize::Small);
            let range = config.workload_sizes.get(&size).copied();
            let (min, max) = range.map(|r| (r.min, r.max)).unwrap_or((4, 4));
            (Some(size), min, max)
        }
        (min, max) => {
            let max = max.unwrap_or_else(|| min.unwrap_or(1)).max(1);
            (None, min.unwrap_or(0).min(max), max)
        }
    }
}

/// The entity's runtime: as its spec names it, else the engine the version's MLmodel flavors
/// need (`status.engine`: MLflow's scoring server for a pickled model), else the builtin one.
fn runtime(
    name: &str,
    entity: &ServedEntity,
    flavor_engine: Option<Engine>,
    config: &OperatorConfig,
) -> Result<ResolvedRuntime, ResolveProblem> {
    let spec = entity.runtime.clone().unwrap_or_else(|| Runtime {
        engine: flavor_engine.unwrap_or_default(),
        ..Runtime::default()
    });
    let (default_port, default_health) = match spec.engine {
        Engine::Builtin => (MODEL_PORT, "/health"),
        Engine::Vllm | Engine::Sglang => (8000, "/health"),
        Engine::Tgi => (8000, "/health"),
        Engine::Llamacpp => (8000, "/health"),
        Engine::Mlflow => (8000, "/ping"),
        Engine::Custom => (8000, "/health"),
    };
    let image = match (&spec.image, spec.engine) {
        (Some(image), _) => image.clone(),
        (None, Engine::Builtin) => config.images.inference_server.clone(),
        (None, engine) => {
            config
                .engine_image(engine)
                .map(str::to_string)
                .ok_or(ResolveProblem::NoImage {
                    entity: name.into(),
                    engine,
                })?
        }
    };
    Ok(ResolvedRuntime {
        engine: spec.engine,
        image,
        args: spec.args,
        port: spec.port.unwrap_or(default_port),
        health_path: spec.health_path.unwrap_or_else(|| default_health.into()),
    })
}

/// The live routes of `ep`: its traffic config, or all traffic to each entity when it has none
/// (validation allows that only for a single entity).
pub fn routes(ep: &ServingEndpoint) -> Vec<ResolvedRoute> {
    match &ep.spec.traffic_config {
        Some(traffic) => traffic
            .routes
            .iter()
            .map(|r| ResolvedRoute {
                served_entity_name: r.target().to_string(),
                traffic_percentage: r.traffic_percentage,
            })
            .collect(),
        None => ep
            .spec
            .served_entities
            .iter()
            .map(|e| ResolvedRoute {
                served_entity_name: e.name.clone(),
                traffic_percentage: 100,
            })
            .collect(),
    }
}

/// The shadow routes of `ep`.
pub fn shadow_routes(ep: &ServingEndpoint) -> Vec<ShadowRoute> {
    ep.spec
        .traffic_config
        .as_ref()
        .and_then(|t| t.shadow_routes.clone())
        .unwrap_or_default()
}

/// The aliases `mv` holds alone among `others` (the other versions of its model), and one
/// message per alias another version also claims: a claimed-twice alias is held by nobody.
pub fn alias_claims(mv: &ModelVersion, others: &[&ModelVersion]) -> (Vec<String>, Vec<String>) {
    let mut effective = Vec::new();
    let mut conflicts = Vec::new();
    for alias in &mv.spec.aliases {
        let mut claimants: Vec<String> = others
            .iter()
            .filter(|o| o.spec.aliases.contains(alias))
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect();
        if claimants.is_empty() {
            effective.push(alias.clone());
        } else {
            claimants.sort();
            conflicts.push(format!(
                "alias {alias} of model {} is also claimed by {}; endpoints keep the version they resolved before",
                mv.spec.model,
                claimants.join(", ")
            ));
        }
    }
    (effective, conflicts)
}

/// Default size of an endpoint's persistent capture spool.
pub const DEFAULT_SPOOL_SIZE: &str = "1Gi";

/// The name of the persistent spool claim of `endpoint`: `<endpoint>-capture-spool`.
pub fn spool_claim_name(endpoint: &str) -> String {
    format!("{endpoint}-capture-spool")
}

/// The persistent spool of `endpoint` as the endpoint asks for it, with defaults applied;
/// `None` unless `spool.persistent`.
pub fn resolve_spool(endpoint: &str, spool: Option<&CaptureSpool>) -> Option<ResolvedSpool> {
    let spool = spool.filter(|s| s.persistent)?;
    Some(ResolvedSpool {
        claim_name: spool_claim_name(endpoint),
        size: spool
            .size
            .clone()
            .unwrap_or_else(|| DEFAULT_SPOOL_SIZE.to_string()),
        storage_class_name: spool.storage_class_name.clone(),
    })
}

/// Whether `ep` asks for usage rows (`aiGateway.usageTracking.enabled`).
pub fn usage_tracking_on(ep: &ServingEndpoint) -> bool {
    ep.spec
        .ai_gateway
        .as_ref()
        .and_then(|g| g.usage_tracking.as_ref())
        .is_some_and(|u| u.enabled)
}

/// The table `<prefix><suffix>` of `ep` under `<lakeRoot>/<catalog>/<schema>/`, the defaults
/// applied (`default` catalog and schema, the endpoint name with `_` for `-` as prefix).
fn lake_table(ep: &ServingEndpoint, config: &OperatorConfig, suffix: &str) -> String {
    let c = ep.spec.auto_capture.as_ref();
    let name = ep.metadata.name.clone().unwrap_or_default();
    let prefix = c
        .and_then(|c| c.table_name_prefix.clone())
        .unwrap_or_else(|| name.replace('-', "_"));
    format!(
        "{}/{}/{}/{prefix}{suffix}",
        config.lake_root.trim_end_matches('/'),
        c.and_then(|c| c.catalog_name.as_deref())
            .unwrap_or("default"),
        c.and_then(|c| c.schema_name.as_deref())
            .unwrap_or("default")
    )
}

/// The table beside payload table `uri` with `suffix`: `<prefix>_feedback` for
/// `<prefix>_payload`, or `<uri>_feedback` beside a table whose name does not end in
/// `_payload`.
pub fn table_beside(uri: &str, suffix: &str) -> String {
    let uri = uri.trim_end_matches('/');
    format!("{}{suffix}", uri.strip_suffix("_payload").unwrap_or(uri))
}

/// The feedback table of an endpoint that captures: beside its payload table.
pub fn feedback_table(capture: &ResolvedCapture) -> String {
    table_beside(&capture.table_uri, "_feedback")
}

/// The usage table of `ep` (`None` when usage tracking is off): beside the payload table,
/// `<prefix>_usage` for `<prefix>_payload`, or `<uri>_usage` beside an explicit table URI
/// that does not end in `_payload`; under the lake root when capture is off.
pub fn resolve_usage(
    ep: &ServingEndpoint,
    config: &OperatorConfig,
) -> Option<ResolvedUsageTracking> {
    if !usage_tracking_on(ep) {
        return None;
    }
    let explicit = ep
        .spec
        .auto_capture
        .as_ref()
        .filter(|c| c.enabled)
        .and_then(|c| c.uri.as_deref());
    let table_uri = match explicit {
        Some(uri) => table_beside(uri, "_usage"),
        None => lake_table(ep, config, "_usage"),
    };
    Some(ResolvedUsageTracking { table_uri })
}

/// The capture settings of `ep` with defaults applied (`None` when capture is off): an explicit
/// table URI, or `<lakeRoot>/<catalog>/<schema>/<prefix>_payload`.
pub fn resolve_capture(ep: &ServingEndpoint, config: &OperatorConfig) -> Option<ResolvedCapture> {
    let c = ep.spec.auto_capture.as_ref().filter(|c| c.enabled)?;
    let name = ep.metadata.name.clone().unwrap_or_default();
    let table_uri = match &c.uri {
        Some(uri) => uri.clone(),
        None => lake_table(ep, config, "_payload"),
    };
    Some(ResolvedCapture {
        table_uri,
        sampling_fraction: c.sampling_fraction.unwrap_or(1.0),
        table_format: c.table_format,
        secret_name: c.secret_ref.as_ref().map(|s| s.name.clone()),
        store_options: c.store_options.clone(),
        spool: resolve_spool(&name, c.spool.as_ref()),
        overflow: c.overflow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(spec: &str) -> ServingEndpoint {
        crate::fixtures::endpoint("ep", spec)
    }

    fn version(v: i64, aliases: &[&str], ready: bool) -> ModelVersion {
        crate::fixtures::checked_version("churn", v, aliases, ready)
    }

    #[test]
    fn versions_and_aliases_resolve_with_defaults_published() {
        let ep = endpoint(
            "  servedEntities:\n  - {name: churn-7, model: churn, version: 7}\n  - {name: champ, model: churn, alias: champion, workloadType: GPU_SMALL, workloadSize: Medium, scaleToZeroEnabled: true}\n  trafficConfig: {routes: [{servedEntityName: churn-7, trafficPercentage: 50}, {servedEntityName: champ, trafficPercentage: 50}]}",
        );
        let models = [version(7, &[], true), version(8, &["champion"], true)];
        let r =
            resolve(&ep, &models, &BTreeMap::new(), &OperatorConfig::default()).expect("resolves");
        assert_eq!(r[0].name, "churn-7");
        assert_eq!(
            (
                r[0].min_concurrency,
                r[0].max_concurrency,
                r[0].workload_size
            ),
            (4, 4, Some(WorkloadSize::Small))
        );
        assert_eq!(
            r[0].runtime
                .as_ref()
                .map(|rt| (rt.port, rt.health_path.as_str())),
            Some((MODEL_PORT, "/health"))
        );
        assert!(
            matches!(&r[1].source, EntitySource::Registered { version: 8, alias: Some(a), .. } if a == "champion")
        );
        assert_eq!(
            (r[1].min_concurrency, r[1].max_concurrency),
            (0, 16),
            "scale to zero lowers the floor to 0"
        );
        assert_eq!(r[1].class.gpu_count, 1);
    }

    #[test]
    fn an_entity_without_a_runtime_runs_on_the_engine_its_flavors_need() {
        let ep = endpoint(
            "  servedEntities:\n  - {name: auto, model: churn, version: 7}\n  - {name: pinned, model: churn, version: 7, runtime: {engine: builtin}}",
        );
        let mut pickled = version(7, &[], true);
        if let Some(status) = pickled.status.as_mut() {
            status.flavors = vec!["python_function".into(), "sklearn".into()];
            status.engine = Some(Engine::Mlflow);
        }
        let mut config = OperatorConfig::default();
        config
            .images
            .engines
            .insert("mlflow".into(), "registry.test/mlflow-runtime:1".into());
        let r = resolve(&ep, &[pickled], &BTreeMap::new(), &config).expect("resolves");
        let runtime = |i: usize| {
            let rt = r[i].runtime.as_ref().expect("runtime");
            (rt.engine, rt.image.clone(), rt.port, rt.health_path.clone())
        };
        assert_eq!(
            runtime(0),
            (
                Engine::Mlflow,
                "registry.test/mlflow-runtime:1".into(),
                8000,
                "/ping".into()
            ),
            "chosen from the flavors"
        );
        assert_eq!(runtime(1).0, Engine::Builtin, "a named engine is kept");
        let plain =
            resolve(&ep, &[version(7, &[], true)], &BTreeMap::new(), &config).expect("resolves");
        assert_eq!(
            plain[0].runtime.as_ref().map(|rt| rt.engine),
            Some(Engine::Builtin),
            "no MLmodel: the builtin runtime"
        );
    }

    #[test]
    fn usage_tracking_resolves_a_table_beside_the_payload_and_a_price_per_entity() {
        let spec = "  servedEntities:\n  - {name: churn-7, model: churn, version: 7, workloadType: GPU_SMALL}\n  aiGateway: {usageTracking: {enabled: true}}";
        let mut config = OperatorConfig::default();
        config.usage_pricing.workload_types.insert(
            WorkloadType::GPU_SMALL,
            crate::usage::TimePrice {
                per_gpu_second: 0.001,
                per_second: 0.0,
            },
        );
        let ep = endpoint(spec);
        assert_eq!(
            resolve_usage(&ep, &config).map(|u| u.table_uri),
            Some("pvc://sluice-lake/default/default/ep_usage".to_string())
        );
        let r =
            resolve(&ep, &[version(7, &[], true)], &BTreeMap::new(), &config).expect("resolves");
        assert_eq!(
            r[0].usage_price.as_ref().and_then(|p| p.per_second),
            Some(0.001)
        );
        let explicit = endpoint(&format!(
            "{spec}\n  autoCapture: {{enabled: true, uri: 's3://lake/t/churn_payload'}}"
        ));
        assert_eq!(
            resolve_usage(&explicit, &config).map(|u| u.table_uri),
            Some("s3://lake/t/churn_usage".to_string())
        );
        let off = endpoint("  servedEntities:\n  - {name: churn-7, model: churn, version: 7}");
        assert_eq!(resolve_usage(&off, &config), None);
        let capture = resolve_capture(&explicit, &config).expect("capture on");
        assert_eq!(feedback_table(&capture), "s3://lake/t/churn_feedback");
        let r =
            resolve(&off, &[version(7, &[], true)], &BTreeMap::new(), &config).expect("resolves");
        assert_eq!(r[0].usage_price, None, "no price without usage tracking");
    }

    #[test]
    fn missing_or_unready_versions_are_named() {
        let ep = endpoint(
            "  servedEntities:\n  - {name: churn-9, model: churn, version: 9}\n  - {name: c, model: churn, alias: champion}\n  - {name: d, model: churn, version: 7}\n  trafficConfig: {routes: [{servedEntityName: c, trafficPercentage: 100}]}",
        );
        let problems = resolve(
            &ep,
            &[version(7, &[], false)],
            &BTreeMap::new(),
            &OperatorConfig::default(),
        )
        .expect_err("fails");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "entity churn-9: ModelVersion for model churn version 9 not found",
                "entity c: no ModelVersion of model churn holds alias champion",
                "entity d: ModelVersion churn-7 is not Ready: checked",
            ]
        );
    }

    #[test]
    fn an_alias_in_conflict_keeps_the_version_resolved_before() {
        let ep = endpoint("  servedEntities:\n  - {name: c, model: churn, alias: champion}");
        // Both versions claim the alias, so neither holds it.
        let mut models = [version(7, &[], true), version(8, &[], true)];
        for m in &mut models {
            m.spec.aliases = vec!["champion".into()];
        }
        let previous = BTreeMap::from([("c".to_string(), 7)]);
        let r = resolve(&ep, &models, &previous, &OperatorConfig::default()).expect("kept");
        assert!(matches!(
            r[0].source,
            EntitySource::Registered { version: 7, .. }
        ));
        assert_eq!(
            r[0].alias_conflict.as_deref(),
            Some(
                "entity c: alias champion of model churn is claimed by churn-7, churn-8; keeping version 7"
            )
        );
    }

    #[test]
    fn an_alias_no_version_holds_any_more_keeps_the_version_resolved_before() {
        let ep = endpoint("  servedEntities:\n  - {name: c, model: churn, alias: champion}");
        let models = [version(7, &[], true)];
        let previous = BTreeMap::from([("c".to_string(), 7)]);
        let r = resolve(&ep, &models, &previous, &OperatorConfig::default()).expect("kept");
        assert!(matches!(
            r[0].source,
            EntitySource::Registered { version: 7, .. }
        ));
        assert_eq!(
            r[0].alias_conflict.as_deref(),
            Some(
                "entity c: alias champion of model churn is held by no ModelVersion; keeping version 7"
            )
        );
    }
}
