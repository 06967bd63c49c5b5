//! Node registration and heartbeats: the Node object with capacity, labels and taints, its
//! `Ready` condition, and the node Lease renewed every 10 s.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Node,
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde_json::json;

use super::{KubeletError, NodeConfig, kube_err};

const MANAGER: &str = "sluice-test-kubelet";

/// Creates or updates the Node and publishes its status.
pub async fn register(client: &Client, node: &NodeConfig) -> Result<(), KubeletError> {
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
    publish_status(&nodes, node).await
}

async fn publish_status(nodes: &Api<Node>, node: &NodeConfig) -> Result<(), KubeletError> {
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), node.cpu.clone()),
        ("memory".to_string(), node.memory.clone()),
        ("pods".to_string(), node.pods.to_string()),
        ("ephemeral-storage".to_string(), "100Gi".to_string()),
    ]);
    if node.gpus > 0 {
        capacity.insert("nvidia.com/gpu".into(), node.gpus.to_string());
    }
    let now = Timestamp::now().to_string();
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let status = json!({
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-sluice-test", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "sluice-process://0.1", "kernelVersion": "",
                         "osImage": "", "machineID": node.name, "systemUUID": node.name, "bootID": node.name},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }
    });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(kube_err(format!("publishing status of node {}", node.name)))?;
    Ok(())
}

/// Renews the node Lease every 10 s and the node status every 30 s, forever.
pub async fn heartbeat(client: Client, node: NodeConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = 0u64;
    loop {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let mut body = serde_json::to_value(&lease).unwrap_or_default();
        body["apiVersion"] = json!("coordination.k8s.io/v1");
        body["kind"] = json!("Lease");
        if let Err(e) = leases
            .patch(
                &node.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            tracing::warn!(node = %node.name, error = %e, "renewing node lease failed");
        }
        if tick % 3 == 2
            && let Err(e) = publish_status(&nodes, &node).await
        {
            tracing::warn!(node = %node.name, error = %e, "node status heartbeat failed");
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
