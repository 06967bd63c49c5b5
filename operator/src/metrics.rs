//! The operator's Prometheus metrics, registered in a registry the caller passes in (never a
//! global one). Labels are bounded: the controller, an error category, an HTTP verb. Object
//! names never become labels, except in the monitoring gauges
//! ([`crate::monitoring_metrics`]), whose series are one endpoint's model-quality signals.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Which controller a series belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ControllerName {
    /// The ServingEndpoint controller.
    ServingEndpoint,
    /// The ModelVersion controller.
    ModelVersion,
}

impl EncodeLabelValue for ControllerName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl ControllerName {
    /// The label value, also used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerName::ServingEndpoint => "servingendpoint",
            ControllerName::ModelVersion => "modelversion",
        }
    }
}

/// `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller.
    pub controller: ControllerName,
}

/// `{controller, category}`: a failed reconcile by error category ([`crate::error::Error::category`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: ControllerName,
    /// The bounded error category.
    pub category: &'static str,
}

/// `{verb}`: one API request the operator's client sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get` (a GET of one object or a list), `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
}

/// How one read of a registry mirror ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistryOutcome {
    /// Every version mirrored.
    Synced,
    /// Some versions or aliases could not be mirrored (named in the log).
    Partial,
    /// The registry could not be read; nothing changed.
    Unreachable,
    /// The API server refused an apply (or a list).
    ApplyFailed,
}

impl RegistryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Partial => "partial",
            Self::Unreachable => "unreachable",
            Self::ApplyFailed => "apply_failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryStateLabels {
    registry: String,
    state: &'static str,
}

/// Every metric of the operator.
pub struct Metrics {
    registry_syncs: Family<RegistryLabels, Counter>,
    registry_versions: Family<RegistryStateLabels, Gauge>,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    status_writes: Family<ControllerLabels, Counter>,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    /// The newest monitoring refresh of each endpoint.
    pub monitoring: crate::monitoring_metrics::MonitoringGauges,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (prefix it with `sluice_operator`).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            registry_syncs: Family::default(),
            registry_versions: Family::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
            }),
            status_writes: Family::default(),
            api_requests: Family::default(),
            leader: Gauge::default(),
            monitoring: Default::default(),
        };
        // Every series exists from the start (at 0), so rates and absence alerts work before
        // the first reconcile or failure.
        for controller in [
            ControllerName::ServingEndpoint,
            ControllerName::ModelVersion,
        ] {
            let labels = ControllerLabels { controller };
            let _ = metrics.reconciles.get_or_create(&labels);
            let _ = metrics.duration.get_or_create(&labels);
            let _ = metrics.status_writes.get_or_create(&labels);
            for &category in crate::error::Error::CATEGORIES {
                let _ = metrics.errors.get_or_create(&ErrorLabels {
                    controller,
                    category,
                });
            }
        }
        registry.register(
            "reconciles",
            "Reconciles run, successful or not",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresource writes (none when nothing changed)",
            metrics.status_writes.clone(),
        );
        registry.register(
            "api_requests",
            "Requests the operator sent to the Kubernetes API, by verb",
            metrics.api_requests.clone(),
        );
        registry.register(
            "registry_syncs",
            "Reads of each registry mirror, by outcome (synced, partial, unreachable, apply_failed)",
            metrics.registry_syncs.clone(),
        );
        registry.register(
            "registry_versions",
            "ModelVersions of each registry mirror: mirrored (in the registry) and deleted (gone from it, kept and reported)",
            metrics.registry_versions.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease (or runs without election)",
            metrics.leader.clone(),
        );
        registry.register_collector(Box::new(metrics.monitoring.clone()));
        metrics
    }

    /// Starts timing one reconcile of `controller`; the returned guard records it when dropped.
    pub fn reconcile(&self, controller: ControllerName) -> ReconcileTimer<'_> {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    /// Counts one failed reconcile of `controller`.
    pub fn failed(&self, controller: ControllerName, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Counts one status write of `controller`.
    pub fn status_written(&self, controller: ControllerName) {
        self.status_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// Counts one read of registry mirror `registry`.
    pub fn registry_sync(&self, registry: &str, outcome: RegistryOutcome) {
        self.registry_syncs
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Sets the mirrored and deleted version counts of `registry`.
    pub fn registry_versions(&self, registry: &str, mirrored: usize, deleted: usize) {
        for (state, count) in [("mirrored", mirrored), ("deleted", deleted)] {
            self.registry_versions
                .get_or_create(&RegistryStateLabels {
                    registry: registry.to_string(),
                    state,
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Counts one API request.
    pub fn api_request(&self, verb: &'static str) {
        self.api_requests
            .get_or_create(&RequestLabels { verb })
            .inc();
    }

    /// Records whether this process leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// Observes a reconcile's duration when dropped, so every exit path is measured.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// The Kubernetes verb of an API request, from its method and query (`watch=true`/`1`).
pub fn verb_of(method: &http::Method, query: Option<&str>) -> &'static str {
    let watching =
        query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// The registry's text exposition (OpenMetrics).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_come_from_method_and_watch_query() {
        use http::Method;
        assert_eq!(verb_of(&Method::GET, Some("labelSelector=a")), "get");
        assert_eq!(
            verb_of(&Method::GET, Some("watch=true&resourceVersion=1")),
            "watch"
        );
        assert_eq!(verb_of(&Method::PATCH, None), "patch");
        assert_eq!(verb_of(&Method::POST, None), "create");
        assert_eq!(verb_of(&Method::HEAD, None), "other");
    }

    #[test]
    fn exposition_labels_by_controller_and_category_only() {
        let mut registry = Registry::with_prefix("sluice_operator");
        let m = Metrics::new(&mut registry);
        drop(m.reconcile(ControllerName::ServingEndpoint));
        m.failed(ControllerName::ModelVersion, "kube_api");
        m.api_request("patch");
        m.set_leader(true);
        let text = encode(&registry);
        assert!(
            text.contains("sluice_operator_reconciles_total{controller=\"servingendpoint\"} 1")
        );
        // Series exist at 0 before anything happened.
        assert!(text.contains("sluice_operator_reconciles_total{controller=\"modelversion\"} 0"));
        assert!(text.contains(
            "sluice_operator_reconcile_errors_total{controller=\"servingendpoint\",category=\"serialize\"} 0"
        ));
        assert!(text.contains(
            "sluice_operator_reconcile_errors_total{controller=\"modelversion\",category=\"kube_api\"} 1"
        ));
        assert!(text.contains(
            "sluice_operator_reconcile_duration_seconds_count{controller=\"servingendpoint\"} 1"
        ));
        assert!(text.contains("sluice_operator_api_requests_total{verb=\"patch\"} 1"));
        assert!(text.contains("sluice_operator_leader 1"));
    }
}
