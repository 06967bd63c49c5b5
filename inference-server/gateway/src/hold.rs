//! The per-entity queue that holds requests while a scale-to-zero entity has no ready pod.
//!
//! Requests wait in arrival order; when the entity's first pod becomes ready they are released
//! in that order. A request that finds the queue full, or waits past its deadline, is refused
//! (the caller answers 503 with `Retry-After`); nothing waits without bound. A waiter that
//! leaves early (timed out, or its client went away and the request future was dropped) is
//! removed from the queue at once, so the queue holds only live waiters and `max_held` counts
//! only them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::routing::HoldPolicy;

/// Why a held request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldRefused {
    /// The queue already holds `max_held` requests.
    #[error("{0} requests are already held")]
    Full(usize),
    /// No pod became ready within the hold timeout.
    #[error("no pod became ready within {0:?}")]
    TimedOut(Duration),
}

/// One entity's hold queue.
#[derive(Debug, Default)]
pub struct HoldQueue {
    waiters: Mutex<Waiters>,
    held: AtomicUsize,
}

/// The queued waiters, each under an id so that one leaving early can take itself out.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A request in the queue: counted as held until dropped, and taken out of the queue then if it
/// is still there (it timed out, or its future was dropped).
struct Held<'a> {
    queue: &'a HoldQueue,
    id: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut waiters = self.queue.lock();
        if let Some(index) = waiters.queue.iter().position(|(id, _)| *id == self.id) {
            waiters.queue.remove(index);
        }
        self.queue.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HoldQueue {
    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the caller until [`release`](Self::release) or the policy's limits.
    /// `has_ready` is checked under the queue lock, so a release racing with the join is never
    /// missed; `on_join` runs once the request is queued (with whether it is the first one).
    pub async fn wait(
        &self,
        policy: HoldPolicy,
        has_ready: impl Fn() -> bool,
        on_join: impl FnOnce(bool),
    ) -> Result<(), HoldRefused> {
        let (id, receiver) = {
            let mut waiters = self.lock();
            if has_ready() {
                return Ok(());
            }
            let held = self.held.load(Ordering::Relaxed);
            if held >= policy.max_held {
                return Err(HoldRefused::Full(held));
            }
            self.held.fetch_add(1, Ordering::Relaxed);
            let (sender, receiver) = oneshot::channel();
            let id = waiters.next_id;
            waiters.next_id += 1;
            waiters.queue.push_back((id, sender));
            on_join(held == 0);
            (id, receiver)
        };
        // Created outside the lock (its drop takes it); nothing awaits in between.
        let _held = Held { queue: self, id };
        match tokio::time::timeout(policy.timeout, receiver).await {
            Ok(Ok(())) => Ok(()),
            // A dropped sender means the queue itself went away (the entity left the config):
            // the caller re-resolves and answers what the new config says.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(HoldRefused::TimedOut(policy.timeout)),
        }
    }

    /// Releases every held request, first in first out. Returns how many were waiting.
    pub fn release(&self) -> usize {
        let mut waiters = self.lock();
        let mut released = 0;
        while let Some((_, waiter)) = waiters.queue.pop_front() {
            if waiter.send(()).is_ok() {
                released += 1;
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    const POLICY: HoldPolicy = HoldPolicy {
        max_held: 3,
        timeout: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn held_requests_are_released_in_arrival_order() {
        let queue = Arc::new(HoldQueue::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let waiter = queue.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                waiter
                    .wait(POLICY, || false, |_| {})
                    .await
                    .expect("released");
                order.lock().expect("lock").push(i);
            }));
            // Join strictly one after another.
            while queue.held() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        // A fourth is refused: the queue is full.
        assert_eq!(
            queue.wait(POLICY, || false, |_| {}).await,
            Err(HoldRefused::Full(3))
        );
        assert_eq!(queue.release(), 3);
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2]);
        assert_eq!(queue.held(), 0);
    }

    #[tokio::test]
    async fn a_held_request_times_out_and_leaves_the_queue() {
        let queue = HoldQueue::default();
        let first = AtomicBool::new(false);
        let result = queue
            .wait(
                HoldPolicy {
                    max_held: 1,
                    timeout: Duration::from_millis(200),
                },
                || false,
                |is_first| first.store(is_first, Ordering::Relaxed),
            )
            .await;
        assert_eq!(
            result,
            Err(HoldRefused::TimedOut(Duration::from_millis(200)))
        );
        assert!(first.load(Ordering::Relaxed));
        assert_eq!(queue.held(), 0);
    }

    /// Waiters still in the queue, live or not (what the queue keeps in memory).
    fn queued(queue: &HoldQueue) -> usize {
        queue.lock().queue.len()
    }

    #[tokio::test]
    async fn cancelled_and_timed_out_waiters_leave_the_queue() {
        let queue = Arc::new(HoldQueue::default());
        let short = HoldPolicy {
            max_held: 2,
            timeout: Duration::from_millis(100),
        };
        let policy = HoldPolicy {
            max_held: 2,
            timeout: Duration::from_secs(5),
        };
        // One waiter times out; another's client goes away (its future is dropped).
        assert_eq!(
            queue.wait(short, || false, |_| {}).await,
            Err(HoldRefused::TimedOut(short.timeout))
        );
        let cancelled = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.wait(policy, || false, |_| {}).await })
        };
        while queue.held() == 0 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        assert!(cancelled.await.expect_err("aborted").is_cancelled());
        assert_eq!(queue.held(), 0);
        assert_eq!(
            queued(&queue),
            0,
            "dead waiters are removed, not kept until a release"
        );
        // The cap counts only live waiters: two new ones fit and are both released.
        let live: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.wait(policy, || false, |_| {}).await })
            })
            .collect();
        while queue.held() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queued(&queue), 2);
        assert_eq!(
            queue.wait(policy, || false, |_| {}).await,
            Err(HoldRefused::Full(2))
        );
        assert_eq!(queue.release(), 2);
        for waiter in live {
            waiter.await.expect("task").expect("released");
        }
        assert_eq!(queued(&queue), 0);
    }

    #[tokio::test]
    async fn a_ready_entity_does_not_hold() {
        let queue = HoldQueue::default();
        queue
            .wait(POLICY, || true, |_| panic!("must not join"))
            .await
            .expect("ready");
        assert_eq!(queue.held(), 0);
    }
}
