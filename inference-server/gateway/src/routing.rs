//! What the gateway routes by, as plain data: the pure step between the cluster (or a standalone
//! manifest) and the live routing state.
//!
//! In a cluster the gateway routes by `status.config` of each ServingEndpoint — the config the
//! operator promoted once all its entities were ready — never by `spec`, and applies no default
//! of its own: hold limits and revisions are what the operator published for each entity
//! (`sluice_contract::published`). An entity's backends are the ready pods of its published
//! revision, found by the pod labels the operator sets
//! (`serving.sluice.dev/{endpoint,entity,revision}`). Pods, not EndpointSlices:
//! the API server refuses loopback addresses in EndpointSlices, and every local pod of the test
//! cluster lives on 127.0.0.0/8 (docs/testing.md); a Pod's Ready condition is the same signal
//! the EndpointSlice controller publishes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
pub use sluice_contract::labels::LABEL_ENDPOINT;
use sluice_contract::labels::{FRONT_PORT_NAME, LABEL_ENTITY, LABEL_REVISION, container_port};
pub use sluice_contract::published::HoldPolicy;
use sluice_contract::published::revision_of_entity;
use sluice_crds::{RateLimit, ResolvedRoute, ServingEndpoint, ShadowRoute};

use super::cache::CachePolicy;
use super::external::External;
use super::guardrails::Guardrails;

/// An endpoint as the gateway tells it from the others: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Namespace of the ServingEndpoint.
    pub namespace: String,
    /// Name of the ServingEndpoint.
    pub name: String,
}

/// One endpoint as the gateway routes it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    /// Namespace of the ServingEndpoint (`default` in standalone mode).
    pub namespace: String,
    /// Name of the ServingEndpoint.
    pub name: String,
    /// The routed config; `None` while the endpoint has no promoted config yet.
    pub config: Option<ConfigSpec>,
    /// What `spec.aiGateway` asks of the gateway.
    pub policies: Policies,
}

/// What `spec.aiGateway` asks of the gateway. Read from the spec, not the promoted config: a
/// policy change needs no new pods, so it takes effect at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    /// `rateLimits`.
    pub rate_limits: Vec<RateLimit>,
    /// `fallback.enabled`.
    pub fallback: bool,
    /// `guardrails`, each direction when it sets a check that acts.
    pub guardrails: Guardrails,
    /// `responseCache`, when enabled.
    pub cache: Option<CachePolicy>,
    /// `autoCapture.enabled`: cache hits are sent to a capture sidecar to become rows.
    pub captured: bool,
    /// `aiGateway.usageTracking.enabled`: external providers' answers are sent to the
    /// entity's recorder for their usage rows.
    pub usage_tracked: bool,
}

impl Policies {
    /// The policies of `endpoint`'s spec.
    pub fn of(endpoint: &ServingEndpoint) -> Self {
        let gateway = endpoint.spec.ai_gateway.as_ref();
        Self {
            rate_limits: gateway.map(|g| g.rate_limits.clone()).unwrap_or_default(),
            fallback: gateway
                .and_then(|g| g.fallback.as_ref())
                .is_some_and(|f| f.enabled),
            guardrails: super::guardrails::of(endpoint),
            cache: CachePolicy::of(endpoint),
            captured: endpoint
                .spec
                .auto_capture
                .as_ref()
                .is_some_and(|c| c.enabled),
            usage_tracked: gateway
                .and_then(|g| g.usage_tracking.as_ref())
                .is_some_and(|u| u.enabled),
        }
    }
}

/// The routed config of an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSpec {
    /// `status.config.configVersion`.
    pub version: i64,
    /// Every entity of the config, live and shadow.
    pub entities: Vec<EntitySpec>,
    /// Live routes: entity name and weight (percent).
    pub routes: Vec<(String, u32)>,
    /// Shadow routes: entity name and the percentage of live requests mirrored to it.
    pub shadows: Vec<(String, u32)>,
}

impl ConfigSpec {
    /// Live routes as the routing table takes them: entity name and weight.
    pub fn routes_of(routes: &[ResolvedRoute]) -> Vec<(String, u32)> {
        routes
            .iter()
            .map(|r| {
                let weight = u32::try_from(r.traffic_percentage).unwrap_or(0);
                (r.served_entity_name.clone(), weight)
            })
            .collect()
    }

    /// Shadow routes as the routing table takes them: entity name and mirrored percentage.
    pub fn shadows_of(shadows: &[ShadowRoute]) -> Vec<(String, u32)> {
        shadows
            .iter()
            .map(|r| {
                let percent = u32::try_from(r.mirror_percentage).unwrap_or(0);
                (r.served_entity_name.clone(), percent)
            })
            .collect()
    }
}

/// One entity and the addresses of its ready backends.
#[derive(Clone, Debug, PartialEq)]
pub struct EntitySpec {
    /// Entity name; answered in the `served-model-name` header.
    pub name: String,
    /// Whether requests are held while the entity has no ready pod.
    pub scale_to_zero: bool,
    /// Hold queue limits.
    pub hold: HoldPolicy,
    /// Ready backends.
    pub backends: Vec<SocketAddr>,
    /// Pods of the entity's revision that run but are not Ready yet. While requests are held
    /// the gateway probes them itself and routes to the first that answers, without waiting
    /// for the kubelet's next readiness probe and the watch round trip (as Knative's activator
    /// does).
    pub warming: Vec<SocketAddr>,
    /// The provider the gateway calls for an external model.
    pub external: Option<External>,
    /// Why the entity cannot be served by this gateway at all, if so.
    pub unsupported: Option<String>,
}

/// The pods of one revision of one entity, as their labels name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RevisionPods<'a> {
    namespace: &'a str,
    endpoint: &'a str,
    entity: &'a str,
    revision: &'a str,
}

/// Builds the routing data of every endpoint from the watched ServingEndpoints and entity pods.
pub fn from_cluster(endpoints: &[ServingEndpoint], pods: &[Pod]) -> Vec<EndpointSpec> {
    // Each revision's ready and warming addresses.
    let mut ready: BTreeMap<RevisionPods<'_>, Vec<SocketAddr>> = BTreeMap::new();
    let mut warming: BTreeMap<RevisionPods<'_>, Vec<SocketAddr>> = BTreeMap::new();
    for pod in pods {
        let Some((address, is_ready)) = front_address(pod) else {
            continue;
        };
        let labels = match pod.metadata.labels.as_ref() {
            Some(labels) => labels,
            None => continue,
        };
        let (Some(namespace), Some(endpoint), Some(entity), Some(revision)) = (
            pod.metadata.namespace.as_deref(),
            labels.get(LABEL_ENDPOINT),
            labels.get(LABEL_ENTITY),
            labels.get(LABEL_REVISION),
        ) else {
            continue;
        };
        let map = if is_ready { &mut ready } else { &mut warming };
        let revision_pods = RevisionPods {
            namespace,
            endpoint,
            entity,
            revision,
        };
        map.entry(revision_pods).or_default().push(address);
    }
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let (Some(namespace), Some(name)) = (
            endpoint.metadata.namespace.as_deref(),
            endpoint.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let config = endpoint
            .status
            .as_ref()
            .and_then(|status| status.config.as_ref())
            .map(|config| {
                let entities = config
                    .served_entities
                    .iter()
                    .map(|entity| {
                        let revision = revision_of_entity(name, entity);
                        let of = |map: &BTreeMap<_, Vec<SocketAddr>>| {
                            let mut list = revision
                                .and_then(|revision| {
                                    map.get(&RevisionPods {
                                        namespace,
                                        endpoint: name,
                                        entity: &entity.name,
                                        revision,
                                    })
                                })
                                .cloned()
                                .unwrap_or_default();
                            list.sort();
                            list
                        };
                        let backends = of(&ready);
                        let (external, unsupported) = match &entity.external_model {
                            None => (None, None),
                            Some(model) => match External::of(model, namespace) {
                                Ok(external) => (Some(external), None),
                                Err(why) => (
                                    None,
                                    Some(format!(
                                        "entity {} is an external model this gateway cannot \
                                         call: {why}",
                                        entity.name
                                    )),
                                ),
                            },
                        };
                        EntitySpec {
                            name: entity.name.clone(),
                            scale_to_zero: entity.scale_to_zero_enabled,
                            hold: HoldPolicy::of(entity),
                            backends,
                            warming: of(&warming),
                            external,
                            unsupported,
                        }
                    })
                    .collect();
                ConfigSpec {
                    version: config.config_version,
                    entities,
                    routes: ConfigSpec::routes_of(&config.routes),
                    shadows: ConfigSpec::shadows_of(&config.shadow_routes),
                }
            });
        out.push(EndpointSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            config,
            policies: Policies::of(endpoint),
        });
    }
    out
}

/// The address a running, not-terminating pod answers on, at its front (`http`) port, and
/// whether it is Ready.
fn front_address(pod: &Pod) -> Option<(SocketAddr, bool)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = container_port(pod, FRONT_PORT_NAME)?;
    Some((SocketAddr::new(ip, u16::try_from(port).ok()?), ready))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn endpoint() -> ServingEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.sluice.dev/v1alpha1",
            "kind": "ServingEndpoint",
            "metadata": {"name": "fraud", "namespace": "ml"},
            "spec": {
                "servedEntities": [
                    {"name": "a", "model": "m", "version": 1},
                    {"name": "b", "model": "m", "version": 2, "scaleToZeroEnabled": true,
                     "autoscaling": {"maxHeldRequests": 7, "holdTimeoutSeconds": 3}}
                ],
                "trafficConfig": {"routes": [
                    {"servedEntityName": "a", "trafficPercentage": 90},
                    {"servedEntityName": "b", "trafficPercentage": 10}
                ]}
            },
            "status": {"config": {
                "configVersion": 4,
                "servedEntities": [
                    {"name": "a", "deploymentName": "fraud-a-1111a", "scaleToZeroEnabled": false,
                     "minProvisionedConcurrency": 4, "maxProvisionedConcurrency": 4},
                    {"name": "b", "deploymentName": "fraud-b-2222b", "revision": "2222b",
                     "scaleToZeroEnabled": true,
                     "minProvisionedConcurrency": 0, "maxProvisionedConcurrency": 4,
                     "autoscaling": {"perReplicaConcurrency": 4, "minReplicas": 0,
                                     "maxReplicas": 1, "idleTimeoutSeconds": 300,
                                     "maxHeldRequests": 7, "holdTimeoutSeconds": 3}}
                ],
                "routes": [
                    {"servedEntityName": "a", "trafficPercentage": 90},
                    {"servedEntityName": "b", "trafficPercentage": 10}
                ],
                "shadowRoutes": [{"servedEntityName": "b", "mirrorPercentage": 25}]
            }}
        }))
        .expect("endpoint fixture")
    }

    fn pod(entity: &str, revision: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{ip}"), "namespace": "ml", "labels": {
                LABEL_ENDPOINT: "fraud", LABEL_ENTITY: entity, LABEL_REVISION: revision}},
            "spec": {"containers": [
                {"name": "model", "ports": [{"name": "model", "containerPort": 8081}]},
                {"name": "capture", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("pod fixture")
    }

    #[test]
    fn routes_by_status_config_to_ready_pods_of_the_named_revision() {
        let pods = [
            pod("a", "1111a", "127.0.3.2", true),
            pod("a", "1111a", "127.0.3.1", true),
            pod("a", "1111a", "127.0.3.3", false),
            // An old revision of `a`: not in the routed config.
            pod("a", "0000a", "127.0.3.9", true),
            // Still pending (containers not started): neither ready nor warming.
            {
                let mut pending = pod("a", "1111a", "127.0.3.4", false);
                if let Some(status) = pending.status.as_mut() {
                    status.phase = Some("Pending".into());
                }
                pending
            },
        ];
        let specs = from_cluster(&[endpoint()], &pods);
        let config = specs[0].config.as_ref().expect("config");
        assert_eq!(config.version, 4);
        assert_eq!(
            config.entities[0].backends,
            vec![
                "127.0.3.1:8080".parse().expect("addr"),
                "127.0.3.2:8080".parse().expect("addr")
            ]
        );
        assert_eq!(
            config.entities[0].warming,
            vec!["127.0.3.3:8080".parse().expect("addr")],
            "running but not Ready"
        );
        assert!(config.entities[1].backends.is_empty());
        assert!(config.entities[1].scale_to_zero);
        assert_eq!(config.entities[1].hold.max_held, 7);
        assert_eq!(config.entities[1].hold.timeout, Duration::from_secs(3));
        assert_eq!(
            config.entities[0].hold,
            HoldPolicy {
                max_held: 100,
                timeout: Duration::from_secs(120)
            },
            "a status written before hold limits were published reads as the defaults"
        );
        assert_eq!(config.routes, vec![("a".into(), 90), ("b".into(), 10)]);
        assert_eq!(config.shadows, vec![("b".into(), 25)]);
    }

    #[test]
    fn an_endpoint_without_a_promoted_config_is_known_but_not_routable() {
        let mut endpoint = endpoint();
        endpoint.status = None;
        let specs = from_cluster(&[endpoint], &[]);
        assert_eq!(specs[0].name, "fraud");
        assert!(specs[0].config.is_none());
    }

    #[test]
    fn terminating_pods_are_not_backends() {
        let mut terminating = pod("a", "1111a", "127.0.3.1", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let specs = from_cluster(&[endpoint()], &[terminating]);
        assert!(
            specs[0].config.as_ref().expect("config").entities[0]
                .backends
                .is_empty()
        );
    }

    /// The gateway holds exactly as long as the operator resolved: the operator config's
    /// defaults (120 s, 100 requests) when the entity sets none, its overrides otherwise, and
    /// never a default of the gateway's own.
    #[test]
    fn hold_limits_are_the_operators_resolved_values() {
        use std::collections::BTreeMap;

        use sluice_contract::config::OperatorConfig;
        use sluice_contract::{fixtures, published, resolve};

        for (config, spec) in [
            (OperatorConfig::default(), "{name: a, model: m, version: 1}"),
            (
                OperatorConfig::parse("autoscaling: {holdTimeoutSeconds: 45}\n", "test")
                    .expect("config"),
                "{name: a, model: m, version: 1, autoscaling: {maxHeldRequests: 9}}",
            ),
        ] {
            let mut ep = fixtures::endpoint("fraud", &format!("  servedEntities:\n  - {spec}"));
            let mv = fixtures::checked_version("m", 1, &[], true);
            let resolved = resolve::resolve(&ep, &[mv], &BTreeMap::new(), &config)
                .expect("resolves")
                .remove(0);
            let autoscaling = published::autoscaling(&resolved);
            ep.status = Some(
                serde_json::from_value(serde_json::json!({"config": {
                    "configVersion": 1,
                    "servedEntities": [{"name": "a", "revision": "1111a",
                                        "deploymentName": "fraud-a-1111a",
                                        "autoscaling": autoscaling}],
                    "routes": [{"servedEntityName": "a", "trafficPercentage": 100}]
                }}))
                .expect("status"),
            );
            let specs = from_cluster(&[ep], &[]);
            let hold = specs[0].config.as_ref().expect("config").entities[0].hold;
            assert_eq!(
                hold.timeout,
                Duration::from_secs(u64::from(resolved.hold_timeout_seconds))
            );
            assert_eq!(hold.max_held, resolved.max_held_requests as usize);
        }
        assert_eq!(
            OperatorConfig::default().autoscaling.hold_timeout_seconds,
            120
        );
    }
}
