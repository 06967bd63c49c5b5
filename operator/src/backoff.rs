//! Per-object exponential backoff for transient reconcile errors (kube-runtime's `Controller`
//! has none: kube-rs/kube#1916). Each object keeps a failure count; the retry delay doubles with
//! each consecutive failure up to a cap, with up to 10% jitter so objects that failed together
//! do not retry together; a successful reconcile resets the count.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Failure counts per object key (`namespace/name`).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for Backoff {
    /// 1 s doubling up to 5 minutes.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    /// Delays start at `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let failures = {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        jitter(self.delay(failures), fastrand::f64())
    }

    /// Forgets the failures of `key` (it reconciled, or it is gone).
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).copied().unwrap_or(0)
    }

    /// The delay after `failures` consecutive failures (1 → `base`), without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// `delay` stretched by up to 10% (`random` in `[0, 1)`).
fn jitter(delay: Duration, random: f64) -> Duration {
    delay.mul_f64(1.0 + 0.1 * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn counts_are_per_object_and_reset_on_success() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let first = b.failed("ns/a");
        let second = b.failed("ns/a");
        b.failed("ns/b");
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(110));
        assert!(second >= Duration::from_millis(200) && second <= Duration::from_millis(220));
        assert_eq!((b.failures("ns/a"), b.failures("ns/b")), (2, 1));
        b.succeeded("ns/a");
        assert_eq!((b.failures("ns/a"), b.failures("ns/b")), (0, 1));
        assert!(b.failed("ns/a") <= Duration::from_millis(110));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(10);
        assert_eq!(jitter(d, 0.0), d);
        assert_eq!(jitter(d, 0.5), Duration::from_millis(10_500));
        assert!(jitter(d, 7.0) <= Duration::from_secs(11));
    }
}
