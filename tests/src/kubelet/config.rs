//! What the test kubelet registers and how it runs pods: nodes, the state
//! directory, the API server address handed to in-cluster clients, restart backoff and the pod
//! address range.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Taint;

use super::KubeletError;

/// One node this kubelet registers.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// CPU capacity (a quantity, e.g. `"16"`).
    pub cpu: String,
    /// Memory capacity (a quantity, e.g. `"64Gi"`).
    pub memory: String,
    /// Pod capacity.
    pub pods: u32,
    /// `nvidia.com/gpu` capacity; 0 for a CPU node.
    pub gpus: u32,
    /// Node labels (the kubelet adds `kubernetes.io/hostname`, `os` and `arch`).
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
}

impl NodeConfig {
    /// A CPU node: 16 CPUs, 64 GiB, 110 pods, no labels or taints.
    pub fn cpu(name: &str) -> Self {
        Self {
            name: name.into(),
            cpu: "16".into(),
            memory: "64Gi".into(),
            pods: 110,
            gpus: 0,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// A GPU node: `gpus` of `nvidia.com/gpu` capacity, the labels
    /// `nvidia.com/gpu.present=true` and `serving.sluice.dev/accelerator=nvidia`, and the
    /// `nvidia.com/gpu=present:NoSchedule` taint, as GPU node pools carry.
    pub fn gpu(name: &str, gpus: u32) -> Self {
        let mut node = Self::cpu(name);
        node.gpus = gpus;
        node.labels
            .insert("nvidia.com/gpu.present".into(), "true".into());
        node.labels
            .insert("serving.sluice.dev/accelerator".into(), "nvidia".into());
        node.taints.push(Taint {
            key: "nvidia.com/gpu".into(),
            value: Some("present".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        node
    }

    /// Capacity (equal to allocatable) as resource name → quantity.
    pub fn capacity(&self) -> BTreeMap<String, String> {
        let mut capacity = BTreeMap::from([
            ("cpu".to_string(), self.cpu.clone()),
            ("memory".to_string(), self.memory.clone()),
            ("pods".to_string(), self.pods.to_string()),
            ("ephemeral-storage".to_string(), "100Gi".to_string()),
        ]);
        if self.gpus > 0 {
            capacity.insert("nvidia.com/gpu".into(), self.gpus.to_string());
        }
        capacity
    }
}

/// Kubelet settings.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Nodes to register.
    pub nodes: Vec<NodeConfig>,
    /// Where pod volumes, container logs and the kubelet's journal live.
    pub state_dir: PathBuf,
    /// API server address given to in-cluster clients as `KUBERNETES_SERVICE_HOST`; must be a
    /// loopback address.
    pub apiserver_host: String,
    /// API server port given as `KUBERNETES_SERVICE_PORT`.
    pub apiserver_port: u16,
    /// First restart delay of a crashing container; it doubles per restart up to five minutes
    /// (the real kubelet starts at 10 s; tests use about 1 s).
    pub restart_backoff_base: Duration,
    /// Run the local volume provisioner (one per cluster: extra kubelets leave it off).
    pub provision_volumes: bool,
    /// Second octet of pod addresses: pods get `127.<ip_base>.x.y` (and upwards should that
    /// /16 fill up); at least 1, so no pod is ever given 127.0.0.1.
    pub ip_base: u8,
}

impl KubeletConfig {
    /// One CPU node (`<prefix>-cpu`) and one GPU node (`<prefix>-gpu`, 2 GPUs), the API server on `127.0.0.1:<apiserver_port>`, 1 s restart backoff, pod addresses
    /// in 127.10.0.0/16 (upwards).
    pub fn standard(prefix: &str, state_dir: PathBuf, apiserver_port: u16) -> Self {
        Self {
            nodes: vec![
                NodeConfig::cpu(&format!("{prefix}-cpu")),
                NodeConfig::gpu(&format!("{prefix}-gpu"), 2),
            ],
            state_dir,
            apiserver_host: "127.0.0.1".into(),
            apiserver_port,
            restart_backoff_base: Duration::from_secs(1),
            provision_volumes: true,
            ip_base: 10,
        }
    }

    /// The node named `name`, if this kubelet runs it.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Refuses settings that would break the loopback-only rule.
    pub fn validate(&self) -> Result<(), KubeletError> {
        let host: Ipv4Addr = self.apiserver_host.parse().map_err(|_| {
            KubeletError::Config(format!(
                "apiserver_host {:?} is not an IPv4 address",
                self.apiserver_host
            ))
        })?;
        if !host.is_loopback() {
            return Err(KubeletError::Config(format!(
                "apiserver_host {host} is outside 127.0.0.0/8"
            )));
        }
        if self.ip_base == 0 {
            return Err(KubeletError::Config(
                "ip_base 0 would put pods next to 127.0.0.1; use 1 or more".into(),
            ));
        }
        if self.nodes.is_empty() {
            return Err(KubeletError::Config("no nodes to register".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_settings_are_accepted() {
        let mut config = KubeletConfig::standard("t", PathBuf::from("/tmp"), 6443);
        assert!(config.validate().is_ok());
        config.apiserver_host = "10.0.0.1".into();
        assert!(config.validate().is_err());
        config.apiserver_host = "127.0.0.1".into();
        config.ip_base = 0;
        assert!(config.validate().is_err());
    }
}
