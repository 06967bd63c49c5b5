//! The HTTP surface of `serve`: routes, the per-request deadline and request metrics.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ping` | 200 while the process is up (liveness) |
//! | `GET /health` | 200 once the model is loaded, else 503 with the reason (readiness) |
//! | `GET /version` | server name and version |
//! | `GET /metrics` | Prometheus text |
//! | `POST /invocations` | MLflow scoring protocol → `{"predictions": ...}`; a body with `messages`, `prompt` or `input` is answered as chat, completions or embeddings |
//! | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` | OpenAI shape (chat may stream) |
//!
//! Every error is `{"error_code", "message"}` ([`ApiError`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice_protocol::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest};
use sluice_protocol::scoring;
use sluice_protocol::{ApiError, ErrorKind};
use tracing::Instrument;

use super::body::{BodyFormat, ReceivingBody, body_format, read_body};
use super::runtime::{Reply, Runtime};
use super::state::ModelSlot;
use crate::metrics::{ServeMetrics, render};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The model.
    pub model: Arc<ModelSlot>,
    /// Request, token and batch metrics.
    pub metrics: ServeMetrics,
    /// The registry `/metrics` renders.
    pub registry: Arc<Registry>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Set on SIGTERM: `/health` answers 503 while requests are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The routes, with the deadline (inner) and metrics (outer) layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/invocations", post(invocations))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Records every answer in the metrics, inside a tracing span per request.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let span = tracing::info_span!("request", method = %request.method(), route = %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let error_code = response
        .extensions()
        .get::<ErrorKind>()
        .map(|kind| kind.code());
    state
        .metrics
        .observe_request(&route, status, error_code, started.elapsed());
    span.in_scope(|| {
        tracing::debug!(
            status,
            error_code,
            millis = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    response
}

/// Ends a request at its deadline: 408 when the client was still sending its body, else 504.
async fn deadline(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let receiving = ReceivingBody::default();
    request.extensions_mut().insert(receiving.clone());
    let limit = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) if receiving.is_receiving() => ApiError::new(
            ErrorKind::RequestTimeout,
            format!("the request body was not received within the {limit:?} deadline"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            ErrorKind::DeadlineExceeded,
            format!("the request was not answered within the {limit:?} deadline"),
        )
        .into_response(),
    }
}

async fn ping() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "shutting down: still answering requests, but no longer ready for new traffic",
        ));
    }
    let runtime = state.model.runtime()?;
    Ok(Json(
        json!({"status": "ready", "model": state.model.name(), "runtime": runtime.name()}),
    ))
}

async fn version() -> Json<Value> {
    Json(json!({"name": "sluice inference-server", "version": env!("CARGO_PKG_VERSION")}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = render(&state.registry).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no route {method} {}; routes: GET /ping, /health, /version, /metrics; POST \
             /invocations, /v1/chat/completions, /v1/completions, /v1/embeddings",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} does not accept {method}", uri.path()),
    )
}

/// The body of a POST: the loaded model first (503 while loading), then the bytes.
async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    receiving: &ReceivingBody,
    csv_allowed: bool,
) -> Result<(Arc<Runtime>, BodyFormat, axum::body::Bytes), ApiError> {
    let runtime = state.model.runtime()?;
    let format = body_format(headers, csv_allowed)?;
    let bytes = read_body(body, headers, state.max_body_bytes, Some(receiving)).await?;
    Ok((runtime, format, bytes))
}

/// Decodes a JSON body into `T`: syntax errors and wrong fields get different messages.
/// Reads a JSON body as `/invocations` does: first as a JSON value (the whole body must be
/// valid JSON and UTF-8, ignored fields included; a repeated key keeps its last value), then as
/// `T`. So every route accepts and refuses the same bodies (the `openai_request` fuzz target
/// found two where they differed).
fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON body: {error}")))?;
    from_value(value, what)
}

fn from_value<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|error| ApiError::bad_request(format!("invalid {what} request: {error}")))
}

async fn invocations(
    State(state): State<AppState>,
    Extension(receiving): Extension<ReceivingBody>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (runtime, format, bytes) = receive(&state, &headers, body, &receiving, true).await?;
    let request = match format {
        BodyFormat::Csv => scoring::parse_csv(&bytes)?,
        BodyFormat::Json => {
            let value: Value = decode(&bytes, "scoring")?;
            // MLflow's "unified LLM input": answered raw, as the matching OpenAI route would.
            if value.get("messages").is_some() {
                return answer_chat(&runtime, from_value(value, "chat")?).await;
            }
            if value.get("prompt").is_some() {
                return answer_completions(&runtime, from_value(value, "completions")?).await;
            }
            if value.get("input").is_some() {
                return answer_embeddings(&runtime, from_value(value, "embeddings")?).await;
            }
            scoring::parse_body(value, &bytes)?
        }
    };
    let predictions = runtime.predict(request).await?;
    Ok(Json(json!({"predictions": predictions})).into_response())
}

async fn chat(
    State(state): State<AppState>,
    Extension(receiving): Extension<ReceivingBody>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (runtime, _, bytes) = receive(&state, &headers, body, &receiving, false).await?;
    answer_chat(&runtime, decode(&bytes, "chat")?).await
}

async fn completions(
    State(state): State<AppState>,
    Extension(receiving): Extension<ReceivingBody>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (runtime, _, bytes) = receive(&state, &headers, body, &receiving, false).await?;
    answer_completions(&runtime, decode(&bytes, "completions")?).await
}

async fn embeddings(
    State(state): State<AppState>,
    Extension(receiving): Extension<ReceivingBody>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (runtime, _, bytes) = receive(&state, &headers, body, &receiving, false).await?;
    answer_embeddings(&runtime, decode(&bytes, "embeddings")?).await
}

async fn answer_chat(runtime: &Runtime, request: ChatRequest) -> Result<Response, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` is empty; send at least one message",
        ));
    }
    Ok(reply_response(runtime.chat(request).await?))
}

async fn answer_completions(
    runtime: &Runtime,
    request: CompletionRequest,
) -> Result<Response, ApiError> {
    Ok(reply_response(runtime.completions(request).await?))
}

/// A whole body as JSON, or a stream as server-sent events.
fn reply_response<T: serde::Serialize>(reply: Reply<T>) -> Response {
    match reply {
        Reply::Full(body) => Json(body).into_response(),
        Reply::Stream(stream) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            Body::from_stream(stream),
        )
            .into_response(),
    }
}

async fn answer_embeddings(
    runtime: &Runtime,
    request: EmbeddingsRequest,
) -> Result<Response, ApiError> {
    request.encoding()?;
    Ok(Json(runtime.embeddings(request).await?).into_response())
}
