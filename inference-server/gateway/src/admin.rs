//! The admin port: `/metrics` (Prometheus), `/demand` (per-entity demand for the autoscaler),
//! `/healthz` (the process answers) and `/readyz` (the routing table is synced and the gateway
//! is not shutting down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Query, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use super::demand::DemandReport;
use super::state::State;

/// What the admin routes read.
#[derive(Debug)]
pub struct Admin {
    /// The live state.
    pub state: Arc<State>,
    /// The metrics registry.
    pub registry: Registry,
    /// Set at shutdown: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// How callers are checked (not ready before the API key Secrets synced).
    pub auth: Arc<crate::auth::Auth>,
}

/// The admin routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/demand", get(demand))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn metrics(AxumState(admin): AxumState<Arc<Admin>>) -> Response {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {error}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Query of `/demand`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DemandQuery {
    /// Wait up to this many seconds for an entity to start holding requests before answering
    /// (a long poll, so the autoscaler wakes an entity without polling fast).
    #[serde(default)]
    wait_for_held_seconds: Option<u64>,
}

async fn demand(
    AxumState(admin): AxumState<Arc<Admin>>,
    Query(query): Query<DemandQuery>,
) -> Json<DemandReport> {
    if let Some(seconds) = query.wait_for_held_seconds {
        let wake = admin.state.wake.notified();
        let already_holding = admin.state.demand().iter().any(|d| d.held > 0);
        if !already_holding {
            let _ = tokio::time::timeout(Duration::from_secs(seconds.min(60)), wake).await;
        }
    }
    Json(DemandReport::new(admin.state.demand()))
}

async fn readyz(AxumState(admin): AxumState<Arc<Admin>>) -> Response {
    if admin.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !admin.state.synced() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the routing table has not synced yet",
        )
            .into_response()
    } else if !admin.auth.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the API key Secrets have not synced yet",
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}
