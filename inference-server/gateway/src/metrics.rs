//! Prometheus metrics of the gateway, in an explicit registry.
//!
//! Labels are bounded by configuration, never by client input: `namespace`, `endpoint` and
//! `entity` name objects the operator promoted (an unknown endpoint a client asked for is
//! counted under `endpoint=""`), `code` is a status class, `outcome`, `error_code`, `reason` and
//! `body` are fixed sets. Per-entity handles are created once when an entity joins the routing
//! table and removed when it leaves, so the hot path does no label lookups.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one entity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabels {
    /// Namespace of the endpoint.
    pub namespace: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Entity name.
    pub entity: String,
}

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    namespace: String,
    endpoint: String,
    entity: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    code: &'static str,
}

/// Labels of an outcome (hold or shadow).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    endpoint: String,
    entity: String,
    outcome: &'static str,
}

/// Labels of an error the gateway answered itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Namespace of the endpoint, or empty when no endpoint matched.
    pub namespace: String,
    /// Endpoint name, or empty when no endpoint matched.
    pub endpoint: String,
    /// The `error_code` answered.
    pub error_code: &'static str,
}

/// Labels of a request shed by a global budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// One of [`SHED_REASONS`].
    reason: &'static str,
}

/// Labels of an idle timeout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BodyLabels {
    /// One of [`IDLE_BODIES`].
    body: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

const CODES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Outcomes of a held request.
pub const HOLD_OUTCOMES: [&str; 3] = ["released", "timed_out", "refused_full"];
/// Outcomes of a shadow request.
pub const SHADOW_OUTCOMES: [&str; 4] = ["ok", "error", "unavailable", "shed"];
/// Why a request was shed by a global budget (see [`Shed`](super::budget::Shed)).
pub const SHED_REASONS: [&str; 2] = ["in_flight", "buffered_bytes"];
/// Which body went idle: the client's request body, or a pod's response body.
pub const IDLE_BODIES: [&str; 2] = ["request", "response"];
/// Index of the client's request body in [`IDLE_BODIES`].
pub const IDLE_REQUEST: usize = 0;
/// Index of a pod's response body in [`IDLE_BODIES`].
pub const IDLE_RESPONSE: usize = 1;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

fn hold_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The gateway's metric families.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    requests: Family<CodeLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: HistogramFamily<EntityLabels>,
    held: Family<EntityLabels, Gauge>,
    hold_time: HistogramFamily<OutcomeLabels>,
    shadow: Family<OutcomeLabels, Counter>,
    retries: Family<EntityLabels, Counter>,
    backends: Family<EntityLabels, Gauge>,
    load: LoadMetrics,
}

/// Metric handles of the global budgets and the idle timeouts (not per entity: a request is
/// shed or cut before, or regardless of, where it is routed).
#[derive(Clone, Debug)]
pub struct LoadMetrics {
    shed: [Counter; 2],
    idle_timeouts: [Counter; 2],
    /// Requests in flight now (read, held, proxied or streaming their answer).
    pub in_flight: Gauge,
    /// Bytes of request bodies buffered now.
    pub buffered_bytes: Gauge,
}

impl LoadMetrics {
    /// Registers the series, every label value up front.
    fn register(registry: &mut Registry) -> Self {
        let shed = Family::<ReasonLabels, Counter>::default();
        let idle = Family::<BodyLabels, Counter>::default();
        let metrics = Self {
            shed: SHED_REASONS.map(|reason| shed.get_or_create(&ReasonLabels { reason }).clone()),
            idle_timeouts: IDLE_BODIES.map(|body| idle.get_or_create(&BodyLabels { body }).clone()),
            in_flight: Gauge::default(),
            buffered_bytes: Gauge::default(),
        };
        registry.register(
            "shed_requests",
            "Requests refused at once because a global budget was full (503), by reason",
            shed,
        );
        registry.register(
            "idle_timeouts",
            "Bodies cut because nothing arrived within their idle timeout, by body",
            idle,
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight now: read, held, proxied or streaming their answer",
            metrics.in_flight.clone(),
        );
        registry.register(
            "buffered_request_bytes",
            "Bytes of request bodies buffered now, across all requests",
            metrics.buffered_bytes.clone(),
        );
        metrics
    }

    /// Counts a request shed by a global budget (an index into [`SHED_REASONS`]).
    pub fn shed(&self, reason: usize) {
        self.shed[reason].inc();
    }

    /// Requests shed so far for `reason` (an index into [`SHED_REASONS`]).
    #[cfg(test)]
    pub fn shed_total(&self, reason: usize) -> u64 {
        self.shed[reason].get()
    }

    /// Counts a body cut by its idle timeout (an index into [`IDLE_BODIES`]).
    pub fn idle_timeout(&self, body: usize) {
        self.idle_timeouts[body].inc();
    }

    /// The counter of bodies cut by their idle timeout (an index into [`IDLE_BODIES`]), for a
    /// timer that counts when it fires.
    pub fn idle_timeouts(&self, body: usize) -> Counter {
        self.idle_timeouts[body].clone()
    }
}

impl GatewayMetrics {
    /// Registers every family in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            held: Family::default(),
            hold_time: Family::new_with_constructor(hold_histogram),
            shadow: Family::default(),
            retries: Family::default(),
            backends: Family::default(),
            load: LoadMetrics::register(registry),
        };
        registry.register(
            "requests",
            "Requests answered through an entity, by status class",
            metrics.requests.clone(),
        );
        registry.register(
            "errors",
            "Errors the gateway answered itself, by error_code",
            metrics.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from routing a request to the end of its response body",
            metrics.latency.clone(),
        );
        registry.register(
            "held_requests",
            "Requests held now while the entity has no ready pod",
            metrics.held.clone(),
        );
        registry.register(
            "hold_duration_seconds",
            "How long held requests waited, by outcome",
            metrics.hold_time.clone(),
        );
        registry.register(
            "shadow_requests",
            "Mirrored requests, by outcome",
            metrics.shadow.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests retried on another pod after a failed connect",
            metrics.retries.clone(),
        );
        registry.register(
            "ready_backends",
            "Ready pods the gateway routes to",
            metrics.backends.clone(),
        );
        metrics
    }

    /// The handles of the global budgets and idle timeouts.
    pub fn load(&self) -> &LoadMetrics {
        &self.load
    }

    /// Counts an error answered by the gateway.
    pub fn error(&self, namespace: &str, endpoint: &str, error_code: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                error_code,
            })
            .inc();
    }

    /// Creates the handles of one entity.
    pub fn entity(&self, labels: EntityLabels) -> EntityMetrics {
        let code = |code| {
            self.requests
                .get_or_create(&CodeLabels {
                    namespace: labels.namespace.clone(),
                    endpoint: labels.endpoint.clone(),
                    entity: labels.entity.clone(),
                    code,
                })
                .clone()
        };
        let outcome = |outcome| OutcomeLabels {
            namespace: labels.namespace.clone(),
            endpoint: labels.endpoint.clone(),
            entity: labels.entity.clone(),
            outcome,
        };
        EntityMetrics {
            requests: CODES.map(code),
            latency: self.latency.get_or_create(&labels).clone(),
            held: self.held.get_or_create(&labels).clone(),
            hold_time: HOLD_OUTCOMES.map(|o| self.hold_time.get_or_create(&outcome(o)).clone()),
            shadow: SHADOW_OUTCOMES.map(|o| self.shadow.get_or_create(&outcome(o)).clone()),
            retries: self.retries.get_or_create(&labels).clone(),
            backends: self.backends.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Removes the series of an entity that left the routing table.
    pub fn remove_entity(&self, labels: &EntityLabels) {
        for code in CODES {
            self.requests.remove(&CodeLabels {
                namespace: labels.namespace.clone(),
                endpoint: labels.endpoint.clone(),
                entity: labels.entity.clone(),
                code,
            });
        }
        for outcome in HOLD_OUTCOMES.iter().chain(SHADOW_OUTCOMES.iter()) {
            let labels = OutcomeLabels {
                namespace: labels.namespace.clone(),
                endpoint: labels.endpoint.clone(),
                entity: labels.entity.clone(),
                outcome,
            };
            self.hold_time.remove(&labels);
            self.shadow.remove(&labels);
        }
        self.latency.remove(labels);
        self.held.remove(labels);
        self.retries.remove(labels);
        self.backends.remove(labels);
    }
}

/// Metric handles of one entity.
#[derive(Clone, Debug)]
pub struct EntityMetrics {
    /// The entity's labels.
    pub labels: EntityLabels,
    requests: [Counter; 4],
    /// Request duration.
    pub latency: Histogram,
    /// Held requests now.
    pub held: Gauge,
    hold_time: [Histogram; 3],
    shadow: [Counter; 4],
    /// Connect retries.
    pub retries: Counter,
    /// Ready backends.
    pub backends: Gauge,
}

impl EntityMetrics {
    /// Counts a response by its status.
    pub fn response(&self, status: u16) {
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[class].inc();
    }

    /// Records how a hold ended (an index into [`HOLD_OUTCOMES`]) and how long it took.
    pub fn hold_ended(&self, outcome: usize, seconds: f64) {
        self.hold_time[outcome].observe(seconds);
    }

    /// Counts a shadow request by outcome (an index into [`SHADOW_OUTCOMES`]).
    pub fn shadow(&self, outcome: usize) {
        self.shadow[outcome].inc();
    }
}
