//! A small kubelet for tests: registers CPU and GPU nodes with the real control plane and runs
//! the pods the real kube-scheduler binds to them as real containers (podman and runc).
//!
//! - **Nodes** ([`NodeConfig`]): capacity and allocatable (`cpu`, `memory`, `pods`, and
//!   `nvidia.com/gpu` on GPU nodes), labels, taints, `Ready=True`, address 127.0.0.1, and the
//!   node Lease renewed every 10 s, so the real scheduler and node lifecycle controller treat
//!   them as healthy nodes.
//! - **Images**: an image on a loopback registry (`127.0.0.1:<port>/…`, where the tests push
//!   ours by digest) is pulled with `podman pull` as a node pulls it (a wrong name gives
//!   `ErrImagePull`, then `ImagePullBackOff`, with the registry's message) and runs as a real
//!   container: the image's entrypoint, or the pod's command, with the pod's args
//!   (`$(VAR)` expanded) and environment (including `valueFrom` and `envFrom`). Images on other
//!   registries (vLLM and the like, which this machine cannot run) are reported Running and
//!   Ready without a process, as kwok does, so engine pods can still be scheduled and counted.
//! - **Security**: the pod's and container's `securityContext` are enforced by the runtime:
//!   `runAsUser`/`runAsGroup`, `runAsNonRoot` checked against the image's user
//!   (`CreateContainerConfigError`), `fsGroup` and supplemental groups, read-only root,
//!   capabilities, no-new-privileges, seccomp, privileged; memory limits are cgroup limits (an
//!   allocation past them is `OOMKilled`, exit code 137).
//! - **Addresses**: each pod gets a loopback address of its own (`127.<ip_base>.x.y`, never
//!   127.0.0.1), reported as `status.podIP`/`podIPs`; `hostIP` is 127.0.0.1. Containers run in
//!   the host's network namespace (`--network host`) and bind to that address.
//! - **Volumes**: emptyDir, configMap, secret, downwardAPI, hostPath, persistentVolumeClaim and
//!   projected (the service-account token from the TokenRequest API, `kube-root-ca.crt`, the
//!   namespace) are host folders bind-mounted at the exact `mountPath` of the spec, so the
//!   standard `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}` works.
//!   Nothing else of the host is visible inside a container. Host folders live under
//!   `<state_dir>/pods/<namespace>_<name>_<uid>/volumes/<volume>`.
//! - **PersistentVolumes**: a local provisioner (`provisioner`) makes a hostPath volume under
//!   `<state_dir>/pv/` for every claim of the default StorageClass `local-path`, which the real
//!   PV controller binds; a claim's volume mounts the bound volume's folder.
//! - **Lifecycle**: startup, readiness and liveness probes drive `started`, `ready` and the pod's
//!   `ContainersReady`/`Ready` conditions; init containers run in order; restart policies with
//!   exponential backoff, `restartCount` and `lastState`; deletion runs `preStop` sleeps, sends
//!   SIGTERM to every container, waits the grace period, sends SIGKILL, then removes the pod
//!   object. Status goes through `pods/status`.
//! - **Logs**: `<state_dir>/pods/<namespace>_<name>_<uid>/<container>.log` (appended across
//!   restarts), plus the kubelet's own journal `<state_dir>/kubelet.log`;
//!   [`Kubelet::dump_logs`] prints their tails for a failing test.
//!
//! # Differences from a real node that product code must respect
//!
//! Containers of a Kubernetes pod share `localhost`; here every container shares the host's
//! network namespace and a pod's containers share the pod's own 127.x address instead.
//! Product code therefore binds to and dials `$(POD_IP)` from the downward API
//! (`fieldRef: status.podIP`), which real pods have too.
//!
//! # Network rule
//!
//! Every connection stays inside 127.0.0.0/8. In-cluster clients get
//! `KUBERNETES_SERVICE_HOST=<apiserver_host>` (loopback) and `KUBERNETES_SERVICE_PORT`, which
//! with the mounted token and `ca.crt` is exactly what kube-rs's in-cluster config reads. No
//! Service link variables of other Services are injected (those would be ClusterIPs).
//!
//! Note that the real API server refuses loopback addresses in EndpointSlices, so the
//! EndpointSlice controller cannot publish these pods (see `docs/testing.md`).

mod config;
mod container;
mod env;
mod image;
mod ip;
mod node;
mod objects;
mod pod_watch;
mod pod_worker;
mod probes;
mod process;
mod provisioner;
mod resources;
mod security;
mod status;
mod volumes;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use tokio::task::AbortHandle;

pub use config::{KubeletConfig, NodeConfig};
use ip::IpPool;
use process::ProcessTable;
pub use provisioner::{PROVISIONER, STORAGE_CLASS};

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
    /// The configuration is unusable.
    #[error("kubelet configuration: {0}")]
    Config(String),
    /// Something a pod needs (a ConfigMap, Secret, key, hostPath) does not exist (yet).
    #[error("{0}")]
    Missing(String),
    /// The kubelet is shutting down and starts no more processes.
    #[error("the kubelet is stopping")]
    Stopping,
}

pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeletError {
    let action = action.into();
    move |source| KubeletError::Kube { action, source }
}

pub(crate) fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeletError {
    let action = action.into();
    move |source| KubeletError::Io { action, source }
}

/// A running test kubelet. Dropping it removes every container it started, at once.
pub struct Kubelet {
    shared: Arc<Shared>,
}

/// State shared by the kubelet's tasks.
pub(crate) struct Shared {
    pub client: Client,
    pub config: KubeletConfig,
    pub processes: ProcessTable,
    pub ips: Arc<Mutex<IpPool>>,
    logs: Mutex<Vec<PathBuf>>,
    tasks: Mutex<Vec<AbortHandle>>,
    journal: PathBuf,
}

impl Shared {
    /// Appends a line to the kubelet's journal (and traces it).
    pub fn note(&self, line: &str) {
        tracing::info!("{line}");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal);
        if let Ok(mut file) = file {
            // One write per line: appends from concurrent workers do not interleave.
            let _ = file.write_all(format!("{} {line}\n", Timestamp::now()).as_bytes());
        }
    }

    /// Remembers a container log for [`Kubelet::dump_logs`].
    pub fn register_log(&self, path: &Path) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if !logs.iter().any(|l| l == path) {
            logs.push(path.to_path_buf());
        }
    }

    /// Keeps a task to abort at shutdown.
    pub fn track(&self, task: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    fn abort_tasks(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
    }
}

impl Kubelet {
    /// Checks the machine (podman must work; containers that killed test processes left are
    /// removed), registers the nodes, starts their heartbeats and starts running the pods
    /// bound to them.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Kubelet, KubeletError> {
        config.validate()?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
        process::check_machine().await?;
        process::ensure_reaper()?;
        let since = Timestamp::now();
        let shared = Arc::new(Shared {
            client: client.clone(),
            ips: Arc::new(Mutex::new(IpPool::starting_at(
                config.ip_base,
                u8::try_from(std::process::id() % 200).unwrap_or(0),
            ))),
            journal: config.state_dir.join("kubelet.log"),
            config,
            processes: ProcessTable::default(),
            logs: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let kubelet = Kubelet {
            shared: shared.clone(),
        };
        for node in &shared.config.nodes {
            node::register(&client, node, since).await?;
            shared.note(&format!("registered node {}", node.name));
            let heartbeat = tokio::spawn(node::heartbeat(client.clone(), node.clone(), since));
            shared.track(heartbeat.abort_handle());
            let pods = tokio::spawn(pod_watch::run(shared.clone(), node.name.clone()));
            shared.track(pods.abort_handle());
        }
        if shared.config.provision_volumes {
            let provisioner = tokio::spawn(provisioner::run(shared.clone()));
            shared.track(provisioner.abort_handle());
        }
        Ok(kubelet)
    }

    /// Stops heartbeats and pod workers, then every container (SIGTERM, SIGKILL after 5 s).
    /// Pod objects and nodes stay as they are.
    pub async fn shutdown(self) {
        self.shared.abort_tasks();
        self.shared
            .processes
            .terminate_all(Duration::from_secs(5))
            .await;
        self.shared.note("shut down");
    }

    /// The tail of the kubelet's journal and of every container log, for a failing test to
    /// print.
    pub fn dump_logs(&self) -> String {
        let mut out = crate::log_tail(&self.shared.journal, 80);
        for log in self.log_files() {
            out.push_str(&crate::log_tail(&log, 30));
        }
        out
    }

    fn log_files(&self) -> Vec<PathBuf> {
        self.shared
            .logs
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The whole log of one container of one pod (the latest pod of that name), if it ran.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let prefix = format!("{namespace}_{pod}_");
        let file = format!("{container}.log");
        self.log_files()
            .iter()
            .rev()
            .find(|p| {
                p.file_name().is_some_and(|f| f == file.as_str())
                    && p.parent()
                        .and_then(|d| d.file_name())
                        .is_some_and(|d| d.to_string_lossy().starts_with(&prefix))
            })
            .and_then(|p| std::fs::read_to_string(p).ok())
    }

    /// `(namespace/pod/container, pid)` of every running container (its main process, as the
    /// host sees it).
    pub fn running_processes(&self) -> Vec<(String, u32)> {
        self.shared.processes.running()
    }

    /// A guard that prints [`Self::dump_logs`] to stderr if the thread panics while it is held:
    /// `let _logs = kubelet.logs_on_panic();` at the top of a test.
    pub fn logs_on_panic(&self) -> LogsOnPanic<'_> {
        LogsOnPanic(self)
    }

    /// The folder holding pod volumes, logs and the journal.
    pub fn state_dir(&self) -> &Path {
        &self.shared.config.state_dir
    }
}

/// Prints the kubelet's logs when dropped during a panic (see [`Kubelet::logs_on_panic`]).
pub struct LogsOnPanic<'a>(&'a Kubelet);

impl Drop for LogsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== test kubelet logs\n{}", self.0.dump_logs());
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shared.abort_tasks();
        self.shared.processes.kill_all();
    }
}
