//! The newest monitoring refresh of each endpoint as Prometheus gauges, for alert rules and
//! dashboards: drift and quality values, each alert's value, threshold and state, and when the
//! refresh ran and whether it failed.
//!
//! The gauges are read at scrape time from the ServingEndpoints' `status.monitoring` in the
//! operator's cache ([`samples`] is the pure step), so an endpoint deleted or with monitoring
//! turned off has no series left behind. Their `namespace` and `endpoint` labels name the
//! ServingEndpoint; the series are bounded by the endpoints with monitoring and the columns
//! and alerts of their spec (a refresh reports at most [`sluice_crds::MAX_DRIFT_VALUES`]
//! drift values).

use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use sluice_crds::{MonitoringRefresh, ServingEndpoint};

/// One gauge family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gauge {
    /// `monitoring_drift{namespace, endpoint, column, metric}`.
    Drift,
    /// `monitoring_quality{namespace, endpoint, metric}`.
    Quality,
    /// `monitoring_alert_value{namespace, endpoint, metric, column, condition}`.
    AlertValue,
    /// `monitoring_alert_threshold{…}`.
    AlertThreshold,
    /// `monitoring_alert_firing{…}`: 1 when the value crossed the threshold.
    AlertFiring,
    /// `monitoring_last_refresh_timestamp_seconds{namespace, endpoint}`.
    LastRefresh,
    /// `monitoring_last_refresh_failed{namespace, endpoint}`: 1 when it failed.
    LastRefreshFailed,
}

impl Gauge {
    /// Every family.
    pub const ALL: [Gauge; 7] = [
        Gauge::Drift,
        Gauge::Quality,
        Gauge::AlertValue,
        Gauge::AlertThreshold,
        Gauge::AlertFiring,
        Gauge::LastRefresh,
        Gauge::LastRefreshFailed,
    ];

    /// The name after the registry's prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Drift => "monitoring_drift",
            Self::Quality => "monitoring_quality",
            Self::AlertValue => "monitoring_alert_value",
            Self::AlertThreshold => "monitoring_alert_threshold",
            Self::AlertFiring => "monitoring_alert_firing",
            Self::LastRefresh => "monitoring_last_refresh_timestamp_seconds",
            Self::LastRefreshFailed => "monitoring_last_refresh_failed",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Drift => {
                "Drift of each monitored column in the newest window (vs the baseline, else the window before): KS statistic of numeric columns, JS distance of categorical ones"
            }
            Self::Quality => {
                "Model quality in the newest window with labels: accuracyScore, precision/recall/f1Score (macro), rmse, mae"
            }
            Self::AlertValue => "The newest value each spec.monitoring.alerts entry watches",
            Self::AlertThreshold => "The threshold of each spec.monitoring.alerts entry",
            Self::AlertFiring => "1 while an alert's newest value crosses its threshold",
            Self::LastRefresh => "When the newest finished monitoring refresh ran",
            Self::LastRefreshFailed => "1 when the newest finished monitoring refresh failed",
        }
    }
}

/// One series.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its family.
    pub gauge: Gauge,
    /// Its labels, in order.
    pub labels: Vec<(&'static str, String)>,
    /// Its value.
    pub value: f64,
}

/// The series of one endpoint's newest refresh.
pub fn samples(namespace: &str, endpoint: &str, refresh: &MonitoringRefresh) -> Vec<Sample> {
    let base = || {
        vec![
            ("namespace", namespace.to_string()),
            ("endpoint", endpoint.to_string()),
        ]
    };
    let mut out = Vec::new();
    if let Ok(at) = refresh.refreshed_at.parse::<k8s_openapi::jiff::Timestamp>() {
        out.push(Sample {
            gauge: Gauge::LastRefresh,
            labels: base(),
            value: at.as_second() as f64,
        });
    }
    out.push(Sample {
        gauge: Gauge::LastRefreshFailed,
        labels: base(),
        value: if refresh.error.is_some() { 1.0 } else { 0.0 },
    });
    for value in &refresh.drift {
        let mut labels = base();
        labels.push(("column", value.column.clone().unwrap_or_default()));
        labels.push(("metric", value.metric.as_str().to_string()));
        out.push(Sample {
            gauge: Gauge::Drift,
            labels,
            value: value.value,
        });
    }
    for value in &refresh.quality {
        let mut labels = base();
        labels.push(("metric", value.metric.as_str().to_string()));
        out.push(Sample {
            gauge: Gauge::Quality,
            labels,
            value: value.value,
        });
    }
    for alert in &refresh.alerts {
        let mut labels = base();
        labels.push(("metric", alert.metric.as_str().to_string()));
        labels.push(("column", alert.column.clone().unwrap_or_default()));
        labels.push(("condition", alert.metric.condition().to_string()));
        for (gauge, value) in [
            (Gauge::AlertValue, alert.value),
            (Gauge::AlertThreshold, alert.threshold),
            (Gauge::AlertFiring, if alert.firing { 1.0 } else { 0.0 }),
        ] {
            out.push(Sample {
                gauge,
                labels: labels.clone(),
                value,
            });
        }
    }
    out
}

/// The series of every endpoint in `endpoints` that has a finished refresh.
pub fn all_samples<'a>(endpoints: impl Iterator<Item = &'a ServingEndpoint>) -> Vec<Sample> {
    let mut out: Vec<Sample> = endpoints
        .filter_map(|ep| {
            let refresh = ep
                .status
                .as_ref()?
                .monitoring
                .as_ref()?
                .last_refresh
                .as_ref()?;
            Some(samples(&ep.namespace()?, &ep.name_any(), refresh))
        })
        .flatten()
        .collect();
    out.sort_by(|a, b| a.gauge.cmp(&b.gauge).then_with(|| a.labels.cmp(&b.labels)));
    out
}

/// The collector of the gauges: registered at start-up, reading the endpoint caches once the
/// controllers run ([`MonitoringGauges::watch`], one cache per managed namespace); before that
/// (and on a replica waiting to lead) it has no series.
#[derive(Clone, Debug, Default)]
pub struct MonitoringGauges {
    endpoints: Arc<Mutex<Vec<Store<ServingEndpoint>>>>,
}

impl MonitoringGauges {
    /// Reads `store` too from now on.
    pub fn watch(&self, store: Store<ServingEndpoint>) {
        if let Ok(mut stores) = self.endpoints.lock() {
            stores.push(store);
        }
    }
}

impl Collector for MonitoringGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stores = match self.endpoints.lock() {
            Ok(stores) => stores.clone(),
            Err(_) => Vec::new(),
        };
        let states: Vec<_> = stores.iter().flat_map(|store| store.state()).collect();
        let samples = all_samples(states.iter().map(|ep| ep.as_ref()));
        for gauge in Gauge::ALL {
            let mut series = samples.iter().filter(|s| s.gauge == gauge).peekable();
            if series.peek().is_none() {
                continue;
            }
            let mut family =
                encoder.encode_descriptor(gauge.name(), gauge.help(), None, MetricType::Gauge)?;
            for sample in series {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(key, value)| (*key, value.as_str()))
                    .collect();
                ConstGauge::new(sample.value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use sluice_crds::{AlertMetric, AlertState, MonitoredValue};

    use super::*;

    fn refresh() -> MonitoringRefresh {
        MonitoringRefresh {
            refreshed_at: "2026-12-06T10:17:00Z".into(),
            drift: vec![MonitoredValue {
                metric: AlertMetric::KsStatistic,
                column: Some("amount".into()),
                value: 0.41,
            }],
            quality: vec![MonitoredValue {
                metric: AlertMetric::F1Score,
                column: None,
                value: 0.72,
            }],
            alerts: vec![AlertState {
                metric: AlertMetric::KsPvalue,
                column: Some("amount".into()),
                window: "2026-12-06T09:00:00Z".into(),
                value: 1e-9,
                threshold: 0.01,
                firing: true,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_refresh_becomes_labelled_series() {
        let samples = samples("risk", "fraud", &refresh());
        let find = |gauge| samples.iter().find(|s| s.gauge == gauge).unwrap();
        assert_eq!(find(Gauge::LastRefresh).value, 1_796_552_220.0);
        assert_eq!(find(Gauge::LastRefreshFailed).value, 0.0);
        assert_eq!(
            find(Gauge::Drift).labels,
            vec![
                ("namespace", "risk".to_string()),
                ("endpoint", "fraud".to_string()),
                ("column", "amount".to_string()),
                ("metric", "ksStatistic".to_string()),
            ]
        );
        assert_eq!(find(Gauge::Quality).value, 0.72);
        assert_eq!(find(Gauge::AlertFiring).value, 1.0);
        assert_eq!(find(Gauge::AlertThreshold).value, 0.01);
        assert!(
            find(Gauge::AlertValue)
                .labels
                .contains(&("condition", "Drifting".to_string()))
        );
        let failed = MonitoringRefresh {
            error: Some("table gone".into()),
            ..Default::default()
        };
        let samples = super::samples("risk", "fraud", &failed);
        assert_eq!(
            samples.len(),
            1,
            "no time, so only the failure: {samples:?}"
        );
        assert_eq!(samples[0].value, 1.0);
    }

    #[test]
    fn the_collector_encodes_the_cached_endpoints_and_nothing_before() {
        let gauges = MonitoringGauges::default();
        let mut registry = Registry::with_prefix("sluice_operator");
        registry.register_collector(Box::new(gauges.clone()));
        assert!(!crate::metrics::encode(&registry).contains("monitoring"));

        let (reader, mut writer) = kube::runtime::reflector::store::<ServingEndpoint>();
        let mut ep = ServingEndpoint::new("fraud", Default::default());
        ep.metadata.namespace = Some("risk".into());
        ep.status = Some(sluice_crds::ServingEndpointStatus {
            monitoring: Some(sluice_crds::MonitoringStatus {
                last_refresh: Some(refresh()),
                ..Default::default()
            }),
            ..Default::default()
        });
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(ep));
        gauges.watch(reader);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains(
                r#"sluice_operator_monitoring_drift{namespace="risk",endpoint="fraud",column="amount",metric="ksStatistic"} 0.41"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE sluice_operator_monitoring_alert_firing gauge"));
    }
}
