//! The autoscaler: sizes the entity Deployments of every promoted config from the demand the
//! gateways publish (`GET /demand` on each gateway's admin port).
//!
//! Every tick (and at once when a gateway's long poll reports a newly held request, so an
//! entity at zero wakes within a second) it sums the demand of every gateway per entity, feeds
//! it to the entity's [`algorithm::Scaler`], and writes `spec.replicas` of the entity
//! Deployment when the decision differs — with its own field manager, since the endpoint
//! controller stops owning `replicas` once a Deployment exists. Each change is an event on the
//! ServingEndpoint; the endpoint controller reports desired and ready replicas in status.
//!
//! Each change also writes the decision onto the Deployment's annotations ([`SCALE_REASON`],
//! [`SCALE_MESSAGE`], [`SCALED_AT`]), which the endpoint controller copies into the entity's
//! `replicas` status.
//!
//! Metrics never carry object names: totals of desired and ready replicas and held requests,
//! and the cold-start histogram by phase ([`cold_start`]): a wake from zero is followed through
//! the replica write, the entity's pods (a watch stamps when one is bound, running and Ready)
//! and the gateways' report of the first byte answered to a held request.

pub mod algorithm;
pub mod cold_start;
mod gateways;
mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::{Api, Resource, ResourceExt};
use sluice_crds::{ServedEntityStatus, ServingEndpoint};
use tokio::sync::Notify;
use tracing::{info, warn};

pub use algorithm::{Bounds, Windows};
pub use gateways::GatewaySource;
pub use metrics::AutoscalerMetrics;

use crate::caches::Caches;
use crate::runtime::Env;
use algorithm::{Decision, Demand, Reason, Scaler};
use cold_start::{ColdStart, PodProgress};
use sluice_contract::demand::EntityKey;
use sluice_contract::labels::{LABEL_ENDPOINT, LABEL_ENTITY};

/// Field manager of the autoscaler's replica writes.
pub const FIELD_MANAGER: &str = "sluice-operator/autoscaler";
/// Deployment annotation: the reason of the last scaling decision.
pub const SCALE_REASON: &str = "serving.sluice.dev/scale-reason";
/// Deployment annotation: the last scaling decision in words.
pub const SCALE_MESSAGE: &str = "serving.sluice.dev/scale-message";
/// Deployment annotation: when the last scaling decision was written (RFC 3339).
pub const SCALED_AT: &str = "serving.sluice.dev/scaled-at";

/// Cold starts being followed, by entity; shared by the sizing rounds and the pod watch.
type ColdStarts = Arc<Mutex<HashMap<EntityKey, ColdStart>>>;

/// How the autoscaler runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the gateways' demand comes from.
    pub gateways: GatewaySource,
    /// Time between two sizing rounds.
    pub interval: Duration,
    /// Averaging windows.
    pub windows: Windows,
}

/// Sets up the autoscaler on the shared `caches` (its subscriptions are taken now); the future
/// runs it until the shutdown signal.
pub fn run(
    env: Env,
    options: Options,
    metrics: AutoscalerMetrics,
    caches: &mut Caches,
) -> impl Future<Output = ()> + use<> {
    let endpoints = caches.endpoints.store();
    let deployments = caches.deployments.store();
    let synced = caches.endpoints.synced().with(&caches.deployments.synced());
    let pods = caches.pods.subscribe_applied();
    async move {
        let cold_starts: ColdStarts = Arc::default();
        let pod_watch = follow_pods(pods, cold_starts.clone());
        let woken = Arc::new(Notify::new());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let (gateways, gateway_watch) = gateways::Gateways::watch(&env, &options.gateways);
        let long_polls = gateways::long_poll(gateways.clone(), http.clone(), woken.clone());
        let recorder = Recorder::new(env.client.clone(), env.reporter.clone());
        let rounds = async {
            if synced.wait().await.is_err() {
                return;
            }
            info!("autoscaler running");
            let mut scalers: HashMap<EntityKey, Scaler> = HashMap::new();
            loop {
                let demand = gateways::demand(&gateways, &http).await;
                let round = Round {
                    env: &env,
                    options: &options,
                    recorder: &recorder,
                    metrics: &metrics,
                    deployments: &deployments,
                    cold_starts: &cold_starts,
                };
                round
                    .size_all(&endpoints.state(), &demand, &mut scalers)
                    .await;
                tokio::select! {
                    () = tokio::time::sleep(options.interval) => {}
                    () = woken.notified() => {}
                }
            }
        };
        tokio::select! {
            () = rounds => {}
            () = pod_watch => {}
            () = long_polls => {}
            () = gateway_watch => {}
            () = env.shutdown.clone() => info!("autoscaler stopped"),
        }
    }
}

/// Stamps the progress of entity pods into the cold starts being followed. Only changes are
/// used: a cold start needs the moment a stage is first seen.
async fn follow_pods(pods: impl futures::Stream<Item = Pod>, cold_starts: ColdStarts) {
    use futures::StreamExt;
    let mut pods = std::pin::pin!(pods);
    while let Some(pod) = pods.next().await {
        let labels = pod.labels();
        let (Some(namespace), Some(endpoint), Some(entity)) = (
            pod.namespace(),
            labels.get(LABEL_ENDPOINT),
            labels.get(LABEL_ENTITY),
        ) else {
            continue;
        };
        let key = EntityKey {
            namespace,
            endpoint: endpoint.clone(),
            entity: entity.clone(),
        };
        let mut cold_starts = cold_starts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cold_start) = cold_starts.get_mut(&key) {
            cold_start.pod(PodProgress::of(&pod), Instant::now());
        }
    }
}

/// One sizing round's inputs.
struct Round<'a> {
    env: &'a Env,
    options: &'a Options,
    recorder: &'a Recorder,
    metrics: &'a AutoscalerMetrics,
    deployments: &'a Store<Deployment>,
    cold_starts: &'a ColdStarts,
}

impl Round<'_> {
    async fn size_all(
        &self,
        endpoints: &[Arc<ServingEndpoint>],
        demand: &BTreeMap<EntityKey, Demand>,
        scalers: &mut HashMap<EntityKey, Scaler>,
    ) {
        let now = Instant::now();
        let (mut desired_total, mut ready_total, mut held_total) = (0i64, 0i64, 0i64);
        let mut seen = Vec::new();
        for endpoint in endpoints {
            let (Some(namespace), Some(config)) = (
                endpoint.namespace(),
                endpoint.status.as_ref().and_then(|s| s.config.as_ref()),
            ) else {
                continue;
            };
            for entity in &config.served_entities {
                // An external entity's Deployment is its recorder: one replica, not sized by
                // the demand on the provider.
                let Some(deployment_name) = entity
                    .deployment_name
                    .as_deref()
                    .filter(|_| entity.external_model.is_none())
                else {
                    continue;
                };
                let Some(deployment) = self
                    .deployments
                    .get(&reflector::ObjectRef::new(deployment_name).within(&namespace))
                else {
                    continue;
                };
                let key = EntityKey {
                    namespace: namespace.clone(),
                    endpoint: endpoint.name_any(),
                    entity: entity.name.clone(),
                };
                seen.push(key.clone());
                let current = deployment.spec.replicas.unwrap_or(1).max(0) as u32;
                let ready = deployment
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
                    .max(0) as u32;
                let observed = demand.get(&key).copied().unwrap_or_default();
                let bounds = Bounds::of(entity);
                let scaler = scalers
                    .entry(key.clone())
                    .or_insert_with(|| Scaler::new(now));
                scaler.observe(now, observed, &self.options.windows);
                let decision = scaler.decide(
                    now,
                    current,
                    ready,
                    observed.held,
                    &bounds,
                    &self.options.windows,
                );
                if decision.reason == Reason::Wake && current == 0 {
                    self.cold_starts().entry(key.clone()).or_insert_with(|| {
                        ColdStart::new(now, observed.oldest_held.unwrap_or_default())
                    });
                }
                self.follow_cold_start(&key, observed, now);
                desired_total += i64::from(decision.desired);
                ready_total += i64::from(ready);
                held_total += observed.held as i64;
                if decision.desired != current
                    && self
                        .scale(
                            endpoint,
                            entity,
                            deployment_name,
                            &namespace,
                            current,
                            decision,
                            observed,
                        )
                        .await
                    && let Some(cold_start) = self.cold_starts().get_mut(&key)
                {
                    cold_start.scaled(Instant::now());
                }
            }
        }
        scalers.retain(|key, _| seen.contains(key));
        self.cold_starts()
            .retain(|key, c| seen.contains(key) && !c.expired(now));
        self.metrics.totals(desired_total, ready_total, held_total);
    }

    fn cold_starts(&self) -> std::sync::MutexGuard<'_, HashMap<EntityKey, ColdStart>> {
        self.cold_starts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the gateways' "first byte after a hold" into the entity's cold start, and records
    /// the cold start once complete.
    fn follow_cold_start(&self, key: &EntityKey, observed: Demand, now: Instant) {
        let mut cold_starts = self.cold_starts();
        let Some(cold_start) = cold_starts.get_mut(key) else {
            return;
        };
        if let Some(at) = observed
            .held_answered_ago
            .and_then(|ago| now.checked_sub(ago))
        {
            cold_start.answered(at);
        }
        if let Some((phases, total)) = cold_start.phases() {
            info!(endpoint = %key.endpoint, entity = %key.entity, ?phases, ?total, "cold start done");
            self.metrics.cold_start(&phases, total);
            cold_starts.remove(key);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn scale(
        &self,
        endpoint: &ServingEndpoint,
        entity: &ServedEntityStatus,
        deployment: &str,
        namespace: &str,
        current: u32,
        decision: Decision,
        demand: Demand,
    ) -> bool {
        let api: Api<Deployment> = Api::namespaced(self.env.client.clone(), namespace);
        let note = format!(
            "entity {}: {current} -> {} replicas ({}; {:.1} in flight, {} held)",
            entity.name,
            decision.desired,
            decision.reason.as_str(),
            demand.in_flight,
            demand.held
        );
        let patch = serde_json::json!({
            "metadata": {"annotations": {
                SCALE_REASON: decision.reason.as_str(),
                SCALE_MESSAGE: note,
                SCALED_AT: k8s_openapi::jiff::Timestamp::now().to_string(),
            }},
            "spec": {"replicas": decision.desired},
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        if let Err(error) = api.patch(deployment, &params, &Patch::Merge(&patch)).await {
            warn!(%error, deployment, "scaling failed; retrying next round");
            return false;
        }
        info!(endpoint = %endpoint.name_any(), %note, "scaled");
        let event = Event {
            type_: EventType::Normal,
            reason: decision.reason.as_str().into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &endpoint.object_ref(&()))
            .await
        {
            warn!(%error, "publishing the scaling event failed");
        }
        true
    }
}
