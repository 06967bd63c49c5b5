//! The local control plane for tests: Kubernetes' own etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from their Go modules
//! (`tests/controlplane/`), started once per test binary on loopback.
//!
//! Tests call [`shared`] for the control plane and [`fresh_namespace`] for a namespace of their
//! own. The `up` process is tied to this process through its stdin: when the test binary exits
//! (normally or after a panic) the pipe closes, `up` stops every component and removes the state
//! directory, so no process or temp dir outlives the run.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};

use crate::repo_root;

/// Errors of the control plane harness.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Go control plane could not be built.
    #[error("building the control plane with tests/controlplane/build.sh failed: {0}")]
    Build(String),
    /// A process could not be started or talked to.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `up` exited or never printed its READY line.
    #[error("the control plane did not become ready: {0}")]
    NotReady(String),
    /// The kubeconfig could not be loaded.
    #[error("loading kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The kubeconfig path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: kube::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Builds the Go control plane binary (cached under `~/.cache/sluice/controlplane/<hash>/`) and
/// returns its path.
pub fn build_control_plane() -> Result<PathBuf, ClusterError> {
    let script = repo_root().join("tests/controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io("running build.sh"))?;
    if !out.status.success() {
        return Err(ClusterError::Build(format!("exit status {}", out.status)));
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    if path.is_empty() || !Path::new(&path).exists() {
        return Err(ClusterError::Build(format!(
            "build.sh printed no binary path (got {path:?})"
        )));
    }
    Ok(PathBuf::from(path))
}

/// A running control plane.
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// State directory (certificates, etcd data, component logs).
    pub state_dir: PathBuf,
    /// API server URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// Seconds from start to READY.
    pub startup: Duration,
    child: Mutex<Child>,
    // Held open while the control plane should run; `up` stops when it reads EOF, which also
    // happens when this process dies.
    stdin: Mutex<Option<ChildStdin>>,
}

impl ControlPlane {
    /// Starts `up` in `state_dir` and waits for its READY line. `up` stops when this process
    /// exits or [`ControlPlane::stop`] is called; with `remove_state_dir` it then deletes
    /// `state_dir` too.
    pub fn start(state_dir: &Path, remove_state_dir: bool) -> Result<Self, ClusterError> {
        let binary = build_control_plane()?;
        std::fs::create_dir_all(state_dir)
            .map_err(io(format!("creating {}", state_dir.display())))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("up")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--stop-on-stdin-eof");
        if remove_state_dir {
            cmd.arg("--remove-state-dir");
        }
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| ClusterError::NotReady("no stdin pipe".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ClusterError::NotReady("no stdout pipe".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("READY ") => break line,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClusterError::NotReady(e.to_string())),
                None => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(ClusterError::NotReady(format!(
                        "`up` exited ({status}) before READY; logs in {}/logs",
                        state_dir.display()
                    )));
                }
            }
        };
        // Keep draining stdout so `up` never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .map(str::to_string)
                .unwrap_or_default()
        };
        Ok(Self {
            kubeconfig: PathBuf::from(field("kubeconfig=")),
            state_dir: state_dir.to_path_buf(),
            server: field("server="),
            startup: started.elapsed(),
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
        })
    }

    /// Stops every component (closing `up`'s stdin) and waits for `up` to exit.
    pub fn stop(&self) -> Result<(), ClusterError> {
        if let Ok(mut stdin) = self.stdin.lock() {
            stdin.take();
        }
        let mut child = self
            .child
            .lock()
            .map_err(|_| ClusterError::NotReady("control plane lock poisoned".into()))?;
        child.wait().map_err(io("waiting for `up` to exit"))?;
        Ok(())
    }

    /// A client with admin rights. Make one per test: clients are bound to the runtime that
    /// made them.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        let config = self.config().await?;
        Client::try_from(config).map_err(|source| ClusterError::Kube {
            what: "building a client".into(),
            source,
        })
    }

    /// A client that authenticates with a bearer token only (e.g. a ServiceAccount token), so
    /// RBAC decides what it may do.
    pub async fn client_with_token(&self, token: &str) -> Result<Client, ClusterError> {
        let mut config = self.config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Client::try_from(config).map_err(|source| ClusterError::Kube {
            what: "building a token client".into(),
            source,
        })
    }

    async fn config(&self) -> Result<Config, ClusterError> {
        // Two rustls backends are linked in the workspace build: choose ring (as kube does)
        // before the first TLS client, or rustls panics.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig_err = |message: String| ClusterError::Kubeconfig {
            path: self.kubeconfig.display().to_string(),
            message,
        };
        let kc =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| kubeconfig_err(e.to_string()))?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| kubeconfig_err(e.to_string()))
    }

    /// The API server's port.
    pub fn apiserver_port(&self) -> u16 {
        self.server
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_default()
    }

    /// Starts the real `sluice-operator` (built from this workspace) against this control plane,
    /// watching every namespace without leader election; it is killed when the returned child is
    /// dropped. Its log is `logs/operator.log`. See [`ControlPlane::start_operator_with`].
    pub fn start_operator(&self) -> tokio::process::Child {
        self.start_operator_with(&OperatorOptions::default()).child
    }

    /// Starts one `sluice-operator` process as the `sluice-operator` ServiceAccount, bound to
    /// exactly the rules of `charts/sluice/files/operator-rbac.yaml` (never as admin), with its
    /// probe server on a free loopback port. It is killed when the returned value is dropped.
    pub fn start_operator_with(&self, options: &OperatorOptions) -> OperatorProcess {
        let kubeconfig = self.operator_kubeconfig();
        let log_name = match &options.identity {
            Some(id) => format!("operator-{id}.log"),
            None => "operator.log".to_string(),
        };
        let log_path = self.state_dir.join("logs").join(log_name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("operator log: {e}"));
        let probe = free_loopback_addr();
        let mut cmd = tokio::process::Command::new(crate::binaries::built(
            "sluice-operator",
            "sluice-operator",
        ));
        // SLUICE_OPERATOR_LOG overrides the operator's log filter when debugging a test.
        let filter =
            std::env::var("SLUICE_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into());
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", filter)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("WATCH_NAMESPACE")
            .arg("--probe-addr")
            .arg(probe.to_string())
            .arg("--lease-namespace")
            .arg(OPERATOR_NAMESPACE);
        if let Some(ns) = &options.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        if let Some(id) = &options.identity {
            cmd.arg("--instance").arg(id);
        }
        if let Some(lease) = &options.lease {
            cmd.arg("--leader-elect").arg("--lease-name").arg(lease);
        }
        let config = with_data_plane_image(options.config_yaml.as_deref().unwrap_or_default());
        let path = self
            .state_dir
            .join(format!("operator-config-{}.yaml", random_suffix()));
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("operator config: {e}"));
        cmd.arg("--config").arg(path);
        cmd.args(&options.args);
        let child = cmd
            .stdout(
                log.try_clone()
                    .unwrap_or_else(|e| panic!("operator log: {e}")),
            )
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting sluice-operator: {e}"));
        OperatorProcess {
            child,
            probe,
            log: log_path,
        }
    }

    /// The kubeconfig of the `sluice-operator` ServiceAccount (made once per control plane):
    /// the ServiceAccount in [`OPERATOR_NAMESPACE`], a ClusterRole with the cluster-wide rules of
    /// the rules file and a Role there with its Lease rule (as the chart binds them), and a token
    /// from the TokenRequest API.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = made.as_ref().filter(|p| p.starts_with(&self.state_dir)) {
            return path.clone();
        }
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(io("runtime"))?;
                rt.block_on(self.make_operator_kubeconfig())
            })
            .join()
        });
        let path = match result {
            Ok(Ok(path)) => path,
            Ok(Err(e)) => panic!("operator ServiceAccount: {e}\n{}", self.dump_logs()),
            Err(_) => panic!("operator ServiceAccount setup panicked"),
        };
        *made = Some(path.clone());
        path
    }

    async fn make_operator_kubeconfig(&self) -> Result<PathBuf, ClusterError> {
        use k8s_openapi::api::{
            authentication::v1::{TokenRequest, TokenRequestSpec},
            core::v1::ServiceAccount,
            rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
        };
        let client = self.client().await?;
        let kube = |what: &str| {
            let what = what.to_string();
            move |source| ClusterError::Kube { what, source }
        };
        let pp = PatchParams::apply("sluice-tests").force();
        let name = "sluice-operator";
        let ns_obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}});
        Api::<Namespace>::all(client.clone())
            .patch(OPERATOR_NAMESPACE, &pp, &Patch::Apply(ns_obj))
            .await
            .map_err(kube("applying the operator namespace"))?;
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        sas.patch(name, &pp, &Patch::Apply(sa))
            .await
            .map_err(kube("applying the operator ServiceAccount"))?;

        let rules_path = crate::repo_root().join("charts/sluice/files/operator-rbac.yaml");
        let text = std::fs::read_to_string(&rules_path)
            .map_err(io(format!("reading {}", rules_path.display())))?;
        let rules: Vec<PolicyRule> = serde_norway::from_str(&text).map_err(|e| {
            ClusterError::Build(format!("{} is not a rule list: {e}", rules_path.display()))
        })?;
        let (lease_rules, cluster_rules): (Vec<PolicyRule>, Vec<PolicyRule>) =
            rules.into_iter().partition(|r| {
                r.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g == "coordination.k8s.io")
            });
        let subject = serde_json::json!([{"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NAMESPACE}]);
        let role_ref = |kind: &str| serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
        let meta = |namespaced: bool| {
            if namespaced {
                serde_json::json!({"name": name, "namespace": OPERATOR_NAMESPACE})
            } else {
                serde_json::json!({"name": name})
            }
        };
        Api::<ClusterRole>::all(client.clone())
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": meta(false), "rules": cluster_rules})),
            )
            .await
            .map_err(kube("applying the operator ClusterRole"))?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": meta(false), "roleRef": role_ref("ClusterRole"), "subjects": subject})),
            )
            .await
            .map_err(kube("applying the operator ClusterRoleBinding"))?;
        Api::<Role>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": meta(true), "rules": lease_rules})),
            )
            .await
            .map_err(kube("applying the operator Lease Role"))?;
        Api::<RoleBinding>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta(true), "roleRef": role_ref("Role"), "subjects": subject})),
            )
            .await
            .map_err(kube("applying the operator Lease RoleBinding"))?;

        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(kube("requesting an operator token"))?
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| ClusterError::NotReady("TokenRequest returned no token".into()))?;

        // The admin kubeconfig's cluster (server, CA), with the token as the only credential.
        let mut kc =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| ClusterError::Kubeconfig {
                path: self.kubeconfig.display().to_string(),
                message: e.to_string(),
            })?;
        for named in &mut kc.auth_infos {
            named.auth_info = Some(AuthInfo {
                token: Some(token.clone().into()),
                ..Default::default()
            });
        }
        let path = self.state_dir.join("operator.kubeconfig");
        let yaml = serde_norway::to_string(&kc)
            .map_err(|e| ClusterError::Build(format!("writing the operator kubeconfig: {e}")))?;
        std::fs::write(&path, yaml).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// Restarts the kube-apiserver (SIGUSR1 to `up`, which stops it and starts it again on the
    /// same port and etcd) and waits until it answers again. Returns how long it was away.
    pub async fn restart_apiserver(&self) -> Result<Duration, ClusterError> {
        let log = self.state_dir.join("logs/kube-apiserver.log");
        let starts = || {
            std::fs::read_to_string(&log)
                .map(|t| {
                    t.matches("sluice-controlplane: starting kube-apiserver")
                        .count()
                })
                .unwrap_or(0)
        };
        let before = starts();
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap_or_default());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)
            .map_err(|e| ClusterError::NotReady(format!("signalling `up`: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while starts() == before {
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady(
                    "the kube-apiserver was not restarted".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = self.client().await?;
        while client.apiserver_version().await.is_err() {
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady(
                    "the restarted kube-apiserver did not answer".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(started.elapsed())
    }

    /// Process id of `up`.
    pub fn pid(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or_default()
    }

    /// The tail of every component log, for a failing test to print.
    pub fn dump_logs(&self) -> String {
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "operator",
        ]
        .iter()
        .map(|c| crate::log_tail(&self.state_dir.join("logs").join(format!("{c}.log")), 40))
        .collect()
    }
}

/// Operator configuration `yaml` with `images.inferenceServer` set to our data-plane image in
/// the loopback registry (by digest) unless it names one, as the chart fills it in.
fn with_data_plane_image(yaml: &str) -> String {
    let mut config: serde_norway::Value = if yaml.trim().is_empty() {
        serde_norway::Value::Mapping(Default::default())
    } else {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("operator config {yaml:?}: {e}"))
    };
    let has_image = config
        .get("images")
        .and_then(|i| i.get("inferenceServer"))
        .is_some();
    if !has_image {
        let root = config
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("operator config {yaml:?} is not a mapping"));
        let images = root
            .entry("images".into())
            .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
        if let Some(images) = images.as_mapping_mut() {
            images.insert("inferenceServer".into(), images::inference_server().into());
        }
    }
    serde_norway::to_string(&config).unwrap_or_else(|e| panic!("operator config: {e}"))
}

/// Namespace of the operator's ServiceAccount and its leader Lease in tests (the chart's
/// release namespace).
pub const OPERATOR_NAMESPACE: &str = "sluice-system";

/// How to run one operator process ([`ControlPlane::start_operator_with`]).
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Watch only this namespace (`--namespace`); every namespace when `None`.
    pub namespace: Option<String>,
    /// Leader election on this Lease in [`OPERATOR_NAMESPACE`] (`--leader-elect`).
    pub lease: Option<String>,
    /// Identity (`--instance`, the Lease holder); also names the log
    /// `logs/operator-<identity>.log`.
    pub identity: Option<String>,
    /// Operator configuration (YAML), written to a file for `--config`; without
    /// `images.inferenceServer`, our data-plane image in the loopback registry is filled in.
    pub config_yaml: Option<String>,
    /// More arguments.
    pub args: Vec<String>,
}

/// A running operator process; killed when dropped.
pub struct OperatorProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Its probe server (`/healthz`, `/readyz`, `/metrics`).
    pub probe: std::net::SocketAddr,
    /// Its log.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// `GET` a probe path: status code and body, `None` when nothing answers.
    pub async fn probe(&self, path: &str) -> Option<(u16, String)> {
        crate::http::get(&self.probe.ip().to_string(), self.probe.port(), path).await
    }

    /// The value of the metric series `series` (name and labels exactly as exposed, e.g.
    /// `sluice_operator_reconciles_total{controller="servingendpoint"}`); 0 when absent,
    /// `None` when the probe server does not answer.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.probe("/metrics").await?;
        Some(metric_value(&body, series))
    }

    /// The tail of its log.
    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 60)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or_default());
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }
}

/// The value of `series` in a Prometheus text exposition; 0 when absent.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0.0)
}

/// 127.0.0.1 with a port nothing listens on now, for servers that cannot announce their own
/// (see [`crate::process::unused_port`]).
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::process::unused_loopback_port()))
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane of this test binary, started on first use with the Sluice CRDs installed.
/// Panics (failing the test) with the reason when it cannot start.
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-cp-{}", std::process::id()));
        let cp = ControlPlane::start(&dir, true).unwrap_or_else(|e| panic!("control plane: {e}"));
        // A runtime of its own: the caller may be inside a test's runtime.
        let installed = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(io("runtime"))?;
                rt.block_on(async {
                    let client = cp.client().await?;
                    install_crds(&client, &repo_root().join("crds/generated")).await
                })
            })
            .join()
        });
        match installed {
            Ok(Ok(())) => cp,
            Ok(Err(e)) => panic!("installing CRDs: {e}\n{}", cp.dump_logs()),
            Err(_) => panic!("installing CRDs panicked\n{}", cp.dump_logs()),
        }
    })
}

/// Applies every CRD in `dir` with server-side apply and waits until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<(), ClusterError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("sluice-tests").force();
    for path in crate::manifests::yaml_files(dir).map_err(|e| ClusterError::Build(e.to_string()))? {
        for doc in crate::manifests::read_documents(&path)
            .map_err(|e| ClusterError::Build(e.to_string()))?
        {
            let crd: CustomResourceDefinition = serde_json::from_value(doc).map_err(|e| {
                ClusterError::Build(format!("{} is not a CRD: {e}", path.display()))
            })?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .map_err(|source| ClusterError::Kube {
                    what: format!("applying CRD {name}"),
                    source,
                })?;
            tokio::time::timeout(
                Duration::from_secs(60),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .map_err(|_| ClusterError::NotReady(format!("CRD {name} not Established after 60 s")))?
            .map_err(|e| ClusterError::NotReady(format!("waiting for CRD {name}: {e}")))?;
        }
    }
    Ok(())
}

/// Creates a namespace `<prefix>-<random>` for one test and returns its name. Namespaces go away
/// with the control plane at the end of the run.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", random_suffix());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Six lowercase hex characters, distinct across calls in one process.
pub fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = u64::from(nanos)
        ^ (u64::from(std::process::id()) << 20)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9);
    format!("{:06x}", n & 0xff_ffff)
}

/// The test kubelet of this test binary: a CPU node and a GPU node (2 GPUs) on the shared
/// control plane, running images of the loopback registry as real containers. It lives on a runtime of its own, so
/// it outlives each test's runtime.
pub struct LocalNodes {
    /// The kubelet.
    pub kubelet: crate::kubelet::Kubelet,
    /// Name of the CPU node.
    pub cpu_node: String,
    /// Name of the GPU node.
    pub gpu_node: String,
    _runtime: tokio::runtime::Runtime,
}

/// The images test pods run, each pushed by digest to the loopback registry the test kubelet
/// pulls from (built once per test binary, cached by content hash across runs).
pub mod images {
    /// The data-plane image (`inference-server/Dockerfile` around this workspace's binary).
    pub fn inference_server() -> String {
        crate::images::ours("inference-server").reference()
    }

    /// The operator image.
    pub fn operator() -> String {
        crate::images::ours("operator").reference()
    }

    /// Test workloads: busybox (`/bin/sh` and its applets) and `python3`, running as root.
    pub fn tools() -> String {
        crate::images::tools().reference()
    }
}

static NODES: OnceLock<LocalNodes> = OnceLock::new();

/// Starts (once) the test kubelet on the shared control plane.
pub fn shared_nodes() -> &'static LocalNodes {
    NODES.get_or_init(|| {
        let cp = shared();
        let config = crate::kubelet::KubeletConfig::standard(
            "local",
            cp.state_dir.join("kubelet"),
            cp.apiserver_port(),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("test-kubelet")
            .build()
            .unwrap_or_else(|e| panic!("kubelet runtime: {e}"));
        let kubelet = std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    let client = cp
                        .client()
                        .await
                        .unwrap_or_else(|e| panic!("kubelet client: {e}"));
                    crate::kubelet::Kubelet::start(client, config).await
                })
            })
            .join()
        });
        let kubelet = match kubelet {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => panic!("starting the test kubelet: {e}"),
            Err(_) => panic!("starting the test kubelet panicked"),
        };
        LocalNodes {
            kubelet,
            cpu_node: "local-cpu".into(),
            gpu_node: "local-gpu".into(),
            _runtime: runtime,
        }
    })
}
