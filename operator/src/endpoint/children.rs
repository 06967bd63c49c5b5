//! What the cluster shows of an entity's child Deployment, read into the plain
//! [`ChildState`] the plan step takes.

use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::Time};

use super::plan::{ChildState, LastScale};
use crate::autoscaler::{FIELD_MANAGER, SCALE_MESSAGE, SCALE_REASON, SCALED_AT};

/// The state of child Deployment `d` of the endpoint whose uid is `owner` (its pods' problems
/// are added by the caller).
pub fn child_state(d: &Deployment, owner: Option<&str>) -> ChildState {
    let status = d.status.clone().unwrap_or_default();
    let failed = status.conditions.iter().flatten().find_map(|c| {
        let stalled =
            c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False");
        stalled.then(|| {
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default()
        })
    });
    let annotations = d.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
    let last_scale = annotation(SCALE_REASON).map(|reason| LastScale {
        reason,
        message: annotation(SCALE_MESSAGE).unwrap_or_default(),
        at: annotation(SCALED_AT).and_then(|t| t.parse().ok()).map(Time),
    });
    ChildState {
        desired: d.spec.replicas.unwrap_or(1),
        current: status.replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        last_scale,
        failed,
        problem: None,
        autoscaler_owns_replicas: autoscaler_owns_replicas(d),
        owned: d
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && owner.is_some_and(|uid| uid == o.uid)),
    }
}

/// Whether the autoscaler's field manager owns `spec.replicas` of `d`.
fn autoscaler_owns_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).expect("deployment fixture")
    }

    #[test]
    fn replicas_readiness_and_a_stalled_rollout_are_read() {
        let d = deployment(serde_json::json!({
            "metadata": {"name": "ep-a-12345", "annotations": {
                SCALE_REASON: "Wake", SCALE_MESSAGE: "entity a: 0 -> 1 replicas",
                SCALED_AT: "2026-12-04T10:00:00Z"}},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"replicas": 3, "readyReplicas": 1, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet ep-a-12345-x has timed out progressing."}]}
        }));
        let state = child_state(&d, None);
        assert_eq!((state.desired, state.current, state.ready), (3, 3, 1));
        assert_eq!(
            state.failed.as_deref(),
            Some("ReplicaSet ep-a-12345-x has timed out progressing.")
        );
        let last = state.last_scale.expect("last scale");
        assert_eq!(last.reason, "Wake");
        assert!(last.at.is_some());
        assert!(!state.autoscaler_owns_replicas);
    }

    #[test]
    fn replicas_belong_to_the_autoscaler_once_its_manager_holds_them() {
        let owned = |manager: &str| {
            deployment(serde_json::json!({
                "metadata": {"name": "d", "managedFields": [{
                    "manager": manager, "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                "spec": {"selector": {}, "template": {}}
            }))
        };
        assert!(child_state(&owned(FIELD_MANAGER), None).autoscaler_owns_replicas);
        assert!(!child_state(&owned("kubectl"), None).autoscaler_owns_replicas);
        // No replicas in the spec: a Deployment's default, one.
        assert_eq!(child_state(&owned("kubectl"), None).desired, 1);
    }
}
