//! Kubernetes watches as the Sluice operator and gateway run them: one retry policy
//! ([`WatchBackoff`]), one way to keep a reflector store in step ([`store`]), one watch of a
//! kind shared by every consumer of a process ([`SharedWatch`]), and one way for many tasks to
//! wait until stores have synced ([`Synced`]).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

mod shared;
pub use shared::SharedWatch;

/// The backoff of every watch, and of each controller's merged trigger stream: 250 ms doubling
/// to 5 s, back to 250 ms at the next event that arrives.
///
/// kube-runtime's default (800 ms doubling to 30 s, reset only after 120 s without errors) is
/// shared by all the watches a controller merges. After an API server restart each of them
/// meets one `410 Gone` on resuming, so the delays stacked up and the controllers were blind
/// for about 90 s (`faults_apiserver` measured it); with this one they resume in seconds.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Up to 10 % jitter, so watches that failed together do not retry together.
        Some(delay.mul_f64(1.0 + fastrand::f64() / 10.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A reflector store of `api` and the watch events that keep it, retried with [`WatchBackoff`].
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, config)
        .backoff(WatchBackoff::default())
        .reflect(writer);
    (reader, events)
}

/// A reflector store of the objects of `api` that match `config`, and the future that keeps it
/// in step (it runs until the process stops; a watch error is logged under `what` and retried
/// with [`WatchBackoff`]). `changed` runs after every event that reached the store.
pub fn store<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    changed: impl Fn() + Send + 'static,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    // Every event, relists included: a relist that drops an object touches nothing.
    let (reader, stream) = reflected(api, config);
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed(),
                Err(error) => tracing::warn!(%error, what, "watch error; retrying"),
            }
        }
        tracing::error!(what, "a watch stream ended");
    };
    (reader, task)
}

/// A store's writer stopped before its first full list (its watch is gone: the process is
/// stopping).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("a watch store stopped before its first full list")]
pub struct StoreStopped;

/// Resolves once each of a set of watches has had its first full list; cheap to clone, and any
/// number of tasks may wait on it at once.
///
/// kube's `Store::wait_until_ready` keeps only the waker of its latest poller (a one-shot
/// channel): two reconciles waiting on it together leave one asleep for good, holding its
/// object's reconcile slot, so that object is never reconciled again. Here each
/// [`SharedWatch`] signals its own first full list through one shared future, which wakes every
/// waiter.
#[derive(Clone)]
pub struct Synced(Shared<BoxFuture<'static, Result<(), StoreStopped>>>);

impl Synced {
    /// Ready when `ready` resolves (a signal of its own, not a store's readiness).
    pub fn from_future(
        ready: impl Future<Output = Result<(), StoreStopped>> + Send + 'static,
    ) -> Self {
        Self(ready.boxed().shared())
    }

    /// Ready once both `self` and `other` are.
    pub fn with(self, other: &Synced) -> Self {
        let other = other.clone();
        Self(
            async move {
                self.0.await?;
                other.0.await
            }
            .boxed()
            .shared(),
        )
    }

    /// Waits until every watch has synced.
    pub async fn wait(&self) -> Result<(), StoreStopped> {
        self.0.clone().await
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use futures::StreamExt;
    use futures::channel::mpsc;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::runtime::utils::Backoff;
    use kube::runtime::watcher::Event;

    use super::{SharedWatch, WatchBackoff};

    #[test]
    fn every_waiter_wakes_when_the_watches_sync() {
        let (maps_events, maps_script) = mpsc::unbounded::<Event<ConfigMap>>();
        let (pods_events, pods_script) = mpsc::unbounded::<Event<Pod>>();
        let maps = SharedWatch::of_events(maps_script.map(Ok));
        let pods = SharedWatch::of_events(pods_script.map(Ok));
        let synced = maps.synced().with(&pods.synced());
        // Two tasks wait at once; a task is polled again only when its waker is woken.
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        spawner.spawn_local(maps.run("maps")).expect("spawn");
        spawner.spawn_local(pods.run("pods")).expect("spawn");
        let done = Rc::new(Cell::new(0));
        for _ in 0..2 {
            let (synced, done) = (synced.clone(), done.clone());
            spawner
                .spawn_local(async move {
                    synced.wait().await.expect("synced");
                    done.set(done.get() + 1);
                })
                .expect("spawn");
        }
        pool.run_until_stalled();
        for event in [Event::Init, Event::InitDone] {
            maps_events.unbounded_send(event).expect("send");
        }
        pool.run_until_stalled();
        assert_eq!(done.get(), 0, "the pods have not synced yet");
        for event in [Event::Init, Event::InitDone] {
            pods_events.unbounded_send(event).expect("send");
        }
        pool.run_until_stalled();
        assert_eq!(done.get(), 2, "each waiter woke");
    }

    #[test]
    fn delays_double_to_five_seconds_and_an_event_resets_them() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<f64> = (0..8)
            .map(|_| backoff.next().expect("delay").as_secs_f64())
            .collect();
        let expected = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0];
        for (delay, want) in delays.iter().zip(expected) {
            assert!(*delay >= want && *delay <= want * 1.1, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next().expect("delay").as_secs_f64() < 0.3);
    }
}
