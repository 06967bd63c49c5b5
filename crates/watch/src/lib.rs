//! Kubernetes watches as the Sluice operator and gateway run them: one retry policy
//! ([`WatchBackoff`]) and one way to keep a reflector store in step ([`store`]).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

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

/// A reflector store of the objects of `api` that match `config`, and the stream of every object
/// the watch touches (deletions included), retried with [`WatchBackoff`]: for a controller to
/// be triggered by the same watch that keeps the store (`owns_stream`, `watches_stream`).
pub fn store_stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, events) = reflected(api, config);
    (reader, events.touched_objects())
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

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::WatchBackoff;

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
