//! Reading demand from the gateways: their admin endpoints, given as URLs or found as pods in a
//! watched store (no LIST per sizing round).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use sluice_contract::demand::{DemandReport, EntityKey};
use tokio::sync::Notify;
use tracing::debug;

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

/// The gateways as the autoscaler reaches them.
#[derive(Clone)]
pub enum Gateways {
    /// Fixed admin base URLs.
    Urls(Vec<String>),
    /// The gateway pods of a watched store, and the name of their admin port.
    Pods {
        /// Gateway pods, kept in step by a watch.
        store: Store<Pod>,
        /// Name of the admin container port.
        port_name: String,
    },
}

impl Gateways {
    /// The gateways `source` names; for pods, also the watch that keeps their store in step
    /// (it runs until the process stops).
    pub fn watch(env: &Env, source: &GatewaySource) -> (Self, BoxFuture<'static, ()>) {
        match source {
            GatewaySource::Urls(urls) => (
                Self::Urls(urls.clone()),
                Box::pin(futures::future::pending()),
            ),
            GatewaySource::Pods {
                namespace,
                selector,
                port_name,
            } => {
                let api: Api<Pod> = match namespace {
                    Some(ns) => Api::namespaced(env.client.clone(), ns),
                    None => Api::all(env.client.clone()),
                };
                let (store, watch) = sluice_watch::store(
                    api,
                    watcher::Config::default().labels(selector),
                    "autoscaler: gateway pods",
                    || {},
                );
                (
                    Self::Pods {
                        store,
                        port_name: port_name.clone(),
                    },
                    Box::pin(watch),
                )
            }
        }
    }

    /// The admin base URLs of the gateways now.
    fn admin_urls(&self) -> Vec<String> {
        match self {
            Self::Urls(urls) => urls.clone(),
            Self::Pods { store, port_name } => store
                .state()
                .iter()
                .filter_map(|pod| admin_url(pod, port_name))
                .collect(),
        }
    }
}

/// The admin base URL of a gateway pod: its IP and the container port named `port_name`;
/// `None` for a pod without an IP yet or that is being deleted.
fn admin_url(pod: &Pod, port_name: &str) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    let port = sluice_contract::labels::container_port(pod, port_name)?;
    Some(format!("http://{ip}:{port}"))
}

/// Every gateway's demand, summed per entity. A gateway that does not answer is skipped (its
/// share is missing for this round, never invented).
pub async fn demand(gateways: &Gateways, http: &reqwest::Client) -> BTreeMap<EntityKey, Demand> {
    let mut total: BTreeMap<EntityKey, Demand> = BTreeMap::new();
    let mut reports: FuturesUnordered<_> = gateways
        .admin_urls()
        .into_iter()
        .map(|url| fetch(http, format!("{url}/demand"), None))
        .collect();
    while let Some(report) = reports.next().await {
        for row in report.map(|r| r.entities).unwrap_or_default() {
            let sum = total.entry(row.key()).or_default();
            sum.in_flight += row.in_flight as f64;
            sum.held += row.held as u64;
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

async fn fetch(
    http: &reqwest::Client,
    url: String,
    wait: Option<Duration>,
) -> Option<DemandReport> {
    let mut request = http.get(&url);
    if let Some(wait) = wait {
        request = request
            .query(&[("waitForHeldSeconds", wait.as_secs())])
            .timeout(wait + Duration::from_secs(5));
    }
    match request.send().await {
        Ok(response) => {
            let body = read_capped(response, MAX_REPORT_BYTES).await;
            if body.is_none() {
                debug!(
                    url,
                    "a gateway's report was unreadable or over {MAX_REPORT_BYTES} bytes"
                );
            }
            serde_json::from_slice(&body?).ok()
        }
        Err(error) => {
            debug!(%error, url, "a gateway did not answer");
            None
        }
    }
}

/// Largest `/demand` answer read: a report is a few hundred bytes per entity, and a gateway
/// that sends more is ignored for the round instead of filling the operator's memory.
const MAX_REPORT_BYTES: usize = 4 << 20;

/// The body of `response`, unless it is (or announces itself) longer than `limit`.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// Long-polls every gateway and wakes the sizing loop as soon as one reports a held request.
pub async fn long_poll(gateways: Gateways, http: reqwest::Client, woken: Arc<Notify>) {
    const WAIT: Duration = Duration::from_secs(10);
    loop {
        let urls = gateways.admin_urls();
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot HTTP server on loopback answering `body` (chunked, so no length is announced).
    async fn answering(body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            for chunk in body.chunks(64 * 1024) {
                let head = format!("{:x}\r\n", chunk.len());
                if socket.write_all(head.as_bytes()).await.is_err()
                    || socket.write_all(chunk).await.is_err()
                    || socket.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{address}/demand")
    }

    #[tokio::test]
    async fn a_report_is_read_and_an_oversized_one_is_ignored() {
        let http = reqwest::Client::new();
        // What a gateway writes: the same wire type.
        let report = serde_json::to_vec(&DemandReport::new(vec![
            sluice_contract::demand::EntityDemand {
                namespace: "ns".into(),
                endpoint: "e".into(),
                entity: "a".into(),
                in_flight: 2,
                held: 1,
                requests_total: 9,
                recent_rate: 0.0,
                ready_backends: 0,
                oldest_held_ms: None,
                held_answered_ago_ms: None,
            },
        ]))
        .expect("json");
        let read = fetch(&http, answering(report).await, None)
            .await
            .expect("a report");
        assert_eq!(read.entities[0].held, 1);
        let mut huge = b"{\"entities\": [".to_vec();
        huge.resize(MAX_REPORT_BYTES + 1024, b' ');
        huge.extend_from_slice(b"]}");
        assert!(
            fetch(&http, answering(huge).await, None).await.is_none(),
            "over the cap: ignored"
        );
    }

    #[test]
    fn a_gateway_pod_is_reached_on_its_named_admin_port_once_it_has_an_ip() {
        let pod = |ip: Option<&str>, deleting: bool| -> Pod {
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "gw"},
                "spec": {"containers": [{"name": "gateway", "ports": [
                    {"name": "http", "containerPort": 8000},
                    {"name": "admin", "containerPort": 9090}]}]},
                "status": {"podIP": ip}
            }))
            .expect("pod");
            if deleting {
                pod.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ));
            }
            pod
        };
        assert_eq!(
            admin_url(&pod(Some("127.0.0.5"), false), "admin").as_deref(),
            Some("http://127.0.0.5:9090")
        );
        assert_eq!(admin_url(&pod(None, false), "admin"), None, "no IP yet");
        assert_eq!(admin_url(&pod(Some("127.0.0.5"), true), "admin"), None);
        assert_eq!(admin_url(&pod(Some("127.0.0.5"), false), "metrics"), None);
    }
}
