//! When a ServingEndpoint is looked at again after a successful reconcile.

use std::time::Duration;

use kube::runtime::controller::Action;
use sluice_crds::ServingEndpointStatus;

use crate::conditions::RESOLVED;

/// After a successful reconcile: a spec that cannot be resolved waits for the next change (of
/// the endpoint or a ModelVersion, both watched) instead of polling; a rollout looks again
/// soon in case a Deployment stalls without an event; a settled endpoint resyncs rarely.
pub fn next_action(status: &ServingEndpointStatus) -> Action {
    let unresolved = status
        .conditions
        .iter()
        .any(|c| c.type_ == RESOLVED && c.status == "False");
    if unresolved {
        Action::await_change()
    } else if status.pending_config.is_some() {
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::requeue(Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use sluice_crds::EndpointConfigStatus;

    use super::*;

    #[test]
    fn unresolvable_specs_wait_rollouts_look_again_soon_and_settled_ones_rarely() {
        let unresolved = ServingEndpointStatus {
            conditions: vec![Condition {
                type_: RESOLVED.into(),
                status: "False".into(),
                reason: crate::conditions::Reason::ResolveFailed.as_str().into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        };
        assert_eq!(next_action(&unresolved), Action::await_change());
        let rolling = ServingEndpointStatus {
            pending_config: Some(EndpointConfigStatus::default()),
            ..Default::default()
        };
        assert_eq!(
            next_action(&rolling),
            Action::requeue(Duration::from_secs(30))
        );
        assert_eq!(
            next_action(&ServingEndpointStatus::default()),
            Action::requeue(Duration::from_secs(300))
        );
    }
}
