//! The live routing state: endpoints, their entities (each with its backends, hold queue,
//! demand and metric handles) and every backend's health, updated from [`EndpointSpec`]s.
//!
//! Updates build a new immutable [`Table`] and swap it in; requests read the current table
//! without blocking each other. Entity pools and backends are kept across updates (matched by
//! [`EntityKey`] and address), so in-flight counts, ejections and held requests survive a
//! config change; what a pool routes by is one immutable [`Routing`] snapshot, replaced whole.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sluice_contract::demand::EntityKey;

use tokio::sync::Notify;

use super::backend::Backend;
use super::demand::{Demand, EntityDemand};
use super::external::External;
use super::hold::HoldQueue;
use super::metrics::{EntityLabels, EntityMetrics, GatewayMetrics};
use super::routing::{EndpointSpec, HoldPolicy};

/// What one entity routes by: built whole on each update (or promotion) and never changed.
#[derive(Debug)]
pub struct Routing {
    /// Ready backends, with the promoted warming pods.
    pub backends: Arc<[Arc<Backend>]>,
    /// Running, not yet Ready pods (see [`EntitySpec::warming`](super::routing::EntitySpec)).
    pub warming: Arc<[SocketAddr]>,
    /// Warming pods this gateway's own probe found answering, routed to before they are Ready.
    pub promoted: BTreeSet<SocketAddr>,
    /// Whether requests are held while no pod is ready.
    pub scale_to_zero: bool,
    /// The hold limits the operator published.
    pub hold_policy: HoldPolicy,
    /// The provider called for an external model (no pods).
    pub external: Option<Arc<External>>,
    /// Why this gateway cannot serve the entity at all, if so.
    pub unsupported: Option<String>,
}

/// One served entity as the gateway routes to it.
#[derive(Debug)]
pub struct EntityPool {
    /// Entity name.
    pub name: String,
    /// The name as the `served-model-name` header value.
    pub served_name: axum::http::HeaderValue,
    routing: RwLock<Arc<Routing>>,
    /// Requests held while no pod is ready.
    pub hold: HoldQueue,
    /// Demand published to the autoscaler.
    pub demand: Demand,
    /// Metric handles.
    pub metrics: EntityMetrics,
}

impl EntityPool {
    /// What the entity routes by now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_routing(&self, routing: Routing) {
        self.metrics.backends.set(routing.backends.len() as i64);
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    /// The ready backends now.
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        self.routing().backends.clone()
    }

    /// Whether the entity has a ready pod.
    pub fn has_ready(&self) -> bool {
        !self.routing().backends.is_empty()
    }

    /// Whether requests are held while no pod is ready.
    pub fn scale_to_zero(&self) -> bool {
        self.routing().scale_to_zero
    }

    /// The hold limits now.
    pub fn hold_policy(&self) -> HoldPolicy {
        self.routing().hold_policy
    }

    /// The provider called for an external model.
    pub fn external(&self) -> Option<Arc<External>> {
        self.routing().external.clone()
    }

    /// Why this gateway cannot serve the entity at all, if so.
    pub fn unsupported(&self) -> Option<String> {
        self.routing().unsupported.clone()
    }

    /// The entity's labels (namespace, endpoint, entity).
    pub fn labels(&self) -> &EntityLabels {
        &self.metrics.labels
    }
}

/// The routed config of an endpoint.
#[derive(Debug)]
pub struct LiveConfig {
    /// `configVersion` of the routed config.
    pub version: i64,
    /// Every entity of the config.
    pub entities: Vec<Arc<EntityPool>>,
    /// Live weight of each entity in `entities` (0 for shadow-only entities).
    pub weights: Vec<u32>,
    /// Shadow targets and the percentage of live requests mirrored to each.
    pub shadows: Vec<(Arc<EntityPool>, u32)>,
}

/// One endpoint in the table.
#[derive(Debug)]
pub struct LiveEndpoint {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The routed config; `None` until the operator promotes one.
    pub config: Option<LiveConfig>,
    /// What `spec.aiGateway` asks: rate limits, fallback, input guardrails.
    pub policies: super::routing::Policies,
}

/// An immutable snapshot of every endpoint.
#[derive(Debug, Default)]
pub struct Table {
    endpoints: HashMap<String, Vec<Arc<LiveEndpoint>>>,
}

/// Why a name did not resolve to one endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No endpoint has that name.
    Unknown,
    /// Several namespaces have an endpoint of that name; they must be named.
    Ambiguous(Vec<String>),
}

impl Table {
    /// Every endpoint with the name callers use for it (the bare name, or `namespace.name`
    /// where several namespaces have one of that name), in name order.
    pub fn named(&self) -> Vec<(String, &Arc<LiveEndpoint>)> {
        let mut all: Vec<(String, &Arc<LiveEndpoint>)> = self
            .endpoints
            .iter()
            .flat_map(|(name, found)| {
                found.iter().map(move |e| {
                    let id = if found.len() == 1 {
                        name.clone()
                    } else {
                        format!("{}.{name}", e.namespace)
                    };
                    (id, e)
                })
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The endpoint called `name`, or `namespace.name` when the bare name is ambiguous.
    pub fn get(&self, name: &str) -> Result<&Arc<LiveEndpoint>, Lookup> {
        if let Some(found) = self.endpoints.get(name) {
            return match found.as_slice() {
                [one] => Ok(one),
                many => Err(Lookup::Ambiguous(
                    many.iter().map(|e| e.namespace.clone()).collect(),
                )),
            };
        }
        // Endpoint names are DNS-1035 labels, so a dot separates namespace and name.
        let (namespace, bare) = name.split_once('.').ok_or(Lookup::Unknown)?;
        self.endpoints
            .get(bare)
            .and_then(|all| all.iter().find(|e| e.namespace == namespace))
            .ok_or(Lookup::Unknown)
    }
}

/// The gateway's live state.
#[derive(Debug)]
pub struct State {
    table: RwLock<Arc<Table>>,
    pools: Mutex<HashMap<EntityKey, Arc<EntityPool>>>,
    backends: Mutex<HashMap<SocketAddr, Arc<Backend>>>,
    metrics: GatewayMetrics,
    synced: AtomicBool,
    /// Notified when an entity starts holding requests (a wake is due).
    pub wake: Notify,
}

impl State {
    /// An empty state reporting into `metrics`.
    pub fn new(metrics: GatewayMetrics) -> Self {
        Self {
            table: RwLock::default(),
            pools: Mutex::default(),
            backends: Mutex::default(),
            metrics,
            synced: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the first full view of the endpoints has been applied.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Every backend the gateway knows (for health checks).
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Entities that hold requests, have no ready backend and have warming pods, with those
    /// pods: what the warm prober checks.
    pub fn waking(&self) -> Vec<(Arc<EntityPool>, Arc<[SocketAddr]>)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .values()
            .filter(|pool| pool.hold.held() > 0 && !pool.has_ready())
            .filter_map(|pool| {
                let warming = pool.routing().warming.clone();
                (!warming.is_empty()).then(|| (pool.clone(), warming))
            })
            .collect()
    }

    /// Routes to `addr`, a warming pod of `pool` that answered this gateway's health check:
    /// it becomes a backend at once and the held requests are released.
    pub fn promote(&self, pool: &Arc<EntityPool>, addr: SocketAddr) {
        // Updates and promotions are serialised by the backends lock.
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let now = pool.routing();
        if !now.warming.contains(&addr) {
            return;
        }
        let backend = backends
            .entry(addr)
            .or_insert_with(|| Arc::new(Backend::new(addr)))
            .clone();
        let mut promoted = now.promoted.clone();
        promoted.insert(addr);
        let mut list = now.backends.to_vec();
        if !list.iter().any(|b| b.addr == addr) {
            list.push(backend);
        }
        pool.set_routing(Routing {
            backends: Arc::from(list),
            warming: now.warming.clone(),
            promoted,
            scale_to_zero: now.scale_to_zero,
            hold_policy: now.hold_policy,
            external: now.external.clone(),
            unsupported: now.unsupported.clone(),
        });
        drop(backends);
        let released = pool.hold.release();
        tracing::info!(
            endpoint = %pool.labels().endpoint,
            entity = %pool.name,
            %addr,
            released,
            "a waking pod answers its health check before it is Ready; routing to it"
        );
    }

    /// Replaces the routing table with `specs` (the complete set of endpoints).
    pub fn apply(&self, specs: &[EndpointSpec]) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted_pools = BTreeSet::new();
        let mut wanted_backends = BTreeSet::new();
        let mut released = Vec::new();
        let mut table = Table::default();
        for spec in specs {
            let config = spec.config.as_ref().map(|config| {
                let entities: Vec<Arc<EntityPool>> = config
                    .entities
                    .iter()
                    .map(|entity| {
                        let key = EntityKey {
                            namespace: spec.namespace.clone(),
                            endpoint: spec.name.clone(),
                            entity: entity.name.clone(),
                        };
                        wanted_pools.insert(key.clone());
                        let pool = pools
                            .entry(key)
                            .or_insert_with(|| {
                                Arc::new(EntityPool {
                                    name: entity.name.clone(),
                                    // Entity names are DNS labels, always valid header values.
                                    served_name: axum::http::HeaderValue::from_str(&entity.name)
                                        .unwrap_or_else(|_| {
                                            axum::http::HeaderValue::from_static("invalid-name")
                                        }),
                                    routing: RwLock::new(Arc::new(Routing {
                                        backends: Arc::from(Vec::new()),
                                        warming: Arc::from(Vec::new()),
                                        promoted: BTreeSet::new(),
                                        scale_to_zero: entity.scale_to_zero,
                                        hold_policy: entity.hold,
                                        external: None,
                                        unsupported: None,
                                    })),
                                    hold: HoldQueue::default(),
                                    demand: Demand::default(),
                                    metrics: self.metrics.entity(EntityLabels {
                                        namespace: spec.namespace.clone(),
                                        endpoint: spec.name.clone(),
                                        entity: entity.name.clone(),
                                    }),
                                })
                            })
                            .clone();
                        // A promoted pod stays a backend while it is still warming; once
                        // Ready it is among the backends anyway, and once gone it is dropped.
                        let mut promoted = pool.routing().promoted.clone();
                        promoted.retain(|addr| entity.warming.contains(addr));
                        let list: Vec<Arc<Backend>> = entity
                            .backends
                            .iter()
                            .chain(promoted.iter())
                            .map(|addr| {
                                wanted_backends.insert(*addr);
                                backends
                                    .entry(*addr)
                                    .or_insert_with(|| Arc::new(Backend::new(*addr)))
                                    .clone()
                            })
                            .collect();
                        let has_ready = !list.is_empty();
                        pool.set_routing(Routing {
                            backends: Arc::from(list),
                            warming: Arc::from(entity.warming.clone()),
                            promoted,
                            scale_to_zero: entity.scale_to_zero,
                            hold_policy: entity.hold,
                            external: entity.external.clone().map(Arc::new),
                            unsupported: entity.unsupported.clone(),
                        });
                        if has_ready {
                            released.push(pool.clone());
                        }
                        pool
                    })
                    .collect();
                let weight_of = |name: &str| {
                    config
                        .routes
                        .iter()
                        .filter(|(entity, _)| entity == name)
                        .map(|(_, weight)| *weight)
                        .sum()
                };
                LiveConfig {
                    version: config.version,
                    weights: entities.iter().map(|e| weight_of(&e.name)).collect(),
                    shadows: config
                        .shadows
                        .iter()
                        .filter_map(|(name, percent)| {
                            let pool = entities.iter().find(|e| &e.name == name)?;
                            Some((pool.clone(), *percent))
                        })
                        .collect(),
                    entities,
                }
            });
            table
                .endpoints
                .entry(spec.name.clone())
                .or_default()
                .push(Arc::new(LiveEndpoint {
                    namespace: spec.namespace.clone(),
                    name: spec.name.clone(),
                    config,
                    policies: spec.policies.clone(),
                }));
        }
        // Entities that left every config: their held requests re-resolve (and get whatever
        // the new table says), their series go.
        pools.retain(|key, pool| {
            let keep = wanted_pools.contains(key);
            if !keep {
                pool.hold.release();
                self.metrics.remove_entity(pool.labels());
            }
            keep
        });
        backends.retain(|addr, _| wanted_backends.contains(addr));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.synced.store(true, Ordering::Relaxed);
        drop(pools);
        drop(backends);
        for pool in released {
            let count = pool.hold.release();
            if count > 0 {
                tracing::info!(
                    endpoint = %pool.labels().endpoint,
                    entity = %pool.name,
                    released = count,
                    "a pod is ready; releasing held requests"
                );
            }
        }
    }

    /// The demand of every routed entity.
    pub fn demand(&self) -> Vec<EntityDemand> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<EntityDemand> = pools
            .values()
            .map(|pool| {
                let held = pool.hold.held();
                EntityDemand {
                    namespace: pool.labels().namespace.clone(),
                    endpoint: pool.labels().endpoint.clone(),
                    entity: pool.name.clone(),
                    in_flight: pool.demand.in_flight(),
                    held,
                    requests_total: pool.demand.total(),
                    recent_rate: pool.demand.rate(),
                    ready_backends: pool.backends().len(),
                    oldest_held_ms: pool.demand.oldest_held_ms(held),
                    held_answered_ago_ms: pool.demand.held_answered_ago_ms(),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.namespace, &a.endpoint, &a.entity).cmp(&(&b.namespace, &b.endpoint, &b.entity))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::super::routing::{ConfigSpec, EntitySpec};
    use super::*;

    fn spec(namespace: &str, backends: &[&str], version: i64) -> EndpointSpec {
        EndpointSpec {
            namespace: namespace.into(),
            name: "fraud".into(),
            policies: Default::default(),
            config: Some(ConfigSpec {
                version,
                entities: vec![EntitySpec {
                    name: "a".into(),
                    scale_to_zero: true,
                    hold: HoldPolicy {
                        max_held: 5,
                        timeout: Duration::from_secs(5),
                    },
                    backends: backends.iter().map(|b| b.parse().expect("addr")).collect(),
                    warming: Vec::new(),
                    external: None,
                    unsupported: None,
                }],
                routes: vec![("a".into(), 100)],
                shadows: vec![],
            }),
        }
    }

    fn state() -> State {
        State::new(GatewayMetrics::register(&mut Registry::default()))
    }

    #[test]
    fn pools_and_backends_survive_updates() {
        let state = state();
        state.apply(&[spec("ml", &["127.0.0.2:80"], 1)]);
        let before = state.table();
        let pool = before
            .get("fraud")
            .expect("endpoint")
            .config
            .as_ref()
            .expect("config")
            .entities[0]
            .clone();
        let backend = pool.backends()[0].clone();
        backend.record_failure();
        state.apply(&[spec("ml", &["127.0.0.2:80", "127.0.0.3:80"], 2)]);
        let after = state.table();
        let config = after
            .get("fraud")
            .expect("endpoint")
            .config
            .as_ref()
            .expect("config");
        assert_eq!(config.version, 2);
        assert!(Arc::ptr_eq(&config.entities[0], &pool));
        assert!(Arc::ptr_eq(&pool.backends()[0], &backend));
        assert!(!pool.backends()[0].available(), "the ejection is kept");
        assert_eq!(state.all_backends().len(), 2);
        state.apply(&[]);
        assert!(state.table().get("fraud").is_err());
        assert!(state.all_backends().is_empty());
    }

    #[test]
    fn names_resolve_bare_or_namespace_qualified() {
        let state = state();
        state.apply(&[spec("ml", &[], 1), spec("prod", &[], 1)]);
        let table = state.table();
        assert_eq!(
            table.get("fraud").map(|e| e.namespace.clone()),
            Err(Lookup::Ambiguous(vec!["ml".into(), "prod".into()]))
        );
        assert_eq!(
            table.get("prod.fraud").expect("qualified").namespace,
            "prod"
        );
        assert_eq!(table.get("dev.fraud").err(), Some(Lookup::Unknown));
        assert_eq!(table.get("nope").err(), Some(Lookup::Unknown));
    }

    /// The first entity pool of endpoint `fraud`.
    fn first_pool(state: &State) -> Arc<EntityPool> {
        state
            .table()
            .get("fraud")
            .expect("endpoint")
            .config
            .as_ref()
            .expect("config")
            .entities[0]
            .clone()
    }

    /// A request held on `pool`, once it is in the queue.
    async fn hold_one(
        pool: &Arc<EntityPool>,
    ) -> tokio::task::JoinHandle<Result<(), super::super::hold::HoldRefused>> {
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let check = pool.clone();
                pool.hold
                    .wait(pool.hold_policy(), || check.has_ready(), |_| {})
                    .await
            })
        };
        while pool.hold.held() == 0 {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn a_ready_pod_releases_held_requests() {
        let state = Arc::new(state());
        state.apply(&[spec("ml", &[], 1)]);
        let pool = first_pool(&state);
        let waiter = hold_one(&pool).await;
        assert_eq!(state.demand()[0].held, 1);
        state.apply(&[spec("ml", &["127.0.0.9:80"], 1)]);
        waiter.await.expect("task").expect("released");
    }

    #[tokio::test]
    async fn a_promoted_warming_pod_takes_held_requests_and_stays_until_it_leaves() {
        let state = Arc::new(state());
        let warm: SocketAddr = "127.0.0.7:80".parse().expect("addr");
        let warming = |backends: &[&str], warming: &[SocketAddr]| {
            let mut s = spec("ml", backends, 1);
            if let Some(config) = s.config.as_mut() {
                config.entities[0].warming = warming.to_vec();
            }
            s
        };
        state.apply(&[warming(&[], &[warm])]);
        let pool = first_pool(&state);
        assert!(state.waking().is_empty(), "nothing held yet");
        let waiter = hold_one(&pool).await;
        let waking = state.waking();
        assert_eq!(waking.len(), 1);
        assert_eq!(&*waking[0].1, &[warm]);
        state.promote(&pool, warm);
        waiter.await.expect("task").expect("released");
        assert_eq!(pool.backends().len(), 1);
        // Another event while the pod is still warming keeps it routed.
        state.apply(&[warming(&[], &[warm])]);
        assert_eq!(pool.backends().len(), 1);
        // Ready now: a backend by the kubelet's word.
        state.apply(&[warming(&["127.0.0.7:80"], &[])]);
        assert_eq!(pool.backends().len(), 1);
        // Gone: no backend, and a later warming pod at the same address is not trusted
        // until probed again.
        state.apply(&[warming(&[], &[])]);
        assert!(pool.backends().is_empty());
        state.apply(&[warming(&[], &[warm])]);
        assert!(pool.backends().is_empty());
        // A pod that left before the probe answered is not promoted.
        state.apply(&[warming(&[], &[])]);
        state.promote(&pool, warm);
        assert!(pool.backends().is_empty());
    }
}
