//! Build desired objects: the pure step that renders one Deployment and one Service per served
//! entity revision. Names are `<endpoint>-<entity>-<revision>`, so a changed entity gets new
//! pods beside the old ones (blue/green) and a traffic-only change renders identical objects.
//!
//! Containers of a pod reach each other on the pod's own IP (`$(POD_IP)` from the downward
//! API), never on 127.0.0.1, which keeps pods apart where several share one network namespace.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
            EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecretEnvSource, SecretKeySelector, SecurityContext, Service,
            ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use sluice_crds::{
    CaptureOverflow, CaptureTableFormat, Engine, ResolvedCapture, ResolvedUsageTracking,
    ServingEndpoint, common::SecretKeyRef,
};

use kube::Resource;
use sluice_contract::claim::{ClaimUri, LAKE_MOUNT_ROOT, SOURCE_MOUNT_ROOT, claim_volume};
use sluice_contract::config::{LakeVolume, NetworkPolicyConfig, OperatorConfig};
pub use sluice_contract::labels::{
    ANNOTATION_MODEL, ANNOTATION_MODEL_VERSION, ANNOTATION_PROVIDER, CAPTURE_PORT, FRONT_PORT_NAME,
    LABEL_ENDPOINT, LABEL_ENTITY, LABEL_REVISION, MANAGED_BY, child_name,
};
use sluice_contract::resolve::{EntitySource, ResolvedEntity, ResolvedRuntime};
use sluice_contract::usage::{PRICE_FLAG, price_arg};
/// Where the fetch step puts the model and the model server reads it.
pub const MODEL_DIR: &str = "/models";

/// What the build step needs besides the entity.
#[derive(Clone, Debug)]
pub struct BuildContext<'a> {
    /// Endpoint name.
    pub endpoint: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Owner reference to the ServingEndpoint.
    pub owner: OwnerReference,
    /// The data-plane image (fetch and capture containers).
    pub data_plane_image: &'a str,
    /// Resolved capture settings (table, sampling, format, store), when capture is on.
    pub capture: Option<&'a ResolvedCapture>,
    /// The usage table, when usage tracking is on (the capture sidecar writes it, so usage
    /// tracking alone puts one in front of the model too).
    pub usage: Option<&'a ResolvedUsageTracking>,
    /// The Deployments' `progressDeadlineSeconds`.
    pub progress_deadline_seconds: i32,
    /// Who may reach entity pods (a NetworkPolicy per revision when enabled).
    pub network_policy: Option<&'a NetworkPolicyConfig>,
    /// The template of the claim a `pvc://` table names, created when missing.
    pub lake_volume: &'a LakeVolume,
}

impl<'a> BuildContext<'a> {
    /// The context the operator renders the children of `ep` in: owned by `ep`, with the
    /// images, progress deadline and network policy of `config`. `None` when `ep` lacks a
    /// name, namespace or uid (not yet created).
    pub fn of(
        ep: &'a ServingEndpoint,
        config: &'a OperatorConfig,
        capture: Option<&'a ResolvedCapture>,
        usage: Option<&'a ResolvedUsageTracking>,
    ) -> Option<Self> {
        Some(Self {
            endpoint: ep.metadata.name.as_deref()?,
            namespace: ep.metadata.namespace.as_deref()?,
            owner: ep.controller_owner_ref(&())?,
            data_plane_image: &config.images.inference_server,
            capture,
            usage,
            progress_deadline_seconds: i32::try_from(config.progress_deadline_seconds)
                .unwrap_or(i32::MAX),
            network_policy: Some(&config.network_policy),
            lake_volume: &config.lake_volume,
        })
    }
}

/// The objects of one entity revision.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityObjects {
    /// Child name, `<endpoint>-<entity>-<revision>`.
    pub name: String,
    /// The Deployment.
    pub deployment: Deployment,
    /// The Service the gateway finds pods through (its EndpointSlices).
    pub service: Service,
    /// Who may reach the pods, when the operator config turns it on.
    pub network_policy: Option<NetworkPolicy>,
}

/// Renders the Deployment and Service of `entity` at `revision` with `replicas` pods.
pub fn build(
    entity: &ResolvedEntity,
    revision: &str,
    replicas: i32,
    ctx: &BuildContext<'_>,
) -> Option<EntityObjects> {
    let EntitySource::Registered {
        artifact_uri,
        secret,
        model,
        version,
        sha256,
        tracking_uri,
        ..
    } = &entity.source
    else {
        return recorder(entity, revision, ctx);
    };
    let runtime = entity.runtime.as_ref()?;
    let name = child_name(ctx.endpoint, &entity.name, revision);
    let labels = child_labels(ctx, entity, revision, "sluice-entity");
    let meta = child_meta(ctx, &name, &labels);
    let sidecar = ctx.capture.is_some() || ctx.usage.is_some();
    let mut containers = vec![model_container(entity, runtime, !sidecar)];
    let mut volumes = vec![empty_dir("models")];
    if runtime.engine != Engine::Builtin {
        volumes.push(empty_dir("tmp"));
    }
    if sidecar {
        let (capture, sidecar_volumes) =
            sidecar_parts(ctx, entity, Some(runtime), model, Some(*version));
        containers.push(capture);
        volumes.extend(sidecar_volumes);
    }
    let (mut fetch, source_volumes) = fetch_step(
        ctx.data_plane_image,
        artifact_uri,
        secret.as_deref(),
        sha256.as_deref(),
        tracking_uri.as_deref(),
    );
    volumes.extend(source_volumes);
    // A container that fails says why in its status: its termination message (fetch writes
    // its error there), else the tail of its log.
    for c in containers.iter_mut().chain([&mut fetch]) {
        c.termination_message_policy = Some("FallbackToLogsOnError".into());
    }
    let pod = PodSpec {
        init_containers: Some(vec![fetch]),
        containers,
        volumes: Some(volumes),
        node_selector: (!entity.class.node_selector.is_empty())
            .then(|| entity.class.node_selector.clone()),
        tolerations: (!entity.class.tolerations.is_empty())
            .then(|| entity.class.tolerations.clone()),
        runtime_class_name: entity.class.runtime_class_name.clone(),
        ..pod_basics(entity)
    };
    // What the pods serve, for people and tools reading them; it is part of the template, so
    // a new version is a new revision even when its artifact is the same file.
    let annotations = BTreeMap::from([
        (ANNOTATION_MODEL.to_string(), model.clone()),
        (ANNOTATION_MODEL_VERSION.to_string(), version.to_string()),
    ]);
    Some(objects(ctx, name, meta, labels, annotations, pod, replicas))
}

/// The labels of a child at `revision`: the gateway finds its pods by them.
fn child_labels(
    ctx: &BuildContext<'_>,
    entity: &ResolvedEntity,
    revision: &str,
    kind: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        ("app.kubernetes.io/name".to_string(), kind.to_string()),
        (LABEL_ENDPOINT.to_string(), ctx.endpoint.to_string()),
        (LABEL_ENTITY.to_string(), entity.name.clone()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ])
}

fn child_meta(ctx: &BuildContext<'_>, name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ctx.namespace.to_string()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![ctx.owner.clone()]),
        ..Default::default()
    }
}

/// What every pod of ours sets: restricted security, the entity's ServiceAccount without a
/// mounted token, no service links, the stop budget.
fn pod_basics(entity: &ResolvedEntity) -> PodSpec {
    PodSpec {
        security_context: Some(pod_security()),
        service_account_name: entity.service_account.clone(),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(STOP_BUDGET.grace_period_seconds()),
        ..Default::default()
    }
}

/// The *recorder* of an external entity: the capture sidecar alone (`--record-only`), which
/// writes the rows of the provider calls the gateway sends it. Rendered only when the endpoint
/// records (capture or usage tracking); its pods carry the entity's labels, so the gateway
/// finds them as the entity's backends. One replica, never scaled by the autoscaler.
fn recorder(
    entity: &ResolvedEntity,
    revision: &str,
    ctx: &BuildContext<'_>,
) -> Option<EntityObjects> {
    let EntitySource::External(model) = &entity.source else {
        return None;
    };
    if ctx.capture.is_none() && ctx.usage.is_none() {
        return None;
    }
    let name = child_name(ctx.endpoint, &entity.name, revision);
    let labels = child_labels(ctx, entity, revision, "sluice-recorder");
    let meta = child_meta(ctx, &name, &labels);
    let (mut capture, volumes) = sidecar_parts(ctx, entity, None, &model.name, None);
    capture.termination_message_policy = Some("FallbackToLogsOnError".into());
    let pod = PodSpec {
        containers: vec![capture],
        volumes: Some(volumes),
        ..pod_basics(entity)
    };
    let provider = sluice_contract::external::api(model).ok()?;
    let annotations = BTreeMap::from([
        (ANNOTATION_MODEL.to_string(), model.name.clone()),
        (
            ANNOTATION_PROVIDER.to_string(),
            provider.label().to_string(),
        ),
    ]);
    Some(objects(ctx, name, meta, labels, annotations, pod, 1))
}

/// The capture sidecar in front of `runtime` (or a recorder, without one) and the volumes it
/// mounts: its spool and the claims of `pvc://` tables.
fn sidecar_parts(
    ctx: &BuildContext<'_>,
    entity: &ResolvedEntity,
    runtime: Option<&ResolvedRuntime>,
    model: &str,
    version: Option<i64>,
) -> (Container, Vec<Volume>) {
    let mut volumes = Vec::new();
    {
        // Each table as the sidecar sees it: a `pvc://` one on its claim, mounted once.
        let mut lakes: Vec<ClaimUri> = Vec::new();
        let mut seen = |uri: &str| match ClaimUri::of(uri) {
            Some(lake) => {
                let file = lake.file_uri();
                if !lakes.iter().any(|l| l.claim == lake.claim) {
                    lakes.push(lake);
                }
                file
            }
            None => uri.to_string(),
        };
        let tables = SidecarTables {
            payload: ctx.capture.map(|c| seen(&c.table_uri)),
            feedback: ctx
                .capture
                .map(|c| seen(&sluice_contract::resolve::feedback_table(c))),
            usage: ctx.usage.map(|u| seen(&u.table_uri)),
        };
        let mut capture = capture_container(ctx, entity, runtime, &tables, model, version);
        // The endpoint's persistent spool, shared by all its sidecars, else one per pod.
        volumes.push(match ctx.capture.and_then(|c| c.spool.as_ref()) {
            Some(spool) => claim_volume("spool", &spool.claim_name, false),
            None => empty_dir("spool"),
        });
        for (i, lake) in lakes.iter().enumerate() {
            let name = if i == 0 {
                "lake".to_string()
            } else {
                format!("lake-{i}")
            };
            volumes.push(lake.volume(&name, false));
            if let Some(mounts) = capture.volume_mounts.as_mut() {
                mounts.push(lake.mount(&name, LAKE_MOUNT_ROOT, false));
            }
        }
        (capture, volumes)
    }
}

/// The Deployment, Service and NetworkPolicy of a child whose pods run `pod`.
fn objects(
    ctx: &BuildContext<'_>,
    name: String,
    meta: ObjectMeta,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    pod: PodSpec,
    replicas: i32,
) -> EntityObjects {
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            progress_deadline_seconds: Some(ctx.progress_deadline_seconds),
            // Surge first: a serving replica is never removed before its replacement is ready.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("100%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let network_policy = ctx
        .network_policy
        .filter(|p| p.enabled)
        .map(|p| network_policy(meta.clone(), labels.clone(), p));
    let service = Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                name: Some(FRONT_PORT_NAME.into()),
                port: CAPTURE_PORT,
                target_port: Some(IntOrString::String(FRONT_PORT_NAME.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    EntityObjects {
        name,
        deployment,
        service,
        network_policy,
    }
}

/// The entity pods (`selector`) take traffic on their `http` port only from the gateway pods
/// and from pods of the allowed namespaces; nothing else reaches the model or skips capture.
fn network_policy(
    meta: ObjectMeta,
    selector: BTreeMap<String, String>,
    config: &NetworkPolicyConfig,
) -> NetworkPolicy {
    let namespace = |name: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            name.to_string(),
        )])),
        ..Default::default()
    };
    let gateways = NetworkPolicyPeer {
        namespace_selector: Some(
            config
                .gateway_namespace
                .as_deref()
                .map_or_else(LabelSelector::default, namespace),
        ),
        pod_selector: Some(LabelSelector {
            match_labels: Some(config.gateway_labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut from = vec![gateways];
    from.extend(config.allowed_namespaces.iter().map(|n| NetworkPolicyPeer {
        namespace_selector: Some(namespace(n)),
        ..Default::default()
    }));
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::String(FRONT_PORT_NAME.into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

pub fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The uid and gid every container of an entity pod runs as: distroless `nonroot`.
pub const RUN_AS: i64 = 65532;

/// The pod-level context: Pod Security `restricted` (non-root, RuntimeDefault seccomp), and
/// volumes (a lake claim too) given to the [`RUN_AS`] group.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Engines (vLLM and the like, whose images run as root by default) run as [`RUN_AS`] with no
/// privileges, as Pod Security `restricted` demands; their root stays writable (they compile
/// kernels and write caches in places of their own choosing), `$HOME` and caches go to a
/// `/tmp` emptyDir (see [`engine_env`]).
fn engine_restricted() -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: Some(false),
        run_as_group: Some(RUN_AS),
        ..restricted()
    }
}

/// Requests and limits of the fetch init container: it streams artifacts to disk.
fn fetch_resources() -> ResourceRequirements {
    sized("250m", "256Mi", "2Gi")
}

/// Requests and limits of the capture sidecar: its copy budget (64 MiB) and row queue fit
/// well inside the limit.
fn capture_resources() -> ResourceRequirements {
    sized("100m", "128Mi", "1Gi")
}

pub(crate) fn sized(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

/// Non-root, read-only, no privileges: for Sluice's own containers.
pub(crate) fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn models_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: "models".into(),
        mount_path: MODEL_DIR.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The fetch step of `uri` (the entity pod's init container, and the ModelVersion's source
/// check): the container, which fills the `models` volume, and the volumes it needs beyond
/// that one (a `pvc://` source claim, mounted read-only).
pub fn fetch_step(
    image: &str,
    uri: &str,
    secret: Option<&str>,
    sha256: Option<&str>,
    tracking_uri: Option<&str>,
) -> (Container, Vec<Volume>) {
    let mut fetch = fetch_container(image, uri, secret);
    fetch.termination_message_policy = Some("FallbackToLogsOnError".into());
    let mut volumes = Vec::new();
    if let Some(source) = ClaimUri::of(uri) {
        volumes.push(source.volume("source", true));
        if let Some(mounts) = fetch.volume_mounts.as_mut() {
            mounts.push(source.mount("source", SOURCE_MOUNT_ROOT, true));
        }
        if let Some(args) = fetch.args.as_mut() {
            args.extend(strings(&["--pvc-root", SOURCE_MOUNT_ROOT]));
        }
    }
    if let (Some(digest), Some(args)) = (sha256, fetch.args.as_mut()) {
        args.extend(strings(&["--sha256", digest]));
    }
    if let (Some(tracking), Some(args)) = (tracking_uri, fetch.args.as_mut()) {
        args.extend(strings(&["--mlflow-tracking-uri", tracking]));
    }
    (fetch, volumes)
}

fn fetch_container(image: &str, uri: &str, secret: Option<&str>) -> Container {
    Container {
        name: "fetch".into(),
        image: Some(image.into()),
        args: Some(vec![
            "fetch".into(),
            "--uri".into(),
            uri.into(),
            "--dest".into(),
            MODEL_DIR.into(),
        ]),
        env_from: secret.map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        }),
        volume_mounts: Some(vec![models_mount(false)]),
        resources: Some(fetch_resources()),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

/// Engine command lines: model from /models, listening on the pod IP.
fn engine_args(entity: &ResolvedEntity, rt: &ResolvedRuntime) -> Vec<String> {
    let port = rt.port.to_string();
    let mut args = match rt.engine {
        Engine::Builtin => strings(&[
            "serve",
            "--model-dir",
            MODEL_DIR,
            "--host",
            "$(POD_IP)",
            "--port",
            &port,
            &format!("--drain-delay={DRAIN_DELAY_SECONDS}s"),
            &STOP_BUDGET.drain_timeout_arg(),
        ]),
        Engine::Vllm => strings(&[
            "--model",
            MODEL_DIR,
            "--host",
            "$(POD_IP)",
            "--port",
            &port,
            "--served-model-name",
            &entity.name,
        ]),
        Engine::Sglang => strings(&[
            "--model-path",
            MODEL_DIR,
            "--host",
            "$(POD_IP)",
            "--port",
            &port,
        ]),
        Engine::Tgi => strings(&[
            "--model-id",
            MODEL_DIR,
            "--hostname",
            "$(POD_IP)",
            "--port",
            &port,
        ]),
        Engine::Llamacpp => strings(&[
            "--model",
            "/models/model.gguf",
            "--host",
            "$(POD_IP)",
            "--port",
            &port,
        ]),
        Engine::Mlflow => strings(&[
            "models",
            "serve",
            "-m",
            MODEL_DIR,
            "-h",
            "$(POD_IP)",
            "-p",
            &port,
            "--env-manager",
            "local",
        ]),
        Engine::Custom => Vec::new(),
    };
    args.extend(rt.args.iter().cloned());
    args
}

/// What the ModelVersion declares, for the builtin runtime (`serve --declared-*`): it serves
/// a folder without a manifest from these, and checks requests against the signature when the
/// artifact has none. Unset values are left out.
fn declared_env(source: &EntitySource) -> Vec<EnvVar> {
    let EntitySource::Registered {
        format,
        declared_task,
        signature,
        ..
    } = source
    else {
        return Vec::new();
    };
    let word = |v: serde_json::Value| v.as_str().map(str::to_string);
    let values = [
        (
            "SLUICE_MODEL_FORMAT",
            serde_json::to_value(format).ok().and_then(word),
        ),
        (
            "SLUICE_MODEL_TASK",
            declared_task.and_then(|t| serde_json::to_value(t).ok().and_then(word)),
        ),
        (
            "SLUICE_MODEL_SIGNATURE",
            signature
                .as_ref()
                .and_then(|s| serde_json::to_string(s).ok()),
        ),
    ];
    values
        .into_iter()
        .filter_map(|(name, value)| {
            Some(EnvVar {
                name: name.into(),
                value: Some(value?),
                ..Default::default()
            })
        })
        .collect()
}

/// Where an engine, running as a uid its image does not know, keeps its home and caches: the
/// `/tmp` emptyDir (the entity's own `env` may point them elsewhere).
fn engine_env() -> Vec<EnvVar> {
    [
        ("HOME", "/tmp"),
        ("XDG_CACHE_HOME", "/tmp/.cache"),
        ("HF_HOME", "/tmp/huggingface"),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    })
    .collect()
}

fn env_vars(entity: &ResolvedEntity) -> Vec<EnvVar> {
    let mut env = vec![pod_ip_env()];
    if entity
        .runtime
        .as_ref()
        .is_some_and(|rt| rt.engine != Engine::Builtin)
    {
        env.extend(engine_env());
    } else {
        env.extend(declared_env(&entity.source));
    }
    for (name, value) in &entity.env {
        env.push(match SecretKeyRef::from_reference(value) {
            Some(SecretKeyRef { name: secret, key }) => EnvVar {
                name: name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret,
                        key,
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            None => EnvVar {
                name: name.clone(),
                value: Some(value.clone()),
                ..Default::default()
            },
        });
    }
    env
}

fn resources(entity: &ResolvedEntity) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if !entity.class.cpu.is_empty() {
        requests.insert("cpu".to_string(), Quantity(entity.class.cpu.clone()));
    }
    if !entity.class.memory.is_empty() {
        requests.insert("memory".to_string(), Quantity(entity.class.memory.clone()));
        limits.insert("memory".to_string(), Quantity(entity.class.memory.clone()));
    }
    if entity.class.gpu_count > 0 {
        let gpus = Quantity(entity.class.gpu_count.to_string());
        requests.insert("nvidia.com/gpu".to_string(), gpus.clone());
        limits.insert("nvidia.com/gpu".to_string(), gpus);
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// Seconds a model container keeps answering after its pod is deleted, before it stops
/// accepting: the gateways drop a terminating pod from rotation on the watch event (and
/// kube-proxy on the EndpointSlice update), so a scale-down or rollout never sends a request
/// to a closed listener. The builtin runtime does it itself (`--drain-delay`, with `/health`
/// answering 503 meanwhile); engines and the capture sidecar in front get a `preStop` sleep,
/// which the kubelet runs before SIGTERM.
pub const DRAIN_DELAY_SECONDS: i64 = 2;

/// How long a stopping entity pod may take, part by part: the one owner of the pod's
/// `terminationGracePeriodSeconds` and of the drain and shutdown flags of its containers, so
/// that they cannot disagree. From the pod's deletion:
///
/// - `drain_delay`: the routing layer stops sending ([`DRAIN_DELAY_SECONDS`]: the builtin
///   server's `--drain-delay`, the `preStop` sleep of engines and the capture sidecar);
/// - `drain`: exchanges in flight (long streams) may still finish (`--drain-timeout` of the
///   builtin server and of the capture sidecar, which writes spooled rows meanwhile);
/// - `flush`: the capture sidecar writes the rows of what finished or was cut (its
///   `--shutdown-seconds` is `drain` + `flush`, counted from its SIGTERM after the sleep);
/// - `margin`: process exit and the kubelet's own delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopBudget {
    /// Seconds for the routing layer to stop sending.
    pub drain_delay: i64,
    /// Seconds exchanges in flight may take after SIGTERM.
    pub drain: i64,
    /// Seconds the capture sidecar has to write its last rows after the drain.
    pub flush: i64,
    /// Seconds of slack.
    pub margin: i64,
}

/// The stop budget of every entity pod: 2 + 15 + 10 + 3 = 30 s, the Kubernetes default grace.
pub const STOP_BUDGET: StopBudget = StopBudget {
    drain_delay: DRAIN_DELAY_SECONDS,
    drain: 15,
    flush: 10,
    margin: 3,
};

impl StopBudget {
    /// The pod's `terminationGracePeriodSeconds`: every part, in a row.
    pub const fn grace_period_seconds(&self) -> i64 {
        self.drain_delay + self.drain + self.flush + self.margin
    }

    /// `--drain-timeout` of the builtin server and the capture sidecar.
    fn drain_timeout_arg(&self) -> String {
        format!("--drain-timeout={}s", self.drain)
    }

    /// The capture sidecar's shutdown flags.
    fn capture_args(&self) -> [String; 2] {
        [
            self.drain_timeout_arg(),
            format!("--shutdown-seconds={}", self.drain + self.flush),
        ]
    }
}

/// A `preStop` sleep of [`DRAIN_DELAY_SECONDS`]: the kubelet keeps the container serving that
/// long after the pod's deletion before it sends SIGTERM.
fn drain_pause() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: DRAIN_DELAY_SECONDS,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model_container(entity: &ResolvedEntity, rt: &ResolvedRuntime, front: bool) -> Container {
    // Without capture the model container is the pod's front door and owns the `http` port.
    let port_name = if front { FRONT_PORT_NAME } else { "model" };
    let ours = rt.engine == Engine::Builtin;
    Container {
        name: "model".into(),
        image: Some(rt.image.clone()),
        args: Some(engine_args(entity, rt)),
        lifecycle: (!ours).then(drain_pause),
        env: Some(env_vars(entity)),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.into()),
            container_port: rt.port,
            ..Default::default()
        }]),
        // Every second (the API's floor): a waking entity is routed to within a second of its
        // model answering; the probe is a cheap local GET.
        readiness_probe: Some(http_probe(&rt.health_path, port_name, 1)),
        // Loading a model may take minutes: liveness only checks the process answers at all.
        liveness_probe: ours.then(|| Probe {
            initial_delay_seconds: Some(10),
            ..http_probe("/ping", port_name, 10)
        }),
        resources: Some(resources(entity)),
        volume_mounts: Some(if ours {
            vec![models_mount(true)]
        } else {
            vec![
                models_mount(true),
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..Default::default()
                },
            ]
        }),
        security_context: Some(if ours {
            restricted()
        } else {
            engine_restricted()
        }),
        ..Default::default()
    }
}

/// The tables a capture sidecar writes, as it sees them (a claim's table under its mount).
struct SidecarTables {
    /// The payload table, when capture is on.
    payload: Option<String>,
    /// The feedback table beside it.
    feedback: Option<String>,
    /// The usage table, when usage tracking is on.
    usage: Option<String>,
}

fn capture_container(
    ctx: &BuildContext<'_>,
    entity: &ResolvedEntity,
    runtime: Option<&ResolvedRuntime>,
    tables: &SidecarTables,
    model: &str,
    version: Option<i64>,
) -> Container {
    // The store settings of the capture config; usage tracking alone writes with the lake
    // root's defaults (the pod's own identity, Parquet).
    let defaults = ResolvedCapture::default();
    let settings = ctx.capture.unwrap_or(&defaults);
    // The payload flags keep their places: an operator upgrade must not roll captured pods.
    let mut args = strings(&["capture", "--listen", &format!("$(POD_IP):{CAPTURE_PORT}")]);
    match runtime {
        Some(rt) => args.extend(strings(&[
            "--upstream",
            &format!("$(POD_IP):{}", rt.port),
            // The sidecar's /health answers with the model's readiness path.
            "--upstream-health-path",
            &rt.health_path,
        ])),
        None => args.push("--record-only".into()),
    }
    if let Some(table) = &tables.payload {
        args.extend(strings(&["--table", table]));
    }
    if let Some(table) = &tables.feedback {
        args.extend(strings(&["--feedback-table", table]));
    }
    args.extend(strings(&[
        "--endpoint",
        ctx.endpoint,
        "--entity",
        &entity.name,
        "--model",
        model,
    ]));
    if let Some(version) = version {
        args.extend(strings(&["--model-version", &version.to_string()]));
    }
    if tables.payload.is_some() {
        args.extend(strings(&[
            "--sampling-fraction",
            &settings.sampling_fraction.to_string(),
        ]));
    }
    args.extend(strings(&["--spool-dir", "/spool"]));
    if let Some(table) = &tables.usage {
        args.extend(strings(&["--usage-table", table]));
        if let Some(price) = &entity.usage_price {
            args.extend([PRICE_FLAG.to_string(), price_arg(price)]);
        }
    }
    args.extend(STOP_BUDGET.capture_args());
    if settings.table_format == Some(CaptureTableFormat::Delta) {
        args.extend(strings(&["--table-format", "delta"]));
    }
    if settings.overflow == Some(CaptureOverflow::Block) {
        args.extend(strings(&["--overflow", "block"]));
    }
    for (key, value) in &settings.store_options {
        args.extend(["--table-option".to_string(), format!("{key}={value}")]);
    }
    Container {
        name: "capture".into(),
        image: Some(ctx.data_plane_image.into()),
        args: Some(args),
        env: Some(vec![pod_ip_env()]),
        // The lake's credentials reach the sidecar only.
        env_from: settings.secret_name.as_ref().map(|name| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        }),
        ports: Some(vec![ContainerPort {
            name: Some(FRONT_PORT_NAME.into()),
            container_port: CAPTURE_PORT,
            ..Default::default()
        }]),
        // Ready only while the model behind it is ready (a recorder: while it runs).
        readiness_probe: Some(http_probe("/health", FRONT_PORT_NAME, 1)),
        // The pod's front door: it keeps proxying as long as the model keeps answering.
        lifecycle: Some(drain_pause()),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(5),
            ..http_probe("/ping", FRONT_PORT_NAME, 10)
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "spool".into(),
            mount_path: "/spool".into(),
            ..Default::default()
        }]),
        resources: Some(capture_resources()),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use sluice_contract::config::OperatorConfig;
    use sluice_contract::fixtures;
    use sluice_contract::resolve::resolve;

    fn entity(spec: &str) -> ResolvedEntity {
        let ep = fixtures::endpoint("fraud", &format!("  servedEntities:\n  - {spec}"));
        let mut mv = fixtures::checked_version("fraud", 3, &[], true);
        mv.spec.source.secret_ref = Some(sluice_crds::common::SecretRef {
            name: "store".into(),
        });
        resolve(&ep, &[mv], &BTreeMap::new(), &OperatorConfig::default())
            .expect("resolves")
            .remove(0)
    }

    /// The context of endpoint `fraud` in namespace `ns`, with capture to `(table, fraction)`.
    pub(crate) fn ctx(capture: Option<(&'static str, f64)>) -> BuildContext<'static> {
        let capture = capture.map(|(table_uri, sampling_fraction)| {
            &*Box::leak(Box::new(ResolvedCapture {
                table_uri: table_uri.into(),
                sampling_fraction,
                ..Default::default()
            }))
        });
        BuildContext {
            endpoint: "fraud",
            namespace: "ns",
            owner: OwnerReference {
                api_version: "serving.sluice.dev/v1alpha1".into(),
                kind: "ServingEndpoint".into(),
                name: "fraud".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            data_plane_image: "ghcr.io/sluice-dev/inference-server:test",
            progress_deadline_seconds: 600,
            network_policy: None,
            lake_volume: Box::leak(Box::default()),
            capture,
            usage: None,
        }
    }

    fn pod(o: &EntityObjects) -> &PodSpec {
        o.deployment.spec.template.spec.as_ref().expect("pod spec")
    }

    #[test]
    fn a_builtin_entity_gets_fetch_serve_and_a_service_on_its_front_port() {
        let e = entity("{name: fraud-3, model: fraud, version: 3}");
        let o = build(&e, "abcde", 1, &ctx(None)).expect("objects");
        assert_eq!(o.name, "fraud-fraud-3-abcde");
        let p = pod(&o);
        let fetch = &p.init_containers.as_ref().expect("init")[0];
        assert_eq!(fetch.args.as_deref().expect("args")[2], "s3://b/fraud/3");
        assert_eq!(
            fetch.env_from.as_ref().expect("creds")[0]
                .secret_ref
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("store")
        );
        assert_eq!(
            p.containers.len(),
            1,
            "no capture sidecar when capture is off"
        );
        let model = &p.containers[0];
        assert_eq!(
            model.args.as_deref().expect("args").join(" "),
            "serve --model-dir /models --host $(POD_IP) --port 8081 --drain-delay=2s --drain-timeout=15s"
        );
        assert!(model.lifecycle.is_none(), "serve drains by itself");
        assert_eq!(
            model.ports.as_ref().expect("ports")[0].name.as_deref(),
            Some("http")
        );
        let svc = o.service.spec.as_ref().expect("service");
        assert_eq!(
            svc.ports.as_ref().expect("ports")[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(
            svc.selector.as_ref().expect("selector")[LABEL_REVISION],
            "abcde"
        );
    }

    #[test]
    fn usage_tracking_puts_a_sidecar_in_front_that_writes_the_usage_table() {
        let mut e = entity("{name: llm, model: fraud, version: 3}");
        e.usage_price = Some(sluice_crds::UsagePrice {
            currency: "USD".into(),
            input_per_1k_tokens: Some(0.5),
            output_per_1k_tokens: Some(1.5),
            per_second: None,
        });
        let usage = ResolvedUsageTracking {
            table_uri: "pvc://sluice-lake/default/default/fraud_usage".into(),
        };
        let args_of = |p: &PodSpec| {
            let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["model", "capture"]);
            p.containers[1].args.clone().unwrap_or_default().join(" ")
        };
        // Usage alone: no payload table, the lake's claim mounted for the usage table.
        let mut context = ctx(None);
        context.usage = Some(&usage);
        let alone = build(&e, "r1", 1, &context).expect("objects");
        let p = pod(&alone);
        let args = args_of(p);
        assert!(
            args.contains("--usage-table file:///mnt/lake/sluice-lake/default/default/fraud_usage"),
            "{args}"
        );
        assert!(
            args.contains("--usage-price USD:input=0.5,output=1.5"),
            "{args}"
        );
        assert!(!args.contains("--table "), "no payload table: {args}");
        // Both tables on one claim: one volume.
        let mut context = ctx(Some((
            "pvc://sluice-lake/default/default/fraud_payload",
            0.1,
        )));
        context.usage = Some(&usage);
        let both = build(&e, "r1", 1, &context).expect("objects");
        let p = pod(&both);
        let args = args_of(p);
        assert!(
            args.contains("--table file:///mnt/lake/sluice-lake/default/default/fraud_payload"),
            "{args}"
        );
        assert!(args.contains("--sampling-fraction 0.1"), "{args}");
        let lakes = p
            .volumes
            .iter()
            .flatten()
            .filter(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == "sluice-lake")
            })
            .count();
        assert_eq!(lakes, 1);
        assert_ne!(
            alone.deployment.spec, both.deployment.spec,
            "turning capture on changes the pods"
        );
    }

    #[test]
    fn capture_puts_the_sidecar_in_front_and_gpu_types_request_gpus() {
        let e = entity(
            "{name: fraud-3, model: fraud, version: 3, workloadType: GPU_MEDIUM, runtime: {engine: vllm, args: [--dtype, half]}, environmentVars: {HF_TOKEN: '{{secrets/hf/token}}', MODE: fast}}",
        );
        let o = build(&e, "1a2b3", 2, &ctx(Some(("s3://lake/t", 0.5)))).expect("objects");
        let p = pod(&o);
        let names: Vec<_> = p.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["model", "capture"]);
        let capture_pause = p.containers[1]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref()?.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(
            capture_pause,
            Some(DRAIN_DELAY_SECONDS),
            "the front door drains too"
        );
        let model = &p.containers[0];
        assert_eq!(model.image.as_deref(), Some("vllm/vllm-openai:v0.11.0"));
        let pre_stop = model.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        assert_eq!(
            pre_stop.and_then(|h| h.sleep.as_ref()).map(|s| s.seconds),
            Some(DRAIN_DELAY_SECONDS),
            "engines drain with a preStop sleep"
        );
        assert!(
            model
                .args
                .as_deref()
                .expect("args")
                .ends_with(&["--dtype".to_string(), "half".to_string()])
        );
        assert_eq!(
            model.ports.as_ref().expect("ports")[0].name.as_deref(),
            Some("model")
        );
        let limits = model
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        let hf = model
            .env
            .as_ref()
            .expect("env")
            .iter()
            .find(|v| v.name == "HF_TOKEN")
            .expect("HF_TOKEN");
        assert_eq!(
            hf.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| (s.name.as_str(), s.key.as_str())),
            Some(("hf", "token"))
        );
        assert_eq!(
            p.tolerations.as_ref().expect("tolerations")[0]
                .key
                .as_deref(),
            Some("nvidia.com/gpu")
        );
        let capture = &p.containers[1];
        assert!(capture.args.as_deref().expect("args").join(" ").contains(
            "--upstream $(POD_IP):8000 --upstream-health-path /health --table s3://lake/t"
        ));
        assert!(
            p.volumes
                .as_ref()
                .expect("volumes")
                .iter()
                .any(|v| v.name == "spool")
        );
        assert_eq!(o.deployment.spec.replicas, Some(2));
    }

    #[test]
    fn every_container_is_restricted_and_sized_and_a_pvc_lake_is_mounted() {
        let e = entity(
            "{name: llm, model: fraud, version: 3, runtime: {engine: vllm}, environmentVars: {HF_HOME: /data/hf}}",
        );
        let o = build(
            &e,
            "r1",
            1,
            &ctx(Some((
                "pvc://sluice-lake/default/default/fraud_payload",
                1.0,
            ))),
        )
        .expect("objects");
        let p = pod(&o);
        let sc = p.security_context.as_ref().expect("pod security context");
        assert_eq!(
            (sc.run_as_non_root, sc.fs_group),
            (Some(true), Some(RUN_AS))
        );
        let all = p
            .init_containers
            .iter()
            .flatten()
            .chain(p.containers.iter());
        for c in all {
            let sc = c.security_context.as_ref().expect("security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
            assert_eq!(drop, Some(vec!["ALL".to_string()]), "{}", c.name);
            let r = c.resources.as_ref().expect("resources");
            assert!(r.requests.is_some() && r.limits.is_some(), "{}", c.name);
        }
        let model = &p.containers[0];
        let env: Vec<(String, Option<String>)> = model
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        let home = env.iter().position(|(n, _)| n == "HOME").expect("HOME");
        let user_hf = env
            .iter()
            .rposition(|(n, _)| n == "HF_HOME")
            .expect("HF_HOME");
        assert!(
            user_hf > home,
            "the entity's own env comes last and wins: {env:?}"
        );
        let mounts = model.volume_mounts.as_ref().expect("mounts");
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"), "{mounts:?}");
        let capture = &p.containers[1];
        let args = capture.args.as_ref().expect("args").join(" ");
        assert!(
            args.contains("--table file:///mnt/lake/sluice-lake/default/default/fraud_payload"),
            "{args}"
        );
        let lake = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "lake")
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .expect("lake volume");
        assert_eq!(lake.claim_name, "sluice-lake");
        assert!(
            capture
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "lake" && m.mount_path == "/mnt/lake/sluice-lake")
        );
    }

    #[test]
    fn a_pvc_source_is_mounted_read_only_into_the_fetch_step_only() {
        let ep = fixtures::endpoint(
            "fraud",
            "  servedEntities:\n  - {name: fraud-3, model: fraud, version: 3}",
        );
        let mut mv = fixtures::checked_version("fraud", 3, &[], true);
        mv.spec.source.uri = "pvc://models/fraud/3".into();
        let e = resolve(&ep, &[mv], &BTreeMap::new(), &OperatorConfig::default())
            .expect("resolves")
            .remove(0);
        let o = build(&e, "r1", 1, &ctx(None)).expect("objects");
        let p = pod(&o);
        let source = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "source")
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .expect("source volume");
        assert_eq!(
            (source.claim_name.as_str(), source.read_only),
            ("models", Some(true))
        );
        let fetch = &p.init_containers.as_ref().expect("init")[0];
        let mount = fetch
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "source")
            .expect("mounted in fetch");
        assert_eq!(mount.mount_path, format!("{SOURCE_MOUNT_ROOT}/models"));
        assert_eq!(mount.read_only, Some(true));
        let args = fetch.args.as_ref().expect("args").join(" ");
        assert!(
            args.contains("--uri pvc://models/fraud/3")
                && args.ends_with(&format!("--pvc-root {SOURCE_MOUNT_ROOT}")),
            "fetch reads the claim where it is mounted: {args}"
        );
        assert!(
            p.containers.iter().all(|c| c
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "source")),
            "only fetch reads the source"
        );
    }

    #[test]
    fn an_external_entity_gets_a_recorder_only_when_the_endpoint_records() {
        let ep = fixtures::endpoint(
            "fraud",
            "  servedEntities:\n  - {name: gpt, externalModel: {provider: anthropic, name: claude, task: llm/v1/chat}}\n",
        );
        let e = resolve(&ep, &[], &BTreeMap::new(), &OperatorConfig::default())
            .expect("resolves")
            .remove(0);
        assert!(
            build(&e, "abcde", 3, &ctx(None)).is_none(),
            "nothing to record: no pods at all"
        );
        let o = build(&e, "abcde", 3, &ctx(Some(("pvc://lake/payload", 0.5)))).expect("recorder");
        assert_eq!(o.name, "fraud-gpt-abcde");
        assert_eq!(o.deployment.spec.replicas, Some(1), "one recorder");
        let template = &o.deployment.spec.template;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(labels[LABEL_ENTITY], "gpt");
        assert_eq!(labels[LABEL_REVISION], "abcde");
        assert_eq!(labels["app.kubernetes.io/name"], "sluice-recorder");
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(annotations[ANNOTATION_PROVIDER], "anthropic");
        let p = pod(&o);
        assert!(p.init_containers.is_none(), "nothing to fetch");
        assert_eq!(p.containers.len(), 1);
        let args = p.containers[0].args.as_ref().expect("args").join(" ");
        assert!(args.contains("--record-only"), "{args}");
        assert!(!args.contains("--upstream"), "{args}");
        assert!(!args.contains("--model-version"), "{args}");
        assert!(args.contains("--entity gpt --model claude"), "{args}");
        assert!(
            args.contains("--table file:///mnt/lake/lake/payload"),
            "{args}"
        );
        let mounts: Vec<&str> = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["spool", "lake"]);
        assert_eq!(
            p.containers[0].ports.as_ref().expect("ports")[0]
                .name
                .as_deref(),
            Some(FRONT_PORT_NAME)
        );
    }

    #[test]
    fn the_declared_format_task_signature_and_digest_reach_the_pod() {
        let ep = fixtures::endpoint(
            "fraud",
            "  servedEntities:\n  - {name: a, model: fraud, version: 3}",
        );
        let mut mv = fixtures::checked_version("fraud", 3, &[], true);
        mv.spec.task = Some(sluice_crds::ModelTask::Predict);
        mv.spec.signature = Some(sluice_crds::model_version::ModelSignature {
            inputs: vec![sluice_crds::model_version::SignatureField {
                name: Some("amount".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        mv.spec.source.sha256 = Some("ab".repeat(32));
        let e = resolve(&ep, &[mv], &BTreeMap::new(), &OperatorConfig::default())
            .expect("resolves")
            .remove(0);
        let objects = build(&e, "r1", 1, &ctx(None)).expect("objects");
        let pod = objects.deployment.spec.template.spec.expect("pod");
        let env: BTreeMap<String, String> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.value.clone()?)))
            .collect();
        assert_eq!(env["SLUICE_MODEL_FORMAT"], "onnx");
        assert_eq!(env["SLUICE_MODEL_TASK"], "predict");
        assert_eq!(
            env["SLUICE_MODEL_SIGNATURE"],
            r#"{"inputs":[{"name":"amount","type":"string"}]}"#
        );
        let fetch = &pod.init_containers.expect("init")[0];
        let args = fetch.args.as_ref().expect("args").join(" ");
        assert!(
            args.ends_with(&format!("--sha256 {}", "ab".repeat(32))),
            "{args}"
        );
        assert!(
            pod.containers
                .iter()
                .chain([fetch])
                .all(|c| c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
        );
    }

    #[test]
    fn the_lakes_secret_options_and_format_reach_the_capture_sidecar_only() {
        let e = entity("{name: a, model: fraud, version: 3}");
        let settings = ResolvedCapture {
            table_uri: "s3://lake/t".into(),
            sampling_fraction: 1.0,
            table_format: Some(CaptureTableFormat::Delta),
            secret_name: Some("lake-credentials".into()),
            store_options: BTreeMap::from([(
                "aws_endpoint".into(),
                "http://127.0.0.1:9000".into(),
            )]),
            spool: None,
            overflow: Some(CaptureOverflow::Block),
        };
        let mut context = ctx(None);
        context.capture = Some(&settings);
        let pod = build(&e, "r1", 1, &context)
            .expect("objects")
            .deployment
            .spec
            .template
            .spec
            .expect("pod");
        let capture = &pod.containers[1];
        let args = capture.args.as_ref().expect("args").join(" ");
        assert!(
            args.ends_with(
                "--table-format delta --overflow block \
                 --table-option aws_endpoint=http://127.0.0.1:9000"
            ),
            "{args}"
        );
        let secret_of = |c: &Container| {
            c.env_from
                .iter()
                .flatten()
                .filter_map(|e| e.secret_ref.as_ref().map(|s| s.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(secret_of(capture), ["lake-credentials"]);
        assert!(secret_of(&pod.containers[0]).is_empty(), "not the model's");
    }

    #[test]
    fn only_the_gateways_and_allowed_namespaces_reach_entity_pods() {
        let e = entity("{name: a, model: fraud, version: 3}");
        let config = NetworkPolicyConfig {
            gateway_namespace: Some("sluice-system".into()),
            allowed_namespaces: vec!["monitoring".into()],
            ..NetworkPolicyConfig::default()
        };
        let mut context = ctx(None);
        context.network_policy = Some(&config);
        let objects = build(&e, "r1", 1, &context).expect("objects");
        let policy = objects.network_policy.expect("a policy");
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            objects.deployment.spec.selector.match_labels,
            "it selects exactly the revision's pods"
        );
        let rule = &spec.ingress.expect("ingress")[0];
        let from = rule.from.as_ref().expect("from");
        let namespace_of = |p: &NetworkPolicyPeer| {
            p.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("kubernetes.io/metadata.name").cloned())
        };
        assert_eq!(namespace_of(&from[0]).as_deref(), Some("sluice-system"));
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .expect("gateway labels")["app.kubernetes.io/component"],
            "gateway"
        );
        assert_eq!(namespace_of(&from[1]).as_deref(), Some("monitoring"));
        assert!(from[1].pod_selector.is_none(), "any pod of that namespace");
        let disabled = NetworkPolicyConfig {
            enabled: false,
            ..NetworkPolicyConfig::default()
        };
        context.network_policy = Some(&disabled);
        assert!(
            build(&e, "r1", 1, &context)
                .expect("objects")
                .network_policy
                .is_none()
        );
    }

    fn spool_volume(p: &PodSpec) -> &Volume {
        p.volumes
            .iter()
            .flatten()
            .find(|v| v.name == "spool")
            .expect("a spool volume")
    }

    #[test]
    fn a_persistent_spool_mounts_the_endpoints_claim_instead_of_an_empty_dir() {
        let settings = ResolvedCapture {
            table_uri: "s3://lake/t".into(),
            sampling_fraction: 1.0,
            spool: Some(sluice_crds::ResolvedSpool {
                claim_name: "fraud-capture-spool".into(),
                size: "1Gi".into(),
                storage_class_name: None,
            }),
            ..Default::default()
        };
        let mut context = ctx(None);
        context.capture = Some(&settings);
        for spec in [
            "{name: a, model: fraud, version: 3}",
            "{name: b, model: fraud, version: 3, runtime: {engine: vllm}}",
        ] {
            let objects = build(&entity(spec), "r1", 1, &context).expect("objects");
            let p = pod(&objects);
            let volume = spool_volume(p);
            assert!(volume.empty_dir.is_none(), "{spec}: no emptyDir");
            let claim = volume.persistent_volume_claim.as_ref().expect("a claim");
            assert_eq!(
                (claim.claim_name.as_str(), claim.read_only),
                ("fraud-capture-spool", Some(false)),
                "{spec}: every sidecar of the endpoint mounts the one claim"
            );
            let capture = &p.containers[1];
            let mount = capture
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == "spool")
                .expect("mounted");
            assert_eq!(mount.mount_path, "/spool");
            let args = capture.args.as_ref().expect("args").join(" ");
            assert!(args.contains("--spool-dir /spool"), "{args}");
        }
        // Without it: one emptyDir per pod.
        let objects = build(
            &entity("{name: a, model: fraud, version: 3}"),
            "r1",
            1,
            &ctx(Some(("s3://lake/t", 1.0))),
        )
        .expect("objects");
        let volume = spool_volume(pod(&objects));
        assert!(volume.empty_dir.is_some() && volume.persistent_volume_claim.is_none());
    }

    /// The value of `--flag=<n>[s]` in `args`.
    fn seconds_of(args: &[String], flag: &str) -> i64 {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .map(|v| v.trim_end_matches('s').parse().expect("seconds"))
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    }

    fn pre_stop_seconds(c: &Container) -> i64 {
        c.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref()?.sleep.as_ref())
            .map_or(0, |s| s.seconds)
    }

    #[test]
    fn the_grace_period_covers_the_drain_and_flush_every_container_is_given() {
        let budget = STOP_BUDGET;
        assert!(
            budget.grace_period_seconds()
                >= budget.drain_delay + budget.drain + budget.flush + budget.margin
        );
        assert!(budget.margin > 0 && budget.flush > 0);
        for spec in [
            "{name: a, model: fraud, version: 3}",
            "{name: b, model: fraud, version: 3, runtime: {engine: vllm}}",
        ] {
            let e = entity(spec);
            let objects = build(&e, "r1", 1, &ctx(Some(("s3://lake/t", 1.0)))).expect("objects");
            let p = pod(&objects);
            let grace = p.termination_grace_period_seconds.expect("a grace period");
            assert_eq!(grace, budget.grace_period_seconds());
            // The sidecar: SIGTERM after its preStop sleep, then at most --shutdown-seconds,
            // of which --drain-timeout for open exchanges and the rest for the last rows.
            let capture = &p.containers[1];
            let args = capture.args.as_deref().expect("args");
            let drain = seconds_of(args, "--drain-timeout");
            let shutdown = seconds_of(args, "--shutdown-seconds");
            assert_eq!(
                (drain, shutdown),
                (budget.drain, budget.drain + budget.flush)
            );
            assert!(drain < shutdown, "time is left to write the last rows");
            assert!(
                pre_stop_seconds(capture) + shutdown + budget.margin <= grace,
                "{spec}: the sidecar exits {} s after the deletion, the grace is {grace} s",
                pre_stop_seconds(capture) + shutdown
            );
            // The builtin model server drains as long as the sidecar in front of it waits.
            let model = &p.containers[0];
            if e.runtime
                .as_ref()
                .is_some_and(|r| r.engine == Engine::Builtin)
            {
                let model_args = model.args.as_deref().expect("args");
                let delay = seconds_of(model_args, "--drain-delay");
                let model_drain = seconds_of(model_args, "--drain-timeout");
                assert_eq!(
                    delay + model_drain,
                    pre_stop_seconds(capture) + drain,
                    "the model stops taking exchanges when the sidecar cuts them"
                );
                assert!(delay + model_drain + budget.margin <= grace);
            } else {
                assert!(pre_stop_seconds(model) < grace);
            }
        }
    }
}
