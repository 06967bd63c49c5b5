//! One watch per kind, shared by every consumer in the process: one LIST and one WATCH
//! connection, one store, and every touched object fanned out to each subscriber.
//!
//! Before, the endpoint controller, the ModelVersion controller and the autoscaler each ran
//! their own watch of the same kinds (ModelVersions three times, Deployments and Pods twice):
//! as many initial lists per start and relist, and as many caches of every object.

use std::fmt::Debug;

use futures::channel::{mpsc, oneshot};
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::{StoreStopped, Synced, WatchBackoff};

/// Objects a subscriber may hold unread before the watch waits for it. Controllers drain their
/// triggers at once into their schedulers, so this only absorbs bursts (an initial list).
const BUFFER: usize = 256;

/// A watch of one kind that keeps one reflector store and feeds any number of subscribers.
///
/// Build it, [`subscribe`](Self::subscribe) every consumer, then drive it with
/// [`run`](Self::run); objects touched before a subscription are not replayed to it.
pub struct SharedWatch<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    synced: Synced,
    ready: Option<oneshot::Sender<()>>,
    subscribers: Vec<Subscriber<K>>,
    events: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
}

struct Subscriber<K> {
    sender: mpsc::Sender<K>,
    /// Whether deleted objects are sent too.
    deleted: bool,
}

impl<K> SharedWatch<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// The watch of the objects of `api` that match `config`, retried with [`WatchBackoff`].
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        Self::of_events(watcher(api, config).backoff(WatchBackoff::default()))
    }

    /// A shared watch fed by `events` (a watcher stream, or a scripted one in tests).
    pub fn of_events(
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        let (ready, synced) = oneshot::channel();
        Self {
            store,
            // The store's own `wait_until_ready` wakes one waiter only, and a controller whose
            // main store this is already waits on it: the others wait on this signal.
            synced: Synced::from_future(synced.map(|r| r.map_err(|_| StoreStopped))),
            ready: Some(ready),
            subscribers: Vec::new(),
            events: events.reflect(writer).boxed(),
        }
    }

    /// A reader of the store (cheap; every reader sees the same objects).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Resolves once the store has had its first full list.
    pub fn synced(&self) -> Synced {
        self.synced.clone()
    }

    /// Every object the watch touches from now on, deleted ones included, as a controller's
    /// trigger (`for_stream`, `owns_stream`, `watches_stream`) expects them.
    pub fn subscribe(
        &mut self,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static + use<K> {
        self.subscriber(true).map(Ok)
    }

    /// Every object the watch creates or changes from now on (no deletions).
    pub fn subscribe_applied(&mut self) -> impl Stream<Item = K> + Send + 'static + use<K> {
        self.subscriber(false)
    }

    fn subscriber(&mut self, deleted: bool) -> mpsc::Receiver<K> {
        let (sender, receiver) = mpsc::channel(BUFFER);
        self.subscribers.push(Subscriber { sender, deleted });
        receiver
    }

    /// Drives the watch until its stream ends (it does not: errors are logged under `what`
    /// and retried); a subscriber that went away is dropped, the others go on.
    pub async fn run(mut self, what: &'static str) {
        while let Some(event) = self.events.next().await {
            match event {
                Ok(event) => self.dispatch(event).await,
                Err(error) => tracing::warn!(%error, what, "watch error; retrying"),
            }
        }
        tracing::error!(what, "a watch stream ended");
    }

    async fn dispatch(&mut self, event: watcher::Event<K>) {
        let (object, deleted) = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
            watcher::Event::Delete(o) => (o, true),
            watcher::Event::InitDone => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
                return;
            }
            watcher::Event::Init => return,
        };
        let mut gone = Vec::new();
        for (i, subscriber) in self.subscribers.iter_mut().enumerate() {
            if (subscriber.deleted || !deleted)
                && subscriber.sender.send(object.clone()).await.is_err()
            {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.subscribers.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::watcher::Event;

    use super::SharedWatch;

    fn map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(maps: Vec<ConfigMap>) -> Vec<String> {
        maps.into_iter().filter_map(|m| m.metadata.name).collect()
    }

    #[tokio::test]
    async fn one_watch_fills_one_store_and_feeds_every_subscriber() {
        let (events, script) = mpsc::unbounded();
        let mut shared = SharedWatch::<ConfigMap>::of_events(script.map(Ok));
        let store = shared.store();
        let synced = shared.synced();
        let touched = shared.subscribe();
        let applied = shared.subscribe_applied();
        let driver = tokio::spawn(shared.run("test"));
        for event in [
            Event::Init,
            Event::InitApply(map("a")),
            Event::InitDone,
            Event::Apply(map("b")),
            Event::Delete(map("a")),
        ] {
            events.unbounded_send(event).expect("send");
        }
        drop(events);
        synced
            .wait()
            .await
            .expect("synced after the first full list");
        let touched: Vec<ConfigMap> = touched
            .take(3)
            .map(|o| o.expect("no errors are sent"))
            .collect()
            .await;
        assert_eq!(names(touched), ["a", "b", "a"], "deletions included");
        let applied: Vec<ConfigMap> = applied.take(2).collect().await;
        assert_eq!(names(applied), ["a", "b"], "no deletions");
        driver.await.expect("the driver ends with its stream");
        assert!(store.get(&ObjectRef::new("b").within("ns")).is_some());
        assert!(store.get(&ObjectRef::new("a").within("ns")).is_none());
    }

    #[tokio::test]
    async fn a_subscriber_that_went_away_does_not_stop_the_others() {
        let (events, script) = mpsc::unbounded();
        let mut shared = SharedWatch::<ConfigMap>::of_events(script.map(Ok));
        drop(shared.subscribe());
        let kept = shared.subscribe_applied();
        let driver = tokio::spawn(shared.run("test"));
        for name in ["a", "b", "c"] {
            events
                .unbounded_send(Event::Apply(map(name)))
                .expect("send");
        }
        drop(events);
        driver.await.expect("driver");
        assert_eq!(names(kept.collect().await), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn synced_fails_when_the_watch_ends_before_a_full_list() {
        let (events, script) = mpsc::unbounded::<Event<ConfigMap>>();
        let shared = SharedWatch::<ConfigMap>::of_events(script.map(Ok));
        let synced = shared.synced();
        drop(events);
        shared.run("test").await;
        assert!(synced.wait().await.is_err());
    }
}
