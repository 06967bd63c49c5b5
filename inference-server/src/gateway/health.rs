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

/// Checks every backend of `state` every `interval` until the task is dropped.
pub async fn run(state: Arc<State>, path: String, interval: Duration) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(interval));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
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

async fn check(
    client: &Client<HttpConnector, Empty<Bytes>>,
    backend: Arc<Backend>,
    path: &str,
    timeout: Duration,
) {
    let Ok(uri) = format!("http://{}{path}", backend.addr).parse::<hyper::Uri>() else {
        return;
    };
    let answered = tokio::time::timeout(timeout, async {
        let response = client.get(uri).await.ok()?;
        let healthy = !response.status().is_server_error();
        response.into_body().collect().await.ok()?;
        Some(healthy)
    })
    .await;
    match answered {
        Ok(Some(true)) => backend.record_success(),
        _ => {
            if backend.available() {
                tracing::warn!(backend = %backend.addr, "health check failed; out of rotation");
            }
            backend.record_failure();
        }
    }
}
