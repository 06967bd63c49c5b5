//! What every controller shares: the client and the namespace scope it watches, the event
//! reporter, metrics, readiness, the shutdown signal, and the per-object bookkeeping around each
//! reconcile ([`Tracked`]: metrics, backoff on errors, reset on success).

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::future::{BoxFuture, Shared};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        controller::{self, Action},
        events::Reporter,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::{
    backoff::Backoff,
    error::Error,
    health::Health,
    metrics::{ControllerName, Metrics},
};

/// Reconciles of one controller that run at once. Bounded so that a burst (a restart with
/// thousands of objects, a ModelVersion change fanning out to every endpoint) queues in the
/// operator instead of flooding the API server; each object still reconciles one at a time.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// The controller settings every controller runs with.
pub fn controller_config() -> controller::Config {
    controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// Completes once when the process should shut down; clone it for each waiter.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Shared by every controller of the process.
///
/// An installation manages either the whole cluster or a list of namespaces. With a list, each
/// controller runs once per namespace ([`Env::per_namespace`]) over namespaced watches, so the
/// operator needs only Roles in those namespaces: no list or watch across the cluster.
#[derive(Clone)]
pub struct Env {
    /// The API client.
    pub client: Client,
    /// The namespace this controller instance watches; `None` for the whole cluster.
    pub namespace: Option<String>,
    /// Every namespace the installation manages; empty for the whole cluster.
    pub namespaces: Vec<String>,
    /// Label selector the managed ServingEndpoints and ModelVersions must match (`None`: all),
    /// so that several installations can share namespaces.
    pub selector: Option<String>,
    /// Who events are reported as.
    pub reporter: Reporter,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Health,
    /// Completes when the controllers should stop taking work and drain.
    pub shutdown: Shutdown,
}

impl Env {
    /// One environment per managed namespace, or this one alone for the whole cluster.
    pub fn per_namespace(&self) -> Vec<Env> {
        if self.namespaces.is_empty() {
            return vec![self.clone()];
        }
        self.namespaces
            .iter()
            .map(|ns| Env {
                namespace: Some(ns.clone()),
                ..self.clone()
            })
            .collect()
    }

    /// The watch settings of the managed custom resources: every change (status writes by
    /// others included), and only objects of this installation's selector.
    pub fn managed_watch(&self) -> watcher::Config {
        let config = watcher::Config::default().any_semantic();
        match &self.selector {
            Some(selector) => config.labels(selector),
            None => config,
        }
    }

    /// An `Api` over the watched scope.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Metrics and per-object backoff around one controller's reconciles.
pub struct Tracked {
    controller: ControllerName,
    metrics: Arc<Metrics>,
    backoff: Backoff,
}

/// `namespace/name` of an object: the backoff key.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Tracked {
    /// Bookkeeping for `controller`, with the default backoff (1 s doubling to 5 min).
    pub fn new(controller: ControllerName, metrics: Arc<Metrics>) -> Self {
        Self {
            controller,
            metrics,
            backoff: Backoff::default(),
        }
    }

    /// Runs one reconcile of `obj`: timed and counted; a success resets its backoff, a failure
    /// is counted by category.
    pub async fn run<K: Resource>(
        &self,
        obj: &K,
        reconcile: impl Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let _timer = self.metrics.reconcile(self.controller);
        let result = reconcile.await;
        match &result {
            Ok(_) => self.backoff.succeeded(&key_of(obj)),
            Err(e) => self.metrics.failed(self.controller, e.category()),
        }
        result
    }

    /// The error policy: retry `obj` after its next backoff delay.
    pub fn retry<K: Resource>(&self, obj: &K, error: &Error) -> Action {
        let key = key_of(obj);
        let delay: Duration = self.backoff.failed(&key);
        warn!(
            controller = self.controller.as_str(),
            object = %key,
            category = error.category(),
            failures = self.backoff.failures(&key),
            retry_in = ?delay,
            error = %error,
            "reconcile failed"
        );
        Action::requeue(delay)
    }

    /// Counts one status write.
    pub fn status_written(&self) {
        self.metrics.status_written(self.controller);
    }
}
