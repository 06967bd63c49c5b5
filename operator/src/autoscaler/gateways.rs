//! Reading demand from the gateways: their admin endpoints, given as URLs or found as pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::debug;

use super::EntityKey;
use super::algorithm::Demand;
use crate::runtime::Env;

/// Where the gateways are.
#[derive(Clone, Debug)]
pub enum GatewaySource {
    /// Fixed admin base URLs (`http://host:port`).
    Urls(Vec<String>),
    /// Running pods matching a label selector; the admin port is their container port named
    /// `port_name`.
    Pods {
        /// Namespace of the gateway pods; all namespaces when `None`.
        namespace: Option<String>,
        /// Label selector of the gateway pods.
        selector: String,
        /// Name of the admin container port.
        port_name: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    entities: Vec<Row>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    namespace: String,
    endpoint: String,
    entity: String,
    in_flight: f64,
    held: u64,
    requests_total: u64,
    #[serde(default)]
    oldest_held_ms: Option<u64>,
    #[serde(default)]
    held_answered_ago_ms: Option<u64>,
}

/// The admin base URLs of the gateways now.
async fn admin_urls(env: &Env, source: &GatewaySource) -> Vec<String> {
    match source {
        GatewaySource::Urls(urls) => urls.clone(),
        GatewaySource::Pods {
            namespace,
            selector,
            port_name,
        } => {
            let api: Api<Pod> = match namespace {
                Some(ns) => Api::namespaced(env.client.clone(), ns),
                None => Api::all(env.client.clone()),
            };
            let pods = match api.list(&ListParams::default().labels(selector)).await {
                Ok(pods) => pods.items,
                Err(error) => {
                    debug!(%error, "listing gateway pods failed");
                    return Vec::new();
                }
            };
            pods.iter()
                .filter_map(|pod| {
                    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
                    let port = pod
                        .spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|p| p.name.as_deref() == Some(port_name.as_str()))?
                        .container_port;
                    Some(format!("http://{ip}:{port}"))
                })
                .collect()
        }
    }
}

/// Every gateway's demand, summed per entity. A gateway that does not answer is skipped (its
/// share is missing for this round, never invented).
pub async fn demand(
    env: &Env,
    source: &GatewaySource,
    http: &reqwest::Client,
) -> BTreeMap<EntityKey, Demand> {
    let mut total: BTreeMap<EntityKey, Demand> = BTreeMap::new();
    let mut reports: FuturesUnordered<_> = admin_urls(env, source)
        .await
        .into_iter()
        .map(|url| fetch(http, format!("{url}/demand"), None))
        .collect();
    while let Some(report) = reports.next().await {
        for row in report.map(|r| r.entities).unwrap_or_default() {
            let sum = total
                .entry((row.namespace, row.endpoint, row.entity))
                .or_default();
            sum.in_flight += row.in_flight;
            sum.held += row.held;
            sum.requests_total += row.requests_total;
            let ms = |v: Option<u64>| v.map(Duration::from_millis);
            sum.oldest_held = sum.oldest_held.max(ms(row.oldest_held_ms));
            sum.held_answered_ago = match (sum.held_answered_ago, ms(row.held_answered_ago_ms)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    total
}

async fn fetch(http: &reqwest::Client, url: String, wait: Option<Duration>) -> Option<Report> {
    let mut request = http.get(&url);
    if let Some(wait) = wait {
        request = request
            .query(&[("waitForHeldSeconds", wait.as_secs())])
            .timeout(wait + Duration::from_secs(5));
    }
    match request.send().await {
        Ok(response) => response.json().await.ok(),
        Err(error) => {
            debug!(%error, url, "a gateway did not answer");
            None
        }
    }
}

/// Long-polls every gateway and wakes the sizing loop as soon as one reports a held request.
pub async fn long_poll(env: Env, source: GatewaySource, http: reqwest::Client, woken: Arc<Notify>) {
    const WAIT: Duration = Duration::from_secs(10);
    loop {
        let urls = admin_urls(&env, &source).await;
        if urls.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let mut polls: FuturesUnordered<_> = urls
            .into_iter()
            .map(|url| fetch(&http, format!("{url}/demand"), Some(WAIT)))
            .collect();
        let mut holding = false;
        while let Some(report) = polls.next().await {
            if report.is_some_and(|r| r.entities.iter().any(|row| row.held > 0)) {
                holding = true;
                woken.notify_one();
            }
        }
        if holding {
            // Requests stay held while the pod starts; do not spin on the same news.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
