//! Per-entity demand, published on the admin port (`GET /demand`) for the operator's
//! autoscaler: requests in flight, requests held, and the recent request rate.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds the recent rate averages over.
pub const RATE_WINDOW_SECONDS: u64 = 10;
const SLOTS: usize = 16;

/// Live demand counters of one entity.
#[derive(Debug, Default)]
pub struct Demand {
    in_flight: AtomicI64,
    total: AtomicU64,
    counts: [AtomicU64; SLOTS],
    stamps: [AtomicU64; SLOTS],
    /// When the first request joined the (then empty) hold queue.
    held_since: Mutex<Option<Instant>>,
    /// When a request that had been held last got its first byte from a pod.
    held_answered: Mutex<Option<Instant>>,
}

impl Demand {
    /// Counts a request arriving (routed to the entity, held or not).
    pub fn arrived(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = now_seconds();
        let slot = (now % SLOTS as u64) as usize;
        if self.stamps[slot].swap(now, Ordering::Relaxed) != now {
            self.counts[slot].store(0, Ordering::Relaxed);
        }
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A request started on a backend.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request on a backend finished.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The first request joined an empty hold queue: the start of a cold start.
    pub fn hold_started(&self) {
        *self.held_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// A request that had been held got its first byte from a pod: the end of a cold start.
    pub fn held_answered(&self) {
        *self.held_answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Milliseconds the oldest held request has waited, when `held` requests wait now.
    pub fn oldest_held_ms(&self, held: usize) -> Option<u64> {
        let since = *self.held_since.lock().unwrap_or_else(|e| e.into_inner());
        since.filter(|_| held > 0).map(millis_since)
    }

    /// Milliseconds since a held request last got its first byte.
    pub fn held_answered_ago_ms(&self) -> Option<u64> {
        let at = *self.held_answered.lock().unwrap_or_else(|e| e.into_inner());
        at.map(millis_since)
    }

    /// Requests on backends now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(0)
    }

    /// Requests that ever arrived.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests per second over the last [`RATE_WINDOW_SECONDS`] complete seconds.
    pub fn rate(&self) -> f64 {
        let now = now_seconds();
        let oldest = now.saturating_sub(RATE_WINDOW_SECONDS);
        let sum: u64 = (0..SLOTS)
            .filter(|&slot| {
                let stamp = self.stamps[slot].load(Ordering::Relaxed);
                stamp >= oldest && stamp < now
            })
            .map(|slot| self.counts[slot].load(Ordering::Relaxed))
            .sum();
        sum as f64 / RATE_WINDOW_SECONDS as f64
    }
}

fn millis_since(at: Instant) -> u64 {
    u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub use sluice_contract::demand::{DemandReport, EntityDemand};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_and_arrivals() {
        let demand = Demand::default();
        demand.arrived();
        demand.arrived();
        demand.started();
        assert_eq!(demand.total(), 2);
        assert_eq!(demand.in_flight(), 1);
        demand.finished();
        assert_eq!(demand.in_flight(), 0);
        // The current second is not complete yet, so it is not in the rate.
        assert!(demand.rate() <= 0.2);
        assert_eq!(demand.oldest_held_ms(1), None);
        demand.hold_started();
        assert!(demand.oldest_held_ms(1).is_some());
        assert_eq!(demand.oldest_held_ms(0), None, "nothing held, no age");
        assert_eq!(demand.held_answered_ago_ms(), None);
        demand.held_answered();
        assert!(demand.held_answered_ago_ms().is_some_and(|ms| ms < 1000));
    }
}
