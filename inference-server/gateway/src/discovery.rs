//! Cluster mode: reflectors over ServingEndpoints and entity Pods feed the routing table.
//!
//! Every change to either rebuilds the table from the two stores (a pure step,
//! [`routing::from_cluster`]); bursts of events coalesce into one rebuild.

use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use sluice_crds::ServingEndpoint;
use tokio::sync::Notify;

use super::GatewayError;
use super::routing::{self, LABEL_ENDPOINT};
use super::state::State;

/// Watches the cluster (the endpoints of `namespaces`, all when empty, matching `selector`)
/// and keeps `state` in step until an error ends a watch for good.
pub async fn run(
    client: Client,
    namespaces: &[String],
    selector: Option<&str>,
    state: Arc<State>,
) -> Result<(), GatewayError> {
    let changed = Arc::new(Notify::new());
    let mut stores = Vec::new();
    let mut watches = Vec::new();
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    for namespace in scopes {
        let endpoints: Api<ServingEndpoint> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let pods: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let managed = match selector {
            Some(selector) => watcher::Config::default().labels(selector),
            None => watcher::Config::default(),
        };
        let notify = |changed: &Arc<Notify>| {
            let changed = changed.clone();
            move || changed.notify_one()
        };
        let (endpoint_store, endpoint_watch) = sluice_watch::store(
            endpoints,
            managed,
            "gateway: servingendpoints",
            notify(&changed),
        );
        let (pod_store, pod_watch) = sluice_watch::store(
            pods,
            watcher::Config::default().labels(LABEL_ENDPOINT),
            "gateway: pods",
            notify(&changed),
        );
        stores.push((endpoint_store, pod_store));
        watches.push(endpoint_watch.boxed());
        watches.push(pod_watch.boxed());
    }
    let rebuild = async {
        for (endpoints, pods) in &stores {
            endpoints
                .wait_until_ready()
                .await
                .map_err(GatewayError::WatchStore)?;
            pods.wait_until_ready()
                .await
                .map_err(GatewayError::WatchStore)?;
        }
        tracing::info!("ServingEndpoint and Pod watches synced");
        loop {
            let notified = changed.notified();
            let endpoints: Vec<ServingEndpoint> = stores
                .iter()
                .flat_map(|(e, _)| e.state())
                .map(|e| (*e).clone())
                .collect();
            let pods: Vec<Pod> = stores
                .iter()
                .flat_map(|(_, p)| p.state())
                .map(|p| (*p).clone())
                .collect();
            state.apply(&routing::from_cluster(&endpoints, &pods));
            notified.await;
        }
        #[allow(unreachable_code)]
        Ok::<(), GatewayError>(())
    };
    tokio::select! {
        // The watches retry their errors themselves and never end; if one did, say so.
        _ = futures::future::join_all(watches) => Err(GatewayError::WatchEnded),
        result = rebuild => result,
    }
}
