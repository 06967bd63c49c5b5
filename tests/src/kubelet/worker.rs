//! One task per pod: allocate its address, materialise volumes, run init containers in order,
//! run the containers with probes and the restart policy, report status, and on deletion
//! terminate gracefully (SIGTERM, grace period, SIGKILL) before removing the pod object.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::{process::Child, sync::watch};
use tracing::{Instrument, info_span, warn};

use super::{
    KubeletError, Shared,
    env::{self, PodFacts},
    probe,
    process::{self, Launch},
    status::{self, ContainerState, PodState},
    volumes,
};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A container and what the worker tracks about it.
struct Slot {
    spec: Container,
    binary: Option<PathBuf>,
    child: Option<Child>,
    state: ContainerState,
    backoff: Duration,
    next_start: Option<Instant>,
    next_probe: Instant,
    liveness_failures: i32,
    readiness_failures: i32,
    readiness_successes: i32,
    done: bool,
}

impl Slot {
    fn new(spec: Container, shared: &Shared) -> Self {
        let image = spec.image.clone().unwrap_or_default();
        let binary = shared.config.images.get(&image_name(&image)).cloned();
        Slot {
            state: ContainerState {
                name: spec.name.clone(),
                image,
                ..Default::default()
            },
            spec,
            binary,
            child: None,
            backoff: shared.config.restart_backoff_base,
            next_start: Some(Instant::now()),
            next_probe: Instant::now(),
            liveness_failures: 0,
            readiness_failures: 0,
            readiness_successes: 0,
            done: false,
        }
    }
}

/// `registry/repo:tag@digest` → `registry/repo`.
fn image_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or_default();
    match no_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name.to_string(),
        _ => no_digest.to_string(),
    }
}

struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    ip: String,
    dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    init: Vec<Slot>,
    main: Vec<Slot>,
    start_time: Timestamp,
    last_status: Value,
}

/// Runs one pod until it is deleted.
pub async fn run(shared: Arc<Shared>, rx: watch::Receiver<Pod>) {
    let pod = rx.borrow().clone();
    let span = info_span!(
        "pod",
        namespace = pod.namespace().unwrap_or_default(),
        name = pod.name_any()
    );
    async move {
        let mut worker = match Worker::new(shared, pod).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "pod cannot start");
                return;
            }
        };
        if let Err(e) = worker.run(rx).await {
            warn!(error = %e, "pod worker failed");
        }
    }
    .instrument(span)
    .await;
}

impl Worker {
    async fn new(shared: Arc<Shared>, pod: Pod) -> Result<Self, KubeletError> {
        let ip = shared
            .ips
            .lock()
            .map(|mut a| a.allocate())
            .unwrap_or_else(|_| "127.10.255.254".into());
        let dir = shared.config.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(super::io_err(format!("creating {}", dir.display())))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let init = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| Slot::new(c, &shared))
            .collect();
        let main = spec
            .containers
            .into_iter()
            .map(|c| Slot::new(c, &shared))
            .collect();
        let facts = PodFacts { pod: &pod, ip: &ip };
        let volumes = volumes::prepare(&shared.client, &facts, &dir).await?;
        Ok(Worker {
            shared,
            pod,
            ip,
            dir,
            volumes,
            init,
            main,
            start_time: Timestamp::now(),
            last_status: Value::Null,
        })
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn key(&self, container: &str) -> String {
        format!(
            "{}/{}/{container}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    async fn run(&mut self, mut rx: watch::Receiver<Pod>) -> Result<(), KubeletError> {
        loop {
            // `changed()` below marks updates as seen, so always read the latest pod.
            self.pod = rx.borrow_and_update().clone();
            if self.pod.metadata.deletion_timestamp.is_some() {
                return self.terminate().await;
            }
            let initialized = self.step_init().await?;
            if initialized {
                self.step_main().await?;
            }
            self.report(initialized).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                changed = rx.changed() => if changed.is_err() { return self.terminate().await; }
            }
        }
    }

    /// Starts `slot`'s process (or marks a process-less container running).
    async fn start(&mut self, index: usize, init: bool) -> Result<(), KubeletError> {
        let slot = if init {
            &self.init[index]
        } else {
            &self.main[index]
        };
        let spec = slot.spec.clone();
        let key = self.key(&spec.name);
        let Some(binary) = slot.binary.clone() else {
            let slot = if init {
                &mut self.init[index]
            } else {
                &mut self.main[index]
            };
            slot.state.running_since = Some(Timestamp::now());
            slot.state.waiting = None;
            slot.next_start = None;
            return Ok(());
        };
        let facts = PodFacts {
            pod: &self.pod,
            ip: &self.ip,
        };
        let vars = env::build(
            &self.shared.client,
            &facts,
            &spec,
            self.shared.config.apiserver_port,
        )
        .await?;
        let mut words: Vec<String> = spec.command.clone().unwrap_or_default();
        words.extend(spec.args.clone().unwrap_or_default());
        let words: Vec<String> = words.iter().map(|w| env::expand(w, &vars)).collect();
        // A command replaces the image entrypoint: its first word names the program.
        let (program, args) = match spec.command.as_ref().filter(|c| !c.is_empty()) {
            Some(_) => (PathBuf::from(&words[0]), words[1..].to_vec()),
            None => (binary, words),
        };
        let log = self.dir.join(format!("{}.log", spec.name));
        if let Ok(mut logs) = self.shared.logs.lock()
            && !logs.contains(&log)
        {
            logs.push(log.clone());
        }
        let launch = Launch {
            key,
            binary: program,
            args,
            env: vars,
            mounts: volumes::mounts(&spec, &self.volumes),
            working_dir: spec.working_dir.clone(),
            log,
        };
        let child = process::spawn(&self.shared.processes, &launch)?;
        let slot = if init {
            &mut self.init[index]
        } else {
            &mut self.main[index]
        };
        slot.child = Some(child);
        slot.state.running_since = Some(Timestamp::now());
        slot.state.waiting = None;
        slot.state.ready = false;
        slot.next_start = None;
        slot.readiness_successes = 0;
        slot.liveness_failures = 0;
        let delay = slot
            .spec
            .readiness_probe
            .as_ref()
            .and_then(|p| p.initial_delay_seconds)
            .unwrap_or(0);
        slot.next_probe = Instant::now() + Duration::from_secs(u64::try_from(delay).unwrap_or(0));
        Ok(())
    }

    /// Records an exit of `slot`; schedules a restart when the policy wants one.
    fn exited(shared: &Shared, key: &str, slot: &mut Slot, code: i32, policy: &str, init: bool) {
        shared.processes.remove(key);
        let now = Timestamp::now();
        let reason = if code == 0 { "Completed" } else { "Error" };
        let started = slot.state.running_since.take().unwrap_or(now);
        slot.state.terminated = Some((code, reason.into(), started, now));
        slot.state.ready = false;
        slot.child = None;
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => !init || code != 0,
        };
        if restart {
            slot.state.last_terminated = slot.state.terminated.take();
            slot.state.restart_count += 1;
            slot.state.waiting = Some("CrashLoopBackOff".into());
            slot.next_start = Some(Instant::now() + slot.backoff);
            slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        } else {
            slot.done = true;
        }
    }

    /// Polls a running process for exit.
    fn poll_exit(&mut self, index: usize, init: bool) {
        let policy = self.restart_policy().to_string();
        let key = self.key(if init {
            &self.init[index].spec.name
        } else {
            &self.main[index].spec.name
        });
        let slot = if init {
            &mut self.init[index]
        } else {
            &mut self.main[index]
        };
        let Some(child) = slot.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            let code = status.code().unwrap_or(128 + 9);
            Self::exited(&self.shared, &key, slot, code, &policy, init);
        }
    }

    /// Runs init containers one by one; true once all have succeeded.
    async fn step_init(&mut self) -> Result<bool, KubeletError> {
        for i in 0..self.init.len() {
            if self.init[i].done
                && self.init[i]
                    .state
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.0 == 0)
            {
                continue;
            }
            if self.init[i].done {
                return Ok(false); // failed with restartPolicy Never: the pod has failed
            }
            if self.init[i].child.is_none()
                && self.init[i].binary.is_none()
                && self.init[i].state.running_since.is_some()
            {
                // A process-less init container "completes" at once.
                let slot = &mut self.init[i];
                let now = Timestamp::now();
                slot.state.terminated = Some((
                    0,
                    "Completed".into(),
                    slot.state.running_since.take().unwrap_or(now),
                    now,
                ));
                slot.done = true;
                continue;
            }
            if self.init[i].child.is_none()
                && self.init[i].next_start.is_some_and(|t| t <= Instant::now())
            {
                self.start(i, true).await?;
            }
            self.poll_exit(i, true);
            return Ok(false);
        }
        for slot in &mut self.main {
            if slot.child.is_none()
                && slot.state.running_since.is_none()
                && slot.state.waiting.is_none()
            {
                slot.state.waiting = Some("ContainerCreating".into());
            }
        }
        Ok(true)
    }

    async fn step_main(&mut self) -> Result<(), KubeletError> {
        for i in 0..self.main.len() {
            if !self.main[i].done
                && self.main[i].child.is_none()
                && self.main[i].next_start.is_some_and(|t| t <= Instant::now())
            {
                self.start(i, false).await?;
            }
            self.poll_exit(i, false);
            self.probe(i).await;
        }
        Ok(())
    }

    /// Runs readiness and liveness probes that are due.
    async fn probe(&mut self, index: usize) {
        let ip = self.ip.clone();
        let key = self.key(&self.main[index].spec.name);
        let slot = &mut self.main[index];
        if slot.state.running_since.is_none() || Instant::now() < slot.next_probe {
            return;
        }
        let spec = slot.spec.clone();
        let period = |p: &k8s_openapi::api::core::v1::Probe| {
            Duration::from_secs(
                u64::try_from(p.period_seconds.unwrap_or(10))
                    .unwrap_or(10)
                    .max(1),
            )
        };
        let mut next = Duration::from_secs(1);
        match &spec.readiness_probe {
            None => slot.state.ready = slot.binary.is_none() || slot.child.is_some(),
            Some(p) if slot.binary.is_none() => {
                let _ = p;
                slot.state.ready = true;
            }
            Some(p) => {
                next = next.min(period(p));
                if probe::check(p, &spec, &ip).await {
                    slot.readiness_successes += 1;
                    slot.readiness_failures = 0;
                    if slot.readiness_successes >= p.success_threshold.unwrap_or(1) {
                        slot.state.ready = true;
                    }
                } else {
                    slot.readiness_successes = 0;
                    slot.readiness_failures += 1;
                    if slot.readiness_failures >= p.failure_threshold.unwrap_or(3) {
                        slot.state.ready = false;
                    }
                }
            }
        }
        if let (Some(p), Some(child)) = (&spec.liveness_probe, slot.child.as_ref()) {
            next = next.min(period(p));
            let started = slot
                .state
                .running_since
                .map(|t| Timestamp::now().duration_since(t).as_secs())
                .unwrap_or(0);
            if started >= i64::from(p.initial_delay_seconds.unwrap_or(0)) {
                if probe::check(p, &spec, &ip).await {
                    slot.liveness_failures = 0;
                } else {
                    slot.liveness_failures += 1;
                    if slot.liveness_failures >= p.failure_threshold.unwrap_or(3) {
                        warn!(container = %spec.name, "liveness probe failed; restarting");
                        if let Some(pid) = child.id() {
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                        let _ = key;
                    }
                }
            }
        }
        slot.next_probe = Instant::now() + next;
    }

    fn phase(&self, initialized: bool) -> &'static str {
        let init_failed = self
            .init
            .iter()
            .any(|s| s.done && s.state.terminated.as_ref().is_some_and(|t| t.0 != 0));
        if init_failed {
            return "Failed";
        }
        if !initialized {
            return "Pending";
        }
        if !self.main.is_empty() && self.main.iter().all(|s| s.done) {
            let ok = self
                .main
                .iter()
                .all(|s| s.state.terminated.as_ref().is_some_and(|t| t.0 == 0));
            return if ok { "Succeeded" } else { "Failed" };
        }
        if self
            .main
            .iter()
            .any(|s| s.state.running_since.is_some() || s.state.restart_count > 0)
        {
            "Running"
        } else {
            "Pending"
        }
    }

    async fn report(&mut self, initialized: bool) {
        let init: Vec<ContainerState> = self.init.iter().map(|s| s.state.clone()).collect();
        let main: Vec<ContainerState> = self.main.iter().map(|s| s.state.clone()).collect();
        let uid = self.pod.uid().unwrap_or_default();
        let state = PodState {
            uid: &uid,
            ip: &self.ip,
            start_time: self.start_time,
            init: &init,
            main: &main,
            phase: self.phase(initialized),
            initialized,
        };
        let status = status::render(&state, &self.last_status);
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
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(e) => warn!(error = %e, "pod status update failed"),
        }
    }

    /// SIGTERM every process, wait the grace period, SIGKILL, then remove the pod object.
    async fn terminate(&mut self) -> Result<(), KubeletError> {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(30));
        let slots = self.init.iter_mut().chain(self.main.iter_mut());
        let mut children: Vec<(String, Child)> = Vec::new();
        for slot in slots {
            if let Some(child) = slot.child.take() {
                if let Some(pid) = child.id() {
                    process::signal_group(pid, Signal::SIGTERM);
                }
                children.push((slot.spec.name.clone(), child));
            }
        }
        for (name, mut child) in children {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                if let Some(pid) = child.id() {
                    process::signal_group(pid, Signal::SIGKILL);
                }
                let _ = child.wait().await;
            }
            self.shared.processes.remove(&self.key(&name));
        }
        let pods: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&self.pod.name_any(), &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(super::kube_err("removing the pod object")(e)),
        }
    }
}
