//! Watches the pods bound to one node (`spec.nodeName=<node>`) and keeps one worker per pod:
//! updates go to the pod's worker; a deleted pod, or one missing from a relist, has its worker
//! told (its channel closes) so it stops the pod's processes.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tracing::warn;

use super::{Shared, pod_worker};

/// The workers of one node, by pod uid.
struct Workers {
    shared: Arc<Shared>,
    by_uid: HashMap<String, watch::Sender<Pod>>,
}

impl Workers {
    /// Hands `pod` to its worker, starting one for a pod not seen before.
    fn dispatch(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        self.by_uid.retain(|_, tx| !tx.is_closed());
        if let Some(tx) = self.by_uid.get(&uid) {
            tx.send_replace(pod);
            return;
        }
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished && pod.metadata.deletion_timestamp.is_none() {
            return; // ran to completion earlier; nothing to run again
        }
        let (tx, rx) = watch::channel(pod);
        let handle = tokio::spawn(pod_worker::run(self.shared.clone(), rx));
        self.shared.track(handle.abort_handle());
        self.by_uid.insert(uid, tx);
    }

    /// The pod is gone: closing its channel stops its worker.
    fn forget(&mut self, uid: &str) {
        self.by_uid.remove(uid);
    }
}

/// Runs until aborted.
pub async fn run(shared: Arc<Shared>, node: String) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut workers = Workers {
        shared,
        by_uid: HashMap::new(),
    };
    let mut relisted: Option<HashSet<String>> = None;
    let mut stream = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(pod.uid().unwrap_or_default());
                }
                workers.dispatch(pod);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    let gone: Vec<String> = workers
                        .by_uid
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        workers.forget(&uid);
                    }
                }
            }
            Ok(watcher::Event::Apply(pod)) => workers.dispatch(pod),
            Ok(watcher::Event::Delete(pod)) => workers.forget(&pod.uid().unwrap_or_default()),
            Err(e) => warn!(node, error = %e, "pod watch failed; retrying"),
        }
    }
}
