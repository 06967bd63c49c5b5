//! Prometheus metrics of the gateway, in an explicit registry.
//!
//! Labels are bounded by configuration, never by client input: `namespace`, `endpoint` and
//! `entity` name objects the operator promoted (an unknown endpoint a client asked for is
//! counted under `endpoint=""`), `code` is a status class, `outcome` and `error_code` are fixed
//! sets. Per-entity handles are created once when an entity joins the routing table and
//! removed when it leaves, so the hot path does no label lookups.

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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

const CODES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Outcomes of a held request.
pub const HOLD_OUTCOMES: [&str; 3] = ["released", "timed_out", "refused_full"];
/// Outcomes of a shadow request.
pub const SHADOW_OUTCOMES: [&str; 4] = ["ok", "error", "unavailable", "shed"];

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
