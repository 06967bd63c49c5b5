//! The events the ServingEndpoint pipeline publishes: every reason is a variant, so a reason
//! dashboards and alerts match on cannot drift between the step that decides and the shell that
//! publishes.

use crate::conditions::Reason;

/// Why an event is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventReason {
    /// A new config started rolling out.
    UpdateStarted,
    /// The spec went back to the active config; the pending config was dropped.
    UpdateReverted,
    /// A config now serves.
    Promoted,
    /// A pending config failed (or the spec cannot be resolved); the old config keeps serving.
    UpdateFailed,
    /// The spec sets a field this version does not act on.
    FieldNotSupported,
    /// An entity's alias is claimed by several versions; it keeps the one it had.
    AliasConflict,
    /// The API server refused a child object.
    ApplyFailed,
    /// A child no config uses was removed.
    Pruned,
    /// An entity's pods fail, with the reason as Kubernetes names it (`ImagePullBackOff`,
    /// `CrashLoopBackOff`, `Unschedulable`, …).
    EntityFailing(String),
    /// A monitoring refresh failed.
    MonitoringFailed,
    /// A drift alert began firing.
    DriftDetected,
    /// A quality alert began firing.
    QualityDegraded,
}

impl EventReason {
    /// The event's `reason`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::UpdateStarted => "UpdateStarted",
            Self::UpdateReverted => "UpdateReverted",
            Self::Promoted => "Promoted",
            Self::UpdateFailed => "UpdateFailed",
            Self::FieldNotSupported => Reason::FieldNotSupported.as_str(),
            Self::AliasConflict => "AliasConflict",
            Self::ApplyFailed => Reason::ApplyFailed.as_str(),
            Self::Pruned => "Pruned",
            Self::EntityFailing(reason) => reason,
            Self::MonitoringFailed => "MonitoringFailed",
            Self::DriftDetected => Reason::DriftDetected.as_str(),
            Self::QualityDegraded => "QualityDegraded",
        }
    }

    /// Whether the event is a Warning (else Normal).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Self::UpdateFailed
                | Self::FieldNotSupported
                | Self::AliasConflict
                | Self::ApplyFailed
                | Self::EntityFailing(_)
                | Self::MonitoringFailed
                | Self::DriftDetected
                | Self::QualityDegraded
        )
    }
}

/// One event to publish on the ServingEndpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEvent {
    /// Why.
    pub reason: EventReason,
    /// What happened, in words.
    pub message: String,
}

impl PlanEvent {
    /// An event for `reason` saying `message`.
    pub fn new(reason: EventReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_warn_and_progress_does_not() {
        assert!(EventReason::EntityFailing("CrashLoopBackOff".into()).is_warning());
        assert_eq!(
            EventReason::EntityFailing("CrashLoopBackOff".into()).as_str(),
            "CrashLoopBackOff"
        );
        assert!(!EventReason::Promoted.is_warning());
        assert!(EventReason::FieldNotSupported.is_warning());
        assert_eq!(EventReason::ApplyFailed.as_str(), "ApplyFailed");
    }
}
