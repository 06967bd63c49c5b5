//! The sizing rule, as a pure function of observed demand (Knative's KPA as the reference).
//!
//! Concurrency (requests in flight plus requests held, summed over every gateway) is averaged
//! over a long *stable* window and a short *panic* window. Normally replicas follow the stable
//! average divided by the per-replica concurrency. When the panic average asks for at least
//! twice the ready replicas, the scaler panics: it sizes by the panic window and does not scale
//! down until the burst has been gone for a stable window. An entity with scale to zero goes to
//! zero after its idle period without a request, and wakes to one replica (or more, for a big
//! queue) as soon as a request is held. Replicas never drop while a pod is still loading its
//! model: a scale-down waits until every replica is ready.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_contract::published::autoscaling_of;
use sluice_crds::ServedEntityStatus;

/// Windows and thresholds shared by every entity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Windows {
    /// The averaging window of normal operation.
    pub stable: Duration,
    /// The short window that detects bursts.
    pub panic: Duration,
    /// Panic when the panic window wants this many times the ready replicas.
    pub panic_threshold: f64,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stable: Duration::from_secs(60),
            panic: Duration::from_secs(6),
            panic_threshold: 2.0,
        }
    }
}

/// The limits of one entity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Fewest replicas while active (0 only for scale to zero).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests in flight one replica handles.
    pub per_replica: u32,
    /// Whether the entity may go to zero.
    pub scale_to_zero: bool,
    /// How long without a request before it goes to zero.
    pub idle: Duration,
}

impl Bounds {
    /// The bounds the operator published for `entity` (`status.config.servedEntities[]`).
    pub fn of(entity: &ServedEntityStatus) -> Self {
        let published = autoscaling_of(entity);
        let positive = |v: i32| u32::try_from(v).unwrap_or(0);
        Self {
            min: positive(published.min_replicas),
            max: positive(published.max_replicas).max(1),
            per_replica: positive(published.per_replica_concurrency).max(1),
            scale_to_zero: entity.scale_to_zero_enabled,
            idle: Duration::from_secs(u64::from(positive(published.idle_timeout_seconds))),
        }
    }
}

/// One look at the demand of an entity, summed over gateways.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Requests being answered now.
    pub in_flight: f64,
    /// Requests held waiting for a pod.
    pub held: u64,
    /// Requests that ever arrived (for noticing activity between looks).
    pub requests_total: u64,
    /// How long the oldest held request has waited (the longest over gateways).
    pub oldest_held: Option<Duration>,
    /// How long ago a request that had been held got its first byte (the most recent over
    /// gateways).
    pub held_answered_ago: Option<Duration>,
}

/// Why the scaler chose a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Requests are held and no replica runs.
    Wake,
    /// A burst: sized by the panic window.
    Panic,
    /// Sized by the stable window.
    Stable,
    /// Idle past the idle period with scale to zero.
    Idle,
    /// A scale-down waits for replicas that are still loading.
    Loading,
}

impl Reason {
    /// A short stable name (event reasons, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wake => "Wake",
            Self::Panic => "Panic",
            Self::Stable => "Stable",
            Self::Idle => "ScaleToZero",
            Self::Loading => "WaitForLoading",
        }
    }
}

/// A sizing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
}

/// The memory of one entity's scaler.
#[derive(Debug)]
pub struct Scaler {
    samples: VecDeque<(Instant, f64)>,
    last_total: Option<u64>,
    last_activity: Instant,
    panic_until: Option<Instant>,
}

impl Scaler {
    /// A scaler that counts `now` as the last activity (a new entity is not idle yet).
    pub fn new(now: Instant) -> Self {
        Self {
            samples: VecDeque::new(),
            last_total: None,
            last_activity: now,
            panic_until: None,
        }
    }

    /// Records one look at the demand.
    pub fn observe(&mut self, now: Instant, demand: Demand, windows: &Windows) {
        let concurrency = demand.in_flight + demand.held as f64;
        let arrived = self
            .last_total
            .is_some_and(|last| demand.requests_total != last);
        if arrived || concurrency > 0.0 {
            self.last_activity = now;
        }
        self.last_total = Some(demand.requests_total);
        self.samples.push_back((now, concurrency));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > windows.stable)
        {
            self.samples.pop_front();
        }
    }

    fn average(&self, now: Instant, window: Duration) -> f64 {
        let recent: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= window)
            .map(|(_, c)| *c)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// Sizes the entity now, given its replicas (`current` wanted, `ready` serving) and the
    /// demand last observed (`held`).
    pub fn decide(
        &mut self,
        now: Instant,
        current: u32,
        ready: u32,
        held: u64,
        bounds: &Bounds,
        windows: &Windows,
    ) -> Decision {
        let per = f64::from(bounds.per_replica.max(1));
        let max = bounds.max.max(1);
        let floor = if bounds.scale_to_zero {
            0
        } else {
            bounds.min.max(1)
        };
        if held > 0 && ready == 0 {
            let wanted = (held as f64 / per).ceil() as u32;
            return Decision {
                desired: wanted.clamp(1, max).max(current).max(floor),
                reason: Reason::Wake,
            };
        }
        let stable = (self.average(now, windows.stable) / per).ceil() as u32;
        let panic = (self.average(now, windows.panic) / per).ceil() as u32;
        if ready > 0 && f64::from(panic) >= windows.panic_threshold * f64::from(ready) {
            self.panic_until = Some(now + windows.stable);
        }
        let panicking = self.panic_until.is_some_and(|until| now < until);
        let (mut desired, mut reason) = if panicking {
            (panic.max(current), Reason::Panic)
        } else {
            self.panic_until = None;
            (stable, Reason::Stable)
        };
        let idle = now.duration_since(self.last_activity) >= bounds.idle;
        if bounds.scale_to_zero && idle {
            // No request arrived and none was in flight for the whole idle period.
            desired = 0;
            reason = Reason::Idle;
        } else {
            // Active (or not allowed to idle): at least the floor, and one replica once there
            // was recent traffic.
            desired = desired.max(floor).max(u32::from(bounds.scale_to_zero));
        }
        desired = desired.min(max);
        if desired < current && ready < current {
            return Decision {
                desired: current,
                reason: Reason::Loading,
            };
        }
        Decision { desired, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS: Windows = Windows {
        stable: Duration::from_secs(60),
        panic: Duration::from_secs(6),
        panic_threshold: 2.0,
    };

    fn bounds(scale_to_zero: bool) -> Bounds {
        Bounds {
            min: if scale_to_zero { 0 } else { 1 },
            max: 10,
            per_replica: 2,
            scale_to_zero,
            idle: Duration::from_secs(30),
        }
    }

    /// Feeds `concurrency` once a second for `seconds`, counting `per_second` new requests.
    fn feed(
        scaler: &mut Scaler,
        start: Instant,
        from: u64,
        seconds: u64,
        concurrency: f64,
        total: &mut u64,
        per_second: u64,
    ) -> Instant {
        let mut now = start;
        for s in from..from + seconds {
            now = start + Duration::from_secs(s);
            *total += per_second;
            scaler.observe(
                now,
                Demand {
                    in_flight: concurrency,
                    held: 0,
                    requests_total: *total,
                    ..Demand::default()
                },
                &WINDOWS,
            );
        }
        now
    }

    #[test]
    fn steady_load_sizes_by_the_stable_window() {
        let start = Instant::now();
        let mut scaler = Scaler::new(start);
        let mut total = 0;
        let now = feed(&mut scaler, start, 0, 60, 6.0, &mut total, 10);
        let decision = scaler.decide(now, 3, 3, 0, &bounds(false), &WINDOWS);
        assert_eq!(
            decision,
            Decision {
                desired: 3,
                reason: Reason::Stable
            }
        );
    }

    #[test]
    fn a_burst_panics_and_never_scales_down_during_the_panic() {
        let start = Instant::now();
        let mut scaler = Scaler::new(start);
        let mut total = 0;
        let now = feed(&mut scaler, start, 0, 54, 2.0, &mut total, 10);
        assert_eq!(
            scaler
                .decide(now, 1, 1, 0, &bounds(false), &WINDOWS)
                .desired,
            1
        );
        // Six seconds of 12 in flight: the panic window wants 6 replicas (>= 2 x 1 ready).
        let now = feed(&mut scaler, start, 54, 6, 12.0, &mut total, 50);
        let burst = scaler.decide(now, 1, 1, 0, &bounds(false), &WINDOWS);
        assert_eq!(
            burst,
            Decision {
                desired: 6,
                reason: Reason::Panic
            }
        );
        // The burst ends; while panicking, no scale-down.
        let now = feed(&mut scaler, start, 60, 10, 0.0, &mut total, 0);
        let after = scaler.decide(now, 6, 6, 0, &bounds(false), &WINDOWS);
        assert_eq!(
            after,
            Decision {
                desired: 6,
                reason: Reason::Panic
            }
        );
        // A stable window later it follows the stable average down.
        let now = feed(&mut scaler, start, 70, 60, 0.0, &mut total, 0);
        let calm = scaler.decide(now, 6, 6, 0, &bounds(false), &WINDOWS);
        assert_eq!(
            calm,
            Decision {
                desired: 1,
                reason: Reason::Stable
            }
        );
    }

    #[test]
    fn an_idle_scale_to_zero_entity_goes_to_zero_only_after_its_idle_period() {
        let start = Instant::now();
        let mut scaler = Scaler::new(start);
        let mut total = 0;
        let now = feed(&mut scaler, start, 0, 10, 1.0, &mut total, 1);
        assert_eq!(
            scaler.decide(now, 1, 1, 0, &bounds(true), &WINDOWS).desired,
            1
        );
        let now = feed(&mut scaler, start, 10, 20, 0.0, &mut total, 0);
        assert_eq!(
            scaler.decide(now, 1, 1, 0, &bounds(true), &WINDOWS).desired,
            1,
            "idle 20s < 30s"
        );
        let now = feed(&mut scaler, start, 30, 15, 0.0, &mut total, 0);
        assert_eq!(
            scaler.decide(now, 1, 1, 0, &bounds(true), &WINDOWS),
            Decision {
                desired: 0,
                reason: Reason::Idle
            }
        );
    }

    #[test]
    fn without_scale_to_zero_the_minimum_holds() {
        let start = Instant::now();
        let mut scaler = Scaler::new(start);
        let mut total = 0;
        let b = Bounds {
            min: 2,
            ..bounds(false)
        };
        let now = feed(&mut scaler, start, 0, 300, 0.0, &mut total, 0);
        assert_eq!(scaler.decide(now, 2, 2, 0, &b, &WINDOWS).desired, 2);
    }

    #[test]
    fn a_held_request_wakes_an_entity_at_zero() {
        let now = Instant::now();
        let mut scaler = Scaler::new(now);
        assert_eq!(
            scaler.decide(now, 0, 0, 1, &bounds(true), &WINDOWS),
            Decision {
                desired: 1,
                reason: Reason::Wake
            }
        );
        // A big queue wakes more than one, within the maximum.
        assert_eq!(
            scaler
                .decide(now, 0, 0, 50, &bounds(true), &WINDOWS)
                .desired,
            10
        );
    }

    #[test]
    fn a_scale_down_waits_for_loading_replicas() {
        let start = Instant::now();
        let mut scaler = Scaler::new(start);
        let mut total = 0;
        let now = feed(&mut scaler, start, 0, 60, 2.0, &mut total, 5);
        assert_eq!(
            scaler.decide(now, 4, 2, 0, &bounds(false), &WINDOWS),
            Decision {
                desired: 4,
                reason: Reason::Loading
            }
        );
        assert_eq!(
            scaler
                .decide(now, 4, 4, 0, &bounds(false), &WINDOWS)
                .desired,
            1
        );
    }
}
