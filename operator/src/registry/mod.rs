//! Registry mirrors (`registries` in the operator config): every version and alias of the named
//! MLflow registered models kept as ModelVersions of a namespace. Each mirror reads its registry
//! every `intervalSeconds` ([`mlflow`]), plans the ModelVersions ([`plan`], pure) and applies
//! them server-side as the field manager `sluice-registry`. The rest is the ModelVersion and
//! endpoint controllers' usual work: a version's source (`models:/<name>/<version>`) is checked
//! and resolved, and an alias that moved rolls every endpoint that follows it, blue/green.

pub mod mlflow;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use sluice_contract::config::RegistryMirror;
use sluice_crds::ModelVersion;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{Metrics, RegistryOutcome};
use crate::runtime::Shutdown;

/// The field manager of mirrored ModelVersions.
pub const FIELD_MANAGER: &str = "sluice-registry";

/// Runs every mirror of `mirrors` until `shutdown`; made objects also carry `labels` (the
/// installation's selector).
pub async fn run(
    client: Client,
    mirrors: Vec<RegistryMirror>,
    labels: BTreeMap<String, String>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let loops = mirrors.into_iter().map(|mirror| {
        let (client, labels, metrics, shutdown) =
            (client.clone(), labels.clone(), metrics.clone(), shutdown.clone());
        async move {
            info!(registry = %mirror.name, tracking_uri = %mirror.tracking_uri, namespace = %mirror.namespace, "mirroring");
            loop {
                let span = info_span!("registry_sync", registry = %mirror.name);
                let outcome = sync(&client, &mirror, &labels, &metrics).instrument(span).await;
                metrics.registry_sync(&mirror.name, outcome);
                tokio::select! {
                    () = tokio::time::sleep(mirror.interval()) => {}
                    () = shutdown.clone() => break,
                }
            }
        }
    });
    futures::future::join_all(loops).await;
}

/// One read of the registry and the applies it calls for.
async fn sync(
    client: &Client,
    mirror: &RegistryMirror,
    labels: &BTreeMap<String, String>,
    metrics: &Metrics,
) -> RegistryOutcome {
    let read = match mlflow::Registry::new(mirror) {
        Ok(registry) => registry.read(&mirror.models).await,
        Err(e) => Err(e),
    };
    let models = match read {
        Ok(models) => models,
        Err(e) => {
            warn!(error = %e, "the registry could not be read; ModelVersions left as they are");
            return RegistryOutcome::Unreachable;
        }
    };
    let api: Api<ModelVersion> = Api::namespaced(client.clone(), &mirror.namespace);
    let existing = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "listing ModelVersions failed");
            return RegistryOutcome::ApplyFailed;
        }
    };
    let now = Timestamp::now().to_string();
    let plan = plan::plan(mirror, labels, &models, &existing, &now);
    for problem in &plan.problems {
        warn!(problem = %problem, "not mirrored");
    }
    metrics.registry_versions(&mirror.name, plan.mirrored, plan.deleted);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut outcome = if plan.problems.is_empty() {
        RegistryOutcome::Synced
    } else {
        RegistryOutcome::Partial
    };
    for mv in &plan.apply {
        let name = mv.name_any();
        match api.patch(&name, &params, &Patch::Apply(mv)).await {
            Ok(_) => info!(modelversion = %name, aliases = ?mv.spec.aliases, "mirrored"),
            Err(e) => {
                warn!(modelversion = %name, error = %e, "applying the mirrored ModelVersion failed");
                outcome = RegistryOutcome::ApplyFailed;
            }
        }
    }
    outcome
}
