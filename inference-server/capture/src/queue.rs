//! The bounded in-memory queue between the proxy and the spool writer.
//!
//! Pushing never waits. What happens when the queue holds more than its byte budget is the
//! endpoint's [`Overflow`] policy: `drop-oldest` drops the oldest exchanges (and the caller
//! counts them); `block` drops nothing, and the proxy instead holds new requests at the door
//! ([`Queue::wait_for_room`]) until the writer has taken enough, so the queue can pass its budget
//! only by the exchanges already in flight (whose copies the copy budget bounds). The spool
//! writer pops bounded batches, oldest first.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::exchange::RawExchange;

/// What a full queue (and a full spool) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Overflow {
    /// The oldest rows are dropped and counted; requests never wait for the table.
    #[default]
    DropOldest,
    /// No row is dropped: new requests wait for room (up to `--block-timeout`, then 503),
    /// so the table is complete and the endpoint slows down to what the table takes.
    Block,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<RawExchange>,
    bytes: usize,
    closed: bool,
    /// The writer is asleep in [`Queue::pop`]: only then does a push wake it (a wake is a
    /// system call; most pushes find the writer busy or lingering).
    writer_waiting: bool,
}

/// A drop-oldest queue bounded in bytes.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    /// Told when the writer takes exchanges (room was made) or the queue closes.
    room: Notify,
    max_bytes: usize,
    overflow: Overflow,
}

/// What a [`Queue::pop`] got.
#[derive(Debug)]
pub enum Popped {
    /// Exchanges, oldest first (possibly none, after a timeout).
    Items(Vec<RawExchange>),
    /// The queue is closed and empty: the writer may stop.
    Closed,
}

impl Queue {
    /// An empty queue holding at most `max_bytes` (one exchange is always accepted), with the
    /// `overflow` policy past that.
    pub fn new(max_bytes: usize, overflow: Overflow) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            room: Notify::new(),
            max_bytes,
            overflow,
        }
    }

    /// The policy past the byte budget.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Exchanges waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Waits until the queue is under its byte budget, at most `timeout`; `false` when it is
    /// still full then, or closed. Only the `block` policy needs to ask.
    pub async fn wait_for_room(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                if inner.closed {
                    return false;
                }
                if inner.bytes < self.max_bytes {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Adds an exchange; returns how many older ones were dropped to make room and the bytes
    /// now queued. After [`Queue::close`] the exchange itself is dropped (and counted).
    pub fn push(&self, exchange: RawExchange) -> (u64, usize) {
        let size = exchange.size();
        let mut inner = self.lock();
        if inner.closed {
            return (1, inner.bytes);
        }
        let mut dropped = 0;
        while self.overflow == Overflow::DropOldest
            && !inner.items.is_empty()
            && inner.bytes + size > self.max_bytes
        {
            if let Some(old) = inner.items.pop_front() {
                inner.bytes -= old.size();
                dropped += 1;
            }
        }
        inner.bytes += size;
        inner.items.push_back(exchange);
        let bytes = inner.bytes;
        let wake = inner.writer_waiting;
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        (dropped, bytes)
    }

    /// Takes the oldest exchanges waiting, up to `max_bytes` of them (at least one), waiting
    /// up to `timeout` for something to arrive.
    pub fn pop(&self, max_bytes: usize, timeout: Duration) -> Popped {
        let mut inner = self.lock();
        if inner.items.is_empty() && !inner.closed {
            inner.writer_waiting = true;
            inner = self
                .ready
                .wait_timeout(inner, timeout)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            inner.writer_waiting = false;
        }
        if inner.items.is_empty() && inner.closed {
            return Popped::Closed;
        }
        let mut taken = 0;
        let mut items = Vec::new();
        while let Some(front) = inner.items.front() {
            let size = front.size();
            if !items.is_empty() && taken + size > max_bytes {
                break;
            }
            taken += size;
            if let Some(item) = inner.items.pop_front() {
                items.push(item);
            }
        }
        inner.bytes -= taken;
        drop(inner);
        if !items.is_empty() {
            self.room.notify_waiters();
        }
        Popped::Items(items)
    }

    /// Wakes a writer waiting in [`Queue::pop`] (it gets what is there, possibly nothing).
    pub fn wake(&self) {
        let _held = self.lock();
        self.ready.notify_all();
    }

    /// Refuses new exchanges and wakes the writer so it drains what is left.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(id: &str, bytes: usize) -> RawExchange {
        RawExchange {
            request_id: id.into(),
            request: vec![b'x'; bytes],
            ..Default::default()
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let queue = Queue::new(3 * 356, Overflow::DropOldest);
        for id in ["a", "b", "c"] {
            assert_eq!(queue.push(exchange(id, 100)).0, 0);
        }
        assert_eq!(queue.push(exchange("d", 100)).0, 1);
        let Popped::Items(items) = queue.pop(usize::MAX, Duration::ZERO) else {
            panic!("open queue");
        };
        let ids: Vec<_> = items.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
    }

    #[test]
    fn pops_take_a_bounded_batch_oldest_first() {
        let queue = Queue::new(1 << 20, Overflow::DropOldest);
        for id in ["a", "b", "c"] {
            queue.push(exchange(id, 100));
        }
        let Popped::Items(items) = queue.pop(400, Duration::ZERO) else {
            panic!("open queue");
        };
        assert_eq!(items.len(), 1);
        assert_eq!(queue.bytes(), 2 * 356);
        let Popped::Items(items) = queue.pop(1, Duration::ZERO) else {
            panic!("open queue");
        };
        assert_eq!(
            items[0].request_id, "b",
            "at least one, even past the limit"
        );
    }

    #[test]
    fn closing_drains_then_stops() {
        let queue = Queue::new(1 << 20, Overflow::DropOldest);
        queue.push(exchange("a", 1));
        queue.close();
        assert_eq!(queue.push(exchange("late", 1)).0, 1);
        assert!(
            matches!(queue.pop(usize::MAX, Duration::ZERO), Popped::Items(items) if items.len() == 1)
        );
        assert!(matches!(
            queue.pop(usize::MAX, Duration::ZERO),
            Popped::Closed
        ));
    }

    #[test]
    fn a_blocking_queue_drops_nothing_past_its_budget() {
        let queue = Queue::new(2 * 356, Overflow::Block);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(queue.push(exchange(id, 100)).0, 0);
        }
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.bytes(), 4 * 356);
    }

    #[tokio::test]
    async fn room_is_waited_for_until_the_writer_takes_or_the_deadline() {
        let queue = std::sync::Arc::new(Queue::new(356, Overflow::Block));
        assert!(queue.wait_for_room(Duration::ZERO).await, "empty: room");
        queue.push(exchange("a", 100));
        assert!(
            !queue.wait_for_room(Duration::from_millis(50)).await,
            "full: the deadline passes"
        );
        let writer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                queue.pop(usize::MAX, Duration::ZERO)
            })
        };
        assert!(
            queue.wait_for_room(Duration::from_secs(30)).await,
            "the writer took the exchange"
        );
        assert!(matches!(writer.await.unwrap(), Popped::Items(items) if items.len() == 1));
        queue.push(exchange("b", 100));
        let closer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                queue.close();
            })
        };
        assert!(
            !queue.wait_for_room(Duration::from_secs(30)).await,
            "a closed queue takes nothing more"
        );
        closer.await.unwrap();
    }
}
