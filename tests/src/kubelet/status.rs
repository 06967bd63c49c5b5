//! Pod status as the kubelet reports it: phase (computed the way the kubelet's `getPhase`
//! does), conditions with `lastTransitionTime`, addresses, and container states.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// How a container run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    /// Exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    /// The termination message (`terminationMessagePath`, or the log's tail under
    /// `FallbackToLogsOnError`).
    pub message: Option<String>,
    /// When that run started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
}

impl Termination {
    fn to_json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code, "reason": self.reason,
            "startedAt": self.started.to_string(), "finishedAt": self.finished.to_string(),
        });
        if let Some(signal) = self.signal {
            t["signal"] = json!(signal);
        }
        if let Some(message) = &self.message {
            t["message"] = json!(message);
        }
        json!({ "terminated": t })
    }
}

/// The observable state of one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Running since (None when not running).
    pub running_since: Option<Timestamp>,
    /// Waiting reason and message (`ContainerCreating`, `PodInitializing`,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, `RunContainerError`).
    pub waiting: Option<(String, String)>,
    /// How the current run ended, when it ended for good (no restart coming).
    pub terminated: Option<Termination>,
    /// How the run before the current state ended, when it was restarted.
    pub last_terminated: Option<Termination>,
    /// Passed its startup probe (or has none) while running.
    pub started: bool,
    /// Passing its readiness probe (or has none) while running.
    pub ready: bool,
    /// Times restarted.
    pub restart_count: i32,
}

impl ContainerState {
    fn to_json(&self, uid: &str) -> Value {
        let state = if let Some(since) = self.running_since {
            json!({"running": {"startedAt": since.to_string()}})
        } else if let Some(t) = &self.terminated {
            t.to_json()
        } else {
            let (reason, message) = self
                .waiting
                .clone()
                .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
            let mut waiting = json!({ "reason": reason });
            if !message.is_empty() {
                waiting["message"] = json!(message);
            }
            json!({ "waiting": waiting })
        };
        json!({
            "name": self.name, "image": self.image, "imageID": format!("sluice-process://{}", self.image),
            "containerID": format!("sluice-process://{uid}/{}", self.name),
            "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_terminated.as_ref().map(Termination::to_json).unwrap_or_else(|| json!({})),
        })
    }

    /// Has not run yet.
    fn never_ran(&self) -> bool {
        self.running_since.is_none() && self.terminated.is_none() && self.last_terminated.is_none()
    }

    /// The exit code of its latest finished run.
    fn last_exit(&self) -> Option<i32> {
        self.terminated
            .as_ref()
            .or(self.last_terminated.as_ref())
            .map(|t| t.exit_code)
    }
}

/// The pod phase from its containers, as the kubelet's `getPhase` computes it.
pub fn phase(
    init_failed: bool,
    initialized: bool,
    main: &[ContainerState],
    policy: &str,
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !initialized || main.is_empty() || main.iter().any(ContainerState::never_ran) {
        return "Pending";
    }
    if main.iter().any(|c| c.running_since.is_some()) {
        return "Running";
    }
    let succeeded = main.iter().all(|c| c.last_exit() == Some(0));
    match policy {
        "Always" => "Running",
        _ if succeeded => "Succeeded",
        "Never" => "Failed",
        _ => "Running",
    }
}

/// Everything a pod status is computed from.
pub struct PodView<'a> {
    /// Pod uid (for container ids).
    pub uid: &'a str,
    /// Pod address.
    pub ip: &'a str,
    /// When the kubelet took the pod.
    pub start_time: Timestamp,
    /// The pod's volumes are in place (`PodReadyToStartContainers`).
    pub sandbox_ready: bool,
    /// Init containers.
    pub init: &'a [ContainerState],
    /// Main containers.
    pub main: &'a [ContainerState],
    /// Phase.
    pub phase: &'a str,
    /// All init containers finished.
    pub initialized: bool,
    /// Names of readiness gates whose condition is not `True`.
    pub gates_pending: &'a [String],
}

fn names(containers: &[ContainerState], pick: impl Fn(&ContainerState) -> bool) -> String {
    let names: Vec<&str> = containers
        .iter()
        .filter(|c| pick(c))
        .map(|c| c.name.as_str())
        .collect();
    format!("[{}]", names.join(" "))
}

/// The `status` object (for a strategic merge patch of `pods/status`: conditions merge by type,
/// so the scheduler's `PodScheduled` stays), with `lastTransitionTime`s kept from `previous`
/// while a condition's status is unchanged.
pub fn render(s: &PodView<'_>, previous: &Value) -> Value {
    let terminal = s.phase == "Succeeded" || s.phase == "Failed";
    let containers_ready = !terminal && s.initialized && s.main.iter().all(|c| c.ready);
    let ready = containers_ready && s.gates_pending.is_empty();
    let now = Timestamp::now().to_string();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let kept = previous["conditions"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == type_ && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        let mut c = json!({"type": type_, "status": status, "lastTransitionTime": kept});
        if !ok {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        c
    };
    let (not_ready_reason, not_ready_message) = if terminal {
        ("PodCompleted", String::new())
    } else {
        (
            "ContainersNotReady",
            format!(
                "containers with unready status: {}",
                names(s.main, |c| !c.ready)
            ),
        )
    };
    let (ready_reason, ready_message) = if containers_ready {
        (
            "ReadinessGatesNotReady",
            format!(
                "corresponding condition of pod readiness gate {:?} does not exist or is not True",
                s.gates_pending.join(",")
            ),
        )
    } else {
        (not_ready_reason, not_ready_message.clone())
    };
    json!({
        "phase": s.phase,
        // `$patch: replace`: the address lists are replaced, not merged with an earlier one.
        "hostIP": "127.0.0.1", "hostIPs": [{"$patch": "replace"}, {"ip": "127.0.0.1"}],
        "podIP": s.ip, "podIPs": [{"$patch": "replace"}, {"ip": s.ip}],
        "startTime": s.start_time.to_string(),
        "conditions": [
            condition("PodReadyToStartContainers", s.sandbox_ready, "", String::new()),
            condition("Initialized", s.initialized, "ContainersNotInitialized",
                      format!("containers with incomplete status: {}", names(s.init, |c| c.terminated.as_ref().is_none_or(|t| t.exit_code != 0)))),
            condition("ContainersReady", containers_ready, not_ready_reason, not_ready_message),
            condition("Ready", ready, ready_reason, ready_message),
        ],
        "initContainerStatuses": s.init.iter().map(|c| c.to_json(s.uid)).collect::<Vec<_>>(),
        "containerStatuses": s.main.iter().map(|c| c.to_json(s.uid)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> ContainerState {
        ContainerState {
            name: "c".into(),
            running_since: Some(Timestamp::now()),
            started: true,
            ready: true,
            ..Default::default()
        }
    }

    fn ended(code: i32, restarting: bool) -> ContainerState {
        let t = Termination {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started: Timestamp::now(),
            finished: Timestamp::now(),
        };
        ContainerState {
            name: "c".into(),
            terminated: (!restarting).then(|| t.clone()),
            last_terminated: restarting.then_some(t),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase(false, false, &[running()], "Always"), "Pending");
        assert_eq!(phase(true, false, &[running()], "Never"), "Failed");
        assert_eq!(
            phase(false, true, &[ContainerState::default()], "Always"),
            "Pending"
        );
        assert_eq!(
            phase(false, true, &[running(), ended(1, false)], "Never"),
            "Running"
        );
        assert_eq!(phase(false, true, &[ended(3, true)], "Always"), "Running");
        assert_eq!(phase(false, true, &[ended(0, false)], "Never"), "Succeeded");
        assert_eq!(
            phase(false, true, &[ended(0, false)], "OnFailure"),
            "Succeeded"
        );
        assert_eq!(
            phase(false, true, &[ended(0, false), ended(2, false)], "Never"),
            "Failed"
        );
        assert_eq!(
            phase(false, true, &[ended(2, true)], "OnFailure"),
            "Running"
        );
    }

    #[test]
    fn conditions_keep_their_transition_times_and_explain_themselves() {
        let mut c = running();
        c.ready = false;
        let view = |previous: &Value| {
            render(
                &PodView {
                    uid: "u",
                    ip: "127.10.0.1",
                    start_time: Timestamp::now(),
                    sandbox_ready: true,
                    init: &[],
                    main: std::slice::from_ref(&c),
                    phase: "Running",
                    initialized: true,
                    gates_pending: &[],
                },
                previous,
            )
        };
        let first = view(&Value::Null);
        let ready = &first["conditions"][3];
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [c]");
        let again = view(&first);
        assert_eq!(again["conditions"], first["conditions"]);
        assert_eq!(first["podIPs"][1]["ip"], "127.10.0.1");
        assert_eq!(first["hostIP"], "127.0.0.1");
    }
}
