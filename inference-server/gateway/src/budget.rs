//! Global budgets of the request path, so the gateway sheds load before it runs out of memory:
//! requests in flight (`--max-in-flight`: read, held, proxied, or streaming their answer) and
//! bytes of request bodies buffered (`--max-buffered-bytes`, across all requests).
//!
//! A request over either budget is refused at once (503 + `Retry-After`), never queued. What a
//! request takes is held by a guard and returned when the guard drops, so every path gives it
//! back: an answer, an error, a client that went away (its future dropped), a shadow copy that
//! finished last.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

use super::metrics::{LoadMetrics, ShedReason};

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// `--max-in-flight` requests are in flight already.
    #[error("the gateway is at its limit of {limit} requests in flight (--max-in-flight)")]
    InFlight {
        /// The budget.
        limit: usize,
    },
    /// The body would not fit in what is left of `--max-buffered-bytes`.
    #[error(
        "the gateway is at its limit of {limit} bytes of buffered request bodies \
         (--max-buffered-bytes); this body needs {wanted} more"
    )]
    BufferedBytes {
        /// The budget.
        limit: usize,
        /// The bytes this body asked for beyond what it holds.
        wanted: usize,
    },
}

impl Shed {
    /// The `reason` label it is counted under.
    pub fn reason(self) -> ShedReason {
        match self {
            Self::InFlight { .. } => ShedReason::InFlight,
            Self::BufferedBytes { .. } => ShedReason::BufferedBytes,
        }
    }
}

/// The gateway's global budgets.
#[derive(Debug)]
pub struct Budgets {
    max_in_flight: usize,
    max_buffered_bytes: usize,
    in_flight: AtomicUsize,
    buffered_bytes: AtomicUsize,
    metrics: LoadMetrics,
}

impl Budgets {
    /// Budgets of `max_in_flight` requests and `max_buffered_bytes` body bytes.
    pub fn new(max_in_flight: usize, max_buffered_bytes: usize, metrics: LoadMetrics) -> Self {
        Self {
            max_in_flight,
            max_buffered_bytes,
            in_flight: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The body-byte budget (no single body can be larger).
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_buffered_bytes
    }

    /// The metric handles.
    pub fn metrics(&self) -> &LoadMetrics {
        &self.metrics
    }

    /// Takes one place in the in-flight budget, or sheds the request (counted).
    pub fn admit(self: &Arc<Self>) -> Result<InFlightSlot, Shed> {
        if !take(&self.in_flight, 1, self.max_in_flight) {
            return Err(self.shed(Shed::InFlight {
                limit: self.max_in_flight,
            }));
        }
        self.metrics.in_flight.inc();
        Ok(InFlightSlot(self.clone()))
    }

    /// An empty reservation of body bytes, grown as the body is read.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budgets: self.clone(),
            bytes: 0,
        }
    }

    fn shed(&self, shed: Shed) -> Shed {
        self.metrics.shed(shed.reason());
        shed
    }
}

/// Adds `n` to `counter` if the sum stays within `limit`.
fn take(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(n).filter(|total| *total <= limit)
        })
        .is_ok()
}

/// One request's place in the in-flight budget, returned when dropped.
#[derive(Debug)]
pub struct InFlightSlot(Arc<Budgets>);

impl InFlightSlot {
    /// Keeps the place until `response`'s body ends or is dropped (a stream counts while it
    /// flows).
    pub fn hold_until_end_of(self, response: Response) -> Response {
        response.map(|inner| Body::new(SlotBody { inner, _slot: self }))
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

/// A response body holding its request's in-flight place.
struct SlotBody {
    inner: Body,
    _slot: InFlightSlot,
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Body bytes one request holds in the buffered-bytes budget, returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budgets: Arc<Budgets>,
    bytes: usize,
}

impl Reservation {
    /// Grows the reservation to `total` bytes (nothing to do when it holds that many), or sheds
    /// the request (counted).
    pub fn grow_to(&mut self, total: usize) -> Result<(), Shed> {
        let Some(wanted) = total.checked_sub(self.bytes).filter(|n| *n > 0) else {
            return Ok(());
        };
        let budgets = &self.budgets;
        if !take(&budgets.buffered_bytes, wanted, budgets.max_buffered_bytes) {
            return Err(budgets.shed(Shed::BufferedBytes {
                limit: budgets.max_buffered_bytes,
                wanted,
            }));
        }
        budgets.metrics.buffered_bytes.inc_by(gauge_value(wanted));
        self.bytes = total;
        Ok(())
    }

    /// Shrinks the reservation to `total` bytes (a declared length reserved up front, when
    /// fewer arrived).
    pub fn shrink_to(&mut self, total: usize) {
        if let Some(surplus) = self.bytes.checked_sub(total).filter(|n| *n > 0) {
            self.give_back(surplus);
            self.bytes = total;
        }
    }

    fn give_back(&self, n: usize) {
        self.budgets.buffered_bytes.fetch_sub(n, Ordering::AcqRel);
        self.budgets.metrics.buffered_bytes.dec_by(gauge_value(n));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.give_back(self.bytes);
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A request body read into memory, counted in the buffered-bytes budget until every copy (the
/// request and its retries, its shadow copies) is dropped.
#[derive(Clone, Debug)]
pub struct BufferedBody {
    bytes: Bytes,
    _reservation: Arc<Reservation>,
}

impl BufferedBody {
    /// `bytes`, held under `reservation` (shrunk to their length).
    pub fn new(bytes: Bytes, mut reservation: Reservation) -> Self {
        reservation.shrink_to(bytes.len());
        Self {
            bytes,
            _reservation: Arc::new(reservation),
        }
    }

    /// The same reservation holding `bytes` instead (a rewrite of the body a few bytes longer,
    /// which the reservation does not grow for).
    pub fn with_bytes(self, bytes: Bytes) -> Self {
        Self {
            bytes,
            _reservation: self._reservation,
        }
    }

    /// The body.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::super::metrics::GatewayMetrics;
    use super::*;

    fn budgets(max_in_flight: usize, max_buffered_bytes: usize) -> Arc<Budgets> {
        let metrics = GatewayMetrics::register(&mut Registry::default());
        Arc::new(Budgets::new(
            max_in_flight,
            max_buffered_bytes,
            metrics.load().clone(),
        ))
    }

    #[test]
    fn in_flight_places_are_refused_past_the_budget_and_come_back() {
        let budgets = budgets(2, 100);
        let first = budgets.admit().expect("first");
        let second = budgets.admit().expect("second");
        assert_eq!(
            budgets.admit().expect_err("full"),
            Shed::InFlight { limit: 2 }
        );
        assert_eq!(budgets.metrics.in_flight.get(), 2);
        assert_eq!(budgets.metrics.shed_total(ShedReason::InFlight), 1);
        drop(first);
        let third = budgets.admit().expect("a place came back");
        drop((second, third));
        assert_eq!(budgets.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(budgets.metrics.in_flight.get(), 0);
    }

    #[test]
    fn body_bytes_are_reserved_as_they_grow_and_returned_by_the_last_copy() {
        let budgets = budgets(10, 100);
        let mut first = budgets.reservation();
        first.grow_to(60).expect("fits");
        first.grow_to(40).expect("already held");
        assert_eq!(first.bytes, 60);
        let mut second = budgets.reservation();
        second.grow_to(30).expect("fits");
        assert_eq!(
            second.grow_to(50).expect_err("20 more do not fit"),
            Shed::BufferedBytes {
                limit: 100,
                wanted: 20
            }
        );
        assert_eq!(second.bytes, 30, "a refused growth keeps what it held");
        assert_eq!(budgets.metrics.buffered_bytes.get(), 90);
        assert_eq!(budgets.metrics.shed_total(ShedReason::BufferedBytes), 1);
        drop(second);
        // A body shorter than its reservation gives the rest back; its copies share the rest.
        let body = BufferedBody::new(Bytes::from_static(&[0; 50]), first);
        assert_eq!(budgets.metrics.buffered_bytes.get(), 50);
        let copy = body.clone();
        drop(body);
        assert_eq!(budgets.buffered_bytes.load(Ordering::Relaxed), 50);
        drop(copy);
        assert_eq!(budgets.buffered_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(budgets.metrics.buffered_bytes.get(), 0);
    }
}
