//! Health of the process and its probe server: `/healthz` (the process and its runtime answer),
//! `/readyz` (see [`is_ready`]) and `/metrics`, on a port of their own.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

/// What the process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Starting: nothing decided yet.
    Starting,
    /// Waiting for the Lease another process holds.
    StandingBy,
    /// Holding the Lease (or running without election): controllers run.
    Leading,
    /// A signal arrived: draining.
    ShuttingDown,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Whether the last look at the Lease succeeded (standby only).
    lease_reachable: bool,
    /// Watches that have not listed their objects yet.
    unsynced: BTreeSet<&'static str>,
}

/// Readiness state shared by the leader elector, the controllers and the probe server.
#[derive(Clone, Debug)]
pub struct Health(Arc<Mutex<Inner>>);

/// Ready when: leading and every watch synced, or standing by with the Lease in sight; never
/// while starting or shutting down.
pub fn is_ready(phase: Phase, lease_reachable: bool, all_synced: bool) -> bool {
    match phase {
        Phase::Leading => all_synced,
        Phase::StandingBy => lease_reachable,
        Phase::Starting | Phase::ShuttingDown => false,
    }
}

impl Health {
    /// A process that has not started any of the `watches` yet.
    pub fn new(watches: &[&'static str]) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            phase: Phase::Starting,
            lease_reachable: false,
            unsynced: watches.iter().copied().collect(),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Moves to `phase` (never back out of [`Phase::ShuttingDown`]).
    pub fn set_phase(&self, phase: Phase) {
        self.with(|i| {
            if i.phase != Phase::ShuttingDown {
                i.phase = phase;
            }
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.with(|i| i.phase)
    }

    /// Records whether the Lease could be read (while standing by).
    pub fn set_lease_reachable(&self, reachable: bool) {
        self.with(|i| i.lease_reachable = reachable);
    }

    /// Marks the watch `name` as having listed its objects.
    pub fn synced(&self, name: &'static str) {
        self.with(|i| i.unsynced.remove(name));
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.with(|i| is_ready(i.phase, i.lease_reachable, i.unsynced.is_empty()))
    }

    /// A line for `/readyz` saying why.
    fn describe(&self) -> String {
        self.with(|i| {
            format!(
                "phase={:?} lease_reachable={} unsynced={:?}",
                i.phase, i.lease_reachable, i.unsynced
            )
        })
    }
}

#[derive(Clone)]
struct ProbeState {
    health: Health,
    registry: Arc<Registry>,
}

/// Binds `addr` and returns the bound address with the server future, which serves until
/// `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(%bound, "probe server listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ProbeState { health, registry });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok((bound, async move { server.await }))
}

async fn readyz(State(s): State<ProbeState>) -> impl IntoResponse {
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", s.health.describe()))
}

async fn metrics(State(s): State<ProbeState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&s.registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_leading_and_synced_or_standing_by_in_sight() {
        assert!(!is_ready(Phase::Starting, true, true));
        assert!(!is_ready(Phase::Leading, true, false));
        assert!(is_ready(Phase::Leading, false, true));
        assert!(is_ready(Phase::StandingBy, true, false));
        assert!(!is_ready(Phase::StandingBy, false, false));
        assert!(!is_ready(Phase::ShuttingDown, true, true));
    }

    #[test]
    fn shutting_down_is_final_and_every_watch_must_sync() {
        let h = Health::new(&["a", "b"]);
        h.set_phase(Phase::Leading);
        h.synced("a");
        assert!(!h.ready());
        h.synced("b");
        assert!(h.ready());
        h.set_phase(Phase::ShuttingDown);
        h.set_phase(Phase::Leading);
        assert_eq!(h.phase(), Phase::ShuttingDown);
        assert!(!h.ready());
    }
}
