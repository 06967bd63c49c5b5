//! The operator's watches: one per kind and watched scope (a managed namespace, or the whole
//! cluster), each keeping one store that every controller reads and feeding each controller's
//! triggers. Reconciles read these stores; none LISTs per reconcile.
//!
//! Build [`Caches`], hand it to each controller's setup (which subscribes what it needs and
//! clones the stores), then drive it with [`Caches::run`].

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Pod};
use kube::runtime::watcher;
use sluice_contract::labels::MANAGED_SELECTOR;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_watch::SharedWatch;

use crate::runtime::Env;

/// The shared watches of one scope.
pub struct Caches {
    /// ServingEndpoints of this installation (its selector).
    pub endpoints: SharedWatch<ServingEndpoint>,
    /// ModelVersions of this installation (its selector).
    pub models: SharedWatch<ModelVersion>,
    /// Deployments Sluice manages: entity revisions and recorders.
    pub deployments: SharedWatch<Deployment>,
    /// Pods Sluice manages: entity pods and source-check pods.
    pub pods: SharedWatch<Pod>,
    /// Source-check Jobs.
    pub jobs: SharedWatch<Job>,
}

impl Caches {
    /// The watches of `env`'s scope (not started: see [`Caches::run`]).
    pub fn new(env: &Env) -> Self {
        let managed = || watcher::Config::default().labels(MANAGED_SELECTOR);
        Self {
            endpoints: SharedWatch::new(env.api(), env.managed_watch()),
            models: SharedWatch::new(env.api(), env.managed_watch()),
            deployments: SharedWatch::new(env.api(), managed()),
            pods: SharedWatch::new(env.api(), managed()),
            jobs: SharedWatch::new(env.api(), managed()),
        }
    }

    /// Drives every watch. It never ends by itself: run it beside the controllers and drop it
    /// once they have drained, so no reconcile loses its triggers or stores midway.
    pub async fn run(self) {
        tokio::join!(
            self.endpoints.run("servingendpoints"),
            self.models.run("modelversions"),
            self.deployments.run("deployments"),
            self.pods.run("pods"),
            self.jobs.run("source-check jobs"),
        );
    }
}
