//! Backends (one per pod address) and the choice of one for a request: power of two choices
//! by least outstanding requests, among backends not ejected for failing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::connections::Connections;

/// One pod address and what the gateway knows about it right now.
#[derive(Debug)]
pub struct Backend {
    /// Where the pod answers.
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the backend is out of rotation (0: in rotation).
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    /// Kept-open connections to the pod.
    pub connections: Connections,
}

/// Longest a failing backend stays out of rotation between retries.
const MAX_EJECTION: Duration = Duration::from_secs(30);
/// First ejection after a failure.
const BASE_EJECTION: Duration = Duration::from_millis(500);

impl Backend {
    /// A backend in rotation with nothing in flight.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            connections: Connections::new(addr),
        }
    }

    /// Requests in flight on this backend.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Whether the backend is in rotation now.
    pub fn available(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// Takes the backend out of rotation after a failure (connect refused, no answer to a
    /// health check), for a time that doubles with consecutive failures.
    pub fn record_failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let ejection = BASE_EJECTION
            .saturating_mul(1 << failures.min(6))
            .min(MAX_EJECTION);
        let until = self.now_ms() + ejection.as_millis() as u64;
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// Puts the backend back in rotation after a success.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A request in flight on a backend; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks a backend: two random candidates among those in rotation and not in `exclude`, the
/// one with fewer requests in flight wins. When every backend is ejected the ejected ones are
/// tried rather than failing outright (an ejection is a guess; a refusal is certain). No
/// allocation: this runs on every request.
pub fn pick<'a, B: AsRef<Backend>>(
    backends: &'a [B],
    exclude: &[SocketAddr],
    rng: &mut fastrand::Rng,
) -> Option<&'a B> {
    let usable = |b: &&B| !exclude.contains(&b.as_ref().addr);
    let in_rotation = |b: &&B| usable(b) && b.as_ref().available();
    let count = backends.iter().filter(in_rotation).count();
    let (count, filter): (usize, &dyn Fn(&&B) -> bool) = if count > 0 {
        (count, &in_rotation)
    } else {
        (backends.iter().filter(usable).count(), &usable)
    };
    let nth = |n: usize| backends.iter().filter(|b| filter(b)).nth(n);
    match count {
        0 => None,
        1 => nth(0),
        n => {
            let first = rng.usize(..n);
            let mut second = rng.usize(..n - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (nth(first)?, nth(second)?);
            Some(if b.as_ref().in_flight() < a.as_ref().in_flight() {
                b
            } else {
                a
            })
        }
    }
}

/// Picks an index by weight; `weights` are percentages or any non-negative integers. `None`
/// when every weight is zero.
pub fn pick_weighted(weights: &[u32], rng: &mut fastrand::Rng) -> Option<usize> {
    pick_weighted_by(weights.len(), |i| weights[i], rng)
}

/// [`pick_weighted`] over `count` weights given by `weight(index)`, without a slice.
pub fn pick_weighted_by(
    count: usize,
    weight: impl Fn(usize) -> u32,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let total: u32 = (0..count).map(&weight).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.u32(..total);
    for index in 0..count {
        let w = weight(index);
        if point < w {
            return Some(index);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn backends(n: u8) -> Vec<Arc<Backend>> {
        (1..=n)
            .map(|i| Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, i], 80)))))
            .collect()
    }

    #[test]
    fn weights_split_as_asked() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[pick_weighted(&[70, 20, 10], &mut rng).expect("pick")] += 1;
        }
        assert!((69_000..71_000).contains(&counts[0]), "{counts:?}");
        assert!((19_000..21_000).contains(&counts[1]), "{counts:?}");
        assert!((9_300..10_700).contains(&counts[2]), "{counts:?}");
        assert_eq!(pick_weighted(&[0, 0], &mut rng), None);
        assert_eq!(pick_weighted(&[0, 5], &mut rng), Some(1));
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let pool = backends(2);
        let _busy: Vec<InFlight> = (0..5).map(|_| pool[0].start()).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..50 {
            assert_eq!(pick(&pool, &[], &mut rng).expect("pick").addr, pool[1].addr);
        }
    }

    #[test]
    fn ejected_and_excluded_backends_are_skipped() {
        let pool = backends(3);
        pool[0].record_failure();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..50 {
            let chosen = pick(&pool, &[pool[1].addr], &mut rng).expect("pick");
            assert_eq!(chosen.addr, pool[2].addr);
        }
        pool[0].record_success();
        assert!(pool[0].available());
        // All ejected: still answer with one of them.
        for backend in &pool {
            backend.record_failure();
        }
        assert!(pick(&pool, &[], &mut rng).is_some());
        assert!(pick(&pool, &[pool[0].addr, pool[1].addr, pool[2].addr], &mut rng).is_none());
    }

    #[test]
    fn in_flight_ends_when_the_guard_drops() {
        let pool = backends(1);
        let guard = pool[0].start();
        assert_eq!(pool[0].in_flight(), 1);
        drop(guard);
        assert_eq!(pool[0].in_flight(), 0);
    }
}
