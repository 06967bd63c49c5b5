//! One container of a pod and its lifecycle: waiting → running → terminated, restarts by the
//! restart policy with exponential backoff, probe results, and restarts asked for by a failing
//! liveness or startup probe (SIGTERM, then SIGKILL after the grace period).

use std::time::{Duration, Instant};

use k8s_openapi::{api::core::v1::Container, jiff::Timestamp};
use nix::sys::signal::Signal;
use tokio::process::Child;

use super::{
    probes::{Kind, ProbeTracker, Verdict},
    process::{self, Launch, ProcessTable},
    status::{ContainerState, Termination},
};

/// The restart delay never grows beyond this (as in the kubelet).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A run this long resets the backoff (the kubelet uses twice the maximum backoff).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What part a container plays in its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An init container: runs to completion before the next one starts.
    Init,
    /// An init container with `restartPolicy: Always` (a sidecar): started in init order, then
    /// kept running.
    Sidecar,
    /// A regular container.
    Main,
}

/// One container and what the kubelet tracks about it.
pub struct ContainerRun {
    /// Its spec.
    pub spec: Container,
    /// Its role.
    pub role: Role,
    /// Whether its image runs as a real container (one on a loopback registry); other images
    /// run without a process.
    pub real: bool,
    /// What the pod status shows.
    pub state: ContainerState,
    child: Option<Child>,
    pid: Option<u32>,
    run_started: Option<Instant>,
    probes: Option<ProbeTracker>,
    base_backoff: Duration,
    backoff: Duration,
    next_start: Option<Instant>,
    kill_at: Option<Instant>,
    retired: bool,
    /// The last launch, reused by exec probes.
    pub launch: Option<Launch>,
}

impl ContainerRun {
    /// A container that has not started; it may start right away.
    pub fn new(spec: Container, role: Role, real: bool, backoff: Duration, waiting: &str) -> Self {
        let state = ContainerState {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            waiting: Some((waiting.into(), String::new())),
            ..Default::default()
        };
        Self {
            spec,
            role,
            real,
            state,
            child: None,
            pid: None,
            run_started: None,
            probes: None,
            base_backoff: backoff,
            backoff,
            next_start: Some(Instant::now()),
            kill_at: None,
            retired: false,
            launch: None,
        }
    }

    /// Whether it should be started now.
    pub fn due(&self, now: Instant) -> bool {
        self.state.running_since.is_none() && self.next_start.is_some_and(|t| t <= now)
    }

    /// Running (with or without a process).
    pub fn running(&self) -> bool {
        self.state.running_since.is_some()
    }

    /// Ended and will not run again.
    pub fn finished(&self) -> bool {
        !self.running() && self.next_start.is_none()
    }

    /// Finished with exit code 0.
    pub fn succeeded(&self) -> bool {
        self.finished()
            && self
                .state
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code == 0)
    }

    /// The pid of its running container's `podman run`.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Marks it running: with `child`, or without a process (an image that is not mapped,
    /// reported ready at once; an init container of that kind completes at once).
    pub fn started(&mut self, child: Option<Child>, launch: Option<Launch>) {
        let now = Timestamp::now();
        self.state.waiting = None;
        self.state.terminated = None;
        self.next_start = None;
        self.kill_at = None;
        self.launch = launch;
        match child {
            Some(child) => {
                self.pid = child.id();
                self.child = Some(child);
                self.run_started = Some(Instant::now());
                let probes = ProbeTracker::new(&self.spec, Instant::now());
                self.state.started = probes.started();
                self.state.ready = probes.ready(&self.spec);
                self.probes = Some(probes);
                self.state.running_since = Some(now);
            }
            None if self.role == Role::Init => {
                self.state.terminated = Some(Termination {
                    exit_code: 0,
                    signal: None,
                    reason: "Completed".into(),
                    message: None,
                    started: now,
                    finished: now,
                });
            }
            None => {
                self.state.running_since = Some(now);
                self.state.started = true;
                self.state.ready = true;
            }
        }
    }

    /// It could not be started (`reason`: `CreateContainerConfigError`, `RunContainerError`,
    /// `ErrImagePull`); it is tried again after the base backoff, or for image pulls after a
    /// backoff that doubles per failure (`ImagePullBackOff` meanwhile).
    pub fn start_failed(&mut self, reason: &str, message: String) {
        let delay = if reason == "ErrImagePull" {
            let pulling = self
                .state
                .waiting
                .as_ref()
                .is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff");
            let delay = if pulling {
                self.backoff
            } else {
                self.base_backoff
            };
            self.backoff = (delay * 2).min(MAX_BACKOFF);
            let shown = if pulling {
                (
                    "ImagePullBackOff",
                    format!("Back-off pulling image: {message}"),
                )
            } else {
                ("ErrImagePull", message)
            };
            self.state.waiting = Some((shown.0.into(), shown.1));
            delay
        } else {
            self.state.waiting = Some((reason.into(), message));
            self.base_backoff
        };
        self.next_start = Some(Instant::now() + delay);
    }

    /// Whether the restart policy restarts it after exiting with `code`.
    fn restarts(&self, policy: &str, code: i32) -> bool {
        match self.role {
            Role::Sidecar => true,
            Role::Init => policy != "Never" && code != 0,
            Role::Main => match policy {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            },
        }
    }

    /// Collects its exit if the container ended; schedules a restart when `policy` wants one
    /// (and `allow_restart`). Returns the exit code.
    pub async fn poll_exit(
        &mut self,
        table: &ProcessTable,
        key: &str,
        policy: &str,
        allow_restart: bool,
    ) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(self.exited(table, key, status, policy, allow_restart).await)
    }

    /// Waits (up to `limit`) for the process to end, as during pod termination.
    pub async fn wait_exit(&mut self, table: &ProcessTable, key: &str, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                self.exited(table, key, status, "Never", false).await;
                true
            }
            _ => false,
        }
    }

    async fn exited(
        &mut self,
        table: &ProcessTable,
        key: &str,
        status: std::process::ExitStatus,
        policy: &str,
        allow_restart: bool,
    ) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        if let Some(pid) = self.pid.take() {
            table.exited(key, pid);
        }
        self.child = None;
        self.probes = None;
        self.kill_at = None;
        let code = process::exit_code(status);
        let ended = match &self.launch {
            Some(launch) => process::collect(launch, code != 0).await,
            None => process::Ended::default(),
        };
        let oom = ended.oom;
        let now = Timestamp::now();
        let reason = match (code, oom) {
            (_, true) => "OOMKilled",
            (0, false) => "Completed",
            _ => "Error",
        };
        let termination = Termination {
            exit_code: code,
            signal: status.signal(),
            reason: reason.into(),
            message: ended.message,
            started: self.state.running_since.take().unwrap_or(now),
            finished: now,
        };
        self.state.ready = false;
        self.state.started = false;
        let ran = self
            .run_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if allow_restart && !self.retired && self.restarts(policy, code) {
            if ran >= BACKOFF_RESET {
                self.backoff = self.base_backoff;
            }
            self.state.last_terminated = Some(termination);
            self.state.restart_count += 1;
            self.state.waiting = Some((
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container",
                    self.backoff.as_secs()
                ),
            ));
            self.next_start = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else {
            self.state.terminated = Some(termination);
            self.next_start = None;
        }
        code
    }

    /// Never starts it again (the pod is done with it).
    pub fn retire(&mut self) {
        self.retired = true;
        self.next_start = None;
    }

    /// Sends `signal` to its container's main process.
    pub fn signal(&self, signal: Signal) {
        if self.pid.is_some()
            && let Some(launch) = &self.launch
        {
            process::signal_container(&launch.name, signal);
        }
    }

    /// SIGTERMs it for a restart; SIGKILL follows after `grace` (see [`Self::enforce_kill`]).
    pub fn kill_for_restart(&mut self, grace: Duration) {
        if self.kill_at.is_none() {
            self.signal(Signal::SIGTERM);
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    /// SIGKILLs it when a SIGTERM's grace period is over.
    pub fn enforce_kill(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|t| t <= now) {
            self.signal(Signal::SIGKILL);
            // Again in a while, should the container outlive this one.
            self.kill_at = Some(now + Duration::from_secs(2));
        }
    }

    /// Probes due now (only for a running process).
    pub fn due_probes(&self, now: Instant) -> Vec<(Kind, k8s_openapi::api::core::v1::Probe)> {
        match (&self.probes, self.kill_at) {
            (Some(p), None) => p.due(&self.spec, now),
            _ => Vec::new(),
        }
    }

    /// Records a probe result; returns the verdict and updates `started`/`ready`.
    pub fn record_probe(
        &mut self,
        kind: Kind,
        probe: &k8s_openapi::api::core::v1::Probe,
        ok: bool,
        now: Instant,
    ) -> Verdict {
        let Some(tracker) = self.probes.as_mut() else {
            return Verdict::Keep;
        };
        let verdict = tracker.record(kind, probe, ok, now);
        self.state.started = tracker.started();
        self.state.ready = tracker.ready(&self.spec);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(role: Role) -> ContainerRun {
        ContainerRun::new(
            Container::default(),
            role,
            false,
            Duration::from_secs(1),
            "ContainerCreating",
        )
    }

    #[test]
    fn restart_policies() {
        let main = run(Role::Main);
        assert!(main.restarts("Always", 0));
        assert!(!main.restarts("OnFailure", 0));
        assert!(main.restarts("OnFailure", 1));
        assert!(!main.restarts("Never", 1));
        let init = run(Role::Init);
        assert!(!init.restarts("Always", 0));
        assert!(init.restarts("Always", 1));
        assert!(!init.restarts("Never", 1));
        assert!(run(Role::Sidecar).restarts("Never", 0));
    }

    #[test]
    fn processless_containers_run_ready_and_init_ones_complete() {
        let mut main = run(Role::Main);
        assert!(main.due(Instant::now()));
        main.started(None, None);
        assert!(main.running() && main.state.ready && !main.finished());
        let mut init = run(Role::Init);
        init.started(None, None);
        assert!(init.succeeded());
    }
}
