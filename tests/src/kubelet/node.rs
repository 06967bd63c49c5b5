//! Node registration and heartbeats: the Node object with its labels and taints, its status
//! (capacity and allocatable, the `Ready` condition, address 127.0.0.1), and the node Lease in
//! `kube-node-lease` renewed every 10 s. A Node deleted behind the kubelet's back is registered
//! again.

use std::time::Duration;

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{KubeletError, NodeConfig, kube_err};

const MANAGER: &str = "sluice-test-kubelet";
/// How often the Lease is renewed (as the kubelet does).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The node status is published every this many Lease renewals.
const STATUS_EVERY: u64 = 3;

/// Creates or updates the Node and publishes its status. `since` is when the kubelet started:
/// the conditions' `lastTransitionTime`.
pub async fn register(
    client: &Client,
    node: &NodeConfig,
    since: Timestamp,
) -> Result<(), KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("node.sluice.dev/test-kubelet".into(), "true".into());
    let object = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"taints": node.taints},
    });
    nodes
        .patch(
            &node.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(kube_err(format!("registering node {}", node.name)))?;
    publish_status(&nodes, node, since).await?;
    renew_lease(client, node).await
}

async fn publish_status(
    nodes: &Api<Node>,
    node: &NodeConfig,
    since: Timestamp,
) -> Result<(), KubeletError> {
    let capacity = node.capacity();
    let now = Timestamp::now().to_string();
    let since = since.to_string();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let status = json!({
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-sluice-test", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "sluice-process://0.1", "kernelVersion": "",
                         "osImage": "sluice test kubelet", "machineID": node.name, "systemUUID": node.name, "bootID": node.name},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }
    });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(kube_err(format!("publishing status of node {}", node.name)))?;
    Ok(())
}

async fn renew_lease(client: &Client, node: &NodeConfig) -> Result<(), KubeletError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node.name},
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    leases
        .patch(
            &node.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err(format!(
            "renewing the lease of node {}",
            node.name
        )))?;
    Ok(())
}

/// Renews the node Lease every 10 s and publishes the node status every 30 s, forever;
/// registers the node again if it was deleted.
pub async fn heartbeat(client: Client, node: NodeConfig, since: Timestamp) {
    let nodes: Api<Node> = Api::all(client.clone());
    for tick in 1u64.. {
        tokio::time::sleep(LEASE_RENEW).await;
        let result = match renew_lease(&client, &node).await {
            Ok(()) if tick % STATUS_EVERY == 0 => publish_status(&nodes, &node, since).await,
            other => other,
        };
        let result = match result {
            Err(KubeletError::Kube {
                source: kube::Error::Api(ref e),
                ..
            }) if e.code == 404 => {
                tracing::warn!(node = %node.name, "node object gone; registering it again");
                register(&client, &node, since).await
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::warn!(node = %node.name, error = %e, "node heartbeat failed");
        }
    }
}
