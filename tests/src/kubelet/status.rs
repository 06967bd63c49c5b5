//! Pod status as the kubelet reports it: phase, conditions, addresses and container states.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// The observable state of one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Running since.
    pub running_since: Option<Timestamp>,
    /// Waiting reason (`ContainerCreating`, `CrashLoopBackOff`, `PodInitializing`).
    pub waiting: Option<String>,
    /// Last exit: (code, reason, started, finished).
    pub terminated: Option<(i32, String, Timestamp, Timestamp)>,
    /// The exit before the current run, if it was restarted.
    pub last_terminated: Option<(i32, String, Timestamp, Timestamp)>,
    /// Passing its readiness probe.
    pub ready: bool,
    /// Times restarted.
    pub restart_count: i32,
}

fn terminated(t: &(i32, String, Timestamp, Timestamp)) -> Value {
    json!({"terminated": {"exitCode": t.0, "reason": t.1, "startedAt": t.2.to_string(), "finishedAt": t.3.to_string()}})
}

impl ContainerState {
    fn to_json(&self, uid: &str) -> Value {
        let state = if let Some(since) = self.running_since {
            json!({"running": {"startedAt": since.to_string()}})
        } else if let Some(t) = &self.terminated {
            terminated(t)
        } else {
            json!({"waiting": {"reason": self.waiting.clone().unwrap_or_else(|| "ContainerCreating".into())}})
        };
        json!({
            "name": self.name, "image": self.image, "imageID": format!("sluice-process://{}", self.image),
            "containerID": format!("sluice-process://{uid}/{}", self.name),
            "ready": self.ready, "started": self.running_since.is_some(), "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_terminated.as_ref().map(terminated).unwrap_or_else(|| json!({})),
        })
    }
}

/// Everything a pod status is computed from.
pub struct PodState<'a> {
    /// Pod uid (for container ids).
    pub uid: &'a str,
    /// Pod address.
    pub ip: &'a str,
    /// When the kubelet took the pod.
    pub start_time: Timestamp,
    /// Init containers.
    pub init: &'a [ContainerState],
    /// Main containers.
    pub main: &'a [ContainerState],
    /// Phase.
    pub phase: &'a str,
    /// All init containers finished.
    pub initialized: bool,
}

/// The `status` object, with `lastTransitionTime`s kept from `previous` when unchanged.
pub fn render(s: &PodState<'_>, previous: &Value) -> Value {
    let containers_ready = s.initialized && !s.main.is_empty() && s.main.iter().all(|c| c.ready);
    let now = Timestamp::now().to_string();
    let condition = |type_: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let kept = previous["conditions"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == type_ && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        json!({"type": type_, "status": status, "lastTransitionTime": kept})
    };
    json!({
        "phase": s.phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": s.ip, "podIPs": [{"ip": s.ip}],
        "startTime": s.start_time.to_string(),
        "conditions": [
            condition("PodScheduled", true),
            condition("Initialized", s.initialized),
            condition("ContainersReady", containers_ready),
            condition("Ready", containers_ready),
        ],
        "initContainerStatuses": s.init.iter().map(|c| c.to_json(s.uid)).collect::<Vec<_>>(),
        "containerStatuses": s.main.iter().map(|c| c.to_json(s.uid)).collect::<Vec<_>>(),
    })
}
