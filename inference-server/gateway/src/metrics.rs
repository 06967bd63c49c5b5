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
    /// A [`ShedReason`].
    reason: &'static str,
}

/// Labels of an idle timeout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BodyLabels {
    /// An [`IdleBody`].
    body: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

const CODES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Declares a metric label as an enum: each variant's label value, and every variant in order
/// (series are registered up front, so the set is bounded and every series exists at zero).
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in the order of the series handles.
            pub const ALL: [Self; [$($label),+].len()] = [$(Self::$variant),+];

            /// The label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }
    };
}

label_enum!(
    /// How a held request's wait ended (`outcome` of `hold_duration_seconds`).
    HoldOutcome {
        /// A pod became ready and the request went on.
        Released => "released",
        /// The entity's hold timeout passed (503).
        TimedOut => "timed_out",
        /// The hold queue was full (503).
        RefusedFull => "refused_full",
    }
);

label_enum!(
    /// What became of a shadow request (`outcome` of `shadow_requests_total`).
    ShadowOutcome {
        /// The shadow entity answered 2xx.
        Ok => "ok",
        /// It answered an error, or not in time.
        Error => "error",
        /// It had no ready pod.
        Unavailable => "unavailable",
        /// Too many shadow requests were in flight; not sent.
        Shed => "shed",
    }
);

label_enum!(
    /// Why a request was shed by a global budget (see [`Shed`](super::budget::Shed)).
    ShedReason {
        /// `--max-in-flight` was reached.
        InFlight => "in_flight",
        /// `--max-buffered-bytes` was reached.
        BufferedBytes => "buffered_bytes",
    }
);

label_enum!(
    /// Which body went idle past its timeout.
    IdleBody {
        /// The client's request body.
        Request => "request",
        /// A pod's response body.
        Response => "response",
    }
);

label_enum!(
    /// How the check of a caller ended (`auth` module).
    AuthOutcome {
        /// Authenticated (or anonymous where allowed) and authorized.
        Allowed => "allowed",
        /// No, malformed, unknown, revoked or expired credentials: 401.
        Unauthenticated => "unauthenticated",
        /// Known but not allowed to call the endpoint: 403.
        Forbidden => "forbidden",
        /// The Kubernetes API could not be asked: 503.
        Error => "error",
    }
);

label_enum!(
    /// Which tokens of an answer (`direction` of `tokens_total`).
    TokenDirection {
        /// Tokens the model read.
        Input => "input",
        /// Tokens the model wrote.
        Output => "output",
    }
);

label_enum!(
    /// What the rate limiter did when its shared store could not be asked.
    StoreFailure {
        /// The request went on (`--rate-limit-fail-mode open`).
        Admitted => "admitted",
        /// The request got 503 (`--rate-limit-fail-mode closed`).
        Refused => "refused",
        /// Tokens of a finished answer could not be charged.
        Uncharged => "uncharged",
    }
);

label_enum!(
    /// Why a request went on to the next entity (`reason` of `fallbacks_total`).
    FallbackReason {
        /// The entity answered 5xx.
        ServerError => "server_error",
        /// The entity answered 429.
        RateLimited => "rate_limited",
        /// The entity did not start answering in time.
        Timeout => "timeout",
        /// No pod of the entity took the request.
        Unavailable => "unavailable",
    }
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    namespace: String,
    endpoint: String,
    /// The entity that failed.
    entity: String,
    reason: &'static str,
}

/// Labels of a request refused by a rate limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    namespace: String,
    endpoint: String,
    /// `calls` or `tokens`.
    measure: &'static str,
}

/// Labels of a request the input guardrails refused or masked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardrailLabels {
    namespace: String,
    endpoint: String,
    /// `input` (requests) or `output` (answers).
    direction: &'static str,
    /// `refused` or `masked`.
    action: &'static str,
}

/// What became of a request to an endpoint with a response cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from the cache; no model was called.
    Hit,
    /// Looked up and not found (or expired): the model answered.
    Miss,
    /// Not looked up: a stream, or a sampled completion.
    Bypass,
}

impl CacheOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ManagementLabels {
    verb: &'static str,
    error_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    namespace: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    namespace: String,
    endpoint: String,
}

impl EndpointLabels {
    fn of(namespace: &str, endpoint: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            endpoint: endpoint.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnsentLabels {
    namespace: String,
    endpoint: String,
    origin: &'static str,
}

/// Where an answer the gateway sends to a capture sidecar as a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSource {
    /// The response cache.
    Cache,
    /// A request the input guardrail refused.
    Guardrail,
    /// An external model's provider.
    Provider,
    /// A person's feedback.
    Feedback,
}

impl RecordSource {
    fn label(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Guardrail => "guardrail",
            Self::Provider => "provider",
            Self::Feedback => "feedback",
        }
    }
}

/// How one `POST /serving-endpoints/{name}/feedback` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackOutcome {
    /// A capture sidecar took it.
    Recorded,
    /// Refused: a bad body, or an endpoint without capture (400/413).
    Refused,
    /// No sidecar took it (503, to retry).
    Unavailable,
}

impl FeedbackOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    namespace: String,
    endpoint: String,
    entity: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    outcome: &'static str,
}

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
    auth: [Counter; 4],
    load: LoadMetrics,
    tokens: Family<DirectionLabels, Counter>,
    uncounted: Family<EntityLabels, Counter>,
    limited: Family<LimitedLabels, Counter>,
    guardrails: Family<GuardrailLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    management: Family<ManagementLabels, Counter>,
    cache_bytes: Family<EndpointLabels, Gauge>,
    cache_evictions: Family<EndpointLabels, Counter>,
    unsent: Family<UnsentLabels, Counter>,
    feedback: Family<UnsentLabels, Counter>,
    store_failures: [Counter; 3],
    fallbacks: Family<FallbackLabels, Counter>,
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
            shed: ShedReason::ALL.map(|reason| {
                shed.get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .clone()
            }),
            idle_timeouts: IdleBody::ALL.map(|body| {
                idle.get_or_create(&BodyLabels { body: body.label() })
                    .clone()
            }),
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

    /// Counts a request shed by a global budget.
    pub fn shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }

    /// Requests shed so far for `reason`.
    #[cfg(test)]
    pub fn shed_total(&self, reason: ShedReason) -> u64 {
        self.shed[reason as usize].get()
    }

    /// Counts a body cut by its idle timeout.
    pub fn idle_timeout(&self, body: IdleBody) {
        self.idle_timeouts[body as usize].inc();
    }

    /// The counter of bodies cut by their idle timeout, for a timer that counts when it fires.
    pub fn idle_timeouts(&self, body: IdleBody) -> Counter {
        self.idle_timeouts[body as usize].clone()
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
            auth: Default::default(),
            load: LoadMetrics::register(registry),
            tokens: Family::default(),
            uncounted: Family::default(),
            limited: Family::default(),
            guardrails: Family::default(),
            cache_requests: Family::default(),
            management: Family::default(),
            cache_bytes: Family::default(),
            cache_evictions: Family::default(),
            unsent: Family::default(),
            feedback: Family::default(),
            store_failures: Default::default(),
            fallbacks: Family::default(),
        };
        let auth = Family::<AuthLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let metrics = Self {
            auth: AuthOutcome::ALL.map(|outcome| {
                auth.get_or_create(&AuthLabels {
                    outcome: outcome.label(),
                })
                .clone()
            }),
            store_failures: StoreFailure::ALL.map(|outcome| {
                failures
                    .get_or_create(&FailureLabels {
                        outcome: outcome.label(),
                    })
                    .clone()
            }),
            ..metrics
        };
        registry.register(
            "tokens",
            "Tokens of answered requests as the answers reported them, by direction",
            metrics.tokens.clone(),
        );
        registry.register(
            "uncounted_answers",
            "Answers whose tokens could not be read (no usage reported): not charged to token budgets",
            metrics.uncounted.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429 because a rate limit was spent, by measure",
            metrics.limited.clone(),
        );
        registry.register(
            "guardrail_actions",
            "Requests and answers the guardrails refused (400) or masked, by endpoint and direction",
            metrics.guardrails.clone(),
        );
        registry.register(
            "management_requests",
            "Calls of the management API (/api/2.0/serving-endpoints) by RBAC verb and outcome (`OK`, or the error_code answered)",
            metrics.management.clone(),
        );
        registry.register(
            "cache_requests",
            "Requests to endpoints with a response cache, by whether the cache answered (hit), was asked in vain (miss) or was not asked (bypass: a stream or a sampled completion)",
            metrics.cache_requests.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of answers this gateway keeps in an endpoint's response cache",
            metrics.cache_bytes.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cached answers dropped before their time because the endpoint's cache was full",
            metrics.cache_evictions.clone(),
        );
        registry.register(
            "records_unsent",
            "Answers no pod gave (cache hits, input guardrail refusals, external providers' answers) of endpoints with auto-capture or usage tracking that did not reach a capture sidecar to become table rows: no ready sidecar (a pod of the entity, or its recorder), too many records in flight, or the sidecar refused",
            metrics.unsent.clone(),
        );
        registry.register(
            "feedback",
            "Feedback posted to /serving-endpoints/{name}/feedback, by outcome (in the `origin` label): recorded (a capture sidecar took it), refused (400/413), unavailable (503: no sidecar took it)",
            metrics.feedback.clone(),
        );
        registry.register(
            "fallbacks",
            "Requests sent on to the next entity because the entity failed before answering, by the entity that failed and why",
            metrics.fallbacks.clone(),
        );
        registry.register(
            "rate_limit_store_failures",
            "Times the shared rate-limit store could not be asked, by what the gateway did",
            failures,
        );
        registry.register(
            "auth_checks",
            "Callers checked (authentication and authorization), by outcome",
            auth,
        );
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

    /// Counts one caller check.
    pub fn auth(&self, outcome: AuthOutcome) {
        self.auth[outcome as usize].inc();
    }

    /// Caller checks so far that ended in `outcome`.
    #[cfg(test)]
    pub fn auth_total(&self, outcome: AuthOutcome) -> u64 {
        self.auth[outcome as usize].get()
    }

    /// Counts one management-API call: its RBAC verb, and `OK` or the error code answered.
    pub fn management(&self, verb: &'static str, error_code: &'static str) {
        self.management
            .get_or_create(&ManagementLabels { verb, error_code })
            .inc();
    }

    /// Counts a response-cache lookup's outcome.
    pub fn cache(&self, namespace: &str, endpoint: &str, outcome: CacheOutcome) {
        self.cache_requests
            .get_or_create(&CacheLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Sets the bytes an endpoint's response cache holds.
    pub fn cache_bytes(&self, namespace: &str, endpoint: &str, bytes: usize) {
        self.cache_bytes
            .get_or_create(&EndpointLabels::of(namespace, endpoint))
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a record that did not reach a capture sidecar.
    pub fn record_unsent(&self, namespace: &str, endpoint: &str, origin: RecordSource) {
        self.unsent
            .get_or_create(&UnsentLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                origin: origin.label(),
            })
            .inc();
    }

    /// Counts one feedback call.
    pub fn feedback(&self, namespace: &str, endpoint: &str, outcome: FeedbackOutcome) {
        self.feedback
            .get_or_create(&UnsentLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                origin: outcome.label(),
            })
            .inc();
    }

    /// Counts a cached answer dropped to make room.
    pub fn cache_evicted(&self, namespace: &str, endpoint: &str) {
        self.cache_evictions
            .get_or_create(&EndpointLabels::of(namespace, endpoint))
            .inc();
    }

    /// Counts a request (`input`) or answer (`output`) the guardrails refused (`refused`) or
    /// masked (`masked`).
    pub fn guardrail(
        &self,
        namespace: &str,
        endpoint: &str,
        direction: &'static str,
        action: &'static str,
    ) {
        self.guardrails
            .get_or_create(&GuardrailLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                direction,
                action,
            })
            .inc();
    }

    /// Requests the input guardrails took `action` on so far, on an endpoint.
    #[cfg(test)]
    pub fn guardrail_total(
        &self,
        namespace: &str,
        endpoint: &str,
        direction: &'static str,
        action: &'static str,
    ) -> u64 {
        self.guardrails
            .get_or_create(&GuardrailLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                direction,
                action,
            })
            .get()
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self, namespace: &str, endpoint: &str, measure: &'static str) {
        self.limited
            .get_or_create(&LimitedLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                measure,
            })
            .inc();
    }

    /// Requests refused so far by a rate limit of `measure` on an endpoint.
    #[cfg(test)]
    pub fn rate_limited_total(
        &self,
        namespace: &str,
        endpoint: &str,
        measure: &'static str,
    ) -> u64 {
        self.limited
            .get_or_create(&LimitedLabels {
                namespace: namespace.to_string(),
                endpoint: endpoint.to_string(),
                measure,
            })
            .get()
    }

    /// Requests entity `entity` failed with `reason` and passed on so far.
    #[cfg(test)]
    pub fn fallback_total(&self, entity: &str, reason: FallbackReason) -> u64 {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                namespace: "ml".into(),
                endpoint: "fraud".into(),
                entity: entity.into(),
                reason: reason.label(),
            })
            .get()
    }

    /// Counts a time the rate-limit store could not be asked.
    pub fn store_failure(&self, outcome: StoreFailure) {
        self.store_failures[outcome as usize].inc();
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
            hold_time: HoldOutcome::ALL
                .map(|o| self.hold_time.get_or_create(&outcome(o.label())).clone()),
            shadow: ShadowOutcome::ALL
                .map(|o| self.shadow.get_or_create(&outcome(o.label())).clone()),
            retries: self.retries.get_or_create(&labels).clone(),
            backends: self.backends.get_or_create(&labels).clone(),
            tokens: TokenDirection::ALL.map(|d| {
                self.tokens
                    .get_or_create(&DirectionLabels {
                        namespace: labels.namespace.clone(),
                        endpoint: labels.endpoint.clone(),
                        entity: labels.entity.clone(),
                        direction: d.label(),
                    })
                    .clone()
            }),
            uncounted: self.uncounted.get_or_create(&labels).clone(),
            fallbacks: FallbackReason::ALL.map(|reason| {
                self.fallbacks
                    .get_or_create(&FallbackLabels {
                        namespace: labels.namespace.clone(),
                        endpoint: labels.endpoint.clone(),
                        entity: labels.entity.clone(),
                        reason: reason.label(),
                    })
                    .clone()
            }),
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
        let outcomes = HoldOutcome::ALL
            .map(HoldOutcome::label)
            .into_iter()
            .chain(ShadowOutcome::ALL.map(ShadowOutcome::label));
        for outcome in outcomes {
            let labels = OutcomeLabels {
                namespace: labels.namespace.clone(),
                endpoint: labels.endpoint.clone(),
                entity: labels.entity.clone(),
                outcome,
            };
            self.hold_time.remove(&labels);
            self.shadow.remove(&labels);
        }
        for direction in TokenDirection::ALL {
            self.tokens.remove(&DirectionLabels {
                namespace: labels.namespace.clone(),
                endpoint: labels.endpoint.clone(),
                entity: labels.entity.clone(),
                direction: direction.label(),
            });
        }
        self.uncounted.remove(labels);
        for reason in FallbackReason::ALL {
            self.fallbacks.remove(&FallbackLabels {
                namespace: labels.namespace.clone(),
                endpoint: labels.endpoint.clone(),
                entity: labels.entity.clone(),
                reason: reason.label(),
            });
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
    tokens: [Counter; 2],
    /// Answers whose tokens could not be read.
    pub uncounted: Counter,
    fallbacks: [Counter; 4],
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

    /// Records how a hold ended and how long it took.
    pub fn hold_ended(&self, outcome: HoldOutcome, seconds: f64) {
        self.hold_time[outcome as usize].observe(seconds);
    }

    /// Counts a request this entity failed and that went on to the next entity.
    pub fn fallback(&self, reason: FallbackReason) {
        self.fallbacks[reason as usize].inc();
    }

    /// Counts the tokens of an answer.
    pub fn tokens(&self, direction: TokenDirection, count: u64) {
        self.tokens[direction as usize].inc_by(count);
    }

    /// Counts a shadow request by outcome.
    pub fn shadow(&self, outcome: ShadowOutcome) {
        self.shadow[outcome as usize].inc();
    }
}
