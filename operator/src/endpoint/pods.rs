//! Why an entity's pods are not ready, read from what the scheduler and the kubelet report: the
//! first failing pod's reason and message, so a user sees "ImagePullBackOff: …" or "init
//! container fetch exited with code 1: … does not exist" within seconds instead of "0 of 1
//! replicas ready" until the rollout's progress deadline. Pure: the controller lists the pods,
//! this reads them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use kube::ResourceExt;

use super::desired::{LABEL_ENTITY, LABEL_REVISION, child_name};

/// The most of a pod's message kept in status and events.
const MESSAGE_LIMIT: usize = 512;

/// Why one pod is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// A short CamelCase cause, as Kubernetes names it: `Unschedulable`, `ImagePullBackOff`,
    /// `ErrImagePull`, `CreateContainerConfigError`, `CrashLoopBackOff`, `OOMKilled`, `Error`, …
    pub reason: String,
    /// The pod, the container and what they report, in one line.
    pub message: String,
}

/// Waiting reasons that are a normal step of starting, not a failure.
const STARTING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// The first failing pod of each child (by its `<endpoint>-<entity>-<revision>` name): the
/// oldest pod that is not ready and reports a failure.
pub fn problems_by_child(endpoint: &str, pods: &[Pod]) -> BTreeMap<String, PodProblem> {
    let mut sorted: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    sorted.sort_by_key(|p| (p.creation_timestamp(), p.name_any()));
    let mut found = BTreeMap::new();
    for pod in sorted {
        let labels = pod.labels();
        let (Some(entity), Some(revision)) = (labels.get(LABEL_ENTITY), labels.get(LABEL_REVISION))
        else {
            continue;
        };
        if let Some(problem) = problem_of(pod) {
            found
                .entry(child_name(endpoint, entity, revision))
                .or_insert(problem);
        }
    }
    found
}

/// Why `pod` is not ready, when it reports a failure (a pod that is merely starting has none).
pub fn problem_of(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    let pod_name = pod.name_any();
    if let Some(c) = condition("PodScheduled").filter(|c| c.status == "False") {
        let reason = c.reason.clone().unwrap_or_else(|| "Unschedulable".into());
        let message = c.message.clone().unwrap_or_default();
        return Some(problem(reason, format!("pod {pod_name}: {message}")));
    }
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.map(|c| ("init container", c))
        .chain(main.map(|c| ("container", c)))
        .find_map(|(kind, c)| container_problem(kind, c))
        .map(|(reason, message)| problem(reason, format!("pod {pod_name}: {message}")))
}

fn problem(reason: String, message: String) -> PodProblem {
    PodProblem {
        reason,
        message: shorten(&message),
    }
}

/// What one container reports of a failure: waiting for a reason that is not a normal step
/// of starting, ended with a non-zero code, or restarted after the OOM killer ended it.
fn container_problem(kind: &str, c: &ContainerStatus) -> Option<(String, String)> {
    let name = &c.name;
    let state = c.state.as_ref()?;
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.clone().unwrap_or_default();
        if reason.is_empty() || STARTING.contains(&reason.as_str()) {
            return None;
        }
        if reason == "CrashLoopBackOff"
            && let Some(t) = last
        {
            let cause = if t.reason.as_deref() == Some("OOMKilled") {
                "OOMKilled".to_string()
            } else {
                reason
            };
            return Some((
                cause,
                format!("{kind} {name} {}", exited(t, c.restart_count)),
            ));
        }
        let message = waiting.message.clone().unwrap_or_default();
        return Some((reason, format!("{kind} {name}: {message}")));
    }
    if let Some(t) = state.terminated.as_ref().filter(|t| t.exit_code != 0) {
        let reason = t.reason.clone().unwrap_or_else(|| "Error".into());
        return Some((
            reason,
            format!("{kind} {name} {}", exited(t, c.restart_count)),
        ));
    }
    if state.running.is_some()
        && !c.ready
        && let Some(t) = last.filter(|t| t.reason.as_deref() == Some("OOMKilled"))
    {
        return Some((
            "OOMKilled".into(),
            format!("{kind} {name} {}", exited(t, c.restart_count)),
        ));
    }
    None
}

/// "exited with code 1 (Error), restarted 3 times: <the last line of its message>".
fn exited(t: &ContainerStateTerminated, restarts: i32) -> String {
    let mut text = format!("exited with code {}", t.exit_code);
    if let Some(reason) = &t.reason {
        text.push_str(&format!(" ({reason})"));
    }
    if restarts > 0 {
        text.push_str(&format!(
            ", restarted {restarts} time{}",
            if restarts == 1 { "" } else { "s" }
        ));
    }
    if let Some(line) = t
        .message
        .as_deref()
        .and_then(|m| m.lines().rev().map(str::trim).find(|l| !l.is_empty()))
    {
        text.push_str(": ");
        text.push_str(line);
    }
    text
}

/// At most [`MESSAGE_LIMIT`] bytes, cut at a character boundary.
fn shorten(text: &str) -> String {
    if text.len() <= MESSAGE_LIMIT {
        return text.to_string();
    }
    let mut end = MESSAGE_LIMIT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, created: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created,
                         "labels": {LABEL_ENTITY: "champion", LABEL_REVISION: "abc123"}},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn unschedulable_pods_carry_the_schedulers_message() {
        let p = pod(
            "p",
            "2026-01-01T00:00:00Z",
            json!({"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}),
        );
        let found = problem_of(&p).expect("problem");
        assert_eq!(found.reason, "Unschedulable");
        assert_eq!(
            found.message,
            "pod p: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
        );
    }

    #[test]
    fn a_failing_fetch_shows_its_exit_and_last_line() {
        let p = pod(
            "p",
            "2026-01-01T00:00:00Z",
            json!({
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": "False"}],
                "initContainerStatuses": [{"name": "fetch", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                        "message": "progress\ncannot fetch pvc://models/x: /mnt/pvc/models/x does not exist\n"}}}],
                "containerStatuses": [{"name": "model", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]
            }),
        );
        let found = problem_of(&p).expect("problem");
        assert_eq!(found.reason, "CrashLoopBackOff");
        assert_eq!(
            found.message,
            "pod p: init container fetch exited with code 1 (Error), restarted 2 times: \
             cannot fetch pvc://models/x: /mnt/pvc/models/x does not exist"
        );
    }

    #[test]
    fn image_pulls_config_errors_and_oom_kills_are_failures_but_starting_is_not() {
        let waiting = |reason: &str| {
            pod(
                "p",
                "2026-01-01T00:00:00Z",
                json!({"containerStatuses": [
                {"name": "model", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": reason, "message": "details"}}}]}),
            )
        };
        for reason in [
            "ImagePullBackOff",
            "ErrImagePull",
            "CreateContainerConfigError",
        ] {
            let found = problem_of(&waiting(reason)).expect(reason);
            assert_eq!(
                (found.reason.as_str(), found.message.as_str()),
                (reason, "pod p: container model: details")
            );
        }
        assert_eq!(problem_of(&waiting("ContainerCreating")), None);
        let oom = pod(
            "p",
            "2026-01-01T00:00:00Z",
            json!({"containerStatuses": [
            {"name": "model", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
             "state": {"running": {}},
             "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        let found = problem_of(&oom).expect("oom");
        assert_eq!(found.reason, "OOMKilled");
        assert!(found.message.contains("exited with code 137 (OOMKilled)"));
        let ready = pod(
            "p",
            "2026-01-01T00:00:00Z",
            json!({
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "model", "image": "i", "imageID": "", "ready": true,
                "restartCount": 1, "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        assert_eq!(problem_of(&ready), None, "a ready pod is not failing");
    }

    #[test]
    fn the_oldest_failing_pod_of_each_child_is_reported() {
        let failing = |name: &str, created: &str| {
            pod(
                name,
                created,
                json!({"containerStatuses": [
                {"name": "model", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": name}}}]}),
            )
        };
        let pods = [
            failing("young", "2026-01-02T00:00:00Z"),
            failing("old", "2026-01-01T00:00:00Z"),
        ];
        let found = problems_by_child("ep", &pods);
        assert_eq!(found.len(), 1);
        assert!(found["ep-champion-abc123"].message.starts_with("pod old:"));
        assert_eq!(shorten(&"é".repeat(400)).len(), MESSAGE_LIMIT - 1);
    }
}
