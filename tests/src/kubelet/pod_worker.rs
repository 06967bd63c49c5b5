//! One task per pod: take an address, materialise volumes, run init containers in order, run
//! the containers with probes and the restart policy, report status through `pods/status`, and
//! on deletion terminate gracefully (SIGTERM, grace period, SIGKILL) before removing the pod
//! object (grace period 0, precondition on its uid).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{Instrument, info_span, warn};

use super::{
    KubeletError, Shared,
    container::{ContainerRun, Role},
    env::{self, PodFacts},
    image,
    ip::IpLease,
    probes::{self, Verdict},
    process::{self, Launch},
    security,
    status::{self, PodView},
    volumes::{self, VolumeDir},
};

/// How often a worker looks at its containers when nothing else wakes it.
const TICK: Duration = Duration::from_millis(200);
/// The kubelet's shortest grace period, used when a pod object vanishes (force deletion).
const MIN_GRACE: Duration = Duration::from_secs(2);

/// Runs one pod until it is deleted (or vanishes), then releases its address and volumes.
pub async fn run(shared: Arc<Shared>, rx: watch::Receiver<Pod>) {
    let pod = rx.borrow().clone();
    let span = info_span!(
        "pod",
        namespace = pod.namespace().unwrap_or_default(),
        name = pod.name_any(),
        uid = pod.uid().unwrap_or_default()
    );
    async move {
        if pod.metadata.deletion_timestamp.is_some() {
            // Deleted before this kubelet ran anything of it: just remove the object.
            remove_object(&shared, &pod).await;
            return;
        }
        let mut worker = match Worker::new(shared.clone(), pod) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "pod cannot start");
                shared.note(&format!("pod cannot start: {e}"));
                return;
            }
        };
        worker.run(rx).await;
        worker.cleanup();
    }
    .instrument(span)
    .await;
}

/// How long a container's `preStop` sleep hook asks to wait before SIGTERM (0 without one).
fn pre_stop_sleep(container: &k8s_openapi::api::core::v1::Container) -> Duration {
    let seconds = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// Deletes the pod object now (grace period 0), only if it is still the same pod.
async fn remove_object(shared: &Shared, pod: &Pod) {
    let pods: Api<Pod> =
        Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(&pod.name_any(), &dp).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => warn!(error = %e, "removing the pod object failed"),
    }
}

struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    _lease: Option<IpLease>,
    ip: String,
    dir: PathBuf,
    volumes: Option<BTreeMap<String, VolumeDir>>,
    next_volume_try: Instant,
    volume_error: Option<String>,
    init: Vec<ContainerRun>,
    main: Vec<ContainerRun>,
    initialized: bool,
    start_time: Timestamp,
    last_status: Value,
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: Pod) -> Result<Self, KubeletError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let (lease, ip) = if spec.host_network == Some(true) {
            (None, "127.0.0.1".to_string())
        } else {
            let earlier: Option<Ipv4Addr> = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            let lease = IpLease::take(&shared.ips, earlier)
                .ok_or_else(|| KubeletError::Config("no free pod address left".into()))?;
            let ip = lease.ip().to_string();
            (Some(lease), ip)
        };
        let dir = shared.config.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(super::io_err(format!("creating {}", dir.display())))?;
        let backoff = shared.config.restart_backoff_base;
        let real = |c: &k8s_openapi::api::core::v1::Container| {
            image::runs_as_container(c.image.as_deref().unwrap_or_default())
        };
        let init: Vec<ContainerRun> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let role = if c.restart_policy.as_deref() == Some("Always") {
                    Role::Sidecar
                } else {
                    Role::Init
                };
                ContainerRun::new(c.clone(), role, real(&c), backoff, "PodInitializing")
            })
            .collect();
        let waiting = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let main = spec
            .containers
            .into_iter()
            .map(|c| ContainerRun::new(c.clone(), Role::Main, real(&c), backoff, waiting))
            .collect();
        shared.note(&format!(
            "pod {}/{} ({}) on {} gets {ip}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default(),
            spec.node_name.unwrap_or_default()
        ));
        Ok(Worker {
            shared,
            pod,
            _lease: lease,
            ip,
            dir,
            volumes: None,
            next_volume_try: Instant::now(),
            volume_error: None,
            init,
            main,
            initialized: false,
            start_time: Timestamp::now(),
            last_status: Value::Null,
        })
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn key(&self, container: &str) -> String {
        format!(
            "{}/{}/{container}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    fn facts(&self) -> PodFacts<'_> {
        let node = self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        PodFacts {
            pod: &self.pod,
            ip: &self.ip,
            node: node.and_then(|n| self.shared.config.node(n)),
        }
    }

    fn containers(&mut self) -> impl Iterator<Item = &mut ContainerRun> {
        self.init.iter_mut().chain(self.main.iter_mut())
    }

    async fn run(&mut self, mut rx: watch::Receiver<Pod>) {
        loop {
            self.pod = rx.borrow_and_update().clone();
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut rx, false).await;
                return;
            }
            self.step().await;
            self.report().await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                changed = rx.changed() => if changed.is_err() {
                    // The pod object is gone (force-deleted, or this kubelet lost it).
                    self.terminate(&mut rx, true).await;
                    return;
                }
            }
        }
    }

    /// One look at the pod: volumes, exits, init order, starts, probes.
    async fn step(&mut self) {
        let now = Instant::now();
        if self.volumes.is_none() {
            if now < self.next_volume_try {
                return;
            }
            let facts = self.facts();
            let prepared =
                volumes::prepare(&self.shared.client, &facts, &self.dir.join("volumes")).await;
            match prepared.and_then(|v| self.set_permissions(v)) {
                Ok(v) => {
                    self.volumes = Some(v);
                    self.volume_error = None;
                }
                Err(e) => {
                    let message = format!("MountVolume.SetUp failed: {e}");
                    if self.volume_error.as_deref() != Some(message.as_str()) {
                        self.shared.note(&format!("{}: {message}", self.key("")));
                    }
                    self.volume_error = Some(message);
                    self.next_volume_try = now + Duration::from_secs(1);
                    return;
                }
            }
        }
        self.collect_exits(now).await;
        if !self.initialized {
            self.initialized = self.advance_init(now).await;
        }
        if self.initialized {
            if self.main.iter().all(ContainerRun::finished) {
                self.stop_sidecars();
            }
            for i in 0..self.main.len() {
                if self.main[i].due(now) {
                    self.start(Role::Main, i).await;
                }
            }
        }
        self.probe(now).await;
    }

    /// Volume folders as the kubelet leaves them: emptyDirs writable by every user, and every
    /// volume the kubelet made given to the pod's `fsGroup`.
    fn set_permissions(
        &self,
        volumes: BTreeMap<String, VolumeDir>,
    ) -> Result<BTreeMap<String, VolumeDir>, KubeletError> {
        use std::os::unix::fs::PermissionsExt;
        let spec = self.pod.spec.as_ref();
        for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
            if v.empty_dir.is_some()
                && let Some(dir) = volumes.get(&v.name)
            {
                std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o777))
                    .map_err(super::io_err(format!("chmod {}", dir.path.display())))?;
            }
        }
        let fs_group = spec
            .and_then(|s| s.security_context.as_ref())
            .and_then(|sc| sc.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        if let Some(gid) = fs_group {
            for dir in volumes.values().filter(|d| d.owned) {
                security::give_to_group(&dir.path, gid).map_err(super::io_err(format!(
                    "giving {} to fsGroup {gid}",
                    dir.path.display()
                )))?;
            }
        }
        Ok(volumes)
    }

    /// Collects exits and enforces pending SIGKILLs.
    async fn collect_exits(&mut self, now: Instant) {
        let policy = self.policy();
        let table = self.shared.processes.clone();
        let prefix = self.key("");
        let mut notes = Vec::new();
        for c in self.containers() {
            c.enforce_kill(now);
            let key = format!("{prefix}{}", c.spec.name);
            if let Some(code) = c.poll_exit(&table, &key, &policy, true).await {
                notes.push(format!(
                    "{key} exited with {code}; restarts: {}",
                    c.state.restart_count
                ));
            }
        }
        for note in notes {
            self.shared.note(&note);
        }
    }

    /// Runs init containers in order; true once all are done (sidecars: started).
    async fn advance_init(&mut self, now: Instant) -> bool {
        for i in 0..self.init.len() {
            let c = &self.init[i];
            let done = match c.role {
                Role::Sidecar => c.running() && c.state.started,
                _ => c.succeeded(),
            };
            if done {
                continue;
            }
            if c.due(now) {
                self.start(Role::Init, i).await;
                let c = &self.init[i];
                if c.succeeded() || (c.role == Role::Sidecar && c.running() && c.state.started) {
                    continue;
                }
            }
            return false;
        }
        true
    }

    /// Whether an init container failed for good (restartPolicy Never).
    fn init_failed(&self) -> bool {
        self.init.iter().any(|c| c.finished() && !c.succeeded())
    }

    /// Sidecars stop once every main container has finished for good.
    fn stop_sidecars(&mut self) {
        for c in self.init.iter_mut().filter(|c| c.role == Role::Sidecar) {
            c.retire();
            c.kill_for_restart(MIN_GRACE);
        }
    }

    fn slot(&mut self, role: Role, index: usize) -> &mut ContainerRun {
        match role {
            Role::Main => &mut self.main[index],
            Role::Init | Role::Sidecar => &mut self.init[index],
        }
    }

    /// Starts one container: its image (pulled when missing), environment, mounts, security
    /// flags and container (or no process for an image that does not run as a container).
    /// Failures leave it waiting with the kubelet's reason, to be retried.
    async fn start(&mut self, role: Role, index: usize) {
        let c = self.slot(role, index);
        let (spec, real) = (c.spec.clone(), c.real);
        if !real {
            self.slot(role, index).started(None, None);
            return;
        }
        let image = spec.image.clone().unwrap_or_default();
        let user = match image::ensure(&image, spec.image_pull_policy.as_deref()).await {
            Ok(user) => user,
            Err(message) => {
                let key = self.key(&spec.name);
                if self.slot(role, index).state.waiting.as_ref().map(|w| &w.0)
                    != Some(&"ImagePullBackOff".to_string())
                {
                    self.shared.note(&format!("{key}: ErrImagePull: {message}"));
                }
                self.slot(role, index).start_failed("ErrImagePull", message);
                return;
            }
        };
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone());
        let flags = match security::flags(pod_sc.as_ref(), &spec, &user) {
            Ok(flags) => flags,
            Err(message) => {
                let error = KubeletError::Config(message);
                self.start_failed(role, index, "CreateContainerConfigError", error);
                return;
            }
        };
        match self.launch(&spec, flags).await {
            Ok(launch) => match self.shared.processes.spawn(&launch) {
                Ok(child) => {
                    self.shared.note(&format!(
                        "{} started: container {} ({}) command {:?} args {:?}",
                        launch.key, launch.name, launch.image, launch.command, launch.args
                    ));
                    self.slot(role, index).started(Some(child), Some(launch));
                }
                Err(KubeletError::Stopping) => {}
                Err(e) => self.start_failed(role, index, "RunContainerError", e),
            },
            Err(e) => self.start_failed(role, index, "CreateContainerConfigError", e),
        }
    }

    fn start_failed(&mut self, role: Role, index: usize, reason: &str, error: KubeletError) {
        let name = self.slot(role, index).spec.name.clone();
        let key = self.key(&name);
        let message = error.to_string();
        if self.slot(role, index).state.waiting.as_ref().map(|w| &w.1) != Some(&message) {
            self.shared.note(&format!("{key}: {reason}: {message}"));
        }
        self.slot(role, index).start_failed(reason, message);
    }

    /// What to run for `spec`: its environment, `$(VAR)`-expanded command and args, mounts,
    /// working folder and `flags`.
    async fn launch(
        &self,
        spec: &k8s_openapi::api::core::v1::Container,
        flags: Vec<String>,
    ) -> Result<Launch, KubeletError> {
        let config = &self.shared.config;
        let apiserver = (config.apiserver_host.as_str(), config.apiserver_port);
        let env = env::build(&self.shared.client, &self.facts(), spec, apiserver).await?;
        // An empty list is as good as none (the image's entrypoint or cmd stays).
        let expand = |words: &Option<Vec<String>>| -> Option<Vec<String>> {
            let words: Vec<String> = words
                .iter()
                .flatten()
                .map(|w| env::expand(w, &env))
                .collect();
            (!words.is_empty()).then_some(words)
        };
        let (command, args) = (expand(&spec.command), expand(&spec.args));
        let log = self.dir.join(format!("{}.log", spec.name));
        self.shared.register_log(&log);
        let volumes = self.volumes.clone().unwrap_or_default();
        let name = format!(
            "k8s_{}_{}_{}_{}",
            spec.name,
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.pod.uid().unwrap_or_default()
        );
        let termination_log = self.dir.join(format!("{}.termination-log", spec.name));
        let mut mounts = volumes::mounts(spec, &volumes, &env)?;
        mounts.push(process::Mount {
            host: termination_log.clone(),
            path: spec
                .termination_message_path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/dev/termination-log".into()),
            read_only: false,
        });
        Ok(Launch {
            key: self.key(&spec.name),
            pidfile: self.dir.join(format!("{}.pid", spec.name)),
            run_dir: self.dir.join(format!("{}.run", spec.name)),
            termination_log,
            fallback_to_logs: spec.termination_message_policy.as_deref()
                == Some("FallbackToLogsOnError"),
            name,
            image: spec.image.clone().unwrap_or_default(),
            command,
            args,
            mounts,
            env,
            working_dir: spec.working_dir.clone().filter(|d| !d.is_empty()),
            flags,
            log,
        })
    }

    /// The grace period for a probe-triggered restart.
    fn probe_grace(&self, probe: &k8s_openapi::api::core::v1::Probe) -> Duration {
        let seconds = probe
            .termination_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(30))
    }

    /// Runs the probes that are due, all at once, and acts on their verdicts.
    async fn probe(&mut self, now: Instant) {
        let ip = self.ip.clone();
        let mut checks = Vec::new();
        for (role, list) in [(Role::Init, &self.init), (Role::Main, &self.main)] {
            for (i, c) in list.iter().enumerate() {
                for (kind, probe) in c.due_probes(now) {
                    checks.push((role, i, kind, probe, c.spec.clone(), c.launch.clone()));
                }
            }
        }
        if checks.is_empty() {
            return;
        }
        let results = join_all(checks.iter().map(|(_, _, _, probe, spec, launch)| {
            probes::check(probe, spec, &ip, launch.as_ref())
        }))
        .await;
        let done = Instant::now();
        for ((role, i, kind, probe, spec, _), ok) in checks.into_iter().zip(results) {
            let grace = self.probe_grace(&probe);
            let key = self.key(&spec.name);
            let c = self.slot(role, i);
            if let Verdict::Restart(kind) = c.record_probe(kind, &probe, ok, done) {
                c.kill_for_restart(grace);
                self.shared
                    .note(&format!("{key}: {kind:?} probe failed; restarting"));
            } else if !ok {
                tracing::debug!(container = %key, ?kind, "probe failed");
            }
        }
    }

    /// Readiness gates whose condition is not `True` on the pod.
    fn gates_pending(&self) -> Vec<String> {
        let conditions = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.condition_type)
            .filter(|t| {
                !conditions
                    .iter()
                    .any(|c| &c.type_ == t && c.status == "True")
            })
            .collect()
    }

    /// Reports status through `pods/status` when it changed.
    async fn report(&mut self) {
        let mut init: Vec<_> = self.init.iter().map(|c| c.state.clone()).collect();
        let mut main: Vec<_> = self.main.iter().map(|c| c.state.clone()).collect();
        if let Some(error) = &self.volume_error {
            for c in init
                .iter_mut()
                .chain(main.iter_mut())
                .filter(|c| c.running_since.is_none())
            {
                c.waiting = Some(("ContainerCreating".into(), error.clone()));
            }
        }
        let policy = self.policy();
        let uid = self.pod.uid().unwrap_or_default();
        let gates = self.gates_pending();
        let view = PodView {
            uid: &uid,
            ip: &self.ip,
            start_time: self.start_time,
            sandbox_ready: self.volumes.is_some(),
            init: &init,
            main: &main,
            phase: status::phase(self.init_failed(), self.initialized, &main, &policy),
            initialized: self.initialized,
            gates_pending: &gates,
        };
        let status = status::render(&view, &self.last_status);
        if status == self.last_status {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        match pods
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(e) => warn!(error = %e, "pod status update failed"),
        }
    }

    /// The grace period the pod's deletion asks for.
    fn deletion_grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(30))
    }

    /// Stops the pod as the kubelet does: each main container runs its `preStop` sleep, then
    /// gets SIGTERM; sidecars (init containers with `restartPolicy: Always`) get theirs only
    /// once every main container has exited, so a front-door sidecar keeps serving while the
    /// model drains. Waits up to the grace period (shortened if a later update or force
    /// deletion asks), SIGKILLs what is left, then removes the pod object (unless it vanished
    /// already). Other hook kinds (exec, httpGet) are not run.
    async fn terminate(&mut self, rx: &mut watch::Receiver<Pod>, vanished: bool) {
        let grace = if vanished {
            MIN_GRACE
        } else {
            self.deletion_grace()
        };
        let started = Instant::now();
        let mut deadline = started + grace;
        let prefix = self.key("");
        self.shared.note(&format!(
            "{prefix}: terminating, grace {}s",
            grace.as_secs()
        ));
        for c in self.containers() {
            c.retire();
        }
        // When each main container gets SIGTERM: after its preStop sleep (a force deletion
        // skips hooks).
        let mut term_at: Vec<Option<Instant>> = self
            .main
            .iter()
            .map(|c| {
                Some(
                    started
                        + if vanished {
                            Duration::ZERO
                        } else {
                            pre_stop_sleep(&c.spec)
                        },
                )
            })
            .collect();
        let mut sidecars_signalled = false;
        let table = self.shared.processes.clone();
        let mut killed = false;
        let mut pod_gone = vanished;
        loop {
            let now = Instant::now();
            for (c, at) in self.main.iter().zip(term_at.iter_mut()) {
                if at.is_some_and(|t| t <= now || now >= deadline) {
                    c.signal(Signal::SIGTERM);
                    *at = None;
                }
            }
            for c in self.init.iter_mut().chain(self.main.iter_mut()) {
                let key = format!("{prefix}{}", c.spec.name);
                c.wait_exit(&table, &key, Duration::from_millis(1)).await;
            }
            if !sidecars_signalled && self.main.iter().all(|c| c.pid().is_none()) {
                for c in &self.init {
                    c.signal(Signal::SIGTERM);
                }
                sidecars_signalled = true;
            }
            if self.containers().all(|c| c.pid().is_none()) {
                break;
            }
            if now >= deadline && !killed {
                self.shared
                    .note(&format!("{prefix}: grace period over; SIGKILL"));
                for c in self.containers() {
                    c.signal(Signal::SIGKILL);
                }
                killed = true;
            }
            if killed && now >= deadline + Duration::from_secs(10) {
                warn!("processes outlived SIGKILL by 10 s; giving up on them");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                changed = rx.changed(), if !pod_gone => match changed {
                    Ok(()) => {
                        self.pod = rx.borrow_and_update().clone();
                        deadline = deadline.min(started + self.deletion_grace());
                    }
                    Err(_) => {
                        pod_gone = true;
                        deadline = deadline.min(Instant::now() + MIN_GRACE);
                    }
                },
            }
        }
        if !pod_gone {
            remove_object(&self.shared, &self.pod).await;
        }
        self.shared.note(&format!("{prefix}: terminated"));
    }

    /// Removes the pod's volume folders (logs stay for [`super::Kubelet::dump_logs`]).
    fn cleanup(&self) {
        let volumes = self.dir.join("volumes");
        if volumes.exists()
            && let Err(e) = std::fs::remove_dir_all(&volumes)
        {
            warn!(error = %e, "removing {}", volumes.display());
        }
    }
}
