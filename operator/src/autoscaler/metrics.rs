//! Autoscaler metrics. No object names: totals over entities, and cold starts by phase.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::cold_start::Phase;

/// Labels of a cold-start phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    /// One of [`Phase::as_str`], or `total` (first held request → its first byte).
    phase: &'static str,
}

/// The autoscaler's metrics.
#[derive(Clone, Debug)]
pub struct AutoscalerMetrics {
    desired: Gauge,
    ready: Gauge,
    held: Gauge,
    cold_start: Family<PhaseLabels, Histogram, fn() -> Histogram>,
}

fn cold_start_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

impl AutoscalerMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            desired: Gauge::default(),
            ready: Gauge::default(),
            held: Gauge::default(),
            cold_start: Family::new_with_constructor(cold_start_buckets),
        };
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler wants, summed over entities",
            metrics.desired.clone(),
        );
        registry.register(
            "autoscaler_ready_replicas",
            "Ready replicas, summed over entities",
            metrics.ready.clone(),
        );
        registry.register(
            "autoscaler_held_requests",
            "Requests the gateways hold for waking entities",
            metrics.held.clone(),
        );
        registry.register(
            "autoscaler_cold_start_seconds",
            "Scale-from-zero time by phase: detect, scale, schedule, start, model_load, first_byte, and total",
            metrics.cold_start.clone(),
        );
        metrics
    }

    /// Sets the totals of one round.
    pub fn totals(&self, desired: i64, ready: i64, held: i64) {
        self.desired.set(desired);
        self.ready.set(ready);
        self.held.set(held);
    }

    /// Records a finished cold start: each phase and the total.
    pub fn cold_start(&self, phases: &[(Phase, Duration)], total: Duration) {
        let named = phases.iter().map(|(p, d)| (p.as_str(), *d));
        for (phase, took) in named.chain([("total", total)]) {
            self.cold_start
                .get_or_create(&PhaseLabels { phase })
                .observe(took.as_secs_f64());
        }
    }
}
