//! Standalone mode: the gateway serves the endpoints of a manifest file without Kubernetes, for
//! laptops and edge devices.
//!
//! The manifest holds ServingEndpoints and the ModelVersions they name (the same YAML a cluster
//! takes). In standalone mode the spec is the routed config, resolved by the operator's own
//! resolver (`sluice_contract::resolve`) with the operator config given by `--config`: the same
//! defaults, the same alias rules (an alias two versions claim is held by neither), the same
//! hold limits as on a cluster. Each entity either already runs
//! somewhere (`--upstream ENTITY=HOST:PORT`) or is started here as the pod would run it: the
//! model is fetched (`pvc://<claim>/<path>` reads `<pvc root>/<claim>/<path>`, the pvc root
//! being the manifest's folder unless `--pvc-root` says otherwise) and served by a child
//! `inference-server serve` process on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use sluice_contract::config::OperatorConfig;
use sluice_contract::demand::EntityKey;
use sluice_contract::published::{self, HoldPolicy};
use sluice_contract::resolve::{self, EntitySource, ResolvedEntity, alias_claims};
use sluice_contract::support;
use sluice_crds::model_version::ModelSignature;
use sluice_crds::{
    ExternalTask, ModelFormat, ModelTask, ModelVersion, ModelVersionStatus, ResolvedRoute,
    ServingEndpoint, ShadowRoute,
};
use sluice_fetch::{self as fetch, FetchArgs, FetchError, FetchOptions};

use super::GatewayError;
use super::args::{GatewayArgs, Upstream};
use super::external::{External, Keys};
use super::routing::{ConfigSpec, EndpointSpec, EntitySpec};
use super::state::State;

/// What the manifest holds.
#[derive(Debug, Default)]
pub struct Manifest {
    /// Endpoints, in file order.
    pub endpoints: Vec<ServingEndpoint>,
    /// Model versions, in file order.
    pub versions: Vec<ModelVersion>,
    /// Secrets (external models' API keys), in file order.
    pub secrets: Vec<Secret>,
    /// The folder relative `file://` sources are resolved against.
    pub base: PathBuf,
}

/// Why a standalone manifest cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// A document is not YAML.
    #[error("document {number}: {source}")]
    Yaml {
        /// Which document, from 1.
        number: usize,
        /// What the YAML parser said.
        #[source]
        source: serde_norway::Error,
    },
    /// A document is not a valid object of its kind.
    #[error("document {number} ({kind}): {source}")]
    Object {
        /// Which document, from 1.
        number: usize,
        /// Its kind.
        kind: &'static str,
        /// What does not fit.
        #[source]
        source: serde_json::Error,
    },
    /// A document of a kind standalone mode does not take.
    #[error("document {number}: kind {kind:?} is not a ServingEndpoint, ModelVersion or Secret")]
    Kind {
        /// Which document, from 1.
        number: usize,
        /// Its kind (empty when it names none).
        kind: String,
    },
    /// Nothing to serve.
    #[error("the manifest holds no ServingEndpoint")]
    NoEndpoint,
    /// Endpoints the operator's resolver refuses, or that standalone mode cannot serve.
    #[error("{}", problems.join("; "))]
    Unresolved {
        /// Each problem, naming its endpoint.
        problems: Vec<String>,
    },
}

/// Why standalone mode could not start its local entities, or keep routing to them.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// This process's own executable, which serves the entities, is not found.
    #[error("cannot find the inference-server executable: {0}")]
    Executable(#[source] std::io::Error),
    /// An entity's model could not be fetched.
    #[error("entity {endpoint}/{entity}: fetching {uri}: {source}")]
    Fetch {
        /// The endpoint.
        endpoint: String,
        /// The entity.
        entity: String,
        /// The artifact's URI.
        uri: String,
        /// Why (boxed: a fetch error is large, and every gateway error would carry its size).
        #[source]
        source: Box<FetchError>,
    },
    /// An entity's log file could not be made.
    #[error("creating {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An entity's `serve` process could not be started.
    #[error("starting serve for {endpoint}/{entity}: {source}")]
    Spawn {
        /// The endpoint.
        endpoint: String,
        /// The entity.
        entity: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `serve` process exited before it listened.
    #[error("serve exited ({status}) before listening; see {log}")]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// Its log.
        log: PathBuf,
    },
    /// A `serve` process did not announce its address in time.
    #[error("serve did not listen within {within:?}; see {log}")]
    NotListening {
        /// How long it had.
        within: Duration,
        /// Its log.
        log: PathBuf,
    },
    /// A local entity's process exited while the gateway waited for it.
    #[error("a local entity process exited ({status}); see its log in the work dir")]
    Exited {
        /// How it exited.
        status: ExitStatus,
    },
    /// A local entity did not answer `GET /health` in time.
    #[error("the entity at {address} was not healthy within {timeout:?}")]
    Unhealthy {
        /// Where it listens.
        address: SocketAddr,
        /// How long it had.
        timeout: Duration,
    },
    /// The client of the health checks could not be built.
    #[error("building an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// SIGHUP (reload the manifest) cannot be listened for.
    #[error("installing the SIGHUP handler: {0}")]
    Hangup(#[source] std::io::Error),
}

/// Reads every document of `path`; documents of other kinds are refused by name.
pub fn read(path: &Path) -> Result<Manifest, GatewayError> {
    let bad = |problem: ManifestError| GatewayError::Manifest {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(ManifestError::Read(e)))?;
    let mut manifest = Manifest {
        base: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        ..Manifest::default()
    };
    for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let number = index + 1;
        let value = serde_json::Value::deserialize(document)
            .map_err(|source| bad(ManifestError::Yaml { number, source }))?;
        if value.is_null() {
            continue;
        }
        let object = |kind, source| {
            bad(ManifestError::Object {
                number,
                kind,
                source,
            })
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "ServingEndpoint" => manifest
                .endpoints
                .push(serde_json::from_value(value).map_err(|e| object("ServingEndpoint", e))?),
            "ModelVersion" => manifest
                .versions
                .push(serde_json::from_value(value).map_err(|e| object("ModelVersion", e))?),
            "Secret" => manifest
                .secrets
                .push(serde_json::from_value(value).map_err(|e| object("Secret", e))?),
            other => {
                return Err(bad(ManifestError::Kind {
                    number,
                    kind: other.to_string(),
                }));
            }
        }
    }
    if manifest.endpoints.is_empty() {
        return Err(bad(ManifestError::NoEndpoint));
    }
    Ok(manifest)
}

/// Where each entity answers.
pub type Addresses = Vec<(EntityKey, SocketAddr)>;

/// One endpoint of the manifest, resolved as the operator resolves it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedEndpoint {
    /// Namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The config version: the manifest's `metadata.generation`, else 1.
    pub version: i64,
    /// Every entity, with the operator config's defaults applied.
    pub entities: Vec<ResolvedEntity>,
    /// Live routes.
    pub routes: Vec<ResolvedRoute>,
    /// Shadow routes.
    pub shadows: Vec<ShadowRoute>,
    /// What `spec.aiGateway` asks of the gateway.
    pub policies: super::routing::Policies,
}

impl ResolvedEndpoint {
    /// The key of this endpoint's entity `entity`.
    fn entity_key(&self, entity: &str) -> EntityKey {
        EntityKey {
            namespace: self.namespace.clone(),
            endpoint: self.name.clone(),
            entity: entity.to_string(),
        }
    }
}

/// Resolves every endpoint of `manifest` with the operator's resolver and `config`. Standalone
/// mode runs no source check, so each ModelVersion counts as checked; it holds the aliases no
/// other version of its model claims. An entity that `upstreams` serve needs no ModelVersion
/// in the manifest: the upstream stands for it. Problems are named, one per entity.
pub fn resolve_manifest(
    manifest: &Manifest,
    config: &OperatorConfig,
    upstreams: &[Upstream],
) -> Result<Vec<ResolvedEndpoint>, ManifestError> {
    let mut versions = manifest.versions.clone();
    versions.extend(served_upstream(manifest, upstreams));
    let checked: Vec<ModelVersion> = versions.iter().map(|mv| checked(mv, &versions)).collect();
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for endpoint in &manifest.endpoints {
        let namespace = namespace_of(&endpoint.metadata.namespace);
        let name = endpoint.metadata.name.clone().unwrap_or_default();
        let versions: Vec<ModelVersion> = checked
            .iter()
            .filter(|mv| namespace_of(&mv.metadata.namespace) == namespace)
            .cloned()
            .collect();
        // What a cluster would keep from READY, standalone refuses: nothing is served while
        // part of its spec is ignored.
        let unsupported = support::unsupported_fields(endpoint);
        if !unsupported.is_empty() {
            problems.push(format!(
                "endpoint {name}: {}",
                support::unsupported_message(&unsupported)
            ));
            continue;
        }
        // A cluster records an external entity's calls with the recorder the operator starts;
        // standalone mode needs one given as the entity's upstream.
        let policies = super::routing::Policies::of(endpoint);
        if policies.captured || policies.usage_tracked {
            for entity in &endpoint.spec.served_entities {
                if entity.external_model.is_some()
                    && upstreams_for(upstreams, &name, &entity.name)
                        .next()
                        .is_none()
                {
                    problems.push(format!(
                        "endpoint {name}: the external entity {} is recorded (autoCapture or \
                         aiGateway.usageTracking) but has no recorder: start `inference-server \
                         capture --record-only` and pass --upstream {}=<its address>",
                        entity.name, entity.name
                    ));
                }
            }
        }
        match resolve::resolve(endpoint, &versions, &BTreeMap::new(), config) {
            Ok(entities) => resolved.push(ResolvedEndpoint {
                version: endpoint.metadata.generation.unwrap_or(1),
                entities,
                routes: resolve::routes(endpoint),
                shadows: resolve::shadow_routes(endpoint),
                policies,
                namespace,
                name,
            }),
            Err(found) => problems.extend(
                found
                    .iter()
                    .map(|problem| format!("endpoint {name}: {problem}")),
            ),
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(ManifestError::Unresolved { problems })
    }
}

/// A ModelVersion for each entity that an `--upstream` serves and the manifest registers no
/// version for: its source is the upstream.
fn served_upstream(manifest: &Manifest, upstreams: &[Upstream]) -> Vec<ModelVersion> {
    let mut made = Vec::new();
    for endpoint in &manifest.endpoints {
        let name = endpoint.metadata.name.clone().unwrap_or_default();
        for entity in &endpoint.spec.served_entities {
            let (Some(model), Some(upstream)) = (
                entity.model.as_deref(),
                upstreams_for(upstreams, &name, &entity.name).next(),
            ) else {
                continue;
            };
            let registered = manifest.versions.iter().any(|mv| {
                mv.spec.model == model
                    && match (entity.version, &entity.alias) {
                        (Some(version), _) => mv.spec.version == version,
                        (None, Some(alias)) => mv.spec.aliases.contains(alias),
                        (None, None) => false,
                    }
            });
            if registered {
                continue;
            }
            let version = entity.version.unwrap_or(0);
            let made_version = serde_json::from_value(serde_json::json!({
                "apiVersion": "serving.sluice.dev/v1alpha1",
                "kind": "ModelVersion",
                "metadata": {
                    "name": format!("{name}-{}-upstream", entity.name),
                    "namespace": endpoint.metadata.namespace,
                },
                "spec": {
                    "model": model,
                    "version": version,
                    "aliases": entity.alias.iter().collect::<Vec<_>>(),
                    "source": {"uri": format!("http://{}", upstream.address)},
                    "format": "custom",
                },
            }));
            match made_version {
                Ok(mv) => made.push(mv),
                Err(error) => {
                    tracing::warn!(%error, entity = %entity.name, "describing an upstream")
                }
            }
        }
    }
    made
}

/// `mv` as the operator's check would leave it when its source is readable: Ready, holding the
/// aliases it claims alone among `all`.
fn checked(mv: &ModelVersion, all: &[ModelVersion]) -> ModelVersion {
    let others: Vec<&ModelVersion> = all
        .iter()
        .filter(|o| {
            o.spec.model == mv.spec.model
                && o.metadata.name != mv.metadata.name
                && namespace_of(&o.metadata.namespace) == namespace_of(&mv.metadata.namespace)
        })
        .collect();
    let (effective_aliases, _) = alias_claims(mv, &others);
    let mut mv = mv.clone();
    mv.status = Some(ModelVersionStatus {
        observed_generation: mv.metadata.generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Standalone".into(),
            message: "standalone mode fetches the artifact when it starts".into(),
            observed_generation: mv.metadata.generation,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }],
        resolved_uri: Some(mv.spec.source.uri.clone()),
        effective_aliases,
        ..ModelVersionStatus::default()
    });
    mv
}

/// The routed config of each endpoint, with `addresses` giving each entity's backend (entities
/// missing from it have no ready backend).
pub fn specs(endpoints: &[ResolvedEndpoint], addresses: &Addresses) -> Vec<EndpointSpec> {
    endpoints
        .iter()
        .map(|endpoint| EndpointSpec {
            namespace: endpoint.namespace.clone(),
            name: endpoint.name.clone(),
            policies: endpoint.policies.clone(),
            config: Some(ConfigSpec {
                version: endpoint.version,
                entities: endpoint
                    .entities
                    .iter()
                    .map(|entity| EntitySpec {
                        name: entity.name.clone(),
                        scale_to_zero: entity.scale_to_zero,
                        hold: HoldPolicy::from(&published::autoscaling(entity)),
                        backends: {
                            let key = endpoint.entity_key(&entity.name);
                            addresses
                                .iter()
                                .filter(|(at, _)| *at == key)
                                .map(|(_, address)| *address)
                                .collect()
                        },
                        warming: Vec::new(),
                        external: match &entity.source {
                            EntitySource::External(model) => {
                                External::of(model, &endpoint.namespace).ok()
                            }
                            EntitySource::Registered { .. } => None,
                        },
                        // resolve_manifest refused what cannot be called.
                        unsupported: None,
                    })
                    .collect(),
                routes: ConfigSpec::routes_of(&endpoint.routes),
                shadows: ConfigSpec::shadows_of(&endpoint.shadows),
            }),
        })
        .collect()
}

fn namespace_of(namespace: &Option<String>) -> String {
    namespace.clone().unwrap_or_else(|| "default".into())
}

fn upstreams_for<'a>(
    upstreams: &'a [Upstream],
    endpoint: &'a str,
    entity: &'a str,
) -> impl Iterator<Item = &'a Upstream> + 'a {
    upstreams
        .iter()
        .filter(move |u| u.entity == entity && u.endpoint.as_deref().is_none_or(|e| e == endpoint))
}

/// The addresses `--upstream` gives the entities of `endpoints`.
fn upstream_addresses(endpoints: &[ResolvedEndpoint], upstreams: &[Upstream]) -> Addresses {
    let mut addresses = Addresses::new();
    for endpoint in endpoints {
        for entity in &endpoint.entities {
            for upstream in upstreams_for(upstreams, &endpoint.name, &entity.name) {
                addresses.push((endpoint.entity_key(&entity.name), upstream.address));
            }
        }
    }
    addresses
}

/// `serve --declared-*` from a resolved ModelVersion: its format, task and signature, for a
/// folder without a manifest (the operator passes the same values to pods).
fn declared_args(
    format: ModelFormat,
    task: Option<ModelTask>,
    signature: Option<&ModelSignature>,
) -> Vec<String> {
    let word = |v: Result<serde_json::Value, _>| v.ok()?.as_str().map(str::to_string);
    let mut args = Vec::new();
    if let Some(format) = word(serde_json::to_value(format)) {
        args.extend(["--declared-format".to_string(), format]);
    }
    if let Some(task) = task.and_then(|t| word(serde_json::to_value(t))) {
        args.extend(["--declared-task".to_string(), task]);
    }
    if let Some(signature) = signature.and_then(|s| serde_json::to_string(s).ok()) {
        args.extend(["--declared-signature".to_string(), signature]);
    }
    args
}

/// The entity processes started for a standalone gateway; they stop when this is dropped.
#[derive(Debug, Default)]
pub struct LocalEntities {
    children: Vec<tokio::process::Child>,
    /// Where each started entity answers.
    pub addresses: Addresses,
}

/// Starts every entity not given by `--upstream`: fetch, then `serve` on a free loopback port.
pub async fn start(
    endpoints: &[ResolvedEndpoint],
    upstreams: &[Upstream],
    work_dir: &Path,
    pvc_root: &Path,
) -> Result<LocalEntities, GatewayError> {
    let mut local = LocalEntities::default();
    let exe = std::env::current_exe().map_err(StartError::Executable)?;
    for endpoint in endpoints {
        let name = &endpoint.name;
        for entity in &endpoint.entities {
            let EntitySource::Registered {
                artifact_uri,
                sha256,
                tracking_uri,
                format,
                declared_task,
                signature,
                ..
            } = &entity.source
            else {
                continue;
            };
            if upstreams_for(upstreams, name, &entity.name)
                .next()
                .is_some()
            {
                continue;
            }
            let model_dir = work_dir.join("models").join(name).join(&entity.name);
            let options = FetchOptions {
                sha256: sha256.clone(),
                ..FetchOptions::default()
            };
            fetch::fetch(
                FetchArgs {
                    uri: artifact_uri.clone(),
                    dest: model_dir.clone(),
                    pvc_root: pvc_root.to_path_buf(),
                    mlflow_tracking_uri: tracking_uri.clone(),
                },
                &options,
            )
            .await
            .map_err(|source| StartError::Fetch {
                endpoint: name.clone(),
                entity: entity.name.clone(),
                uri: artifact_uri.clone(),
                source: Box::new(source),
            })?;
            let log_path = work_dir.join(format!("{name}-{}.log", entity.name));
            let log_error = |source| StartError::Log {
                path: log_path.clone(),
                source,
            };
            let log = std::fs::File::create(&log_path).map_err(log_error)?;
            let log_err = log.try_clone().map_err(log_error)?;
            let mut child = tokio::process::Command::new(&exe)
                .arg("serve")
                .arg("--model-dir")
                .arg(&model_dir)
                .args(["--host", "127.0.0.1", "--port", "0"])
                .args(["--parent-pid", &std::process::id().to_string()])
                .args(declared_args(*format, *declared_task, signature.as_ref()))
                .envs(&entity.env)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| StartError::Spawn {
                    endpoint: name.clone(),
                    entity: entity.name.clone(),
                    source,
                })?;
            let address = announced_address(&log_path, &mut child).await?;
            tracing::info!(endpoint = %name, entity = %entity.name, %address, log = %log_path.display(), "started a local entity");
            local.children.push(child);
            local
                .addresses
                .push((endpoint.entity_key(&entity.name), address));
        }
    }
    Ok(local)
}

impl LocalEntities {
    /// Waits until every local entity answers `GET /health` with 200, or one of them exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), GatewayError> {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        for (_, address) in &self.addresses {
            loop {
                for child in &mut self.children {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(StartError::Exited { status }.into());
                    }
                }
                let ok = client
                    .get(format!("http://{address}/health"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    let address = *address;
                    return Err(StartError::Unhealthy { address, timeout }.into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// The entities with `scaleToZeroEnabled`.
fn scale_to_zero_entities(endpoints: &[ResolvedEndpoint]) -> BTreeSet<EntityKey> {
    endpoints
        .iter()
        .flat_map(|endpoint| {
            endpoint
                .entities
                .iter()
                .filter(|e| e.scale_to_zero)
                .map(|e| endpoint.entity_key(&e.name))
        })
        .collect()
}

/// Runs standalone mode: starts the local entities, then keeps the routing table in step with
/// the manifest (re-read when it changes or on SIGHUP). Entities with `scaleToZeroEnabled` are
/// routed only while their address answers `GET /health` below 500 (the role the kubelet's
/// readiness probe plays in a cluster), so requests are held while they are down and released
/// when they come up; other entities are always routed, and the active health checks take a
/// failing address out of rotation. Prints one `READY` line per endpoint with a curl.
pub async fn run(
    path: &Path,
    args: &GatewayArgs,
    work_dir: &Path,
    listen: SocketAddr,
    state: &State,
    keys: &Keys,
) -> Result<(), GatewayError> {
    let upstreams = args.upstreams.as_slice();
    let config = match &args.operator_config {
        Some(file) => OperatorConfig::load(file).map_err(GatewayError::OperatorConfig)?,
        None => OperatorConfig::default(),
    };
    let refused = |problem| GatewayError::Manifest {
        path: path.to_path_buf(),
        problem,
    };
    let manifest = read(path)?;
    let mut endpoints = resolve_manifest(&manifest, &config, upstreams).map_err(refused)?;
    keys.set_manifest(&manifest.secrets);
    let pvc_root = args
        .pvc_root
        .clone()
        .unwrap_or_else(|| manifest.base.clone());
    let mut local = start(&endpoints, upstreams, work_dir, &pvc_root).await?;
    local.wait_ready(args.request_timeout).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(StartError::Client)?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(StartError::Hangup)?;
    let mut modified = modified_time(path);
    let mut applied: Option<Vec<EndpointSpec>> = None;
    loop {
        let mut addresses = upstream_addresses(&endpoints, upstreams);
        addresses.extend(local.addresses.clone());
        let waking = scale_to_zero_entities(&endpoints);
        let checks = addresses.iter().map(|(key, address)| {
            let client = client.clone();
            let check = waking.contains(key);
            async move {
                if !check {
                    return Some((key.clone(), *address));
                }
                let answered = client.get(format!("http://{address}/health")).send().await;
                answered
                    .is_ok_and(|r| !r.status().is_server_error())
                    .then(|| (key.clone(), *address))
            }
        });
        let ready: Addresses = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        let specs = specs(&endpoints, &ready);
        if applied.as_ref() != Some(&specs) {
            state.apply(&specs);
            if applied.is_none() {
                for endpoint in &endpoints {
                    let (route, body) = example_request(endpoint);
                    println!(
                        "READY {} curl -s http://{listen}{route} -H 'content-type: application/json' -d '{body}'",
                        endpoint.name
                    );
                }
            }
            applied = Some(specs);
        }
        let reload = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = modified_time(path);
                let changed = now != modified;
                modified = now;
                changed
            }
            _ = hangup.recv() => true,
        };
        if reload {
            let next = read(path).and_then(|next| {
                let resolved = resolve_manifest(&next, &config, upstreams).map_err(refused)?;
                Ok((next.secrets, resolved))
            });
            match next {
                Ok((secrets, next)) => {
                    tracing::info!(path = %path.display(), "manifest changed; routing by it");
                    keys.set_manifest(&secrets);
                    endpoints = next;
                }
                Err(error) => {
                    tracing::warn!(%error, "the changed manifest is refused; routing by the previous one");
                }
            }
        }
    }
}

fn modified_time(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The address a child `serve` started on port 0 announces in its output (`log`), once it has
/// bound; an error when it exits first or takes longer than [`ANNOUNCE_TIMEOUT`].
async fn announced_address(
    log: &Path,
    child: &mut tokio::process::Child,
) -> Result<SocketAddr, GatewayError> {
    let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((_, address)) = text
            .lines()
            .filter_map(sluice_protocol::process::parse_listening_line)
            .find(|(name, _)| *name == "serve")
        {
            return Ok(address);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = log.to_path_buf();
            return Err(StartError::ExitedEarly { status, log }.into());
        }
        if Instant::now() > deadline {
            let (within, log) = (ANNOUNCE_TIMEOUT, log.to_path_buf());
            return Err(StartError::NotListening { within, log }.into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a child `serve` may take to bind its port (it binds before loading the model).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The route and a request body that work for the endpoint's first entity, for the printed
/// curl.
pub fn example_request(endpoint: &ResolvedEndpoint) -> (String, String) {
    let name = &endpoint.name;
    let (task, signature) = match endpoint.entities.first().map(|e| &e.source) {
        Some(EntitySource::Registered {
            declared_task,
            signature,
            ..
        }) => (*declared_task, signature.as_ref()),
        Some(EntitySource::External(model)) => (
            Some(match model.task {
                ExternalTask::Chat => ModelTask::Chat,
                ExternalTask::Completions => ModelTask::Completions,
                ExternalTask::Embeddings => ModelTask::Embeddings,
            }),
            None,
        ),
        None => (None, None),
    };
    match task {
        Some(ModelTask::Chat) => (
            "/serving-endpoints/v1/chat/completions".into(),
            format!(
                r#"{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello!"}}]}}"#
            ),
        ),
        Some(ModelTask::Embeddings) => (
            "/serving-endpoints/v1/embeddings".into(),
            format!(r#"{{"model": "{name}", "input": ["Hello!"]}}"#),
        ),
        Some(ModelTask::Completions) => (
            "/serving-endpoints/v1/completions".into(),
            format!(r#"{{"model": "{name}", "prompt": "Hello"}}"#),
        ),
        Some(ModelTask::Predict) | None => {
            let columns: Vec<String> = signature
                .map(|s| {
                    s.inputs
                        .iter()
                        .filter_map(|i| i.name.as_ref())
                        .map(|n| format!("{n:?}"))
                        .collect()
                })
                .unwrap_or_default();
            let row = vec!["1.0"; columns.len().max(1)].join(", ");
            (
                format!("/serving-endpoints/{name}/invocations"),
                format!(
                    r#"{{"dataframe_split": {{"columns": [{}], "data": [[{row}]]}}}}"#,
                    columns.join(", ")
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        let dir = std::env::temp_dir().join(format!("sluice-standalone-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.yaml");
        std::fs::write(&path, text).expect("write");
        read(&path).expect("manifest")
    }

    #[test]
    fn the_spec_is_the_routed_config_in_standalone_mode() {
        let m = manifest(include_str!("../../../examples/ab-test.yaml"));
        let addresses = vec![(
            EntityKey {
                namespace: "default".into(),
                endpoint: "fraud".into(),
                entity: "version-a".into(),
            },
            "127.0.0.1:9".parse().expect("addr"),
        )];
        let resolved = resolve_manifest(&m, &OperatorConfig::default(), &[]).expect("resolves");
        let specs = specs(&resolved, &addresses);
        let config = specs[0].config.as_ref().expect("config");
        assert_eq!(specs[0].namespace, "default");
        assert_eq!(config.routes.iter().map(|r| r.1).sum::<u32>(), 100);
        let with_backend: Vec<_> = config
            .entities
            .iter()
            .filter(|e| !e.backends.is_empty())
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(with_backend.len(), 1, "{config:?}");
        // An address is the entity's of one namespace only.
        let elsewhere = vec![(
            EntityKey {
                namespace: "other".into(),
                ..addresses[0].0.clone()
            },
            addresses[0].1,
        )];
        let specs = super::specs(&resolved, &elsewhere);
        let config = specs[0].config.as_ref().expect("config");
        assert!(config.entities.iter().all(|e| e.backends.is_empty()));
    }

    #[test]
    fn other_kinds_and_empty_manifests_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("sluice-standalone-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .expect("write");
        let error = read(&path).expect_err("refused").to_string();
        assert!(
            error.contains("\"ConfigMap\" is not a ServingEndpoint"),
            "{error}"
        );
        std::fs::write(&path, "").expect("write");
        let error = read(&path).expect_err("refused").to_string();
        assert!(error.contains("no ServingEndpoint"), "{error}");
    }

    #[test]
    fn a_manifest_that_cannot_be_read_keeps_its_cause() {
        use std::error::Error as _;
        let path = std::env::temp_dir().join(format!("sluice-absent-{}.yaml", fastrand::u64(..)));
        let error = read(&path).expect_err("no such file");
        let GatewayError::Manifest { problem, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(matches!(problem, ManifestError::Read(_)), "{problem:?}");
        let cause = error
            .source()
            .and_then(|problem| problem.source())
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .expect("the io error is kept");
        assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);
        assert!(error.to_string().contains(&cause.to_string()), "{error}");
    }

    #[test]
    fn the_operators_resolver_and_defaults_apply_in_standalone_mode() {
        let m = manifest(include_str!("../../../examples/scale-to-zero.yaml"));
        let resolved = resolve_manifest(&m, &OperatorConfig::default(), &[]).expect("resolves");
        let specs = specs(&resolved, &Addresses::new());
        let entity = &specs[0].config.as_ref().expect("config").entities[0];
        assert!(entity.scale_to_zero);
        let expected = HoldPolicy::from(&published::autoscaling(&resolved[0].entities[0]));
        assert_eq!(
            entity.hold, expected,
            "the hold limits the operator would publish"
        );
        let config =
            OperatorConfig::parse("autoscaling: {maxHeldRequests: 7}\n", "test").expect("config");
        let tuned = resolve_manifest(&m, &config, &[]).expect("resolves");
        let entity_sets_it = m.endpoints[0].spec.served_entities[0]
            .autoscaling
            .as_ref()
            .and_then(|a| a.max_held_requests)
            .is_some();
        if !entity_sets_it {
            assert_eq!(
                tuned[0].entities[0].max_held_requests, 7,
                "--config applies"
            );
        }
    }

    #[test]
    fn an_alias_two_versions_claim_is_refused_by_name() {
        let m = manifest(
            "apiVersion: serving.sluice.dev/v1alpha1\nkind: ModelVersion\nmetadata: {name: m-1}\n\
             spec: {model: m, version: 1, aliases: [champion], source: {uri: 's3://b/m/1'}, format: onnx}\n---\n\
             apiVersion: serving.sluice.dev/v1alpha1\nkind: ModelVersion\nmetadata: {name: m-2}\n\
             spec: {model: m, version: 2, aliases: [champion], source: {uri: 's3://b/m/2'}, format: onnx}\n---\n\
             apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {name: e}\n\
             spec: {servedEntities: [{name: c, model: m, alias: champion}]}\n",
        );
        let error = resolve_manifest(&m, &OperatorConfig::default(), &[]).expect_err("refused");
        assert!(
            matches!(&error, ManifestError::Unresolved { problems } if problems.len() == 1),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "endpoint e: entity c: no ModelVersion of model m holds alias champion"
        );
    }
}
