//! The per-entity queue that holds requests while a scale-to-zero entity has no ready pod.
//!
//! Requests wait in arrival order; when the entity's first pod becomes ready they are released
//! in that order. A request that finds the queue full, or waits past its deadline, is refused
//! (the caller answers 503 with `Retry-After`); nothing waits without bound.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    waiters: Mutex<VecDeque<oneshot::Sender<()>>>,
    held: AtomicUsize,
}

/// Counts a request as held until dropped.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HoldQueue {
    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
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
        let receiver = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if has_ready() {
                return Ok(());
            }
            let held = self.held.load(Ordering::Relaxed);
            if held >= policy.max_held {
                return Err(HoldRefused::Full(held));
            }
            self.held.fetch_add(1, Ordering::Relaxed);
            let (sender, receiver) = oneshot::channel();
            waiters.push_back(sender);
            on_join(held == 0);
            receiver
        };
        let _held = Held(&self.held);
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
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = 0;
        while let Some(waiter) = waiters.pop_front() {
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
