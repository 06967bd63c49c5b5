//! Plan: the pure blue/green step. From the resolved spec, the current status and what the
//! cluster shows of each child Deployment, decide the active and pending configs, which entity
//! revisions must exist, and the new status.
//!
//! Rules (upstream semantics): a spec change becomes a pending config with the next
//! `configVersion`; the active config keeps serving until every pending entity is ready, then the
//! pending config is promoted. A change that needs no new pods (traffic only) is promoted at
//! once. A spec that cannot be resolved, or a pending entity that fails, leaves the active config
//! serving with `UPDATE_FAILED`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use sluice_crds::{
    ConfigUpdateState, DeploymentState, EndpointConfigStatus, EndpointState, ReadyState,
    ReplicaStatus, ResolvedCapture, ResolvedRoute, ServedEntityState, ServedEntityStatus,
    ServingEndpoint, ServingEndpointStatus,
};

use super::resolve::{EntitySource, ResolveProblem, ResolvedEntity, revision};
use crate::conditions::{self, Desired, Status};

/// What the cluster shows of one child Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildState {
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.replicas`.
    pub current: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// The autoscaler's last decision, from the Deployment's annotations.
    pub last_scale: Option<LastScale>,
    /// Why the rollout cannot finish (e.g. `ProgressDeadlineExceeded`), if it cannot.
    pub failed: Option<String>,
}

/// The autoscaler's last change of an entity's replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LastScale {
    /// Short reason (`Wake`, `ScaleToZero`, …).
    pub reason: String,
    /// The decision in words.
    pub message: String,
    /// When it was made.
    pub at: Option<Time>,
}

/// One entity revision that must exist, with the replicas a new Deployment starts with.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// The entity.
    pub entity: ResolvedEntity,
    /// Its revision hash.
    pub revision: String,
    /// Child object name.
    pub child: String,
    /// Replicas when the Deployment is created (the autoscaler owns them afterwards).
    pub initial_replicas: i32,
}

/// The outcome of planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to publish.
    pub status: ServingEndpointStatus,
    /// Entity revisions to apply now: those of the active and pending configs that the current
    /// spec renders.
    pub apply: Vec<Wanted>,
    /// Every child the active and pending configs use; all other children are pruned. Children
    /// of an older spec that still serves are kept as they are.
    pub keep: BTreeSet<String>,
    /// Decisions worth an event: (warning?, reason, message).
    pub events: Vec<(bool, &'static str, String)>,
}

/// Plans one reconcile of `ep`.
pub fn plan(
    ep: &ServingEndpoint,
    resolved: Result<Vec<ResolvedEntity>, Vec<ResolveProblem>>,
    capture: Option<ResolvedCapture>,
    children: &BTreeMap<String, ChildState>,
    now: Timestamp,
) -> Plan {
    let name = ep.metadata.name.clone().unwrap_or_default();
    let previous = ep.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut active = previous.config.clone();
    let mut pending = previous.pending_config.clone();
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut conflicts = Vec::new();

    match resolved {
        Err(found) => problems = found.iter().map(ToString::to_string).collect(),
        Ok(entities) => {
            conflicts = entities
                .iter()
                .filter_map(|e| e.alias_conflict.clone())
                .collect();
            let capture_uri = capture.as_ref().map(|c| c.table_uri.as_str());
            let wants: Vec<Wanted> = entities
                .into_iter()
                .map(|e| want(&name, e, capture_uri))
                .collect();
            let next_version = active
                .iter()
                .chain(pending.iter())
                .map(|c| c.config_version)
                .max()
                .unwrap_or(0)
                + 1;
            let mut desired = config_of(ep, &wants, capture, next_version);
            if active.as_ref().is_some_and(|a| same_config(a, &desired)) {
                if pending.take().is_some() {
                    events.push((
                        false,
                        "UpdateReverted",
                        "spec matches the active config again; pending config dropped".into(),
                    ));
                }
            } else if active.as_ref().is_some_and(|a| same_pods(a, &desired)) {
                events.push((
                    false,
                    "Promoted",
                    format!("config {next_version} needs no new pods; promoted at once"),
                ));
                active = Some(desired);
                pending = None;
            } else {
                match pending.as_ref() {
                    Some(p) if same_config(p, &desired) => {}
                    _ => {
                        desired.start_time = Some(Time(now));
                        events.push((
                            false,
                            "UpdateStarted",
                            format!("rolling out config {next_version}"),
                        ));
                        pending = Some(desired);
                    }
                }
            }
            for w in wants {
                wanted.insert(w.child.clone(), w);
            }
        }
    }

    for config in active.iter_mut().chain(pending.iter_mut()) {
        for e in &mut config.served_entities {
            observe(e, children);
        }
    }
    let update = match (&pending, problems.is_empty()) {
        (_, false) if active.is_some() => ConfigUpdateState::UPDATE_FAILED,
        (Some(p), _)
            if p.served_entities
                .iter()
                .any(|e| state_of(e) == DeploymentState::DEPLOYMENT_FAILED) =>
        {
            ConfigUpdateState::UPDATE_FAILED
        }
        (Some(p), _)
            if p.served_entities
                .iter()
                .all(|e| state_of(e) == DeploymentState::DEPLOYMENT_READY) =>
        {
            events.push((
                false,
                "Promoted",
                format!("config {} is ready and now serves", p.config_version),
            ));
            active = pending.take();
            ConfigUpdateState::NOT_UPDATING
        }
        (Some(_), _) => ConfigUpdateState::IN_PROGRESS,
        (None, _) => ConfigUpdateState::NOT_UPDATING,
    };
    if update == ConfigUpdateState::UPDATE_FAILED
        && previous.state.as_ref().map(|s| s.config_update) != Some(update)
    {
        let why = if problems.is_empty() {
            "a pending entity failed to deploy".to_string()
        } else {
            problems.join("; ")
        };
        events.push((true, "UpdateFailed", why));
    }
    // Children of the configs that remain; taken after a possible promotion.
    let keep: BTreeSet<String> = active
        .iter()
        .chain(pending.iter())
        .flat_map(|c| {
            c.served_entities
                .iter()
                .filter_map(|e| e.deployment_name.clone())
        })
        .collect();
    wanted.retain(|child, _| keep.contains(child));
    let ready = active.as_ref().is_some_and(|a| {
        a.served_entities
            .iter()
            .all(|e| state_of(e) == DeploymentState::DEPLOYMENT_READY)
    });
    let mut conds = condition_set(ready, update, &problems, &pending);
    conds.push(alias_condition(&conflicts));
    let had_conflict = previous
        .conditions
        .iter()
        .any(|c| c.type_ == ALIAS_CONFLICT && c.status == "True");
    if !conflicts.is_empty() && !had_conflict {
        events.push((true, "AliasConflict", conflicts.join("; ")));
    }
    let previous_conditions: &[Condition] = &previous.conditions;
    let status = ServingEndpointStatus {
        observed_generation: ep.metadata.generation,
        state: Some(EndpointState {
            ready: if ready {
                ReadyState::READY
            } else {
                ReadyState::NOT_READY
            },
            config_update: update,
        }),
        traffic_summary: active.as_ref().map(summary),
        url: Some(format!("/serving-endpoints/{name}/invocations")),
        config: active,
        pending_config: pending,
        conditions: conditions::merge(previous_conditions, &conds, ep.metadata.generation, now),
    };
    Plan {
        status,
        apply: wanted.into_values().collect(),
        keep,
        events,
    }
}

fn want(endpoint: &str, entity: ResolvedEntity, capture: Option<&str>) -> Wanted {
    let rev = revision(&entity, capture);
    let per = entity.per_replica_concurrency.max(1);
    let initial = entity.min_concurrency.div_ceil(per).max(1);
    Wanted {
        child: format!("{endpoint}-{}-{rev}", entity.name),
        revision: rev,
        initial_replicas: i32::try_from(initial).unwrap_or(1),
        entity,
    }
}

fn config_of(
    ep: &ServingEndpoint,
    wants: &[Wanted],
    capture: Option<ResolvedCapture>,
    version: i64,
) -> EndpointConfigStatus {
    let traffic = ep.spec.traffic_config.as_ref();
    let routes = match traffic {
        Some(t) => t
            .routes
            .iter()
            .map(|r| ResolvedRoute {
                served_entity_name: r.target().to_string(),
                traffic_percentage: r.traffic_percentage,
            })
            .collect(),
        None => wants
            .iter()
            .map(|w| ResolvedRoute {
                served_entity_name: w.entity.name.clone(),
                traffic_percentage: 100,
            })
            .collect(),
    };
    EndpointConfigStatus {
        config_version: version,
        spec_generation: ep.metadata.generation,
        start_time: None,
        served_entities: wants.iter().map(entity_status).collect(),
        routes,
        shadow_routes: traffic
            .and_then(|t| t.shadow_routes.clone())
            .unwrap_or_default(),
        auto_capture: capture,
    }
}

fn entity_status(w: &Wanted) -> ServedEntityStatus {
    let e = &w.entity;
    let (model, version, alias, artifact_uri, external_provider) = match &e.source {
        EntitySource::Registered {
            model,
            version,
            alias,
            artifact_uri,
            ..
        } => (
            Some(model.clone()),
            Some(*version),
            alias.clone(),
            Some(artifact_uri.clone()),
            None,
        ),
        EntitySource::External(x) => (None, None, None, None, Some(x.provider)),
    };
    let pods = e.runtime.is_some();
    ServedEntityStatus {
        name: e.name.clone(),
        model,
        version,
        alias,
        artifact_uri,
        external_provider,
        workload_size: e.workload_size,
        workload_type: pods.then_some(e.workload_type),
        engine: e.runtime.as_ref().map(|r| r.engine),
        scale_to_zero_enabled: e.scale_to_zero,
        min_provisioned_concurrency: i32::try_from(e.min_concurrency).unwrap_or(i32::MAX),
        max_provisioned_concurrency: i32::try_from(e.max_concurrency).unwrap_or(i32::MAX),
        deployment_name: pods.then(|| w.child.clone()),
        state: None,
        replicas: None,
    }
}

/// Pod-independent fields compared: entity names and revisions, routes, shadows, capture.
fn same_config(a: &EndpointConfigStatus, b: &EndpointConfigStatus) -> bool {
    same_pods(a, b) && a.routes == b.routes && a.shadow_routes == b.shadow_routes
}

fn same_pods(a: &EndpointConfigStatus, b: &EndpointConfigStatus) -> bool {
    let key = |c: &EndpointConfigStatus| -> Vec<(String, Option<String>)> {
        c.served_entities
            .iter()
            .map(|e| (e.name.clone(), e.deployment_name.clone()))
            .collect()
    };
    key(a) == key(b) && a.auto_capture == b.auto_capture
}

fn observe(e: &mut ServedEntityStatus, children: &BTreeMap<String, ChildState>) {
    let was_ready = e
        .state
        .as_ref()
        .is_some_and(|s| s.deployment == DeploymentState::DEPLOYMENT_READY);
    let Some(child) = e.deployment_name.clone() else {
        e.state = Some(ServedEntityState {
            deployment: DeploymentState::DEPLOYMENT_READY,
            deployment_state_message: Some("external model: no pods".into()),
        });
        return;
    };
    let observed = children.get(&child);
    let (deployment, message) = match observed {
        None => (
            DeploymentState::DEPLOYMENT_CREATING,
            format!("creating Deployment {child}"),
        ),
        Some(c) if c.failed.is_some() => (
            DeploymentState::DEPLOYMENT_FAILED,
            c.failed.clone().unwrap_or_default(),
        ),
        Some(c) if c.ready > 0 => (
            DeploymentState::DEPLOYMENT_READY,
            format!("{} of {} replicas ready", c.ready, c.desired),
        ),
        Some(c) if c.desired == 0 && e.scale_to_zero_enabled && was_ready => (
            DeploymentState::DEPLOYMENT_READY,
            "scaled to zero; wakes on the first request".into(),
        ),
        Some(_) if was_ready => (
            DeploymentState::DEPLOYMENT_RECOVERING,
            "no ready replica; replacing pods".into(),
        ),
        Some(c) => (
            DeploymentState::DEPLOYMENT_CREATING,
            format!("0 of {} replicas ready", c.desired),
        ),
    };
    e.replicas = observed.map(|c| {
        let last = c.last_scale.as_ref();
        ReplicaStatus {
            desired: c.desired,
            current: c.current,
            ready: c.ready,
            last_scale_reason: last.map(|l| l.reason.clone()),
            last_scale_message: last.map(|l| l.message.clone()),
            last_scale_time: last.and_then(|l| l.at.clone()),
        }
    });
    e.state = Some(ServedEntityState {
        deployment,
        deployment_state_message: Some(message),
    });
}

fn state_of(e: &ServedEntityStatus) -> DeploymentState {
    e.state.as_ref().map(|s| s.deployment).unwrap_or_default()
}

fn summary(c: &EndpointConfigStatus) -> String {
    c.routes
        .iter()
        .map(|r| format!("{}:{}", r.served_entity_name, r.traffic_percentage))
        .collect::<Vec<_>>()
        .join(",")
}

/// Condition type saying an entity keeps an older version because its alias is in conflict.
pub const ALIAS_CONFLICT: &str = "AliasConflict";

fn alias_condition(conflicts: &[String]) -> Desired {
    if conflicts.is_empty() {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::False,
            reason: "NoConflict",
            message: String::new(),
        }
    } else {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::True,
            reason: "KeepingPreviousVersion",
            message: conflicts.join("; "),
        }
    }
}

fn condition_set(
    ready: bool,
    update: ConfigUpdateState,
    problems: &[String],
    pending: &Option<EndpointConfigStatus>,
) -> Vec<Desired> {
    let ready_c = if ready {
        Desired {
            type_: "Ready",
            status: Status::True,
            reason: "AllEntitiesReady",
            message: "every entity of the active config is ready".into(),
        }
    } else {
        Desired {
            type_: "Ready",
            status: Status::False,
            reason: "EntitiesNotReady",
            message: "the active config has entities that are not ready".into(),
        }
    };
    let resolved_c = if problems.is_empty() {
        Desired {
            type_: "Resolved",
            status: Status::True,
            reason: "Resolved",
            message: String::new(),
        }
    } else {
        Desired {
            type_: "Resolved",
            status: Status::False,
            reason: "ResolveFailed",
            message: problems.join("; "),
        }
    };
    let updating_c = match update {
        ConfigUpdateState::IN_PROGRESS => Desired {
            type_: "Updating",
            status: Status::True,
            reason: "RollingOut",
            message: format!(
                "config {} is rolling out",
                pending
                    .as_ref()
                    .map(|p| p.config_version)
                    .unwrap_or_default()
            ),
        },
        ConfigUpdateState::UPDATE_FAILED => Desired {
            type_: "Updating",
            status: Status::False,
            reason: "UpdateFailed",
            message: "the previous config keeps serving".into(),
        },
        _ => Desired {
            type_: "Updating",
            status: Status::False,
            reason: "UpToDate",
            message: String::new(),
        },
    };
    vec![ready_c, resolved_c, updating_c]
}

#[cfg(test)]
mod tests {
    use sluice_crds::ModelVersion;

    use super::*;
    use crate::{config::OperatorConfig, endpoint::resolve::resolve};

    fn mv(v: i64) -> ModelVersion {
        crate::fixtures::checked_version("m", v, &[], true)
    }

    fn endpoint(entities: &str, status: Option<ServingEndpointStatus>) -> ServingEndpoint {
        let mut ep = crate::fixtures::endpoint("ep", entities);
        ep.status = status;
        ep
    }

    fn run(ep: &ServingEndpoint, children: &BTreeMap<String, ChildState>) -> Plan {
        let resolved = resolve(
            ep,
            &[mv(1), mv(2)],
            &BTreeMap::new(),
            &OperatorConfig::default(),
        );
        plan(ep, resolved, None, children, Timestamp::UNIX_EPOCH)
    }

    fn ready_children(p: &Plan) -> BTreeMap<String, ChildState> {
        p.keep
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    ChildState {
                        desired: 1,
                        ready: 1,
                        failed: None,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn state(p: &Plan) -> (ReadyState, ConfigUpdateState) {
        let s = p.status.state.as_ref().expect("state");
        (s.ready, s.config_update)
    }

    const ONE: &str = "  servedEntities:\n  - {name: a, model: m, version: 1}\n";

    #[test]
    fn a_new_endpoint_rolls_out_then_is_promoted_when_ready() {
        let first = run(&endpoint(ONE, None), &BTreeMap::new());
        assert_eq!(
            state(&first),
            (ReadyState::NOT_READY, ConfigUpdateState::IN_PROGRESS)
        );
        assert_eq!(
            first
                .status
                .pending_config
                .as_ref()
                .map(|c| c.config_version),
            Some(1)
        );
        assert_eq!(first.apply.len(), 1);
        assert!(
            first.status.config.is_none(),
            "nothing serves before the first config is ready"
        );

        let second = run(
            &endpoint(ONE, Some(first.status.clone())),
            &ready_children(&first),
        );
        assert_eq!(
            state(&second),
            (ReadyState::READY, ConfigUpdateState::NOT_UPDATING)
        );
        assert_eq!(
            second.status.config.as_ref().map(|c| c.config_version),
            Some(1)
        );
        assert!(second.status.pending_config.is_none());
        assert_eq!(second.status.traffic_summary.as_deref(), Some("a:100"));
        assert!(second.events.iter().any(|e| e.1 == "Promoted"));
        // Recomputing from the same inputs changes nothing: no status write.
        let again = run(
            &endpoint(ONE, Some(second.status.clone())),
            &ready_children(&second),
        );
        assert_eq!(again.status, second.status);
        assert!(again.events.is_empty());
    }

    fn serving(spec: &str) -> (Plan, BTreeMap<String, ChildState>) {
        let first = run(&endpoint(spec, None), &BTreeMap::new());
        let children = ready_children(&first);
        (
            run(&endpoint(spec, Some(first.status)), &children),
            children,
        )
    }

    #[test]
    fn a_traffic_only_change_is_promoted_at_once_without_new_pods() {
        let two = "  servedEntities:\n  - {name: a, model: m, version: 1}\n  - {name: b, model: m, version: 2}\n";
        let (live, children) = serving(&format!(
            "{two}  trafficConfig: {{routes: [{{servedEntityName: a, trafficPercentage: 90}}, {{servedEntityName: b, trafficPercentage: 10}}]}}"
        ));
        let moved = run(
            &endpoint(
                &format!(
                    "{two}  trafficConfig: {{routes: [{{servedEntityName: a, trafficPercentage: 50}}, {{servedEntityName: b, trafficPercentage: 50}}]}}"
                ),
                Some(live.status.clone()),
            ),
            &children,
        );
        assert_eq!(
            state(&moved),
            (ReadyState::READY, ConfigUpdateState::NOT_UPDATING)
        );
        assert_eq!(
            moved.status.config.as_ref().map(|c| c.config_version),
            Some(2)
        );
        assert_eq!(moved.keep, live.keep, "same children");
        assert_eq!(moved.status.traffic_summary.as_deref(), Some("a:50,b:50"));
    }

    #[test]
    fn a_version_change_is_blue_green_and_a_failure_keeps_the_old_config() {
        let (live, children) = serving(ONE);
        let v2 = "  servedEntities:\n  - {name: a, model: m, version: 2}\n";
        let rolling = run(&endpoint(v2, Some(live.status.clone())), &children);
        assert_eq!(
            state(&rolling),
            (ReadyState::READY, ConfigUpdateState::IN_PROGRESS),
            "v1 keeps serving"
        );
        assert_eq!(
            rolling.status.config.as_ref().map(|c| c.config_version),
            Some(1)
        );
        assert_eq!(
            rolling
                .status
                .pending_config
                .as_ref()
                .map(|c| c.config_version),
            Some(2)
        );
        assert_eq!(rolling.keep.len(), 2, "old and new revisions side by side");

        let mut failing = children.clone();
        let new_child = rolling
            .keep
            .iter()
            .find(|c| !children.contains_key(*c))
            .expect("new child")
            .clone();
        failing.insert(
            new_child.clone(),
            ChildState {
                desired: 1,
                ready: 0,
                failed: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            },
        );
        let failed = run(&endpoint(v2, Some(rolling.status.clone())), &failing);
        assert_eq!(
            state(&failed),
            (ReadyState::READY, ConfigUpdateState::UPDATE_FAILED)
        );
        assert!(failed.events.iter().any(|e| e.0 && e.1 == "UpdateFailed"));

        let mut healthy = children.clone();
        healthy.insert(
            new_child.clone(),
            ChildState {
                desired: 1,
                ready: 1,
                failed: None,
                ..Default::default()
            },
        );
        let promoted = run(&endpoint(v2, Some(rolling.status)), &healthy);
        assert_eq!(
            state(&promoted),
            (ReadyState::READY, ConfigUpdateState::NOT_UPDATING)
        );
        assert_eq!(
            promoted.keep,
            BTreeSet::from([new_child]),
            "the old revision is pruned only after promotion"
        );
    }

    #[test]
    fn an_unresolvable_spec_fails_the_update_and_keeps_serving() {
        let (live, children) = serving(ONE);
        let broken = run(
            &endpoint(
                "  servedEntities:\n  - {name: a, model: m, version: 9}\n",
                Some(live.status.clone()),
            ),
            &children,
        );
        assert_eq!(
            state(&broken),
            (ReadyState::READY, ConfigUpdateState::UPDATE_FAILED)
        );
        assert_eq!(broken.keep, live.keep);
        let resolved = broken
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Resolved")
            .expect("Resolved");
        assert_eq!(
            resolved.message,
            "entity a: ModelVersion for model m version 9 not found"
        );
    }

    #[test]
    fn a_scale_to_zero_entity_at_zero_replicas_stays_ready() {
        let spec =
            "  servedEntities:\n  - {name: a, model: m, version: 1, scaleToZeroEnabled: true}\n";
        let (live, children) = serving(spec);
        let zero: BTreeMap<_, _> = children
            .keys()
            .map(|c| (c.clone(), ChildState::default()))
            .collect();
        let idle = run(&endpoint(spec, Some(live.status)), &zero);
        assert_eq!(
            state(&idle),
            (ReadyState::READY, ConfigUpdateState::NOT_UPDATING)
        );
    }
}
