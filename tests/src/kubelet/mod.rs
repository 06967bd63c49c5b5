//! A small kubelet for tests: registers CPU and GPU nodes with the real control plane and runs
//! the pods the real scheduler binds to them.
//!
//! - Containers whose image is in the image map run as real local processes, each pod on its own
//!   loopback address (`127.<base>.x.y`, reported as `status.podIP`, so EndpointSlices carry it).
//! - Every container runs in its own mount namespace (`unshare --mount`) so it sees its volumes
//!   at the exact `mountPath` of the spec, with no test-only paths in product code.
//! - Other images are reported Running and Ready without a process (as kwok does), so engine
//!   pods can still be scheduled and counted.
//!
//! Containers of a Kubernetes pod share `localhost`; here a pod's processes share the pod's own
//! 127.x address instead. Product code therefore binds to and dials `$(POD_IP)` from the
//! downward API (`status.podIP`), which real pods have too.
//!
//! Network rule: in-cluster clients get `KUBERNETES_SERVICE_HOST=127.0.0.1` and the API
//! server's port, and no Service environment variables (those would be ClusterIPs).

mod env;
mod node;
mod objects;
mod probe;
mod process;
mod status;
mod volumes;
mod worker;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Taint};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

pub use process::ProcessTable;

/// Errors of the test kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// Underlying error.
        source: kube::Error,
    },
    /// A local file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The machine cannot run containers the way this kubelet needs.
    #[error("unsupported machine: {0}")]
    Unsupported(String),
}

pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeletError {
    let action = action.into();
    move |source| KubeletError::Kube { action, source }
}

pub(crate) fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeletError {
    let action = action.into();
    move |source| KubeletError::Io { action, source }
}

/// One node this kubelet registers.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// CPU capacity.
    pub cpu: String,
    /// Memory capacity.
    pub memory: String,
    /// Pod capacity.
    pub pods: u32,
    /// `nvidia.com/gpu` capacity.
    pub gpus: u32,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
}

impl NodeConfig {
    /// A CPU node.
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

    /// A GPU node: `nvidia.com/gpu` capacity, GPU labels and the NoSchedule GPU taint.
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
}

/// Kubelet settings.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Nodes to register.
    pub nodes: Vec<NodeConfig>,
    /// Image (without tag or digest) → local binary.
    pub images: BTreeMap<String, PathBuf>,
    /// Where pod volumes and logs live.
    pub state_dir: PathBuf,
    /// API server port on 127.0.0.1, given to in-cluster clients.
    pub apiserver_port: u16,
    /// First restart delay; doubles per restart up to five minutes (kubelet uses 10 s).
    pub restart_backoff_base: Duration,
    /// Second octet of pod addresses (`127.<base>.x.y`).
    pub ip_base: u8,
}

impl KubeletConfig {
    /// One CPU node and one GPU node (2 GPUs) named after `prefix`.
    pub fn standard(prefix: &str, state_dir: PathBuf, apiserver_port: u16) -> Self {
        Self {
            nodes: vec![
                NodeConfig::cpu(&format!("{prefix}-cpu")),
                NodeConfig::gpu(&format!("{prefix}-gpu"), 2),
            ],
            images: BTreeMap::new(),
            state_dir,
            apiserver_port,
            restart_backoff_base: Duration::from_secs(1),
            ip_base: 10,
        }
    }
}

/// A running test kubelet.
pub struct Kubelet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// State shared by the kubelet's tasks.
pub(crate) struct Shared {
    pub client: Client,
    pub config: KubeletConfig,
    pub processes: ProcessTable,
    pub ips: Mutex<IpAllocator>,
    pub logs: Mutex<Vec<PathBuf>>,
}

/// Hands out pod addresses `127.<base>.x.y`, never 127.0.0.1.
pub(crate) struct IpAllocator {
    base: u8,
    next: u32,
}

impl IpAllocator {
    pub fn allocate(&mut self) -> String {
        self.next += 1;
        let n = self.next;
        format!(
            "127.{}.{}.{}",
            self.base,
            (n >> 8) & 0xff,
            (n & 0xff).max(1)
        )
    }
}

impl Kubelet {
    /// Registers the nodes, starts their heartbeats and starts running their pods.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Kubelet, KubeletError> {
        process::check_machine().await?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
        let shared = Arc::new(Shared {
            client: client.clone(),
            ips: Mutex::new(IpAllocator {
                base: config.ip_base,
                next: 1,
            }),
            config,
            processes: ProcessTable::default(),
            logs: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for node in &shared.config.nodes {
            node::register(&client, node).await?;
            tasks.push(tokio::spawn(node::heartbeat(client.clone(), node.clone())));
            tasks.push(tokio::spawn(watch_pods(shared.clone(), node.name.clone())));
        }
        Ok(Kubelet { shared, tasks })
    }

    /// Stops every container (SIGTERM, then SIGKILL) and the heartbeats.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared
            .processes
            .terminate_all(Duration::from_secs(5))
            .await;
    }

    /// Every container log, for a failing test to print.
    pub fn dump_logs(&self) -> String {
        self.log_files()
            .iter()
            .map(|p| crate::log_tail(p, 30))
            .collect()
    }

    fn log_files(&self) -> Vec<PathBuf> {
        self.shared
            .logs
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The log of one container of one pod, if it ran.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let logs = self.log_files();
        let prefix = format!("{namespace}_{pod}_");
        logs.iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f == format!("{container}.log").as_str())
                    && p.parent()
                        .and_then(|d| d.file_name())
                        .is_some_and(|d| d.to_string_lossy().starts_with(&prefix))
            })
            .and_then(|p| std::fs::read_to_string(p).ok())
    }

    /// `(namespace/pod/container, pid)` of every running container process.
    pub fn running_processes(&self) -> Vec<(String, u32)> {
        self.shared.processes.running()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.processes.kill_all();
    }
}

/// Watches the pods bound to one node and keeps one worker per pod.
async fn watch_pods(shared: Arc<Shared>, node: String) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut workers: HashMap<String, (watch::Sender<Pod>, JoinHandle<()>)> = HashMap::new();
    let mut stream = watcher(pods, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        let Ok(pod) = event else { continue };
        let uid = pod.uid().unwrap_or_default();
        workers.retain(|_, (_, handle)| !handle.is_finished());
        match workers.get(&uid) {
            Some((tx, _)) => {
                let _ = tx.send(pod);
            }
            None if pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
                && pod.metadata.deletion_timestamp.is_none() => {}
            None => {
                let (tx, rx) = watch::channel(pod);
                let handle = tokio::spawn(worker::run(shared.clone(), rx));
                workers.insert(uid, (tx, handle));
            }
        }
    }
}
