//! What a gateway's `GET /demand` answers and the operator's autoscaler reads: one type for
//! both sides of the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One entity of one endpoint: how the gateway, the autoscaler and `/demand` rows name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityKey {
    /// Namespace of the endpoint.
    pub namespace: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Entity name.
    pub entity: String,
}

/// The demand of one entity, as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityDemand {
    /// Namespace of the endpoint.
    pub namespace: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Entity name.
    pub entity: String,
    /// Requests being answered by the entity's pods now.
    pub in_flight: i64,
    /// Requests held while the entity has no ready pod.
    pub held: usize,
    /// Requests that arrived since the gateway started (for rates across scrapes).
    pub requests_total: u64,
    /// Requests per second over the last 10 seconds.
    pub recent_rate: f64,
    /// Ready pods the gateway routes to.
    pub ready_backends: usize,
    /// Milliseconds the oldest held request has waited (absent when none is held): how long
    /// ago the cold start began, as an age so no clocks need to agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_held_ms: Option<u64>,
    /// Milliseconds since a request that had been held got its first byte from a pod (absent
    /// if none ever did): the end of the last cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_answered_ago_ms: Option<u64>,
}

impl EntityDemand {
    /// The entity this row is about.
    pub fn key(&self) -> EntityKey {
        EntityKey {
            namespace: self.namespace.clone(),
            endpoint: self.endpoint.clone(),
            entity: self.entity.clone(),
        }
    }
}

/// What `GET /demand` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemandReport {
    /// Milliseconds since the Unix epoch when the report was made.
    pub timestamp_ms: u128,
    /// One row per routed entity.
    pub entities: Vec<EntityDemand>,
}

impl DemandReport {
    /// A report of `entities` stamped now.
    pub fn new(entities: Vec<EntityDemand>) -> Self {
        Self {
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
            entities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_absent_ages_are_none() {
        let report = DemandReport::new(vec![EntityDemand {
            namespace: "ns".into(),
            endpoint: "iris".into(),
            entity: "main".into(),
            in_flight: 3,
            held: 1,
            requests_total: 10,
            recent_rate: 0.5,
            ready_backends: 0,
            oldest_held_ms: Some(250),
            held_answered_ago_ms: None,
        }]);
        let text = serde_json::to_string(&report).expect("json");
        assert!(text.contains("\"inFlight\":3") && !text.contains("heldAnsweredAgoMs"));
        let back: DemandReport = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, report);
    }
}
