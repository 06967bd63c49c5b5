//! The side-effecting half of the ServingEndpoint pipeline: gather inputs (ModelVersions, child
//! Deployments and their pods, read from the stores of the controller's own watches, never
//! listed per reconcile), run the pure steps, then apply the children the plan rendered
//! with server-side apply, write status when it changed, prune children no config uses, and
//! publish an event per decision. Nothing here decides: the plan does.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        batch::v1::{CronJob, Job},
        core::v1::{Pod, Service},
        networking::v1::NetworkPolicy,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use sluice_contract::config::OperatorConfig;
use sluice_contract::labels::{LABEL_ENDPOINT, MANAGED_SELECTOR};
use sluice_contract::resolve::{resolve, resolve_capture, resolve_usage};
use sluice_crds::{ModelVersion, ServingEndpoint, ServingEndpointStatus};
use sluice_watch::Synced;
use tracing::{instrument, warn};

use super::{
    children::child_state,
    claims,
    desired::BuildContext,
    events::{EventReason, PlanEvent},
    monitor,
    plan::{ChildState, Replicas, Wanted, after_apply, plan, previous_versions},
    pods::problems_by_child,
    requeue,
};
use crate::{
    STATUS_MANAGER,
    caches::Caches,
    error::{Error, kube_err},
    metrics::ControllerName,
    runtime::{Env, Tracked},
};

/// Field manager of the children the operator applies.
pub const CHILD_MANAGER: &str = "sluice-operator";

struct Context {
    client: Client,
    config: OperatorConfig,
    recorder: Recorder,
    tracked: Tracked,
    /// ModelVersions of the watched scope.
    models: Store<ModelVersion>,
    /// Child Deployments (managed by Sluice) of the watched scope.
    deployments: Store<Deployment>,
    /// Entity pods of the watched scope.
    pods: Store<Pod>,
    /// The three stores above have synced (for every concurrent reconcile).
    synced: Synced,
}

/// The objects of `store` that `keep` selects, in name order (a store has none; a LIST had, and
/// what the pure steps report, e.g. the first failing pod, must not depend on hashing).
fn snapshot<K>(store: &Store<K>, keep: impl Fn(&kube::api::ObjectMeta) -> bool) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let mut objects: Vec<K> = store
        .state()
        .iter()
        .filter(|o| keep(o.meta()))
        .map(|o| K::clone(o))
        .collect();
    objects.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    objects
}

/// Sets up the ServingEndpoint controller on the shared `caches` (its subscriptions are taken
/// now); the future runs it until `env.shutdown` completes and in-flight reconciles have
/// finished.
pub fn run(
    env: Env,
    config: OperatorConfig,
    caches: &mut Caches,
) -> impl Future<Output = ()> + use<> {
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    let endpoints = caches.endpoints.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(env.client.clone(), env.reporter.clone()),
        client: env.client.clone(),
        config,
        tracked: Tracked::new(ControllerName::ServingEndpoint, env.metrics.clone()),
        synced: caches
            .models
            .synced()
            .with(&caches.deployments.synced())
            .with(&caches.pods.synced()),
        models: caches.models.store(),
        deployments: caches.deployments.store(),
        pods: caches.pods.store(),
    });
    // The main trigger takes changes only, as `Controller::new`'s does: a deleted endpoint has
    // nothing left to reconcile.
    let changed = caches.endpoints.subscribe_applied().map(Ok);
    let controller = Controller::for_stream(changed, endpoints.clone())
        .owns_stream(caches.deployments.subscribe())
        .owns(env.api::<Service>(), managed)
        // Entity pods: a pod that fails (image pull, crash loop, unschedulable) shows in the
        // endpoint's status within seconds, not at the rollout's progress deadline.
        // And the monitoring's refresh pods: a finished refresh shows in `status.monitoring`.
        .watches_stream(caches.pods.subscribe(), |pod| {
            let labels = pod.labels();
            let endpoint = labels
                .get(LABEL_ENDPOINT)
                .or_else(|| labels.get(monitor::LABEL_MONITOR))?;
            Some(ObjectRef::<ServingEndpoint>::new(endpoint).within(&pod.namespace()?))
        })
        // A ModelVersion change (readiness, an alias move) re-resolves every endpoint of its
        // namespace that serves its model.
        .watches_stream(caches.models.subscribe(), move |mv| {
            endpoints
                .state()
                .iter()
                .filter(|ep| ep.namespace() == mv.namespace() && serves_model(ep, &mv.spec.model))
                .map(|ep| ObjectRef::from_obj(ep.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(crate::runtime::controller_config())
        .trigger_backoff(sluice_watch::WatchBackoff::default())
        .graceful_shutdown_on(env.shutdown.clone());
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "serving endpoint controller");
            }
        })
}

/// Name of this controller's main watch in readiness.
pub const WATCH: &str = "servingendpoints";

fn serves_model(ep: &ServingEndpoint, model: &str) -> bool {
    ep.spec
        .served_entities
        .iter()
        .any(|e| e.model.as_deref() == Some(model))
}

#[instrument(skip_all, fields(namespace = ep.namespace(), name = ep.name_any()))]
async fn reconcile(ep: Arc<ServingEndpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.tracked
        .run(ep.as_ref(), reconcile_endpoint(&ep, &ctx))
        .await
}

async fn reconcile_endpoint(ep: &ServingEndpoint, ctx: &Context) -> Result<Action, Error> {
    let ns = ep
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = ep.name_any();
    let client = &ctx.client;
    // Reading a store before its first full list would look like "no children" (and re-create
    // replicas the autoscaler owns): wait for the three to sync once.
    ctx.synced.wait().await?;
    let in_namespace = |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == Some(&ns);
    let of_endpoint = |meta: &kube::api::ObjectMeta| {
        in_namespace(meta)
            && meta
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ENDPOINT))
                .is_some_and(|e| *e == name)
    };
    let models = snapshot(&ctx.models, in_namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let existing = snapshot(&ctx.deployments, of_endpoint);
    let pods = snapshot(&ctx.pods, of_endpoint);
    let mut problems = problems_by_child(&name, &pods);
    let owner = ep.uid();
    let children: BTreeMap<String, ChildState> = existing
        .iter()
        .map(|d| {
            let mut child = child_state(d, owner.as_deref());
            child.problem = problems.remove(&d.name_any());
            (d.name_any(), child)
        })
        .collect();

    // Pure steps.
    let capture = resolve_capture(ep, &ctx.config);
    let usage = resolve_usage(ep, &ctx.config);
    let resolved = resolve(ep, &models, &previous_versions(ep), &ctx.config);
    let build_ctx = BuildContext::of(ep, &ctx.config, capture.as_ref(), usage.as_ref())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let planned = plan(ep, resolved, &build_ctx, &children, Timestamp::now());
    let of_monitor = |meta: &kube::api::ObjectMeta| {
        in_namespace(meta)
            && meta
                .labels
                .as_ref()
                .and_then(|l| l.get(monitor::LABEL_MONITOR))
                .is_some_and(|e| *e == name)
    };
    let monitoring = monitor::plan(
        ep,
        &build_ctx,
        capture.as_ref(),
        &snapshot(&ctx.pods, of_monitor),
    );

    // A table on a claim, and a persistent spool, need their claims before the pods start.
    for wanted in &planned.claims {
        if claims::ensure(client, &wanted.claim, wanted.holds).await? {
            tracing::info!(claim = %wanted.claim.name_any(), holds = wanted.holds, "created a PersistentVolumeClaim");
        }
    }
    // Children the API server refuses (an admission policy, a quota) are reported in status
    // and as an event; the others are still applied.
    let mut refused = Vec::new();
    for wanted in &planned.apply {
        match apply_child(&ns, &deployments, &services, wanted).await {
            Ok(()) => {}
            Err(kube::Error::Api(e)) => refused.push(format!("{}: {}", wanted.child, e.message)),
            Err(e) => {
                return Err(kube_err(format!("applying the children {}", wanted.child))(
                    e,
                ));
            }
        }
    }
    if let Err(refusal) = apply_monitoring(client, &ns, &monitoring).await? {
        refused.push(refusal);
    }
    let (mut status, refusal) = after_apply(ep, planned.status.clone(), &refused, Timestamp::now());
    status.monitoring = monitoring.status.clone();
    let previous_conditions = ep
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    status.conditions.extend(crate::conditions::merge(
        previous_conditions,
        &monitoring.conditions,
        ep.metadata.generation,
        Timestamp::now(),
    ));

    // Status before pruning: the gateway stops routing to a child before it disappears.
    if ep.status.as_ref() != Some(&status) {
        write_status(client, &ns, &name, &status).await?;
        ctx.tracked.status_written();
    }
    for event in refusal
        .iter()
        .chain(&planned.events)
        .chain(&monitoring.events)
    {
        publish(&ctx.recorder, ep, event).await;
    }
    for child in &planned.prune {
        deployments
            .delete(child, &DeleteParams::background())
            .await
            .map_err(kube_err(format!("pruning Deployment {child}")))?;
        match services.delete(child, &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(kube_err(format!("pruning Service {child}"))(e)),
        }
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        match policies.delete(child, &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(kube_err(format!("pruning NetworkPolicy {child}"))(e)),
        }
        let event = PlanEvent::new(
            EventReason::Pruned,
            format!("removed {child}, which no config uses"),
        );
        publish(&ctx.recorder, ep, &event).await;
    }
    Ok(if refused.is_empty() {
        requeue::next_action(&status)
    } else {
        Action::requeue(Duration::from_secs(30))
    })
}

/// Applies the monitoring CronJob (or deletes it when monitoring was turned off) and creates a
/// requested one-off refresh. A refusal by the API server is returned (`Ok(Err(..))`) for the
/// `Applied` condition; other errors fail the reconcile.
async fn apply_monitoring(
    client: &kube::Client,
    namespace: &str,
    plan: &monitor::MonitorPlan,
) -> Result<Result<(), String>, Error> {
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), namespace);
    if let Some(cronjob) = &plan.cronjob {
        let name = cronjob.name_any();
        let mut body = serde_json::to_value(cronjob).unwrap_or_default();
        body["apiVersion"] = json!("batch/v1");
        body["kind"] = json!("CronJob");
        match cronjobs
            .patch(
                &name,
                &PatchParams::apply(CHILD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) => return Ok(Err(format!("{name}: {}", e.message))),
            Err(e) => return Err(kube_err(format!("applying CronJob {name}"))(e)),
        }
    }
    if let Some(job) = &plan.manual {
        let name = job.name_any();
        match Api::<Job>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), job)
            .await
        {
            // Created, or created before (the status lagged): one refresh either way.
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) => return Ok(Err(format!("{name}: {}", e.message))),
            Err(e) => return Err(kube_err(format!("creating Job {name}"))(e)),
        }
    }
    if let Some(name) = &plan.delete {
        match cronjobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting CronJob {name}"))(e)),
        }
    }
    Ok(Ok(()))
}

/// Applies one entity revision's objects, as planned, with server-side apply; replicas go to
/// the autoscaler's field manager as the plan says.
async fn apply_child(
    namespace: &str,
    deployments: &Api<Deployment>,
    services: &Api<Service>,
    wanted: &Wanted,
) -> Result<(), kube::Error> {
    let apply = PatchParams::apply(CHILD_MANAGER).force();
    let objects = &wanted.objects;
    if let Replicas::HandOver(replicas) = wanted.replicas {
        hand_replicas_to_autoscaler(deployments, &objects.name, replicas).await?;
    }
    let mut deployment = serde_json::to_value(&objects.deployment).unwrap_or_default();
    deployment["apiVersion"] = json!("apps/v1");
    deployment["kind"] = json!("Deployment");
    deployments
        .patch(&objects.name, &apply, &Patch::Apply(&deployment))
        .await?;
    if let Replicas::Create(replicas) = wanted.replicas {
        hand_replicas_to_autoscaler(deployments, &objects.name, replicas).await?;
    }
    let mut service = serde_json::to_value(&objects.service).unwrap_or_default();
    service["apiVersion"] = json!("v1");
    service["kind"] = json!("Service");
    services
        .patch(&objects.name, &apply, &Patch::Apply(&service))
        .await?;
    if let Some(policy) = &objects.network_policy {
        let mut policy = serde_json::to_value(policy).unwrap_or_default();
        policy["apiVersion"] = json!("networking.k8s.io/v1");
        policy["kind"] = json!("NetworkPolicy");
        Api::<NetworkPolicy>::namespaced(deployments.clone().into_client(), namespace)
            .patch(&objects.name, &apply, &Patch::Apply(&policy))
            .await?;
    }
    Ok(())
}

/// Applies `replicas` as the autoscaler's field manager, so exactly one manager owns them from
/// the operator's next apply on (which leaves them out).
async fn hand_replicas_to_autoscaler(
    deployments: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    deployments
        .patch(
            name,
            &PatchParams::apply(crate::autoscaler::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &ServingEndpointStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": ServingEndpoint::api_version(&()),
        "kind": ServingEndpoint::kind(&()),
        "status": status,
    });
    Api::<ServingEndpoint>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err(format!(
            "writing status of ServingEndpoint {name}"
        )))?;
    Ok(())
}

async fn publish(recorder: &Recorder, ep: &ServingEndpoint, event: &PlanEvent) {
    let event = Event {
        type_: if event.reason.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.as_str().into(),
        note: Some(event.message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &ep.object_ref(&())).await {
        warn!(error = %e, "publishing event failed");
    }
}

fn error_policy(ep: Arc<ServingEndpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.tracked.retry(ep.as_ref(), error)
}
