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
/// version (`False`, reason [`Reason::DeletedInRegistry`], once it does not).
pub const IN_REGISTRY: &str = "InRegistry";
/// Condition type: the spec uses only what this version acts on.
pub const SUPPORTED: &str = "Supported";
/// Condition type: every child the plan wants was accepted by the API server.
pub const APPLIED: &str = "Applied";

/// Declares [`Reason`]: each variant's name is its PascalCase text.
macro_rules! reasons {
    ($($(#[$doc:meta])+ $name:ident,)+) => {
        /// Why a condition has its status: its `reason`, in one list for both resources, so a
        /// reason that dashboards, alerts and tests match on is written once.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])+ $name,)+
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Reason] = &[$(Reason::$name,)+];

            /// The text in the condition (and in the event of the same reason).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }
        }
    };
}

reasons! {
    /// ServingEndpoint `Ready`: every entity of the active config is ready.
    AllEntitiesReady,
    /// ServingEndpoint `Ready`: entities of the active (or first) config are not ready yet.
    EntitiesNotReady,
    /// `Ready` and `Supported`: the spec sets a field this version does not act on (also the
    /// Warning event's reason).
    FieldNotSupported,
    /// `Supported`: every field of the spec acts.
    AllFieldsSupported,
    /// `Resolved`: every entity resolved to a ready ModelVersion.
    Resolved,
    /// `Resolved`: an entity names no ready version.
    ResolveFailed,
    /// `Updating`: a pending config is rolling out.
    RollingOut,
    /// `Updating`: the pending config failed; the previous one keeps serving.
    UpdateFailed,
    /// `Updating`: nothing is rolling out.
    UpToDate,
    /// ServingEndpoint `AliasConflict`: every alias names one version.
    NoConflict,
    /// ServingEndpoint `AliasConflict`: an entity keeps its version while its alias is claimed
    /// twice.
    KeepingPreviousVersion,
    /// `Applied`: the API server accepted every child.
    Applied,
    /// `Applied`: the API server refused a child (also the Warning event's reason).
    ApplyFailed,
    /// ModelVersion `Ready`: the format cannot serve the task.
    UnsupportedTask,
    /// ModelVersion `Ready`: the source URI's scheme is not fetched.
    UnsupportedSource,
    /// ModelVersion `Ready`: the source URI is malformed.
    InvalidSource,
    /// ModelVersion `Ready`: an older ModelVersion registers the same version number.
    DuplicateVersion,
    /// ModelVersion `Ready` and `SourceReachable`: the credentials Secret does not exist.
    SecretNotFound,
    /// ModelVersion `Ready`: the source check failed.
    SourceUnreachable,
    /// ModelVersion `Ready`: the source check reads the MLmodel's flavors.
    Inspecting,
    /// ModelVersion `Ready`: the source check resolves a registry reference.
    Resolving,
    /// ModelVersion `Ready`: the artifact was checked and serves.
    Checked,
    /// `SourceReachable`: a check Job runs.
    Checking,
    /// `SourceReachable`: the check read the artifact.
    Reachable,
    /// `SourceReachable`: the check could not read the artifact.
    Unreachable,
    /// `SourceReachable`: the check ended without a verdict.
    CheckIncomplete,
    /// ModelVersion `AliasConflict`: no alias is claimed by another version.
    AliasesUnique,
    /// ModelVersion `AliasConflict`: another version claims one of its aliases.
    AliasClaimedTwice,
    /// `InRegistry`: the registry still holds the mirrored version.
    Registered,
    /// `InRegistry`: the registry deleted the mirrored version (also the Warning event's
    /// reason).
    DeletedInRegistry,
    /// `Drifting`: every drift alert of the newest refresh is within its threshold.
    NoDrift,
    /// `Drifting`: a drift alert of the newest refresh crossed its threshold (also the
    /// Warning event's reason).
    DriftDetected,
    /// `QualityDegraded`: every quality alert of the newest refresh is within its threshold.
    QualityHolds,
    /// `QualityDegraded`: a quality alert of the newest refresh crossed its threshold.
    QualityBelowThreshold,
}

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
    /// Why.
    pub reason: Reason,
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
                reason: d.reason.as_str().to_string(),
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
            reason: Reason::Applied,
            message: String::new(),
        }
    } else {
        Desired {
            type_: APPLIED,
            status: Status::False,
            reason: Reason::ApplyFailed,
            message: refused.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: Status, reason: Reason) -> Desired {
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
        let first = merge(&[], &[ready(Status::False, Reason::Checking)], Some(1), t0);
        let same = merge(
            &first,
            &[ready(Status::False, Reason::Checking)],
            Some(1),
            t1,
        );
        assert_eq!(
            first, same,
            "recomputing an unchanged condition must not change it"
        );
        let flipped = merge(&same, &[ready(Status::True, Reason::Checked)], Some(1), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn every_reason_is_a_distinct_pascal_case_word() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in Reason::ALL {
            let text = reason.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.starts_with(|c: char| c.is_ascii_uppercase())
                    && text.chars().all(|c| c.is_ascii_alphanumeric()),
                "{text}"
            );
        }
    }

    #[test]
    fn refused_children_are_named_in_the_applied_condition() {
        assert_eq!(applied(&[]).status, Status::True);
        let refused = applied(&["ep-a-1: denied by policy".into(), "ep-b-2: quota".into()]);
        assert_eq!(
            (refused.status, refused.reason),
            (Status::False, Reason::ApplyFailed)
        );
        assert_eq!(refused.message, "ep-a-1: denied by policy; ep-b-2: quota");
    }
}
