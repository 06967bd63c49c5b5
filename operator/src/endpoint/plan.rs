//! Plan: the pure blue/green step. From the resolved spec, the current status and what the
//! cluster shows of each child Deployment, decide the active and pending configs, the final
//! objects of every entity revision that must exist (replicas included: who owns them is
//! decided here), the new status and the events worth publishing. The shell applies what it
//! gets and decides nothing.
//!
//! An entity's revision is the hash of its rendered pod template, so a change that shapes no
//! pod (traffic, autoscaling bounds, hold limits) renders the same children and is promoted at
//! once, with the new values published for the gateway and the autoscaler.
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
use sluice_contract::labels::revision_of;
use sluice_contract::published;
use sluice_contract::resolve::{self, EntitySource, ResolveProblem, ResolvedEntity};
use sluice_contract::support::{unsupported_fields, unsupported_message};
use sluice_crds::{
    ConfigUpdateState, DeploymentState, EndpointConfigStatus, EndpointState, ReadyState,
    ReplicaStatus, ResolvedCapture, ResolvedUsageTracking, ServedEntityState, ServedEntityStatus,
    ServingEndpoint, ServingEndpointStatus,
};

use super::{
    claims::{self, WantedClaim},
    desired::{BuildContext, EntityObjects, build},
    events::{EventReason, PlanEvent},
    pods::PodProblem,
};
use crate::conditions::{
    self, ALIAS_CONFLICT, Desired, READY, RESOLVED, Reason, SUPPORTED, Status, UPDATING,
};

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
    /// Why its first failing pod fails, if one does.
    pub problem: Option<PodProblem>,
    /// Whether the autoscaler's field manager owns `spec.replicas` (a Deployment made by an
    /// older operator may not have handed them over yet).
    pub autoscaler_owns_replicas: bool,
    /// Whether this endpoint is its controller owner. Only owned children are pruned: a
    /// Deployment that merely carries the endpoint's label (someone else's, or a copy) is not.
    pub owned: bool,
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

/// Who sets an entity Deployment's `spec.replicas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// A new Deployment: created with this many replicas, then handed to the autoscaler.
    Create(i32),
    /// The autoscaler owns them: the apply leaves them out (an apply that left out a field its
    /// own manager held would reset it).
    Autoscaler,
    /// An existing Deployment whose replicas no manager handed over yet: handed to the
    /// autoscaler at this count before the apply, which leaves them out.
    HandOver(i32),
}

/// One entity revision that must exist, rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// Entity name.
    pub entity: String,
    /// Its revision: the hash of its rendered pod template.
    pub revision: String,
    /// Child object name, `<endpoint>-<entity>-<revision>`.
    pub child: String,
    /// The objects to apply, final: the Deployment carries `replicas` only for [`Replicas::Create`].
    pub objects: EntityObjects,
    /// Who sets the Deployment's replicas.
    pub replicas: Replicas,
}

/// The outcome of planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to publish.
    pub status: ServingEndpointStatus,
    /// Entity revisions to apply now: those of the active and pending configs that the current
    /// spec renders.
    pub apply: Vec<Wanted>,
    /// Every child the active and pending configs use. Children of an older spec that still
    /// serves are kept as they are.
    pub keep: BTreeSet<String>,
    /// Children to delete (with their Service and NetworkPolicy): owned, and used by no config.
    pub prune: Vec<String>,
    /// Claims the children mount, to create before them when missing (none when nothing is
    /// applied).
    pub claims: Vec<WantedClaim>,
    /// Decisions worth an event.
    pub events: Vec<PlanEvent>,
}

/// An entity rendered: its revision and objects (none for entities without pods).
struct Rendered {
    entity: ResolvedEntity,
    pods: Option<(String, EntityObjects)>,
    /// Replicas a new Deployment starts with.
    initial_replicas: i32,
}

/// Plans one reconcile of `ep`; `ctx` renders its children (and carries its resolved capture
/// settings).
pub fn plan(
    ep: &ServingEndpoint,
    resolved: Result<Vec<ResolvedEntity>, Vec<ResolveProblem>>,
    ctx: &BuildContext<'_>,
    children: &BTreeMap<String, ChildState>,
    now: Timestamp,
) -> Plan {
    let capture = ctx.capture.cloned();
    let usage = ctx.usage.cloned();
    let previous = ep.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut active = previous.config.clone();
    let mut pending = previous.pending_config.clone();
    let mut wanted: BTreeMap<String, Rendered> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut conflicts = Vec::new();

    match resolved {
        Err(found) => problems = found.iter().map(ToString::to_string).collect(),
        Ok(entities) => {
            conflicts = entities
                .iter()
                .filter_map(|e| e.alias_conflict.clone())
                .collect();
            let wants: Vec<Rendered> = entities.into_iter().map(|e| render(e, ctx)).collect();
            let next_version = active
                .iter()
                .chain(pending.iter())
                .map(|c| c.config_version)
                .max()
                .unwrap_or(0)
                + 1;
            let mut desired = config_of(ep, &wants, capture, usage, next_version);
            if active.as_ref().is_some_and(|a| same_config(a, &desired)) {
                if pending.take().is_some() {
                    events.push(PlanEvent::new(
                        EventReason::UpdateReverted,
                        "spec matches the active config again; pending config dropped",
                    ));
                }
            } else if active.as_ref().is_some_and(|a| same_pods(a, &desired)) {
                events.push(PlanEvent::new(
                    EventReason::Promoted,
                    format!("config {next_version} needs no new pods; promoted at once"),
                ));
                active = Some(desired);
                pending = None;
            } else {
                match pending.as_ref() {
                    Some(p) if same_config(p, &desired) => {}
                    _ => {
                        desired.start_time = Some(Time(now));
                        events.push(PlanEvent::new(
                            EventReason::UpdateStarted,
                            format!("rolling out config {next_version}"),
                        ));
                        pending = Some(desired);
                    }
                }
            }
            for mut w in wants {
                let Some((_, objects)) = &w.pods else {
                    continue;
                };
                // A new revision of a serving entity starts with the replicas the old one
                // has, so a cutover never drops capacity.
                if !children.contains_key(&objects.name)
                    && let Some(serving) =
                        serving_replicas(active.as_ref(), &w.entity.name, children)
                {
                    w.initial_replicas = w.initial_replicas.max(serving);
                }
                wanted.insert(objects.name.clone(), w);
            }
        }
    }

    for e in active.iter_mut().flat_map(|c| c.served_entities.iter_mut()) {
        observe(e, children, Role::Serving);
    }
    for e in pending
        .iter_mut()
        .flat_map(|c| c.served_entities.iter_mut())
    {
        observe(e, children, Role::Pending);
    }
    events.extend(failure_events(
        &previous,
        active.iter().chain(pending.iter()),
    ));
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
            events.push(PlanEvent::new(
                EventReason::Promoted,
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
            let failed = pending
                .iter()
                .flat_map(not_ready)
                .collect::<Vec<_>>()
                .join("; ");
            format!("a pending entity failed to deploy: {failed}")
        } else {
            problems.join("; ")
        };
        events.push(PlanEvent::new(EventReason::UpdateFailed, why));
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
    let apply: Vec<Wanted> = wanted
        .into_values()
        .filter_map(|w| finish(w, children))
        .collect();
    let unsupported = unsupported_fields(ep);
    let entities_ready = active.as_ref().is_some_and(|a| {
        a.served_entities
            .iter()
            .all(|e| state_of(e) == DeploymentState::DEPLOYMENT_READY)
    });
    let ready = entities_ready && unsupported.is_empty();
    let mut conds = condition_set(
        readiness(&active, &pending, &unsupported),
        update,
        &problems,
        &pending,
    );
    conds.push(alias_condition(&conflicts));
    conds.push(supported_condition(&unsupported));
    let was_unsupported = previous
        .conditions
        .iter()
        .any(|c| c.type_ == SUPPORTED && c.status == "False");
    if !unsupported.is_empty() && !was_unsupported {
        events.push(PlanEvent::new(
            EventReason::FieldNotSupported,
            unsupported_message(&unsupported),
        ));
    }
    let had_conflict = previous
        .conditions
        .iter()
        .any(|c| c.type_ == ALIAS_CONFLICT && c.status == "True");
    if !conflicts.is_empty() && !had_conflict {
        events.push(PlanEvent::new(
            EventReason::AliasConflict,
            conflicts.join("; "),
        ));
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
        url: Some(format!("/serving-endpoints/{}/invocations", ctx.endpoint)),
        config: active,
        pending_config: pending,
        conditions: conditions::merge(previous_conditions, &conds, ep.metadata.generation, now),
        // The controller sets it from the monitoring step.
        monitoring: previous.monitoring.clone(),
    };
    let prune = children
        .iter()
        .filter(|(name, child)| child.owned && !keep.contains(*name))
        .map(|(name, _)| name.clone())
        .collect();
    let claims = if apply.is_empty() {
        Vec::new()
    } else {
        claims::wanted(ctx)
    };
    Plan {
        status,
        apply,
        keep,
        prune,
        claims,
        events,
    }
}

/// The version each entity of the active config serves, by entity name: an entity whose alias
/// is in conflict keeps it.
pub fn previous_versions(ep: &ServingEndpoint) -> BTreeMap<String, i64> {
    ep.status
        .iter()
        .flat_map(|s| s.config.iter())
        .flat_map(|c| c.served_entities.iter())
        .filter_map(|e| Some((e.name.clone(), e.version?)))
        .collect()
}

/// The planned `status` once its children were applied: with the `Applied` condition naming
/// the children the API server `refused`, and a Warning event when that refusal is new.
pub fn after_apply(
    ep: &ServingEndpoint,
    mut status: ServingEndpointStatus,
    refused: &[String],
    now: Timestamp,
) -> (ServingEndpointStatus, Option<PlanEvent>) {
    let previous = ep
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let applied = conditions::applied(refused);
    let said_before = previous.iter().any(|c| {
        c.type_ == conditions::APPLIED && c.status == "False" && c.message == applied.message
    });
    let event = (!refused.is_empty() && !said_before)
        .then(|| PlanEvent::new(EventReason::ApplyFailed, applied.message.clone()));
    status.conditions.extend(conditions::merge(
        previous,
        &[applied],
        ep.metadata.generation,
        now,
    ));
    (status, event)
}

/// Renders `entity`: its pod template first, whose hash is the revision, then its objects at
/// that revision.
fn render(entity: ResolvedEntity, ctx: &BuildContext<'_>) -> Rendered {
    let per = entity.per_replica_concurrency.max(1);
    let initial_replicas = match entity.source {
        // An external entity's recorder: one replica, never scaled.
        EntitySource::External(_) => 1,
        EntitySource::Registered { .. } => {
            i32::try_from(entity.min_concurrency.div_ceil(per).max(1)).unwrap_or(1)
        }
    };
    let pods = build(&entity, "", initial_replicas, ctx).and_then(|unnamed| {
        let template = serde_json::to_vec(&unnamed.deployment.spec.template).ok()?;
        let revision = revision_of(&template);
        let objects = build(&entity, &revision, initial_replicas, ctx)?;
        Some((revision, objects))
    });
    Rendered {
        entity,
        pods,
        initial_replicas,
    }
}

/// Decides who sets the replicas of a rendered revision and finishes its objects.
fn finish(r: Rendered, children: &BTreeMap<String, ChildState>) -> Option<Wanted> {
    let (revision, mut objects) = r.pods?;
    let replicas = match children.get(&objects.name) {
        None => Replicas::Create(r.initial_replicas),
        Some(c) if c.autoscaler_owns_replicas => Replicas::Autoscaler,
        Some(c) => Replicas::HandOver(c.desired),
    };
    objects.deployment.spec.replicas = match replicas {
        Replicas::Create(n) => Some(n),
        Replicas::Autoscaler | Replicas::HandOver(_) => None,
    };
    Some(Wanted {
        entity: r.entity.name,
        revision,
        child: objects.name.clone(),
        objects,
        replicas,
    })
}

fn config_of(
    ep: &ServingEndpoint,
    wants: &[Rendered],
    capture: Option<ResolvedCapture>,
    usage: Option<ResolvedUsageTracking>,
    version: i64,
) -> EndpointConfigStatus {
    EndpointConfigStatus {
        config_version: version,
        spec_generation: ep.metadata.generation,
        start_time: None,
        served_entities: wants.iter().map(entity_status).collect(),
        routes: resolve::routes(ep),
        shadow_routes: resolve::shadow_routes(ep),
        auto_capture: capture,
        usage_tracking: usage,
    }
}

fn entity_status(w: &Rendered) -> ServedEntityStatus {
    let e = &w.entity;
    let (model, version, alias, artifact_uri, external_model) = match &e.source {
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
        EntitySource::External(x) => (None, None, None, None, Some(x.clone())),
    };
    let pods = w.pods.as_ref();
    ServedEntityStatus {
        name: e.name.clone(),
        model,
        version,
        alias,
        artifact_uri,
        external_model,
        workload_size: e.workload_size,
        workload_type: pods.map(|_| e.workload_type),
        engine: e.runtime.as_ref().map(|r| r.engine),
        scale_to_zero_enabled: e.scale_to_zero,
        min_provisioned_concurrency: i32::try_from(e.min_concurrency).unwrap_or(i32::MAX),
        max_provisioned_concurrency: i32::try_from(e.max_concurrency).unwrap_or(i32::MAX),
        revision: pods.map(|(revision, _)| revision.clone()),
        deployment_name: pods.map(|(_, objects)| objects.name.clone()),
        autoscaling: Some(published::autoscaling(e)),
        usage_price: e.usage_price.clone(),
        state: None,
        replicas: None,
    }
}

/// Whether two configs are the same: the same pods, routes and shadows, and every entity
/// resolved the same (observed state aside).
fn same_config(a: &EndpointConfigStatus, b: &EndpointConfigStatus) -> bool {
    let resolved = |c: &EndpointConfigStatus| -> Vec<ServedEntityStatus> {
        c.served_entities
            .iter()
            .map(|e| ServedEntityStatus {
                state: None,
                replicas: None,
                ..e.clone()
            })
            .collect()
    };
    same_pods(a, b)
        && a.routes == b.routes
        && a.shadow_routes == b.shadow_routes
        && resolved(a) == resolved(b)
}

fn same_pods(a: &EndpointConfigStatus, b: &EndpointConfigStatus) -> bool {
    let key = |c: &EndpointConfigStatus| -> Vec<(String, Option<String>)> {
        c.served_entities
            .iter()
            .map(|e| (e.name.clone(), e.deployment_name.clone()))
            .collect()
    };
    key(a) == key(b) && a.auto_capture == b.auto_capture && a.usage_tracking == b.usage_tracking
}

/// The replicas the active config's entity `name` has now (its Deployment's `spec.replicas`).
fn serving_replicas(
    active: Option<&EndpointConfigStatus>,
    name: &str,
    children: &BTreeMap<String, ChildState>,
) -> Option<i32> {
    let entity = active?.served_entities.iter().find(|e| e.name == name)?;
    let child = children.get(entity.deployment_name.as_ref()?)?;
    Some(child.desired)
}

/// Whether an entity's revision serves (active config) or is waiting to (pending config).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Ready as soon as one replica is: it serves.
    Serving,
    /// Ready only when all of its replicas are, so promoting it keeps the capacity the old
    /// revision served with.
    Pending,
}

/// The reason an entity that this version cannot serve carries.
pub const NOT_SUPPORTED: &str = "NotSupported";

fn observe(e: &mut ServedEntityStatus, children: &BTreeMap<String, ChildState>, role: Role) {
    let was_ready = e
        .state
        .as_ref()
        .is_some_and(|s| s.deployment == DeploymentState::DEPLOYMENT_READY);
    let Some(child) = e.deployment_name.clone() else {
        // An external model: no pods, the gateway calls the provider.
        let called = e
            .external_model
            .as_ref()
            .map(|model| (model, sluice_contract::external::api(model)));
        e.state = Some(match called {
            Some((model, Ok(api))) => ServedEntityState {
                deployment: DeploymentState::DEPLOYMENT_READY,
                deployment_state_message: Some(format!(
                    "no pods: the gateway calls {} model {}",
                    api.label(),
                    model.name
                )),
                reason: None,
            },
            Some((_, Err(problems))) => ServedEntityState {
                deployment: DeploymentState::DEPLOYMENT_FAILED,
                deployment_state_message: Some(format!(
                    "the gateway cannot call this external model: {}",
                    problems.join("; ")
                )),
                reason: Some(NOT_SUPPORTED.into()),
            },
            None => ServedEntityState {
                deployment: DeploymentState::DEPLOYMENT_FAILED,
                deployment_state_message: Some("the entity has neither pods nor a provider".into()),
                reason: Some(NOT_SUPPORTED.into()),
            },
        });
        return;
    };
    let observed = children.get(&child);
    let problem = observed.and_then(|c| c.problem.as_ref());
    let with_problem = |text: String| match problem {
        Some(p) => format!("{text}; {}: {}", p.reason, p.message),
        None => text,
    };
    let (deployment, message, reason) = match observed {
        None => (
            DeploymentState::DEPLOYMENT_CREATING,
            format!("creating Deployment {child}"),
            None,
        ),
        Some(c) if c.failed.is_some() => (
            DeploymentState::DEPLOYMENT_FAILED,
            with_problem(c.failed.clone().unwrap_or_default()),
            Some(
                problem
                    .map(|p| p.reason.clone())
                    .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
            ),
        ),
        Some(c) if c.ready > 0 && (role == Role::Serving || c.ready >= c.desired) => (
            DeploymentState::DEPLOYMENT_READY,
            with_problem(format!("{} of {} replicas ready", c.ready, c.desired)),
            problem.map(|p| p.reason.clone()),
        ),
        Some(c) if c.desired == 0 && e.scale_to_zero_enabled && was_ready => (
            DeploymentState::DEPLOYMENT_READY,
            "scaled to zero; wakes on the first request".into(),
            None,
        ),
        Some(_) if was_ready => (
            DeploymentState::DEPLOYMENT_RECOVERING,
            with_problem("no ready replica; replacing pods".into()),
            problem.map(|p| p.reason.clone()),
        ),
        Some(c) => (
            DeploymentState::DEPLOYMENT_CREATING,
            with_problem(format!("{} of {} replicas ready", c.ready, c.desired)),
            problem.map(|p| p.reason.clone()),
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
    // An external entity's Deployment is its recorder.
    let message = match e
        .external_model
        .as_ref()
        .map(|m| (m, sluice_contract::external::api(m)))
    {
        Some((model, Ok(api))) => format!(
            "the gateway calls {} model {}; its recorder: {message}",
            api.label(),
            model.name
        ),
        _ => message,
    };
    e.state = Some(ServedEntityState {
        deployment,
        deployment_state_message: Some(message),
        reason,
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

fn alias_condition(conflicts: &[String]) -> Desired {
    if conflicts.is_empty() {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::False,
            reason: Reason::NoConflict,
            message: String::new(),
        }
    } else {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::True,
            reason: Reason::KeepingPreviousVersion,
            message: conflicts.join("; "),
        }
    }
}

fn supported_condition(fields: &[String]) -> Desired {
    if fields.is_empty() {
        Desired {
            type_: SUPPORTED,
            status: Status::True,
            reason: Reason::AllFieldsSupported,
            message: String::new(),
        }
    } else {
        Desired {
            type_: SUPPORTED,
            status: Status::False,
            reason: Reason::FieldNotSupported,
            message: unsupported_message(fields),
        }
    }
}

/// One Warning event per entity whose pods start failing, or fail for a new reason (the
/// message of a crash loop changes with every restart; the reason does not).
fn failure_events<'a>(
    previous: &ServingEndpointStatus,
    configs: impl Iterator<Item = &'a EndpointConfigStatus>,
) -> Vec<PlanEvent> {
    let reason_of = |e: &ServedEntityStatus| e.state.as_ref().and_then(|s| s.reason.clone());
    let before: BTreeMap<(String, Option<String>), Option<String>> = previous
        .config
        .iter()
        .chain(previous.pending_config.iter())
        .flat_map(|c| c.served_entities.iter())
        .map(|e| ((e.name.clone(), e.deployment_name.clone()), reason_of(e)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut events = Vec::new();
    for e in configs.flat_map(|c| c.served_entities.iter()) {
        let key = (e.name.clone(), e.deployment_name.clone());
        let Some(reason) = reason_of(e) else {
            continue;
        };
        if before.get(&key) == Some(&Some(reason.clone())) || !seen.insert(key) {
            continue;
        }
        let message = e
            .state
            .as_ref()
            .and_then(|s| s.deployment_state_message.clone())
            .unwrap_or_default();
        events.push(PlanEvent::new(
            EventReason::EntityFailing(reason),
            format!("entity {}: {message}", e.name),
        ));
    }
    events
}

/// "entity <name>: <message>" for each entity of `config` that is not ready.
fn not_ready(config: &EndpointConfigStatus) -> Vec<String> {
    config
        .served_entities
        .iter()
        .filter(|e| state_of(e) != DeploymentState::DEPLOYMENT_READY)
        .map(|e| {
            let message = e
                .state
                .as_ref()
                .and_then(|s| s.deployment_state_message.clone())
                .unwrap_or_default();
            format!("entity {}: {message}", e.name)
        })
        .collect()
}

/// The Ready condition: every active entity ready and nothing unsupported; otherwise why not,
/// naming the entities and what their pods report.
fn readiness(
    active: &Option<EndpointConfigStatus>,
    pending: &Option<EndpointConfigStatus>,
    unsupported: &[String],
) -> Desired {
    let not_ready_with = |reason, message| Desired {
        type_: READY,
        status: Status::False,
        reason,
        message,
    };
    if !unsupported.is_empty() {
        return not_ready_with(Reason::FieldNotSupported, unsupported_message(unsupported));
    }
    match (active, pending) {
        (Some(a), _) => {
            let waiting = not_ready(a);
            if waiting.is_empty() {
                Desired {
                    type_: READY,
                    status: Status::True,
                    reason: Reason::AllEntitiesReady,
                    message: "every entity of the active config is ready".into(),
                }
            } else {
                not_ready_with(
                    Reason::EntitiesNotReady,
                    format!(
                        "the active config has entities that are not ready: {}",
                        waiting.join("; ")
                    ),
                )
            }
        }
        (None, Some(p)) => not_ready_with(
            Reason::EntitiesNotReady,
            format!(
                "config {} is rolling out: {}",
                p.config_version,
                not_ready(p).join("; ")
            ),
        ),
        (None, None) => not_ready_with(Reason::EntitiesNotReady, "no config serves yet".into()),
    }
}

fn condition_set(
    ready_c: Desired,
    update: ConfigUpdateState,
    problems: &[String],
    pending: &Option<EndpointConfigStatus>,
) -> Vec<Desired> {
    let resolved_c = if problems.is_empty() {
        Desired {
            type_: RESOLVED,
            status: Status::True,
            reason: Reason::Resolved,
            message: String::new(),
        }
    } else {
        Desired {
            type_: RESOLVED,
            status: Status::False,
            reason: Reason::ResolveFailed,
            message: problems.join("; "),
        }
    };
    let updating_c = match update {
        ConfigUpdateState::IN_PROGRESS => Desired {
            type_: UPDATING,
            status: Status::True,
            reason: Reason::RollingOut,
            message: match pending.as_ref() {
                Some(p) => {
                    let waiting = not_ready(p);
                    if waiting.is_empty() {
                        format!("config {} is rolling out", p.config_version)
                    } else {
                        format!(
                            "config {} is rolling out: {}",
                            p.config_version,
                            waiting.join("; ")
                        )
                    }
                }
                None => "a config is rolling out".into(),
            },
        },
        ConfigUpdateState::UPDATE_FAILED => Desired {
            type_: UPDATING,
            status: Status::False,
            reason: Reason::UpdateFailed,
            message: match pending.as_ref().map(not_ready).filter(|w| !w.is_empty()) {
                Some(failed) => format!("the previous config keeps serving; {}", failed.join("; ")),
                None => "the previous config keeps serving".into(),
            },
        },
        _ => Desired {
            type_: UPDATING,
            status: Status::False,
            reason: Reason::UpToDate,
            message: String::new(),
        },
    };
    vec![ready_c, resolved_c, updating_c]
}

#[cfg(test)]
mod tests {
    use sluice_crds::ModelVersion;

    use super::*;
    use sluice_contract::{config::OperatorConfig, resolve::resolve};

    fn mv(v: i64) -> ModelVersion {
        sluice_contract::fixtures::checked_version("m", v, &[], true)
    }

    fn endpoint(entities: &str, status: Option<ServingEndpointStatus>) -> ServingEndpoint {
        let mut ep = sluice_contract::fixtures::endpoint("ep", entities);
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
        plan(ep, resolved, &ctx(), children, Timestamp::UNIX_EPOCH)
    }

    fn ctx() -> BuildContext<'static> {
        BuildContext {
            endpoint: "ep",
            namespace: "ns",
            owner: Default::default(),
            data_plane_image: "ghcr.io/sluice-dev/inference-server:test",
            capture: None,
            usage: None,
            progress_deadline_seconds: 600,
            network_policy: None,
            lake_volume: Box::leak(Box::default()),
        }
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
        assert!(
            second
                .events
                .iter()
                .any(|e| e.reason.as_str() == "Promoted")
        );
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
    fn only_owned_children_no_config_uses_are_pruned() {
        let (live, mut children) = serving(ONE);
        let serving_child = live.keep.iter().next().expect("child").clone();
        for (name, owned) in [("ep-a-old", true), ("ep-a-copy", false)] {
            children.insert(
                name.into(),
                ChildState {
                    owned,
                    ..Default::default()
                },
            );
        }
        children.get_mut(&serving_child).expect("serving").owned = true;
        let planned = run(&endpoint(ONE, Some(live.status.clone())), &children);
        assert_eq!(
            planned.prune,
            ["ep-a-old"],
            "the child in use and the one another owner made stay"
        );
    }

    #[test]
    fn claims_are_wanted_once_each_and_only_when_children_are_applied() {
        let capture = ResolvedCapture {
            table_uri: "pvc://lake/tables/fraud".into(),
            spool: Some(sluice_crds::ResolvedSpool {
                claim_name: "ep-capture-spool".into(),
                size: "1Gi".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let usage = ResolvedUsageTracking {
            table_uri: "pvc://lake/tables/usage".into(),
        };
        let ctx = BuildContext {
            capture: Some(&capture),
            usage: Some(&usage),
            ..ctx()
        };
        let wanted: Vec<(String, &str)> = claims::wanted(&ctx)
            .into_iter()
            .map(|w| (w.claim.metadata.name.unwrap_or_default(), w.holds))
            .collect();
        assert_eq!(
            wanted,
            [
                ("lake".to_string(), "the inference table"),
                ("ep-capture-spool".to_string(), "the capture spool"),
            ],
            "the two tables share one claim"
        );
        let ep = endpoint(ONE, None);
        let resolved = || resolve(&ep, &[mv(1)], &BTreeMap::new(), &OperatorConfig::default());
        let first = plan(
            &ep,
            resolved(),
            &ctx,
            &BTreeMap::new(),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(first.claims.len(), 2);
        let ep = endpoint(ONE, Some(first.status.clone()));
        let settled = plan(
            &ep,
            resolved(),
            &ctx,
            &ready_children(&first),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(settled.claims.len(), 2, "applied again: still wanted");
        let unresolved = endpoint(
            "  servedEntities:\n  - {name: a, model: m, version: 9}\n",
            None,
        );
        let nothing = plan(
            &unresolved,
            resolve(
                &unresolved,
                &[mv(1)],
                &BTreeMap::new(),
                &OperatorConfig::default(),
            ),
            &ctx,
            &BTreeMap::new(),
            Timestamp::UNIX_EPOCH,
        );
        assert!(nothing.apply.is_empty());
        assert!(
            nothing.claims.is_empty(),
            "nothing applied, nothing to claim"
        );
    }

    #[test]
    fn previous_versions_are_those_the_active_config_serves() {
        let (live, _) = serving(ONE);
        let ep = endpoint(ONE, Some(live.status));
        assert_eq!(
            previous_versions(&ep),
            BTreeMap::from([("a".to_string(), 1)])
        );
        assert!(previous_versions(&endpoint(ONE, None)).is_empty());
    }

    #[test]
    fn a_refused_child_is_in_the_applied_condition_and_warned_of_once() {
        let (live, _) = serving(ONE);
        let ep = endpoint(ONE, Some(live.status.clone()));
        let refused = ["ep-a-1: denied by policy".to_string()];
        let (status, event) =
            after_apply(&ep, live.status.clone(), &refused, Timestamp::UNIX_EPOCH);
        let applied = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::APPLIED)
            .expect("Applied");
        assert_eq!(
            (applied.status.as_str(), applied.reason.as_str()),
            ("False", Reason::ApplyFailed.as_str())
        );
        assert_eq!(
            event.map(|e| (e.reason.as_str().to_string(), e.message)),
            Some(("ApplyFailed".to_string(), refused[0].clone()))
        );
        let again = endpoint(ONE, Some(status.clone()));
        let (same, repeat) =
            after_apply(&again, live.status.clone(), &refused, Timestamp::UNIX_EPOCH);
        assert!(repeat.is_none(), "the same refusal is not warned of twice");
        let (_, fixed) = after_apply(
            &endpoint(ONE, Some(same)),
            live.status,
            &[],
            Timestamp::UNIX_EPOCH,
        );
        assert!(fixed.is_none());
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
        assert!(
            failed
                .events
                .iter()
                .any(|e| e.reason.is_warning() && e.reason.as_str() == "UpdateFailed")
        );

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

    fn ready_condition(p: &Plan) -> (String, String, String) {
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn a_failing_pod_shows_in_status_at_once_with_one_warning_per_reason() {
        let first = run(&endpoint(ONE, None), &BTreeMap::new());
        let child = first.keep.iter().next().expect("child").clone();
        let failing = |reason: &str, message: &str| {
            BTreeMap::from([(
                child.clone(),
                ChildState {
                    desired: 1,
                    problem: Some(PodProblem {
                        reason: reason.into(),
                        message: message.into(),
                    }),
                    ..Default::default()
                },
            )])
        };
        let pulling = run(
            &endpoint(ONE, Some(first.status.clone())),
            &failing("ImagePullBackOff", "pod p: container model: not found"),
        );
        let entity = &pulling
            .status
            .pending_config
            .as_ref()
            .expect("pending")
            .served_entities[0];
        let entity_state = entity.state.as_ref().expect("state");
        assert_eq!(
            entity_state.deployment,
            DeploymentState::DEPLOYMENT_CREATING
        );
        assert_eq!(entity_state.reason.as_deref(), Some("ImagePullBackOff"));
        assert_eq!(
            entity_state.deployment_state_message.as_deref(),
            Some("0 of 1 replicas ready; ImagePullBackOff: pod p: container model: not found")
        );
        let (status, _, message) = ready_condition(&pulling);
        assert_eq!(status, "False");
        assert!(
            message.contains("entity a: 0 of 1 replicas ready; ImagePullBackOff"),
            "{message}"
        );
        let warnings: Vec<_> = pulling
            .events
            .iter()
            .filter(|e| e.reason.is_warning())
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", pulling.events);
        assert_eq!(warnings[0].reason.as_str(), "ImagePullBackOff");

        let again = run(
            &endpoint(ONE, Some(pulling.status.clone())),
            &failing(
                "ImagePullBackOff",
                "pod p: container model: still not found",
            ),
        );
        assert!(
            again.events.iter().all(|e| !e.reason.is_warning()),
            "same reason, no new warning"
        );
        let crashing = run(
            &endpoint(ONE, Some(again.status)),
            &failing(
                "CrashLoopBackOff",
                "pod p: init container fetch exited with code 1",
            ),
        );
        assert!(
            crashing
                .events
                .iter()
                .any(|e| e.reason.is_warning() && e.reason.as_str() == "CrashLoopBackOff")
        );
    }

    #[test]
    fn fields_this_version_ignores_keep_the_endpoint_from_ready_and_say_so() {
        let spec = "  servedEntities:\n  - {name: a, model: m, version: 1}\n  aiGateway:\n    guardrails: {output: {validTopics: [secret]}}\n";
        let first = run(&endpoint(spec, None), &BTreeMap::new());
        let children = ready_children(&first);
        let served = run(&endpoint(spec, Some(first.status.clone())), &children);
        assert_eq!(
            state(&served),
            (ReadyState::NOT_READY, ConfigUpdateState::NOT_UPDATING),
            "the pods serve, but the endpoint is not READY while a policy is ignored"
        );
        let (status, reason, message) = ready_condition(&served);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", Reason::FieldNotSupported.as_str())
        );
        assert!(message.contains("spec.aiGateway.guardrails"), "{message}");
        let warned = |p: &Plan| {
            p.events
                .iter()
                .filter(|e| {
                    e.reason.is_warning() && e.reason.as_str() == Reason::FieldNotSupported.as_str()
                })
                .count()
        };
        assert_eq!(warned(&first), 1);
        assert_eq!(warned(&served), 0, "warned once");

        let external = "  servedEntities:\n  - name: gpt\n    externalModel: {provider: cohere, name: command-r, task: llm/v1/chat}\n";
        let planned = run(&endpoint(external, None), &BTreeMap::new());
        let (status, reason, message) = ready_condition(&planned);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", Reason::FieldNotSupported.as_str())
        );
        assert!(
            message.contains("spec.servedEntities[0].externalModel.provider cohere"),
            "{message}"
        );
        let entity = &planned
            .status
            .pending_config
            .as_ref()
            .expect("pending")
            .served_entities[0];
        assert_eq!(
            entity.state.as_ref().and_then(|s| s.reason.as_deref()),
            Some(NOT_SUPPORTED)
        );
        assert_eq!(state(&planned).1, ConfigUpdateState::UPDATE_FAILED);

        // A provider the gateway calls: no pods, and the entity serves.
        let called = "  servedEntities:\n  - name: gpt\n    externalModel: {provider: openai, name: gpt-4o, task: llm/v1/chat}\n";
        let planned = run(&endpoint(called, None), &BTreeMap::new());
        assert!(planned.keep.is_empty(), "no children: {:?}", planned.keep);
        let config = planned
            .status
            .config
            .as_ref()
            .or(planned.status.pending_config.as_ref())
            .expect("a config");
        let entity = &config.served_entities[0];
        assert_eq!(
            entity.state.as_ref().map(|s| &s.deployment),
            Some(&DeploymentState::DEPLOYMENT_READY),
            "{entity:?}"
        );
        assert_eq!(
            entity.external_model.as_ref().map(|m| m.name.as_str()),
            Some("gpt-4o")
        );
    }

    #[test]
    fn a_cutover_keeps_the_capacity_the_old_revision_served_with() {
        let (live, mut children) = serving(ONE);
        let old_child = live.keep.iter().next().expect("old child").clone();
        children.insert(
            old_child.clone(),
            ChildState {
                desired: 4,
                current: 4,
                ready: 4,
                ..Default::default()
            },
        );
        let v2 = "  servedEntities:\n  - {name: a, model: m, version: 2}\n";
        let rolling = run(&endpoint(v2, Some(live.status.clone())), &children);
        let new = rolling
            .apply
            .iter()
            .find(|w| w.child != old_child)
            .expect("new revision");
        assert_eq!(
            new.replicas,
            Replicas::Create(4),
            "starts with the old revision's replicas"
        );
        assert_eq!(new.objects.deployment.spec.replicas, Some(4));
        let partly = |ready: i32| {
            let mut c = children.clone();
            c.insert(
                new.child.clone(),
                ChildState {
                    desired: 4,
                    current: 4,
                    ready,
                    ..Default::default()
                },
            );
            c
        };
        let one_ready = run(&endpoint(v2, Some(rolling.status.clone())), &partly(1));
        assert_eq!(
            state(&one_ready).1,
            ConfigUpdateState::IN_PROGRESS,
            "one ready pod of four does not take over from four"
        );
        assert!(
            one_ready.keep.contains(&old_child),
            "the old revision stays"
        );
        let all_ready = run(&endpoint(v2, Some(rolling.status)), &partly(4));
        assert_eq!(state(&all_ready).1, ConfigUpdateState::NOT_UPDATING);
        assert!(!all_ready.keep.contains(&old_child));
    }

    #[test]
    fn an_autoscaling_only_change_rolls_no_pods_and_is_published_at_once() {
        let (live, children) = serving(ONE);
        let entity =
            |p: &Plan| p.status.config.as_ref().expect("config").served_entities[0].clone();
        let before = entity(&live);
        assert_eq!(
            before.autoscaling.as_ref().map(|a| a.hold_timeout_seconds),
            Some(120),
            "the operator config's default is published"
        );
        let knobs = "  servedEntities:\n  - {name: a, model: m, version: 1, maxProvisionedConcurrency: 32, autoscaling: {holdTimeoutSeconds: 7, idleTimeoutSeconds: 60, maxHeldRequests: 3}}\n";
        let tuned = run(&endpoint(knobs, Some(live.status.clone())), &children);
        assert_eq!(
            state(&tuned),
            (ReadyState::READY, ConfigUpdateState::NOT_UPDATING)
        );
        assert_eq!(tuned.keep, live.keep, "the same children: no pod rolls");
        let after = entity(&tuned);
        assert_eq!(after.deployment_name, before.deployment_name);
        assert_eq!(after.revision, before.revision);
        assert_eq!(
            before.deployment_name,
            before.revision.as_ref().map(|r| format!("ep-a-{r}"))
        );
        let published = after.autoscaling.expect("published");
        assert_eq!(
            (
                published.hold_timeout_seconds,
                published.idle_timeout_seconds,
                published.max_held_requests,
                published.max_replicas
            ),
            (7, 60, 3, 8)
        );
        assert_eq!(
            tuned.status.config.as_ref().map(|c| c.config_version),
            Some(2),
            "a new config, promoted at once"
        );
        assert!(
            tuned
                .events
                .iter()
                .any(|e| e.reason == EventReason::Promoted)
        );
        // Existing children keep their replicas with the autoscaler.
        assert!(
            tuned
                .apply
                .iter()
                .all(|w| w.objects.deployment.spec.replicas.is_none())
        );
    }

    #[test]
    fn a_pod_shaping_change_makes_a_new_revision() {
        let (live, children) = serving(ONE);
        let gpu =
            "  servedEntities:\n  - {name: a, model: m, version: 1, workloadType: GPU_SMALL}\n";
        let rolling = run(&endpoint(gpu, Some(live.status.clone())), &children);
        assert_eq!(state(&rolling).1, ConfigUpdateState::IN_PROGRESS);
        assert_eq!(rolling.keep.len(), 2, "a new revision beside the old");
    }

    #[test]
    fn a_new_version_of_the_same_artifact_is_still_a_new_revision() {
        let one = mv(1);
        let mut two = mv(2);
        two.spec.source.uri = one.spec.source.uri.clone();
        let children_of = |version: i64| {
            let ep = endpoint(
                &format!("  servedEntities:\n  - {{name: a, model: m, version: {version}}}\n"),
                None,
            );
            let models = [one.clone(), two.clone()];
            let resolved = resolve(&ep, &models, &BTreeMap::new(), &OperatorConfig::default());
            plan(
                &ep,
                resolved,
                &ctx(),
                &BTreeMap::new(),
                Timestamp::UNIX_EPOCH,
            )
            .keep
        };
        assert_ne!(
            children_of(1),
            children_of(2),
            "the version is part of the pod template"
        );
    }
}
