//! The reverse proxy: every request streams through to the model container and back, frame by
//! frame; sampled exchanges get a copy of each body (capped) that becomes a row when the
//! response ends.
//!
//! | route | answered by |
//! |---|---|
//! | `GET /ping` | the sidecar: 200 while its process is up (liveness) |
//! | `GET /health` | the model's readiness path, proxied (503 when unreachable or draining) |
//! | `GET /metrics`, `GET /capture/metrics` | the sidecar's Prometheus metrics |
//! | anything else | proxied to the model, and captured |

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use sluice_contract::usage::{UsagePrice, cost};
use sluice_protocol::error::error_chain;
use sluice_protocol::usage::{AnswerFormat, UsageMeter};
use sluice_protocol::{ApiError, ErrorKind};
use tracing::Instrument;

use super::exchange::{MeteredUsage, RawExchange};
use super::metrics::{Body as BodyKind, BodyLabels, CaptureMetrics, DropReason, UpstreamFailure};
use super::metrics::{UpstreamLabels, UsageLabels};
use super::queue::{Overflow, Queue};
use crate::table::record::{
    CAPTURE_MEMORY_LIMIT, CLIENT_CLOSED_STATUS, CLIENT_DISCONNECTED, REQUEST_TRUNCATED,
    RESPONSE_INCOMPLETE, RESPONSE_TRUNCATED, SHUTDOWN, SHUTDOWN_STATUS, UPSTREAM_UNAVAILABLE,
};

use sluice_contract::headers::names::{
    CLIENT_REQUEST_ID as CLIENT_REQUEST_ID_HEADERS, GROUPS as GROUPS_HEADER,
    GUARDRAILS as GUARDRAILS_HEADER, KEY_ID as KEY_ID_HEADER, PII_IN_ANSWERS, REQUEST_ID,
    REQUESTER as REQUESTER_HEADER, SHADOW as SHADOW_HEADER,
};
use sluice_contract::headers::strip_hop_by_hop;
use sluice_contract::metadata as row_keys;
use sluice_contract::record::{RECORD, RecordHead, RecordOrigin};
/// Longest a readiness check of the model may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits on what is copied.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes copied of one body.
    pub max_payload_bytes: usize,
    /// Most bytes of copies held by all requests in flight.
    pub memory_bytes: usize,
}

/// Usage tracking: every exchange is recorded for its usage row, its answer metered.
#[derive(Clone, Debug)]
pub struct UsageTracking {
    /// The entity's price, when it has one.
    pub price: Option<UsagePrice>,
    /// The labels of its usage counters.
    pub labels: UsageLabels,
}

/// What finished exchanges are handed to: the queue, the metrics and the copy budget; and
/// the recorded exchanges in flight, so that a shutdown can record them as cut.
#[derive(Debug)]
struct Recorder {
    queue: Arc<Queue>,
    metrics: CaptureMetrics,
    limits: Limits,
    usage: Option<UsageTracking>,
    in_flight_bytes: AtomicUsize,
    /// Sampled exchanges not finished yet, by [`Exchange::id`].
    live: Mutex<HashMap<u64, Weak<Exchange>>>,
    next_id: AtomicU64,
    /// Set at the drain deadline: exchanges that end from now on were cut by the shutdown.
    cutting: AtomicBool,
}

impl Recorder {
    fn new(
        queue: Arc<Queue>,
        metrics: CaptureMetrics,
        limits: Limits,
        usage: Option<UsageTracking>,
    ) -> Self {
        Self {
            queue,
            metrics,
            limits,
            usage,
            in_flight_bytes: AtomicUsize::new(0),
            live: Mutex::default(),
            next_id: AtomicU64::new(0),
            cutting: AtomicBool::new(false),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u64, Weak<Exchange>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new sampled exchange, known to the recorder until it finishes.
    fn start(self: &Arc<Self>, raw: RawExchange) -> Arc<Exchange> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let exchange = Arc::new(Exchange {
            id,
            recorder: self.clone(),
            started: Instant::now(),
            state: Mutex::new(ExchangeState {
                raw,
                ..ExchangeState::default()
            }),
        });
        self.live().insert(id, Arc::downgrade(&exchange));
        exchange
    }

    /// Ends every exchange still in flight as cut by the shutdown (and any that ends later
    /// on); returns how many were.
    fn cut(&self) -> usize {
        self.cutting.store(true, Ordering::Relaxed);
        let live: Vec<Arc<Exchange>> = self.live().values().filter_map(Weak::upgrade).collect();
        for exchange in &live {
            exchange.abandon();
        }
        live.len()
    }

    /// Reserves `n` bytes of the copy budget.
    fn reserve(&self, n: usize) -> bool {
        let reserved = self
            .in_flight_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let total = held.checked_add(n)?;
                (total <= self.limits.memory_bytes).then_some(total)
            })
            .is_ok();
        if reserved {
            self.publish_in_flight();
        }
        reserved
    }

    fn release(&self, n: usize) {
        self.in_flight_bytes.fetch_sub(n, Ordering::AcqRel);
        self.publish_in_flight();
    }

    fn publish_in_flight(&self) {
        let held = self.in_flight_bytes.load(Ordering::Relaxed);
        self.metrics
            .in_flight_bytes
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    fn record(&self, exchange: RawExchange) {
        self.metrics.captured.inc();
        let (dropped, queued) = self.queue.push(exchange);
        self.metrics.drop_records(DropReason::QueueFull, dropped);
        self.metrics
            .queue_bytes
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// Which body a tap copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug, Default)]
struct ExchangeState {
    raw: RawExchange,
    reserved: usize,
    request_cut: bool,
    response_cut: bool,
    /// Some of the response passed (copied or not).
    response_seen: bool,
    /// Reads the answer's token counts as it passes (usage tracking).
    meter: Option<UsageMeter>,
    /// No model ran (a cache hit, a refused request): no usage row.
    unmetered: bool,
    /// How long the exchange took, when the gateway measured it (a record it sent).
    duration_ms: Option<i64>,
    /// From the request to the response's first body byte (a stream's first event).
    first_byte_ms: Option<i64>,
    /// A record the gateway sent: nothing passed through, so no time to a first byte.
    recorded: bool,
    finished: bool,
}

/// One sampled exchange in flight, shared by the request and response taps.
#[derive(Debug)]
struct Exchange {
    /// Its key among the recorder's live exchanges.
    id: u64,
    recorder: Arc<Recorder>,
    started: Instant,
    state: Mutex<ExchangeState>,
}

impl Exchange {
    fn lock(&self) -> MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies what fits of `data` into the `side` body (a response only meters it when the
    /// exchange is recorded for its usage only).
    fn copy(&self, side: Side, data: &[u8]) {
        let mut state = self.lock();
        let state = &mut *state;
        if side == Side::Response && !data.is_empty() && !state.finished {
            if !state.response_seen {
                state.first_byte_ms = Some(self.started.elapsed().as_millis() as i64);
            }
            state.response_seen = true;
            if let Some(meter) = state.meter.as_mut() {
                meter.feed(data);
            }
            if state.raw.usage_only {
                return;
            }
        }
        let (buffer, cut, code, kind) = match side {
            Side::Request => (
                &mut state.raw.request,
                &mut state.request_cut,
                REQUEST_TRUNCATED,
                BodyKind::Request,
            ),
            Side::Response => (
                &mut state.raw.response,
                &mut state.response_cut,
                RESPONSE_TRUNCATED,
                BodyKind::Response,
            ),
        };
        if *cut || data.is_empty() || state.finished {
            return;
        }
        let room = self
            .recorder
            .limits
            .max_payload_bytes
            .saturating_sub(buffer.len());
        let take = data.len().min(room);
        let mut reason = (take < data.len()).then_some(code);
        if take > 0 {
            if self.recorder.reserve(take) {
                buffer.extend_from_slice(&data[..take]);
                state.reserved += take;
            } else {
                reason = Some(CAPTURE_MEMORY_LIMIT);
            }
        }
        if let Some(reason) = reason {
            *cut = true;
            if !state.raw.codes.contains(&reason) {
                state.raw.codes.push(reason);
            }
            self.recorder
                .metrics
                .truncated
                .get_or_create(&BodyLabels { body: kind })
                .inc();
        }
    }

    /// Notes the response head.
    fn respond(&self, status: StatusCode, headers: &HeaderMap) {
        let mut state = self.lock();
        state.raw.status_code = status.as_u16();
        if let Some(kind) = headers.get(header::CONTENT_TYPE) {
            let kind = String::from_utf8_lossy(kind.as_bytes()).into_owned();
            if self.recorder.usage.is_some() {
                state.meter = AnswerFormat::of_content_type(&kind).map(UsageMeter::new);
            }
            state.raw.response_is_stream = kind.starts_with("text/event-stream");
            state
                .raw
                .metadata
                .insert("response_content_type".into(), kind);
        }
    }

    /// Ends the exchange (once) and hands the row to the pipeline.
    fn finish(&self, codes: &[&'static str]) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        state.finished = true;
        let mut raw = std::mem::take(&mut state.raw);
        let reserved = std::mem::take(&mut state.reserved);
        let meter = state.meter.take();
        let unmetered = state.unmetered;
        let measured = state.duration_ms;
        let first_byte = state.first_byte_ms.filter(|_| !state.recorded);
        drop(state);
        self.recorder.live().remove(&self.id);
        raw.execution_time_ms =
            measured.unwrap_or_else(|| self.started.elapsed().as_millis() as i64);
        // Measured here only for answers that passed through (a record's arrived whole).
        if let Some(ms) = first_byte {
            raw.metadata
                .insert(row_keys::TIME_TO_FIRST_BYTE_MS.into(), ms.to_string());
        }
        raw.codes.extend(codes);
        if let Some(tracking) = self.recorder.usage.as_ref().filter(|_| !unmetered) {
            let tokens = meter.and_then(UsageMeter::finish);
            let (input, output) = (tokens.and_then(|t| t.input), tokens.and_then(|t| t.output));
            let execution_ms = u64::try_from(raw.execution_time_ms).unwrap_or(0);
            let cost = tracking
                .price
                .as_ref()
                .and_then(|price| cost(price, input, output, execution_ms));
            self.recorder
                .metrics
                .count_usage(&tracking.labels, (input, output), cost);
            raw.usage = Some(MeteredUsage { tokens, cost });
        }
        self.recorder.release(reserved);
        self.recorder.record(raw);
    }

    /// Ends an exchange that did not run to its end: the client (or the gateway) went away
    /// ([`CLIENT_DISCONNECTED`] with status 499 before the response head, else
    /// [`RESPONSE_INCOMPLETE`] when part of the response was copied), or, once the recorder is
    /// cutting, the shutdown closed it ([`SHUTDOWN`]; status 503 before the response head,
    /// else [`RESPONSE_INCOMPLETE`] too). Its copy budget returns and it still becomes a row.
    fn abandon(&self) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let answered = state.raw.status_code != 0;
        let copied = state.response_seen;
        let codes: &[&'static str] = if self.recorder.cutting.load(Ordering::Relaxed) {
            if !answered {
                state.raw.status_code = SHUTDOWN_STATUS;
            }
            if answered {
                &[RESPONSE_INCOMPLETE, SHUTDOWN]
            } else {
                &[SHUTDOWN]
            }
        } else if !answered {
            state.raw.status_code = CLIENT_CLOSED_STATUS;
            &[CLIENT_DISCONNECTED]
        } else if copied {
            &[RESPONSE_INCOMPLETE]
        } else {
            // Never polled because it was empty: complete.
            &[]
        };
        drop(state);
        self.finish(codes);
    }
}

impl Drop for Exchange {
    /// The last handle went away before the exchange ended: the request was abandoned (the
    /// client or the gateway gave up and the handler was cancelled), see
    /// [`Exchange::abandon`].
    fn drop(&mut self) {
        self.abandon();
    }
}

/// A body passed through frame by frame, copying data frames into an exchange.
#[derive(Debug)]
pub struct TeeBody<B> {
    inner: B,
    tap: Option<(Arc<Exchange>, Side)>,
}

impl<B> TeeBody<B> {
    fn new(inner: B, tap: Option<(Arc<Exchange>, Side)>) -> Self {
        Self { inner, tap }
    }

    /// The response side ended: the row is complete (or not, with `codes`).
    fn end(&mut self, codes: &[&'static str]) {
        if let Some((exchange, Side::Response)) = self.tap.take() {
            exchange.finish(codes);
        }
    }
}

impl<B> hyper::body::Body for TeeBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some((exchange, side)), Some(data)) = (&self.tap, frame.data_ref()) {
                    exchange.copy(*side, data);
                }
                if self.inner.is_end_stream() {
                    self.end(&[]);
                }
            }
            Poll::Ready(None) => self.end(&[]),
            Poll::Ready(Some(Err(_))) => self.end(&[RESPONSE_INCOMPLETE]),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TeeBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or the shutdown closed the
        // connection (or the body was never polled because it was empty, which cannot be
        // told apart cheaply; an empty body is complete).
        if let Some((exchange, Side::Response)) = self.tap.take() {
            exchange.abandon();
        }
    }
}

/// The body type sent to the model.
type UpstreamBody = TeeBody<Body>;

/// The proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    client: Client<HttpConnector, UpstreamBody>,
    /// The model container's address as a URI authority; `None` for a recorder
    /// (`--record-only`).
    upstream: Option<Authority>,
    health_path: String,
    upstream_timeout: Duration,
    /// `block`: longest a request waits for room for its row.
    block_timeout: Duration,
    /// Fraction of requests recorded in the payload table (0 without one).
    sampling_fraction: f64,
    /// A feedback table is written.
    feedback: bool,
    recorder: Arc<Recorder>,
    registry: Arc<Registry>,
    draining: AtomicBool,
}

/// Settings of the proxy.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The model container; `None` for a recorder (`--record-only`).
    pub upstream: Option<SocketAddr>,
    /// Its readiness path.
    pub health_path: String,
    /// Longest wait for a response head.
    pub upstream_timeout: Duration,
    /// With the queue's `block` policy, longest a request waits for room for its row.
    pub block_timeout: Duration,
    /// Fraction of requests captured in the payload table (0 when there is none).
    pub sampling_fraction: f64,
    /// Copy limits.
    pub limits: Limits,
    /// Usage tracking, when on.
    pub usage: Option<UsageTracking>,
    /// A feedback table is written (`--feedback-table`).
    pub feedback: bool,
}

impl Proxy {
    /// A proxy handing captured exchanges to `queue`.
    pub fn new(
        config: ProxyConfig,
        queue: Arc<Queue>,
        metrics: CaptureMetrics,
        registry: Arc<Registry>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            upstream: config.upstream.map(|addr| {
                Authority::try_from(addr.to_string()).expect("a socket address is an authority")
            }),
            health_path: config.health_path,
            upstream_timeout: config.upstream_timeout,
            block_timeout: config.block_timeout,
            sampling_fraction: config.sampling_fraction,
            feedback: config.feedback,
            recorder: Arc::new(Recorder::new(queue, metrics, config.limits, config.usage)),
            registry,
            draining: AtomicBool::new(false),
        }
    }

    /// Makes `/health` answer 503 from now on (the pod is stopping).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The drain deadline: records every sampled exchange still in flight, and any that ends
    /// from now on, as cut by the shutdown (`SHUTDOWN`). Returns how many were in flight.
    pub fn cut_in_flight(&self) -> usize {
        self.recorder.cut()
    }

    /// The routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/ping", get(ping))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/capture/metrics", get(metrics))
            .fallback(forward)
            .with_state(self)
    }

    /// A router serving only the metrics (for `--metrics-listen`).
    pub fn metrics_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(self)
    }

    /// `uri`'s path and query (or `path`) at the model: built from parts, not formatted and
    /// parsed again per request.
    fn upstream_uri(model: &Authority, uri: &Uri, path: Option<&str>) -> Uri {
        let path_and_query = match path {
            Some(path) => PathAndQuery::try_from(path).ok(),
            None => uri.path_and_query().cloned(),
        };
        let mut parts = axum::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(model.clone());
        parts.path_and_query =
            Some(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// With the `block` policy, waits for room for one more row; the 503 to answer when none
    /// came within `--block-timeout` (the request never reaches the model, so nothing goes
    /// unrecorded). Nothing to wait for with `drop-oldest`.
    async fn admit(&self) -> Option<Response> {
        let queue = &self.recorder.queue;
        if queue.overflow() != Overflow::Block || queue.wait_for_room(self.block_timeout).await {
            return None;
        }
        self.recorder.metrics.refused.inc();
        Some(
            ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "the inference table is behind: no room for this request's row within {:?} \
                     (capture overflow policy block); retry later",
                    self.block_timeout
                ),
            )
            .with_retry_after(Duration::from_secs(1))
            .into_response(),
        )
    }

    fn sampled(&self) -> bool {
        self.sampling_fraction >= 1.0
            || (self.sampling_fraction > 0.0 && fastrand::f64() < self.sampling_fraction)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn header_text(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names.iter().find_map(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    })
}

/// The client's `x-request-id` when it is a sane token, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID)
        && (1..=200).contains(&id.len())
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return id.clone();
    }
    sluice_contract::headers::new_request_id()
}

/// The request facts kept in `request_metadata`.
fn metadata(request: &axum::http::request::Parts) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::from([
        ("method".to_string(), request.method.to_string()),
        ("path".to_string(), request.uri.path().to_string()),
    ]);
    if let Some(query) = request.uri.query() {
        metadata.insert("query".into(), query.to_string());
    }
    let headers = &request.headers;
    for (key, name) in [
        ("content_type", header::CONTENT_TYPE),
        ("user_agent", header::USER_AGENT),
    ] {
        if let Some(value) = header_text(headers, &[name]) {
            metadata.insert(key.into(), value);
        }
    }
    if headers.contains_key(&SHADOW_HEADER) {
        metadata.insert("shadow".into(), "true".into());
    }
    for (key, name) in [
        ("requester_groups", GROUPS_HEADER),
        ("api_key_id", KEY_ID_HEADER),
        (row_keys::GUARDRAILS, GUARDRAILS_HEADER),
    ] {
        if let Some(value) = header_text(headers, &[name]) {
            metadata.insert(key.into(), value);
        }
    }
    metadata
}

/// Records an exchange the gateway answered without this sidecar's model (see
/// [`sluice_contract::record`]): a cache hit, marked `request_metadata['cache'] = 'hit'` and
/// without a usage row (no model ran), or a call to an external model's provider, marked
/// `request_metadata['provider']` and metered for its usage row like a model's answer. Nothing
/// is sent to a model; the answer is 204.
async fn record_sent(proxy: &Proxy, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let limit = proxy.recorder.limits.max_payload_bytes.saturating_mul(2) + 1024;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return ApiError::bad_request(format!("a record's body could not be read: {error}"))
                .into_response();
        }
    };
    let head = match RecordHead::read(&parts.headers, bytes.len()) {
        Ok(head) => head,
        Err(error) => return ApiError::bad_request(error.to_string()).into_response(),
    };
    if head.origin == RecordOrigin::Feedback {
        return record_feedback(proxy, &parts.headers, &bytes[..head.request_len]).await;
    }
    // No model ran for a cache hit or a refused request: no usage row, no tokens.
    let unmetered = matches!(head.origin, RecordOrigin::Cache | RecordOrigin::Guardrail);
    let sampled = proxy.sampled();
    // A provider's answer is metered for its usage row even when not sampled.
    let usage = !unmetered && proxy.recorder.usage.is_some();
    if !sampled && !usage {
        return StatusCode::NO_CONTENT.into_response();
    }
    if let Some(refusal) = proxy.admit().await {
        return refusal;
    }
    let id = request_id(&parts.headers);
    let mut metadata = metadata(&parts);
    match &head.origin {
        RecordOrigin::Cache => metadata.insert("cache".into(), "hit".into()),
        RecordOrigin::Guardrail => {
            metadata.insert(row_keys::GUARDRAILS.into(), row_keys::INPUT_REFUSED.into())
        }
        RecordOrigin::Provider(name) => metadata.insert("provider".into(), name.clone()),
        RecordOrigin::Feedback => None,
    };
    let duration_ms = head
        .duration_ms
        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let exchange = proxy.recorder.start(RawExchange {
        usage_only: !sampled,
        request_id: String::from_utf8_lossy(id.as_bytes()).into_owned(),
        client_request_id: header_text(&parts.headers, &CLIENT_REQUEST_ID_HEADERS),
        requester: header_text(&parts.headers, &[REQUESTER_HEADER]),
        timestamp_ms: now_ms() - duration_ms.unwrap_or(0),
        metadata,
        mask_answer_pii: parts.headers.contains_key(&PII_IN_ANSWERS),
        ..RawExchange::default()
    });
    {
        let mut state = exchange.lock();
        state.unmetered = unmetered;
        state.recorded = true;
        state.duration_ms = duration_ms;
    }
    exchange.copy(Side::Request, &bytes[..head.request_len]);
    let mut answer = HeaderMap::new();
    if let Some(kind) = head.content_type {
        answer.insert(header::CONTENT_TYPE, kind);
    }
    exchange.respond(
        StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK),
        &answer,
    );
    if unmetered {
        exchange.lock().meter = None;
    }
    exchange.copy(Side::Response, &bytes[head.request_len..]);
    exchange.finish(if head.incomplete {
        &[RESPONSE_INCOMPLETE]
    } else {
        &[]
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Records a feedback the gateway checked and handed over ([`sluice_contract::feedback`]):
/// always (sampling is for requests), as a row of the feedback table; 204 once queued.
async fn record_feedback(proxy: &Proxy, headers: &HeaderMap, body: &[u8]) -> Response {
    if !proxy.feedback {
        return ApiError::bad_request(
            "this capture sidecar writes no feedback table (--feedback-table)",
        )
        .into_response();
    }
    let feedback = match sluice_contract::feedback::Feedback::parse(body) {
        Ok(feedback) => feedback,
        Err(error) => {
            return ApiError::new(ErrorKind::InvalidParameterValue, error.to_string())
                .into_response();
        }
    };
    if let Some(refusal) = proxy.admit().await {
        return refusal;
    }
    let id = request_id(headers);
    proxy.recorder.record(RawExchange {
        request_id: String::from_utf8_lossy(id.as_bytes()).into_owned(),
        requester: header_text(headers, &[REQUESTER_HEADER]),
        timestamp_ms: now_ms(),
        feedback: Some(feedback),
        ..RawExchange::default()
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Proxies one request, capturing it when sampled.
async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    proxy.recorder.metrics.requests.inc();
    if RecordHead::is_record(request.headers()) {
        return record_sent(&proxy, request).await;
    }
    let Some(model) = &proxy.upstream else {
        return ApiError::new(
            ErrorKind::NotFound,
            format!(
                "this capture sidecar is a recorder (--record-only): it only takes the records \
                 the gateway sends ({RECORD}), and serves no model at {}",
                request.uri().path()
            ),
        )
        .into_response();
    };
    let (mut parts, body) = request.into_parts();
    let id = request_id(&parts.headers);
    let sampled = proxy.sampled();
    let recorded = sampled || proxy.recorder.usage.is_some();
    if recorded && let Some(refusal) = proxy.admit().await {
        return refusal;
    }
    let exchange = recorded.then(|| {
        proxy.recorder.start(RawExchange {
            usage_only: !sampled,
            request_id: String::from_utf8_lossy(id.as_bytes()).into_owned(),
            client_request_id: header_text(&parts.headers, &CLIENT_REQUEST_ID_HEADERS),
            // Only the gateway's verified identity (it removes what clients send).
            requester: header_text(&parts.headers, &[REQUESTER_HEADER]),
            timestamp_ms: now_ms(),
            metadata: metadata(&parts),
            mask_answer_pii: parts.headers.contains_key(&PII_IN_ANSWERS),
            ..RawExchange::default()
        })
    });
    let span = tracing::debug_span!("capture", request_id = ?id, method = %parts.method, path = %parts.uri.path());
    parts.uri = Proxy::upstream_uri(model, &parts.uri, None);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.insert(REQUEST_ID, id.clone());
    let tap = exchange.clone().map(|e| (e, Side::Request));
    let upstream = axum::http::Request::from_parts(parts, TeeBody::new(body, tap));
    let answer = tokio::time::timeout(proxy.upstream_timeout, proxy.client.request(upstream))
        .instrument(span)
        .await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let message = format!(
                "the model at {model} did not answer: {}",
                error_chain(&error)
            );
            tracing::warn!(request_id = ?id, %message);
            return proxy.fail(
                exchange,
                &id,
                UpstreamFailure::Unreachable,
                ApiError::new(ErrorKind::BadGateway, message),
            );
        }
        Err(_) => {
            let message = format!(
                "the model did not start answering within {:?}",
                proxy.upstream_timeout
            );
            return proxy.fail(
                exchange,
                &id,
                UpstreamFailure::Timeout,
                ApiError::new(ErrorKind::DeadlineExceeded, message),
            );
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(REQUEST_ID, id);
    if let Some(exchange) = &exchange {
        exchange.respond(parts.status, &parts.headers);
    }
    let tap = exchange.map(|e| (e, Side::Response));
    Response::from_parts(parts, Body::new(TeeBody::new(body, tap)))
}

impl Proxy {
    /// Answers (and records) a request the model did not answer.
    fn fail(
        &self,
        exchange: Option<Arc<Exchange>>,
        id: &HeaderValue,
        kind: UpstreamFailure,
        error: ApiError,
    ) -> Response {
        self.recorder
            .metrics
            .upstream_failures
            .get_or_create(&UpstreamLabels { kind })
            .inc();
        if let Some(exchange) = exchange {
            let body = serde_json::to_vec(&error.body()).unwrap_or_default();
            {
                let mut state = exchange.lock();
                state.raw.status_code = error.kind.status().as_u16();
                state
                    .raw
                    .metadata
                    .insert("response_content_type".into(), "application/json".into());
            }
            exchange.copy(Side::Response, &body);
            exchange.finish(&[UPSTREAM_UNAVAILABLE]);
        }
        let mut response = error.into_response();
        response.headers_mut().insert(REQUEST_ID, id.clone());
        response
    }
}

/// Liveness of the sidecar itself.
async fn ping() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "alive"}))
}

/// Readiness: the model's, through the sidecar (a recorder's own: it has no model).
async fn health(State(proxy): State<Arc<Proxy>>) -> Response {
    if proxy.draining.load(Ordering::Relaxed) {
        return ApiError::new(
            ErrorKind::Unavailable,
            "the capture sidecar is shutting down",
        )
        .into_response();
    }
    let Some(model) = &proxy.upstream else {
        return axum::Json(serde_json::json!({"status": "ready", "mode": "record-only"}))
            .into_response();
    };
    let mut request = axum::http::Request::new(TeeBody::new(Body::empty(), None));
    *request.uri_mut() =
        Proxy::upstream_uri(model, &Uri::from_static("/"), Some(&proxy.health_path));
    let unavailable = |message: String| {
        ApiError::new(ErrorKind::Unavailable, message)
            .with_retry_after(Duration::from_secs(1))
            .into_response()
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, proxy.client.request(request)).await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(error)) => unavailable(format!(
            "the model at {model} is not reachable: {}",
            error_chain(&error)
        )),
        Err(_) => unavailable(format!(
            "the model did not answer its readiness check within {HEALTH_TIMEOUT:?}"
        )),
    }
}

/// The sidecar's metrics, in the Prometheus text format.
async fn metrics(State(proxy): State<Arc<Proxy>>) -> Response {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &proxy.registry) {
        return ApiError::internal(format!("encoding metrics: {error}")).into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Popped;

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }

    fn recorder(max_payload_bytes: usize, memory_bytes: usize) -> Arc<Recorder> {
        Arc::new(Recorder::new(
            Arc::new(Queue::new(1 << 20, Overflow::DropOldest)),
            CaptureMetrics::default(),
            Limits {
                max_payload_bytes,
                memory_bytes,
            },
            None,
        ))
    }

    fn queued(recorder: &Recorder) -> Vec<RawExchange> {
        let Popped::Items(rows) = recorder.queue.pop(1 << 20, Duration::ZERO) else {
            panic!("the queue is open");
        };
        rows
    }

    #[test]
    fn copies_are_capped_and_the_budget_is_returned() {
        let recorder = recorder(10, 15);
        let exchange = recorder.start(RawExchange::default());
        exchange.copy(Side::Request, b"0123456");
        exchange.copy(Side::Request, b"789abc");
        exchange.copy(Side::Response, b"0123456789");
        {
            let state = exchange.lock();
            assert_eq!(state.raw.request, b"0123456789");
            assert!(state.raw.response.is_empty(), "over the memory budget");
            assert_eq!(state.raw.codes, [REQUEST_TRUNCATED, CAPTURE_MEMORY_LIMIT]);
        }
        assert_eq!(recorder.in_flight_bytes.load(Ordering::Relaxed), 10);
        exchange.finish(&[]);
        exchange.finish(&[]);
        assert_eq!(recorder.in_flight_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(recorder.metrics.captured.get(), 1, "finished once");
    }

    #[test]
    fn an_abandoned_exchange_returns_its_budget_and_is_still_a_row() {
        let recorder = recorder(1000, 1000);
        let exchange = recorder.start(RawExchange::default());
        exchange.copy(Side::Request, b"a request the model never answered");
        assert!(recorder.in_flight_bytes.load(Ordering::Relaxed) > 0);
        drop(exchange);
        assert_eq!(recorder.in_flight_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(recorder.metrics.captured.get(), 1, "a row");
        assert!(recorder.live().is_empty(), "not in flight any more");
        let rows = queued(&recorder);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status_code, CLIENT_CLOSED_STATUS);
        assert_eq!(rows[0].codes, [CLIENT_DISCONNECTED]);
        assert_eq!(rows[0].request, b"a request the model never answered");
    }

    #[test]
    fn the_shutdown_cut_records_every_exchange_in_flight_once() {
        let recorder = recorder(1000, 1000);
        let waiting = recorder.start(RawExchange {
            request_id: "waiting".into(),
            ..RawExchange::default()
        });
        waiting.copy(Side::Request, b"{}");
        let streaming = recorder.start(RawExchange {
            request_id: "streaming".into(),
            ..RawExchange::default()
        });
        streaming.respond(StatusCode::OK, &HeaderMap::new());
        streaming.copy(Side::Response, b"data: tick");
        let done = recorder.start(RawExchange::default());
        done.finish(&[]);
        let _ = queued(&recorder);

        assert_eq!(recorder.cut(), 2, "the two still in flight");
        streaming.copy(Side::Response, b"data: late");
        drop((waiting, streaming, done));
        let rows = queued(&recorder);
        assert_eq!(rows.len(), 2, "once each, whatever drops later");
        let waiting = rows.iter().find(|r| r.request_id == "waiting").unwrap();
        assert_eq!(
            (waiting.status_code, waiting.codes.as_slice()),
            (SHUTDOWN_STATUS, &[SHUTDOWN][..])
        );
        assert_eq!(waiting.request, b"{}");
        let streaming = rows.iter().find(|r| r.request_id == "streaming").unwrap();
        assert_eq!(
            (streaming.status_code, streaming.codes.as_slice()),
            (200, &[RESPONSE_INCOMPLETE, SHUTDOWN][..])
        );
        assert_eq!(
            streaming.response, b"data: tick",
            "nothing copied after the cut"
        );
        assert_eq!(recorder.in_flight_bytes.load(Ordering::Relaxed), 0);
        assert!(recorder.live().is_empty());
    }
}
