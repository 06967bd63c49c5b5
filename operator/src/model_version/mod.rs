//! The ModelVersion controller: checks each version (format, task, duplicate numbers, and its
//! source and credentials Secret through a check Job), enforces alias uniqueness per model,
//! and publishes the result in status. The operator never reads Secrets: a missing one shows
//! as the check pod's `CreateContainerConfigError`.
//!
//! Pipeline: gather (the version's siblings, its source check Job and pod, all from the shared
//! caches) → [`evaluate`] (pure) → write status only when it changed → an event for each
//! decision that changed.

mod evaluate;
pub mod source_check;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use sluice_crds::{ModelVersion, ModelVersionStatus};
use sluice_watch::Synced;
use tracing::{info, instrument, warn};

use crate::conditions::IN_REGISTRY;
pub use evaluate::{ALIAS_CONFLICT, READY, evaluate};
use source_check::{LABEL_MODEL_VERSION, RECHECK_AFTER, Verdict};

use crate::{
    STATUS_MANAGER,
    caches::Caches,
    error::{Error, kube_err},
    metrics::ControllerName,
    runtime::{Env, Tracked},
};

/// What every reconcile of this controller shares.
struct Context {
    client: Client,
    /// The data-plane image the source check runs.
    image: String,
    store: Store<ModelVersion>,
    /// Source-check Jobs.
    jobs: Store<Job>,
    /// Managed pods, the source checks' among them.
    pods: Store<Pod>,
    /// The Job and pod stores have synced.
    synced: Synced,
    recorder: Recorder,
    tracked: Tracked,
}

/// Name of this controller's watch in readiness.
pub const WATCH: &str = "modelversions";

/// Sets up the controller on the shared `caches` (its subscriptions are taken now); the future
/// runs it until `env.shutdown` completes and in-flight reconciles have finished.
pub fn run(env: Env, image: String, caches: &mut Caches) -> impl Future<Output = ()> + use<> {
    let store = caches.models.store();
    let siblings = store.clone();
    let ctx = Arc::new(Context {
        client: env.client.clone(),
        image,
        store: store.clone(),
        jobs: caches.jobs.store(),
        pods: caches.pods.store(),
        synced: caches.jobs.synced().with(&caches.pods.synced()),
        recorder: Recorder::new(env.client.clone(), env.reporter.clone()),
        tracked: Tracked::new(ControllerName::ModelVersion, env.metrics.clone()),
    });
    // Changes only on the main trigger; a deletion reaches the siblings through the watch below.
    Controller::for_stream(caches.models.subscribe_applied().map(Ok), store)
        // A source check finishing changes its version's status.
        .owns_stream(caches.jobs.subscribe())
        // A change to one version can change its siblings' alias conflicts and duplicates.
        .watches_stream(caches.models.subscribe(), move |changed: ModelVersion| {
            sibling_refs(&siblings, &changed)
        })
        .with_config(crate::runtime::controller_config())
        .graceful_shutdown_on(env.shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "model version controller");
            }
        })
}

fn sibling_refs(
    store: &Store<ModelVersion>,
    changed: &ModelVersion,
) -> Vec<ObjectRef<ModelVersion>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == changed.namespace() && o.spec.model == changed.spec.model)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

#[instrument(skip_all, fields(namespace = mv.namespace(), name = mv.name_any()))]
async fn reconcile(mv: Arc<ModelVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.tracked
        .run(mv.as_ref(), reconcile_version(&mv, &ctx))
        .await
}

async fn reconcile_version(mv: &ModelVersion, ctx: &Context) -> Result<Action, Error> {
    let ns = mv
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let siblings: Vec<ModelVersion> = ctx
        .store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && o.spec.model == mv.spec.model)
        .map(|o| o.as_ref().clone())
        .collect();
    let source = if evaluate::checkable(mv) {
        check_source(ctx, mv, &ns).await?
    } else {
        Verdict::Checking
    };
    let status = evaluate(mv, &siblings, &source, Timestamp::now());
    if mv.status.as_ref() != Some(&status) {
        write_status(&ctx.client, mv, &ns, &status).await?;
        ctx.tracked.status_written();
        publish_changes(&ctx.recorder, mv, &status).await;
    }
    // A running check is looked at again soon: a pod waiting for its Secret changes no Job
    // status. A failed one is run again later (the Secret may have been fixed).
    Ok(match &source {
        Verdict::Unreachable(_) | Verdict::Unknown(_) => Action::requeue(RECHECK_AFTER),
        Verdict::Checking | Verdict::SecretMissing(_) if evaluate::checkable(mv) => {
            Action::requeue(CHECKING_POLL)
        }
        _ => Action::await_change(),
    })
}

/// How often a running source check is looked at.
const CHECKING_POLL: Duration = Duration::from_secs(3);

/// Runs (or reads) the source check Job of `mv`: creates it when missing, replaces a failed
/// one after [`RECHECK_AFTER`], removes the checks of an older URI or Secret name.
async fn check_source(ctx: &Context, mv: &ModelVersion, ns: &str) -> Result<Verdict, Error> {
    // An empty store before its first list would read as "no check yet".
    ctx.synced.wait().await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let name = source_check::job_name(mv);
    let version = mv.name_any();
    let in_namespace = |meta: &ObjectMeta| meta.namespace.as_deref() == Some(ns);
    let mine: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            in_namespace(j.meta()) && label(j.meta(), LABEL_MODEL_VERSION) == Some(&version)
        })
        .collect();
    for old in mine.iter().filter(|j| j.name_any() != name) {
        delete_job(&jobs, &old.name_any()).await?;
    }
    // The store lags a create by a moment: a create that meets the Job is not an error.
    let Some(job) = mine.into_iter().find(|j| j.name_any() == name) else {
        let Some(job) = source_check::job(mv, &name, &ctx.image) else {
            return Ok(Verdict::Checking);
        };
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err(format!("creating Job {name}"))(e)),
        }
        return Ok(Verdict::Checking);
    };
    let mut pods: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| in_namespace(p.meta()) && label(p.meta(), JOB_NAME) == Some(&name))
        .map(|p| Pod::clone(p))
        .collect();
    // In name order, as a LIST returned them: the verdict names the first failing pod.
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let verdict = source_check::verdict(Some(&job), &pods);
    if source_check::stale(&job, &verdict, Timestamp::now()) {
        delete_job(&jobs, &name).await?;
        return Ok(Verdict::Checking);
    }
    Ok(verdict)
}

/// The value of label `key` of an object.
fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// The label the Job controller puts on the pods of a Job.
const JOB_NAME: &str = "batch.kubernetes.io/job-name";

async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<(), Error> {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("deleting Job {name}"))(e)),
    }
}

async fn write_status(
    client: &Client,
    mv: &ModelVersion,
    ns: &str,
    status: &ModelVersionStatus,
) -> Result<(), Error> {
    let api: Api<ModelVersion> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": ModelVersion::api_version(&()),
        "kind": ModelVersion::kind(&()),
        "status": status,
    });
    api.patch_status(
        &mv.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err(format!(
        "writing status of ModelVersion {}",
        mv.name_any()
    )))?;
    Ok(())
}

/// One event per condition whose status or reason changed.
async fn publish_changes(recorder: &Recorder, mv: &ModelVersion, status: &ModelVersionStatus) {
    let before = mv
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    for c in &status.conditions {
        let unchanged = before
            .iter()
            .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason);
        let deleted = c.type_ == IN_REGISTRY && c.status == "False";
        let noteworthy = c.type_ == READY || c.status == "True" || deleted;
        if unchanged || !noteworthy {
            continue;
        }
        let warning = (c.type_ == READY && c.status != "True")
            || (c.type_ == ALIAS_CONFLICT && c.status == "True")
            || deleted;
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Evaluate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &mv.object_ref(&())).await {
            warn!(error = %e, "publishing event failed");
        }
        info!(condition = %c.type_, status = %c.status, reason = %c.reason, "{}", c.message);
    }
}

fn error_policy(mv: Arc<ModelVersion>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.tracked.retry(mv.as_ref(), error)
}
