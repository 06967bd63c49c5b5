//! Kubernetes-style conditions: set one, keeping `lastTransitionTime` unless its status flips,
//! so a status computed twice from the same inputs is identical and is not rewritten.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition type: the endpoint (or model version) serves as its spec asks.
pub const READY: &str = "Ready";
/// Condition type: every entity of the spec resolved to a ready ModelVersion.
pub const RESOLVED: &str = "Resolved";
/// Condition type: a pending config is rolling out (or why the last one failed).
pub const UPDATING: &str = "Updating";
/// Condition type: an entity keeps an older version because its alias is in conflict.
pub const ALIAS_CONFLICT: &str = "AliasConflict";
/// Condition type of a ModelVersion mirrored from a registry: the registry still holds its
/// version (`False`, reason [`DELETED_IN_REGISTRY`], once it does not).
pub const IN_REGISTRY: &str = "InRegistry";
/// Reason (and Warning event reason) of a mirrored version deleted in its registry.
pub const DELETED_IN_REGISTRY: &str = "DeletedInRegistry";
/// Condition type: the spec uses only what this version acts on.
pub const SUPPORTED: &str = "Supported";
/// Condition type: every child the plan wants was accepted by the API server.
pub const APPLIED: &str = "Applied";
/// Reason (and Warning event reason) for a spec field this version does not act on.
pub const FIELD_NOT_SUPPORTED: &str = "FieldNotSupported";
/// Reason (and Warning event reason) when the API server refused a child.
pub const APPLY_FAILED: &str = "ApplyFailed";

/// Condition status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`: not decided yet.
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition to set: type, status, a PascalCase reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: Status,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Builds the condition list for `desired`, reusing `previous` transition times where the
/// status did not change, and stamping `now` where it did.
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = d.status.as_str().to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.to_string(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The `Applied` condition: every child accepted, or which the API server refused and why.
pub fn applied(refused: &[String]) -> Desired {
    if refused.is_empty() {
        Desired {
            type_: APPLIED,
            status: Status::True,
            reason: "Applied",
            message: String::new(),
        }
    } else {
        Desired {
            type_: APPLIED,
            status: Status::False,
            reason: APPLY_FAILED,
            message: refused.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: Status, reason: &'static str) -> Desired {
        Desired {
            type_: "Ready",
            status,
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn transition_time_survives_an_unchanged_status_and_moves_on_a_flip() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let first = merge(&[], &[ready(Status::False, "Checking")], Some(1), t0);
        let same = merge(&first, &[ready(Status::False, "Checking")], Some(1), t1);
        assert_eq!(
            first, same,
            "recomputing an unchanged condition must not change it"
        );
        let flipped = merge(&same, &[ready(Status::True, "Checked")], Some(1), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn refused_children_are_named_in_the_applied_condition() {
        assert_eq!(applied(&[]).status, Status::True);
        let refused = applied(&["ep-a-1: denied by policy".into(), "ep-b-2: quota".into()]);
        assert_eq!(
            (refused.status, refused.reason),
            (Status::False, APPLY_FAILED)
        );
        assert_eq!(refused.message, "ep-a-1: denied by policy; ep-b-2: quota");
    }
}
