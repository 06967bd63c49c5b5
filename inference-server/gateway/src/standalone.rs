//! Standalone mode: the gateway serves the endpoints of a manifest file without Kubernetes, for
//! laptops and edge devices.
//!
//! The manifest holds ServingEndpoints and the ModelVersions they name (the same YAML a cluster
//! takes). In standalone mode the spec is the routed config. Each entity either already runs
//! somewhere (`--upstream ENTITY=HOST:PORT`) or is started here as the pod would run it: the
//! model is fetched (`pvc://<claim>/<path>` reads `<pvc root>/<claim>/<path>`, the pvc root
//! being the manifest's folder unless `--pvc-root` says otherwise) and served by a child
//! `inference-server serve` process on a free loopback port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_crds::{ModelTask, ModelVersion, ServedEntity, ServingEndpoint};
use sluice_fetch::{self as fetch, FetchArgs, FetchOptions};

use super::GatewayError;
use super::args::{GatewayArgs, Upstream};
use super::routing::{self, ConfigSpec, EndpointSpec, EntitySpec, HoldPolicy};
use super::state::State;

/// What the manifest holds.
#[derive(Debug, Default)]
pub struct Manifest {
    /// Endpoints, in file order.
    pub endpoints: Vec<ServingEndpoint>,
    /// Model versions, in file order.
    pub versions: Vec<ModelVersion>,
    /// The folder relative `file://` sources are resolved against.
    pub base: PathBuf,
}

/// Reads every document of `path`; documents of other kinds are refused by name.
pub fn read(path: &Path) -> Result<Manifest, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|source| GatewayError::Manifest {
        path: path.to_path_buf(),
        message: source.to_string(),
    })?;
    let bad = |message: String| GatewayError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let mut manifest = Manifest {
        base: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        ..Manifest::default()
    };
    for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .map_err(|e| bad(format!("document {}: {e}", index + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "ServingEndpoint" => manifest.endpoints.push(
                serde_json::from_value(value)
                    .map_err(|e| bad(format!("document {} (ServingEndpoint): {e}", index + 1)))?,
            ),
            "ModelVersion" => manifest.versions.push(
                serde_json::from_value(value)
                    .map_err(|e| bad(format!("document {} (ModelVersion): {e}", index + 1)))?,
            ),
            other => {
                return Err(bad(format!(
                    "document {}: kind {other:?} is not a ServingEndpoint or ModelVersion",
                    index + 1
                )));
            }
        }
    }
    if manifest.endpoints.is_empty() {
        return Err(bad("the manifest holds no ServingEndpoint".into()));
    }
    Ok(manifest)
}

/// Where each `(endpoint, entity)` answers.
pub type Addresses = Vec<((String, String), SocketAddr)>;

/// The routed config of each endpoint, with `addresses` giving each entity's backend (entities
/// missing from it have no ready backend).
pub fn specs(
    manifest: &Manifest,
    addresses: &Addresses,
    defaults: HoldPolicy,
) -> Vec<EndpointSpec> {
    manifest
        .endpoints
        .iter()
        .map(|endpoint| {
            let name = endpoint.metadata.name.clone().unwrap_or_default();
            let entities = &endpoint.spec.served_entities;
            let routes: Vec<(String, u32)> = match &endpoint.spec.traffic_config {
                Some(traffic) => traffic
                    .routes
                    .iter()
                    .map(|r| (r.target().to_string(), r.traffic_percentage.max(0) as u32))
                    .collect(),
                None => entities.iter().map(|e| (e.name.clone(), 100)).collect(),
            };
            let shadows = endpoint
                .spec
                .traffic_config
                .as_ref()
                .and_then(|t| t.shadow_routes.as_ref())
                .map(|routes| {
                    routes
                        .iter()
                        .map(|r| {
                            (
                                r.served_entity_name.clone(),
                                r.mirror_percentage.max(0) as u32,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            EndpointSpec {
                namespace: namespace_of(endpoint),
                name: name.clone(),
                config: Some(ConfigSpec {
                    version: endpoint.metadata.generation.unwrap_or(1),
                    entities: entities
                        .iter()
                        .map(|entity| EntitySpec {
                            name: entity.name.clone(),
                            scale_to_zero: entity.scale_to_zero_enabled.unwrap_or(false),
                            hold: routing::hold_policy(Some(entity), defaults),
                            backends: addresses
                                .iter()
                                .filter(|((e, n), _)| *e == name && *n == entity.name)
                                .map(|(_, address)| *address)
                                .collect(),
                            warming: Vec::new(),
                            unsupported: entity.external_model.as_ref().map(|_| {
                                format!(
                                    "entity {} is an external model; standalone mode does not \
                                     call external providers yet",
                                    entity.name
                                )
                            }),
                        })
                        .collect(),
                    routes,
                    shadows,
                }),
            }
        })
        .collect()
}

fn namespace_of(endpoint: &ServingEndpoint) -> String {
    endpoint
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The ModelVersion an entity names (by version, or by alias).
fn version_for<'a>(manifest: &'a Manifest, entity: &ServedEntity) -> Option<&'a ModelVersion> {
    let model = entity.model.as_deref()?;
    manifest.versions.iter().find(|mv| {
        mv.spec.model == model
            && match (entity.version, entity.alias.as_deref()) {
                (Some(version), _) => mv.spec.version == version,
                (None, Some(alias)) => mv.spec.aliases.iter().any(|a| a == alias),
                (None, None) => false,
            }
    })
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

/// The addresses `--upstream` gives the entities of `manifest`.
fn upstream_addresses(manifest: &Manifest, upstreams: &[Upstream]) -> Addresses {
    let mut addresses = Addresses::new();
    for endpoint in &manifest.endpoints {
        let name = endpoint.metadata.name.clone().unwrap_or_default();
        for entity in &endpoint.spec.served_entities {
            for upstream in upstreams_for(upstreams, &name, &entity.name) {
                addresses.push(((name.clone(), entity.name.clone()), upstream.address));
            }
        }
    }
    addresses
}

/// `serve --declared-*` from a ModelVersion: its format, task and signature, for a folder
/// without a manifest (the operator passes the same values to pods).
fn declared_args(spec: &sluice_crds::ModelVersionSpec) -> Vec<String> {
    let word = |v: Result<serde_json::Value, _>| v.ok()?.as_str().map(str::to_string);
    let mut args = Vec::new();
    if let Some(format) = word(serde_json::to_value(spec.format)) {
        args.extend(["--declared-format".to_string(), format]);
    }
    if let Some(task) = spec.task.and_then(|t| word(serde_json::to_value(t))) {
        args.extend(["--declared-task".to_string(), task]);
    }
    if let Some(signature) = spec
        .signature
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok())
    {
        args.extend(["--declared-signature".to_string(), signature]);
    }
    args
}

/// The entity processes started for a standalone gateway; they stop when this is dropped.
#[derive(Debug, Default)]
pub struct LocalEntities {
    children: Vec<tokio::process::Child>,
    /// Where each started `(endpoint, entity)` answers.
    pub addresses: Addresses,
}

/// Starts every entity not given by `--upstream`: fetch, then `serve` on a free loopback port.
pub async fn start(
    manifest: &Manifest,
    upstreams: &[Upstream],
    work_dir: &Path,
    pvc_root: &Path,
) -> Result<LocalEntities, GatewayError> {
    let mut local = LocalEntities::default();
    let exe = std::env::current_exe().map_err(|e| {
        GatewayError::Start(format!("cannot find the inference-server executable: {e}"))
    })?;
    for endpoint in &manifest.endpoints {
        let name = endpoint.metadata.name.clone().unwrap_or_default();
        for entity in &endpoint.spec.served_entities {
            let key = (name.clone(), entity.name.clone());
            if upstreams_for(upstreams, &name, &entity.name)
                .next()
                .is_some()
                || entity.external_model.is_some()
            {
                continue;
            }
            let version = version_for(manifest, entity).ok_or_else(|| {
                GatewayError::Start(format!(
                    "entity {}/{}: the manifest has no ModelVersion for model {:?} {}; add it or \
                     pass --upstream {}=HOST:PORT",
                    name,
                    entity.name,
                    entity.model.as_deref().unwrap_or(""),
                    entity
                        .version
                        .map(|v| format!("version {v}"))
                        .or_else(|| entity.alias.as_ref().map(|a| format!("alias {a}")))
                        .unwrap_or_default(),
                    entity.name
                ))
            })?;
            let model_dir = work_dir.join("models").join(&name).join(&entity.name);
            let uri = version.spec.source.uri.clone();
            let options = FetchOptions {
                sha256: version.spec.source.sha256.clone(),
                ..FetchOptions::default()
            };
            fetch::fetch(
                FetchArgs {
                    uri: uri.clone(),
                    dest: model_dir.clone(),
                    pvc_root: pvc_root.to_path_buf(),
                },
                &options,
            )
            .await
            .map_err(|e| {
                GatewayError::Start(format!(
                    "entity {name}/{}: fetching {uri}: {e}",
                    entity.name
                ))
            })?;
            let port = free_port()?;
            let log_path = work_dir.join(format!("{name}-{}.log", entity.name));
            let log = std::fs::File::create(&log_path).map_err(|e| {
                GatewayError::Start(format!("creating {}: {e}", log_path.display()))
            })?;
            let log_err = log.try_clone().map_err(|e| {
                GatewayError::Start(format!("creating {}: {e}", log_path.display()))
            })?;
            let child = tokio::process::Command::new(&exe)
                .arg("serve")
                .arg("--model-dir")
                .arg(&model_dir)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--parent-pid", &std::process::id().to_string()])
                .args(declared_args(&version.spec))
                .envs(&entity.environment_vars)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    GatewayError::Start(format!("starting serve for {name}/{}: {e}", entity.name))
                })?;
            tracing::info!(endpoint = %name, entity = %entity.name, port, log = %log_path.display(), "started a local entity");
            local.children.push(child);
            local
                .addresses
                .push((key, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
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
                        return Err(GatewayError::Start(format!(
                            "a local entity process exited ({status}); see its log in the work dir"
                        )));
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
                    return Err(GatewayError::Start(format!(
                        "the entity at {address} was not healthy within {timeout:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// The `(endpoint, entity)` keys of entities with `scaleToZeroEnabled`.
fn scale_to_zero_entities(manifest: &Manifest) -> std::collections::BTreeSet<(String, String)> {
    manifest
        .endpoints
        .iter()
        .flat_map(|endpoint| {
            let name = endpoint.metadata.name.clone().unwrap_or_default();
            endpoint
                .spec
                .served_entities
                .iter()
                .filter(|e| e.scale_to_zero_enabled == Some(true))
                .map(move |e| (name.clone(), e.name.clone()))
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
) -> Result<(), GatewayError> {
    let upstreams = args.upstreams.as_slice();
    let defaults = args.hold_defaults();
    let mut manifest = read(path)?;
    let pvc_root = args
        .pvc_root
        .clone()
        .unwrap_or_else(|| manifest.base.clone());
    let mut local = start(&manifest, upstreams, work_dir, &pvc_root).await?;
    local.wait_ready(args.request_timeout).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| GatewayError::Start(format!("building an HTTP client: {e}")))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| GatewayError::Start(format!("installing the SIGHUP handler: {e}")))?;
    let mut modified = modified_time(path);
    let mut applied: Option<Vec<EndpointSpec>> = None;
    loop {
        let mut addresses = upstream_addresses(&manifest, upstreams);
        addresses.extend(local.addresses.clone());
        let waking = scale_to_zero_entities(&manifest);
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
        let specs = specs(&manifest, &ready, defaults);
        if applied.as_ref() != Some(&specs) {
            state.apply(&specs);
            if applied.is_none() {
                for endpoint in &manifest.endpoints {
                    let (route, body) = example_request(&manifest, endpoint);
                    println!(
                        "READY {} curl -s http://{listen}{route} -H 'content-type: application/json' -d '{body}'",
                        endpoint.metadata.name.as_deref().unwrap_or("")
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
            match read(path) {
                Ok(next) => {
                    tracing::info!(path = %path.display(), "manifest changed; routing by it");
                    manifest = next;
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

fn free_port() -> Result<u16, GatewayError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| GatewayError::Start(format!("finding a free port: {e}")))
}

/// The route and a request body that work for the endpoint's first entity, for the printed
/// curl.
pub fn example_request(manifest: &Manifest, endpoint: &ServingEndpoint) -> (String, String) {
    let name = endpoint.metadata.name.clone().unwrap_or_default();
    let version = endpoint
        .spec
        .served_entities
        .first()
        .and_then(|e| version_for(manifest, e));
    match version.and_then(|v| v.spec.task) {
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
            let columns: Vec<String> = version
                .and_then(|v| v.spec.signature.as_ref())
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
            ("fraud".to_string(), "version-a".to_string()),
            "127.0.0.1:9".parse().expect("addr"),
        )];
        let defaults = HoldPolicy {
            max_held: 1,
            timeout: Duration::from_secs(1),
        };
        let specs = specs(&m, &addresses, defaults);
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
}
