//! What of a resolved entity the operator publishes in `status.config.servedEntities[]`, and how
//! the readers (the gateway, the autoscaler) take it back. Readers never apply defaults of their
//! own: they act on what is published, so a gateway cannot hold for 60 s while the operator
//! resolved 120 s.

use std::time::Duration;

use sluice_crds::{Engine, ResolvedAutoscaling, ServedEntityStatus};

use crate::config::AutoscalingDefaults;
use crate::labels::child_name;
use crate::resolve::ResolvedEntity;

/// The scaling and hold settings of `entity`, as published.
pub fn autoscaling(entity: &ResolvedEntity) -> ResolvedAutoscaling {
    let per = entity.per_replica_concurrency.max(1);
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    ResolvedAutoscaling {
        per_replica_concurrency: int(per),
        min_replicas: int(entity.min_concurrency.div_ceil(per)),
        max_replicas: int(entity.max_concurrency.div_ceil(per).max(1)),
        idle_timeout_seconds: int(entity.idle_timeout_seconds),
        max_held_requests: int(entity.max_held_requests),
        hold_timeout_seconds: int(entity.hold_timeout_seconds),
    }
}

/// The published settings of `entity`. A status written by an operator that did not publish
/// them yet (before an upgrade's first reconcile) reads as the defaults of a config that sets
/// none, with the published concurrency range.
pub fn autoscaling_of(entity: &ServedEntityStatus) -> ResolvedAutoscaling {
    if let Some(published) = &entity.autoscaling {
        return published.clone();
    }
    let defaults = AutoscalingDefaults::default();
    let per = match entity.engine {
        None | Some(Engine::Builtin) => defaults.per_replica_concurrency,
        Some(_) => defaults.engine_per_replica_concurrency,
    };
    let replicas = |concurrency: i32| {
        let c = u32::try_from(concurrency).unwrap_or(0);
        i32::try_from(c.div_ceil(per)).unwrap_or(i32::MAX)
    };
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    ResolvedAutoscaling {
        per_replica_concurrency: int(per),
        min_replicas: replicas(entity.min_provisioned_concurrency),
        max_replicas: replicas(entity.max_provisioned_concurrency).max(1),
        idle_timeout_seconds: int(defaults.idle_timeout_seconds),
        max_held_requests: int(defaults.max_held_requests),
        hold_timeout_seconds: int(defaults.hold_timeout_seconds),
    }
}

/// The revision of `entity`'s pods: the published one, or for a status written before revisions
/// were published, the suffix of its Deployment's name (`<endpoint>-<entity>-<revision>`).
pub fn revision_of_entity<'a>(endpoint: &str, entity: &'a ServedEntityStatus) -> Option<&'a str> {
    if let Some(revision) = entity.revision.as_deref() {
        return Some(revision);
    }
    let prefix = child_name(endpoint, &entity.name, "");
    entity.deployment_name.as_deref()?.strip_prefix(&prefix)
}

/// How many requests a gateway holds for an entity with no ready pod, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldPolicy {
    /// Most requests held at once; past it, 503 with `Retry-After`.
    pub max_held: usize,
    /// How long one request may be held before a 503.
    pub timeout: Duration,
}

impl From<&ResolvedAutoscaling> for HoldPolicy {
    fn from(a: &ResolvedAutoscaling) -> Self {
        Self {
            max_held: usize::try_from(a.max_held_requests).unwrap_or(0),
            timeout: Duration::from_secs(u64::try_from(a.hold_timeout_seconds).unwrap_or(0)),
        }
    }
}

impl HoldPolicy {
    /// The hold limits published for `entity`.
    pub fn of(entity: &ServedEntityStatus) -> Self {
        Self::from(&autoscaling_of(entity))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::OperatorConfig;
    use crate::fixtures;
    use crate::resolve::resolve;

    fn resolved(spec: &str, config: &OperatorConfig) -> ResolvedEntity {
        let ep = fixtures::endpoint("ep", spec);
        let models = [fixtures::checked_version("churn", 7, &[], true)];
        resolve(&ep, &models, &BTreeMap::new(), config)
            .expect("resolves")
            .remove(0)
    }

    #[test]
    fn defaults_are_published_and_read_back_unchanged() {
        let config = OperatorConfig::default();
        let e = resolved(
            "  servedEntities:\n  - {name: c, model: churn, version: 7, scaleToZeroEnabled: true, workloadSize: Medium}",
            &config,
        );
        let published = autoscaling(&e);
        assert_eq!(
            published,
            ResolvedAutoscaling {
                per_replica_concurrency: 4,
                min_replicas: 0,
                max_replicas: 4,
                idle_timeout_seconds: 300,
                max_held_requests: 100,
                hold_timeout_seconds: 120,
            }
        );
        let status = ServedEntityStatus {
            autoscaling: Some(published.clone()),
            ..ServedEntityStatus::default()
        };
        assert_eq!(
            HoldPolicy::of(&status),
            HoldPolicy {
                max_held: 100,
                timeout: Duration::from_secs(config.autoscaling.hold_timeout_seconds.into()),
            }
        );
        assert_eq!(autoscaling_of(&status), published);
    }

    #[test]
    fn overrides_and_admin_defaults_win_in_that_order() {
        let config = OperatorConfig::parse(
            "autoscaling: {holdTimeoutSeconds: 45, maxHeldRequests: 9}\n",
            "test",
        )
        .expect("config");
        let e = resolved(
            "  servedEntities:\n  - {name: c, model: churn, version: 7, autoscaling: {holdTimeoutSeconds: 3}}",
            &config,
        );
        let hold = HoldPolicy::from(&autoscaling(&e));
        assert_eq!(hold.timeout, Duration::from_secs(3));
        assert_eq!(hold.max_held, 9);
    }
}
