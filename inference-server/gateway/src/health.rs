//! Active health checks: every backend is asked `GET <health path>` on an interval; no answer
//! within the interval, or a 5xx, takes it out of rotation until it answers again. Pod
//! readiness (in a cluster) removes a pod too, but only after the kubelet's probe period and a
//! watch round trip; this check reacts within one interval, and is the only signal in
//! standalone mode.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::backend::Backend;
use super::state::State;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

fn probe_client(connect_timeout: Duration) -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// How often the pods of a waking entity are probed.
const WARM_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// While an entity holds requests and has no Ready pod, probes its running pods every 50 ms
/// and routes to the first that answers `GET <health path>` with a success: the kubelet's
/// readiness probe runs at most once a second and its verdict reaches the gateway through a
/// watch, so this saves up to a second of every cold start. Idle when nothing is waking.
pub async fn probe_warming(state: Arc<State>, path: String) {
    let client = probe_client(WARM_PROBE_INTERVAL * 4);
    let mut ticker = tokio::time::interval(WARM_PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = Vec::new();
        for (pool, addrs) in state.waking() {
            for &addr in addrs.iter() {
                let (pool, client, path, state) = (pool.clone(), &client, &path, &state);
                probes.push(async move {
                    if answers(client, addr, path, WARM_PROBE_INTERVAL * 4).await == Some(true) {
                        state.promote(&pool, addr);
                    }
                });
            }
        }
        futures::future::join_all(probes).await;
    }
}

/// Checks every backend of `state` every `interval` until the task is dropped.
pub async fn run(state: Arc<State>, path: String, interval: Duration) {
    let client = probe_client(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checks = state
            .all_backends()
            .into_iter()
            .map(|backend| check(&client, backend, &path, interval));
        futures::future::join_all(checks).await;
    }
}

/// `GET <path>` on `addr`: `Some(true)` for an answer below 500, `Some(false)` for a 5xx,
/// `None` for no answer within `timeout`.
async fn answers(
    client: &ProbeClient,
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<bool> {
    let uri = format!("http://{addr}{path}").parse::<hyper::Uri>().ok()?;
    tokio::time::timeout(timeout, async {
        let response = client.get(uri).await.ok()?;
        let healthy = !response.status().is_server_error();
        response.into_body().collect().await.ok()?;
        Some(healthy)
    })
    .await
    .ok()
    .flatten()
}

async fn check(client: &ProbeClient, backend: Arc<Backend>, path: &str, timeout: Duration) {
    match answers(client, backend.addr, path, timeout).await {
        Some(true) => backend.record_success(),
        _ => {
            if backend.available() {
                tracing::warn!(backend = %backend.addr, "health check failed; out of rotation");
            }
            backend.record_failure();
        }
    }
}
