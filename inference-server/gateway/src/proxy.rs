//! The request path: find the endpoint, pick an entity by weight and a pod by load, hold the
//! request while a scale-to-zero entity wakes, mirror a share to shadow entities, and stream
//! the pod's answer back.
//!
//! The request body is read once, up to `--max-body-bytes` (the OpenAI routes name the endpoint
//! inside it, and a retry on another pod or a shadow copy needs it again), its bytes reserved in
//! the global `--max-buffered-bytes` budget as they arrive; a body that stalls for
//! `--body-idle-timeout` gets 408. Every request takes a place in the `--max-in-flight` budget
//! until its answer ends; over either budget it is refused at once ([`budget`](super::budget)).
//! The response body is never buffered, so server-sent events flow through as the model writes
//! them, and a pod that stalls mid-answer for `--response-idle-timeout` is cut off.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use sluice_crds::PiiBehavior;
use sluice_protocol::error::error_chain;
use sluice_protocol::{ApiError, ErrorKind};
use tokio::sync::Semaphore;

use super::auth::{self, Auth, AuthError, Caller};
use super::backend::{self, Backend, InFlight};
use super::budget::{Budgets, BufferedBody, Reservation, Shed};
use super::cache::{self, CACHE_HEADER, Caches, Filling};
use super::connections::{self, Failure, Lease};
use super::external::{self, External, Keys};
use super::fallback;
use super::guardrails::output::{Outcome, StreamGuard};
use super::guardrails::{self, Checks};
use super::hold::HoldRefused;
use super::metering::{Charge, Metering, TokenMeter};
use super::metrics::{
    AuthOutcome, CacheOutcome, EntityLabels, GatewayMetrics, HoldOutcome, IdleBody, ShadowOutcome,
};
use super::ratelimit::RateLimiter;
use super::state::{EntityPool, LiveConfig, LiveEndpoint, Lookup, State, Table};
use sluice_protocol::usage::{self, UsageChunkFilter};

use super::record::{Recorded, Recorders, RecordingBody};
use sluice_contract::headers::{
    REQUEST_ID, SERVED_MODEL_NAME, names, new_request_id, strip_hop_by_hop,
};
use sluice_contract::record::{RecordHead, RecordOrigin};

mod feedback;

/// The endpoint `name` calls in `table` (`name`, or `namespace.name` where ambiguous), or
/// the error saying why there is none.
fn endpoint<'t>(table: &'t Table, name: &str) -> Result<&'t Arc<LiveEndpoint>, ApiError> {
    table.get(name).map_err(|lookup| match lookup {
        Lookup::Unknown => ApiError::new(
            ErrorKind::NotFound,
            format!("no serving endpoint named {name:?}"),
        ),
        Lookup::Ambiguous(namespaces) => ApiError::bad_request(format!(
            "serving endpoint {name:?} exists in namespaces {}; call it as <namespace>.{name}",
            namespaces.join(", ")
        )),
    })
}

/// `Retry-After` of a request shed by a global budget: budgets free up as requests finish.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Limits of the request path.
#[derive(Clone, Copy, Debug)]
pub struct ProxyConfig {
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// How long a client may take to send its body (408 past it).
    pub body_timeout: Duration,
    /// How long a client may send nothing while sending its body (408 past it; zero: no limit).
    pub body_idle_timeout: Duration,
    /// Most requests in flight at once (503 past it).
    pub max_in_flight: usize,
    /// Most bytes of request bodies buffered at once (503 past it).
    pub max_buffered_bytes: usize,
    /// How long a pod may take to start answering (504 past it).
    pub request_timeout: Duration,
    /// How long a pod may send nothing once it started answering (cut off past it; zero: no
    /// limit).
    pub response_idle_timeout: Duration,
    /// Pods tried when connecting fails.
    pub max_attempts: usize,
    /// Most shadow requests in flight; more are shed and counted.
    pub max_shadow_in_flight: usize,
}

/// The proxy shared by every request.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    auth: Arc<Auth>,
    limiter: Arc<RateLimiter>,
    client: Client<HttpConnector, Full<Bytes>>,
    config: ProxyConfig,
    shadow_permits: Arc<Semaphore>,
    budgets: Arc<Budgets>,
    /// Calls external models' providers (HTTPS).
    providers: reqwest::Client,
    /// Their API keys.
    keys: Arc<Keys>,
    /// Endpoints' response caches.
    caches: Caches,
    /// Sends what no pod answered to capture sidecars, to become rows.
    recorders: Recorders,
}

type Shared = Arc<Proxy>;

impl Proxy {
    /// A proxy routing by `state`.
    pub fn new(
        state: Arc<State>,
        config: ProxyConfig,
        auth: Arc<Auth>,
        limiter: Arc<RateLimiter>,
        keys: Arc<Keys>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let caches = Caches::new(state.metrics().clone());
        let budgets = Arc::new(Budgets::new(
            config.max_in_flight,
            config.max_buffered_bytes,
            state.metrics().load().clone(),
        ));
        let shadow_permits = Arc::new(Semaphore::new(config.max_shadow_in_flight));
        let recorders = Recorders::new(
            client.clone(),
            shadow_permits.clone(),
            config.request_timeout,
            state.metrics().clone(),
        );
        Self {
            state,
            auth,
            limiter,
            client,
            shadow_permits,
            recorders,
            config,
            budgets,
            providers: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .unwrap_or_default(),
            keys,
            caches,
        }
    }

    /// The HTTP routes of the gateway.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                "/serving-endpoints/{name}/invocations",
                post(endpoint_invocations),
            )
            .route(
                "/serving-endpoints/{name}/served-models/{entity}/invocations",
                post(entity_invocations),
            )
            .route(
                "/serving-endpoints/{name}/feedback",
                post(endpoint_feedback),
            )
            .route("/endpoints/{name}/invocations", post(mlflow_invocations))
            .route("/serving-endpoints/v1/chat/completions", post(chat))
            .route("/serving-endpoints/v1/completions", post(completions))
            .route("/serving-endpoints/v1/embeddings", post(embeddings))
            .route("/serving-endpoints/v1/models", get(models))
            .fallback(unknown_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(self)
    }

    /// Answers a refused caller (401, 403, or 503 when the API could not be asked).
    /// Who is calling: authenticated, their credentials taken off (no pod sees a user's token
    /// or key) and the verified identity set in place of any a client sent; else the refusal.
    async fn caller_of(&self, headers: &mut HeaderMap) -> Result<Caller, Response> {
        let caller = match self.auth.authenticate(headers).await {
            Ok(caller) => caller,
            Err(error) => return Err(self.refuse("", "", &error)),
        };
        if self.auth.enforced() {
            headers.remove(header::AUTHORIZATION);
        }
        auth::strip_client_identity(headers);
        auth::set_identity(headers, &caller.identity);
        Ok(caller)
    }

    /// Whether `caller` may query endpoint `name` of `namespace` (counted); else the refusal.
    async fn authorize(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
    ) -> Result<(), Response> {
        if let Err(error) = self.auth.authorize(caller, namespace, name).await {
            return Err(self.refuse(namespace, name, &error));
        }
        self.state.metrics().auth(AuthOutcome::Allowed);
        Ok(())
    }

    fn refuse(&self, namespace: &str, endpoint: &str, error: &AuthError) -> Response {
        self.state.metrics().auth(error.outcome());
        tracing::debug!(namespace, endpoint, %error, "caller refused");
        self.fail(namespace, endpoint, error.to_api_error())
    }

    fn fail(&self, namespace: &str, endpoint: &str, error: ApiError) -> Response {
        self.state
            .metrics()
            .error(namespace, endpoint, error.kind.code());
        error.into_response()
    }

    /// The OpenAI model list (`GET /serving-endpoints/v1/models`): every endpoint this caller
    /// may query, by the name it calls it with, so OpenAI SDK model pickers show exactly what
    /// works.
    async fn list_models(&self, headers: &HeaderMap) -> Response {
        let caller = match self.auth.authenticate(headers).await {
            Ok(caller) => caller,
            Err(error) => return self.refuse("", "", &error),
        };
        let table = self.state.table();
        let mut data = Vec::new();
        for (id, endpoint) in table.named() {
            match self
                .auth
                .authorize(&caller, &endpoint.namespace, &endpoint.name)
                .await
            {
                Ok(()) => data.push(serde_json::json!({
                    "id": id,
                    "object": "model",
                    "created": 0,
                    "owned_by": endpoint.namespace,
                })),
                Err(error @ AuthError::Review(_)) => {
                    return self.refuse(&endpoint.namespace, &endpoint.name, &error);
                }
                Err(_) => {}
            }
        }
        if data.is_empty() && caller.identity.is_anonymous() && self.auth.enforced() {
            // Nothing is open to anonymous callers: say how to authenticate.
            return self.refuse("", "", &AuthError::Missing);
        }
        self.state.metrics().auth(AuthOutcome::Allowed);
        axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
    }

    /// Admits the request into the in-flight budget (or sheds it), then routes it; its place
    /// is kept until the answer's body ends.
    pub(super) async fn handle(
        &self,
        name: Option<String>,
        entity: Option<String>,
        upstream_path: &'static str,
        peer: SocketAddr,
        request: Request,
    ) -> Response {
        match self.budgets.admit() {
            Ok(slot) => {
                slot.hold_until_end_of(self.route(name, entity, upstream_path, peer, request).await)
            }
            Err(shed) => self.fail("", "", shed_error(shed)),
        }
    }

    async fn route(
        &self,
        name: Option<String>,
        entity: Option<String>,
        upstream_path: &'static str,
        peer: SocketAddr,
        request: Request,
    ) -> Response {
        let (mut parts, body) = request.into_parts();
        // Who is calling, before the body is read; may they call this endpoint, once it is
        // known (an OpenAI route names it in the body).
        let caller = match self.caller_of(&mut parts.headers).await {
            Ok(caller) => caller,
            Err(refusal) => return refusal,
        };
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(error) => return self.fail("", "", error.into()),
        };
        let name = match name.map_or_else(|| endpoint_from_body(body.bytes()), Ok) {
            Ok(name) => name,
            Err(error) => return self.fail("", "", error),
        };
        let table = self.state.table();
        let endpoint = match endpoint(&table, &name) {
            Ok(endpoint) => endpoint,
            Err(error) => return self.fail("", "", error),
        };
        let (namespace, endpoint_name) = (endpoint.namespace.as_str(), endpoint.name.as_str());
        if let Err(refusal) = self.authorize(&caller, namespace, endpoint_name).await {
            return refusal;
        }
        let Some(config) = endpoint.config.as_ref() else {
            return self.fail(
                namespace,
                endpoint_name,
                ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "serving endpoint {endpoint_name:?} has no ready config yet; it is \
                         still rolling out"
                    ),
                )
                .with_retry_after(Duration::from_secs(5)),
            );
        };
        let charge = match self
            .limiter
            .admit(
                namespace,
                endpoint_name,
                &endpoint.policies.rate_limits,
                &caller.identity,
            )
            .await
        {
            Ok(admission) => admission.map(|admission| Charge {
                limiter: self.limiter.clone(),
                admission,
            }),
            Err(error) => return self.fail(namespace, endpoint_name, error),
        };
        // Input guardrails: refuse, or go on with the personal data masked.
        let body = match &endpoint.policies.guardrails.input {
            None => body,
            Some(guardrails) => match guardrails.check(endpoint_name, body.bytes()) {
                Err(error) => {
                    self.state
                        .metrics()
                        .guardrail(namespace, endpoint_name, "input", "refused");
                    let request_id = request_id_of(&parts.headers);
                    if endpoint.policies.captured {
                        let refused = (&parts, body.bytes(), &error, upstream_path);
                        self.record_refusal(config, entity.as_deref(), refused, &request_id, peer);
                    }
                    let mut refusal = self.fail(namespace, endpoint_name, error);
                    refusal.headers_mut().insert(names::REQUEST_ID, request_id);
                    return refusal;
                }
                Ok(verdict) => {
                    if let Ok(value) = HeaderValue::from_str(&verdict.header()) {
                        parts.headers.insert(names::GUARDRAILS, value);
                    }
                    match verdict.body {
                        Some(masked) => {
                            self.state.metrics().guardrail(
                                namespace,
                                endpoint_name,
                                "input",
                                "masked",
                            );
                            body.with_bytes(Bytes::from(masked))
                        }
                        None => body,
                    }
                }
            },
        };
        // Personal data the caller never sees must not land in the inference table either.
        if endpoint
            .policies
            .guardrails
            .output
            .as_ref()
            .is_some_and(|checks| checks.pii != PiiBehavior::NONE)
        {
            parts
                .headers
                .insert(names::PII_IN_ANSWERS, HeaderValue::from_static("mask"));
        }
        // A repeated request may be answered from the endpoint's cache, with no model called
        // (and no tokens charged: none were spent).
        let mut filling = None;
        if let Some(policy) = endpoint.policies.cache {
            let cache = self.caches.of(namespace, endpoint_name);
            let key = cache::key(
                &policy,
                cache.endpoint(),
                upstream_path,
                entity.as_deref(),
                body.bytes(),
            );
            match key {
                Err(_) => cache.count(CacheOutcome::Bypass),
                Ok(key) => match cache.get(&key, policy.ttl) {
                    Some(hit) => {
                        cache.count(CacheOutcome::Hit);
                        let request_id = request_id_of(&parts.headers);
                        if endpoint.policies.captured {
                            let hit = (&parts, &body, &hit, upstream_path);
                            self.record_hit(config, hit, &request_id, peer);
                        }
                        return cached_answer(hit, request_id, config.version);
                    }
                    None => {
                        cache.count(CacheOutcome::Miss);
                        filling = Some((cache, key, policy));
                    }
                },
            }
        }
        // A token budget and a usage row need the answer's usage: a stream is made to report
        // it (the usage chunk is removed from what the client gets when it did not ask).
        let needs_usage = charge.is_some() || endpoint.policies.usage_tracked;
        let asked = match (needs_usage, upstream_path) {
            (true, "/v1/chat/completions" | "/v1/completions") => {
                usage::request_usage(body.bytes())
            }
            _ => None,
        };
        let strip_usage_chunk = asked.is_some();
        let body = match asked {
            Some(asked) => body.with_bytes(Bytes::from(asked)),
            None => body,
        };
        let mut metering = Some(Metering {
            charge,
            strip_usage_chunk,
        });
        let mut rng = fastrand::Rng::new();
        let pool = match entity {
            Some(ref entity) => match config.entities.iter().find(|e| &e.name == entity) {
                Some(pool) => pool,
                None => {
                    return self.fail(
                        namespace,
                        endpoint_name,
                        ApiError::new(
                            ErrorKind::NotFound,
                            format!(
                                "serving endpoint {endpoint_name:?} serves no entity named \
                                 {entity:?}"
                            ),
                        ),
                    );
                }
            },
            None => match pick_entity(config, &mut rng) {
                Some(pool) => {
                    self.mirror(config, &parts, &body, upstream_path, &mut rng);
                    pool
                }
                None => {
                    return self.fail(
                        namespace,
                        endpoint_name,
                        ApiError::new(
                            ErrorKind::Unavailable,
                            format!("serving endpoint {endpoint_name:?} routes no traffic"),
                        )
                        .with_retry_after(Duration::from_secs(5)),
                    );
                }
            },
        };
        // A request to one named entity never falls back.
        let fallback = endpoint.policies.fallback && entity.is_none();
        let mut tried = vec![
            config
                .entities
                .iter()
                .position(|p| Arc::ptr_eq(p, pool))
                .unwrap_or_default(),
        ];
        let mut pool = pool;
        let answer = loop {
            let outgoing = Outgoing {
                parts: &parts,
                body: body.clone(),
                upstream_path,
                peer,
                output: endpoint.policies.guardrails.output.as_ref(),
                recorded: endpoint.policies.captured || endpoint.policies.usage_tracked,
            };
            let answer = self.forward(pool, outgoing, &mut metering, &mut rng).await;
            let Some(reason) = fallback.then(|| fallback::reason(&answer)).flatten() else {
                break answer;
            };
            let Some((index, next)) = fallback::next(config, &tried) else {
                break answer;
            };
            pool.metrics.fallback(reason);
            tracing::info!(endpoint = %endpoint_name, from = %pool.name, to = %next.name, reason = reason.label(), "falling back to the next entity");
            tried.push(index);
            pool = next;
        };
        match answer {
            Ok(mut response) => {
                response
                    .headers_mut()
                    .insert(names::CONFIG_VERSION, HeaderValue::from(config.version));
                match filling {
                    Some((cache, key, policy)) => {
                        response.headers_mut().insert(
                            HeaderName::from_static(CACHE_HEADER),
                            HeaderValue::from_static("miss"),
                        );
                        if !response.status().is_success() || !cache::keepable(response.headers()) {
                            return response;
                        }
                        let (parts, body) = response.into_parts();
                        let entity = parts
                            .headers
                            .get(&names::SERVED_MODEL_NAME)
                            .cloned()
                            .unwrap_or_else(|| HeaderValue::from_static(""));
                        let body = Filling::new(
                            body,
                            cache,
                            key,
                            policy,
                            parts.status.as_u16(),
                            parts.headers.get(header::CONTENT_TYPE).cloned(),
                            entity,
                        );
                        Response::from_parts(parts, Body::new(body))
                    }
                    None => response,
                }
            }
            Err(error) => self.fail(namespace, endpoint_name, error),
        }
    }

    /// Reads the request body into memory within the body limits, its bytes reserved in the
    /// buffered-bytes budget before they are kept.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<BufferedBody, BodyError> {
        // A body larger than the whole budget could never fit: 413, not a 503 to retry forever.
        let limit = self
            .config
            .max_body_bytes
            .min(self.budgets.max_buffered_bytes());
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut reservation = self.budgets.reservation();
        let read = read_into(
            body,
            declared,
            limit,
            self.config.body_idle_timeout,
            &mut reservation,
        );
        let read = match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(read) => read,
            Err(_) => Err(BodyError::Deadline(self.config.body_timeout)),
        };
        if let Err(BodyError::Idle(_)) = read {
            self.budgets.metrics().idle_timeout(IdleBody::Request);
        }
        Ok(BufferedBody::new(read?, reservation))
    }

    /// Sends the request to a ready pod of `pool`, holding it first if the entity is waking.
    async fn forward(
        &self,
        pool: &Arc<EntityPool>,
        outgoing: Outgoing<'_>,
        metering: &mut Option<Metering>,
        rng: &mut fastrand::Rng,
    ) -> Result<Response, ApiError> {
        // OpenAI answers are always metered (tokens per entity); others only to charge a
        // token budget.
        let metered = outgoing.upstream_path != "/invocations"
            || metering.as_ref().is_some_and(|m| m.charge.is_some());
        pool.demand.arrived();
        if let Some(why) = pool.unsupported() {
            return Err(ApiError::new(ErrorKind::BadGateway, why));
        }
        if let Some(external) = pool.external() {
            return self
                .call_external(pool, &external, outgoing, metered, metering)
                .await;
        }
        let Outgoing {
            parts,
            body,
            upstream_path,
            peer,
            output,
            ..
        } = outgoing;
        let held = !pool.has_ready();
        if held {
            self.hold(pool).await?;
        }
        let request_id = request_id_of(&parts.headers);
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        // Built once: a pod that refuses the connection hands it back for the next one.
        let mut request = pod_request(
            upstream_path,
            parts,
            body.bytes().clone(),
            &request_id,
            Some(peer),
        );
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = String::new();
        while tried.len() < self.config.max_attempts {
            let backends = pool.backends();
            let Some(backend) = backend::pick(&backends, &tried, rng) else {
                break;
            };
            let mut guard = RequestGuard::start(backend, pool);
            match tokio::time::timeout_at(deadline, connections::send(backend, request)).await {
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "entity {:?} did not start answering within {:?}",
                            pool.name, self.config.request_timeout
                        ),
                    ));
                }
                Ok(Ok((response, lease))) => {
                    guard.lease = Some(lease);
                    backend.record_success();
                    if held {
                        pool.demand.held_answered();
                    }
                    // Only an answer that stands takes the metering: after a failed one it
                    // goes to the next entity with the request.
                    let meter = (metered && response.status().is_success())
                        .then(|| metering.take())
                        .flatten();
                    let answer = Answer {
                        response: response.map(Body::new),
                        guard,
                        request_id,
                        meter,
                        output,
                    };
                    return Ok(self.respond(pool, answer).await);
                }
                Ok(Err(Failure::Answer(error))) => {
                    return Err(ApiError::new(
                        ErrorKind::BadGateway,
                        format!(
                            "entity {:?} failed while answering: {}",
                            pool.name,
                            error_chain(&error)
                        ),
                    ));
                }
                Ok(Err(Failure::Connect {
                    request: unsent,
                    error,
                })) => {
                    request = *unsent;
                    last_error = error_chain(&error);
                    backend.record_failure();
                    tried.push(backend.addr);
                    pool.metrics.retries.inc();
                    tracing::debug!(backend = %backend.addr, error = %last_error, "connect failed; trying another pod");
                }
            }
        }
        Err(ApiError::new(
            ErrorKind::BadGateway,
            format!(
                "no pod of entity {:?} accepted the connection ({} tried): {last_error}",
                pool.name,
                tried.len()
            ),
        ))
    }

    /// Calls an external entity's provider with the key from its Secret, and answers in the
    /// OpenAI format whatever the provider speaks.
    async fn call_external(
        &self,
        pool: &Arc<EntityPool>,
        entity: &External,
        outgoing: Outgoing<'_>,
        metered: bool,
        metering: &mut Option<Metering>,
    ) -> Result<Response, ApiError> {
        let Outgoing {
            parts,
            body,
            upstream_path,
            peer,
            output,
            recorded,
        } = outgoing;
        let started = Instant::now();
        let request_id = request_id_of(&parts.headers);
        let guard = RequestGuard::external(pool);
        let answered = self
            .ask_provider(pool, entity, upstream_path, body.bytes())
            .await;
        let recorded = recorded.then(|| Recorded {
            parts: parts.clone(),
            upstream_path: upstream_path.to_string(),
            body: body.bytes().clone(),
            request_id: request_id.clone(),
            peer,
        });
        let response = match (answered, recorded) {
            (Ok(response), None) => response,
            (Ok(response), Some(request)) => RecordingBody::wrap(
                &self.recorders,
                pool,
                request,
                entity.api.label(),
                started,
                response,
            ),
            (Err(error), recorded) => {
                if let Some(request) = recorded {
                    // The caller gets this error: the table says so too.
                    let answer = serde_json::to_vec(&error.body()).unwrap_or_default();
                    let head = RecordHead {
                        request_len: 0,
                        origin: RecordOrigin::Provider(entity.api.label().to_string()),
                        status: error.kind.status().as_u16(),
                        content_type: Some(HeaderValue::from_static("application/json")),
                        duration_ms: u64::try_from(started.elapsed().as_millis()).ok(),
                        incomplete: false,
                    };
                    self.recorders.send(pool, &request, &answer, head);
                }
                return Err(error);
            }
        };
        let meter = (metered && response.status().is_success())
            .then(|| metering.take())
            .flatten();
        let answer = Answer {
            response,
            guard,
            request_id,
            meter,
            output,
        };
        Ok(self.respond(pool, answer).await)
    }

    /// Calls an external entity's provider with the key from its Secret; its answer (an error
    /// of the provider's included) in the OpenAI format, or why there is none.
    async fn ask_provider(
        &self,
        pool: &Arc<EntityPool>,
        entity: &External,
        upstream_path: &str,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let route = external::Route::of(upstream_path, entity.task);
        let prepared = external::prepare(entity, &pool.name, route, body)?;
        let key = match &entity.key {
            Some(reference) => Some(self.keys.get(&entity.namespace, reference).await.map_err(
                |mut error| {
                    error.message = format!("entity {:?}: {}", pool.name, error.message);
                    error
                },
            )?),
            None => None,
        };
        let mut headers = prepared.headers;
        if let Some(key) = &key {
            external::authorize(&entity.api, &mut headers, key)?;
        }
        let send = self
            .providers
            .post(&prepared.url)
            .headers(headers)
            .body(prepared.body)
            .send();
        let response = match tokio::time::timeout(self.config.request_timeout, send).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "entity {:?}: provider {} did not start answering within {:?}",
                        pool.name,
                        entity.api.label(),
                        self.config.request_timeout
                    ),
                ));
            }
            Ok(Err(error)) => {
                return Err(external::transport_error(
                    &pool.name,
                    &entity.api,
                    &error,
                    key.as_ref(),
                ));
            }
            Ok(Ok(response)) => response,
        };
        if matches!(response.status().as_u16(), 401 | 403)
            && let Some(reference) = &entity.key
        {
            // Perhaps rotated: the next call reads the Secret again.
            self.keys.forget(&entity.namespace, &reference.name);
        }
        Ok(external::answer(entity, &pool.name, &prepared.reply, response, key.as_ref()).await)
    }

    /// Holds the request until the entity has a ready pod, or refuses it (503 + Retry-After).
    async fn hold(&self, pool: &Arc<EntityPool>) -> Result<(), ApiError> {
        if !pool.scale_to_zero() {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("entity {:?} has no ready pod", pool.name),
            )
            .with_retry_after(Duration::from_secs(1)));
        }
        let policy = pool.hold_policy();
        let started = Instant::now();
        pool.metrics.held.inc();
        let result = pool
            .hold
            .wait(
                policy,
                || pool.has_ready(),
                |first| {
                    if first {
                        pool.demand.hold_started();
                        tracing::info!(endpoint = %pool.labels().endpoint, entity = %pool.name, "holding requests until a pod is ready");
                        self.state.wake.notify_waiters();
                    }
                },
            )
            .await;
        pool.metrics.held.dec();
        let waited = started.elapsed().as_secs_f64();
        match result {
            Ok(()) if pool.has_ready() => {
                pool.metrics.hold_ended(HoldOutcome::Released, waited);
                Ok(())
            }
            Ok(()) => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "entity {:?} left the routed config while the request was held",
                    pool.name
                ),
            )
            .with_retry_after(Duration::from_secs(1))),
            Err(refused) => {
                let outcome = match refused {
                    HoldRefused::TimedOut(_) => HoldOutcome::TimedOut,
                    HoldRefused::Full(_) => HoldOutcome::RefusedFull,
                };
                pool.metrics.hold_ended(outcome, waited);
                Err(ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "entity {:?} is scaled to zero and waking: {refused}",
                        pool.name
                    ),
                )
                .with_retry_after(
                    policy
                        .timeout
                        .min(Duration::from_secs(30))
                        .max(Duration::from_secs(1)),
                ))
            }
        }
    }

    async fn respond(&self, pool: &Arc<EntityPool>, answer: Answer<'_>) -> Response {
        let Answer {
            response,
            guard,
            request_id,
            meter,
            output,
        } = answer;
        let (mut parts, body) = response.into_parts();
        pool.metrics.response(parts.status.as_u16());
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(names::SERVED_MODEL_NAME, pool.served_name.clone());
        parts.headers.insert(names::REQUEST_ID, request_id);
        if parts.status.is_client_error() || parts.status.is_server_error() {
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !is_json {
                return upstream_error(pool, parts, body, guard).await;
            }
        }
        let idle = self.config.response_idle_timeout;
        let idle = (!idle.is_zero()).then(|| {
            IdleTimer::new(
                idle,
                self.budgets.metrics().idle_timeouts(IdleBody::Response),
            )
        });
        let meter = meter.filter(|_| parts.status.is_success());
        let is_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let labels = pool.labels();
        let stream_guard = match output {
            Some(checks) if is_stream => {
                // Held-back and masked text changes the length.
                parts.headers.remove(header::CONTENT_LENGTH);
                Some(OutputStream {
                    guard: StreamGuard::new(checks.clone(), &labels.endpoint),
                    metrics: self.state.metrics().clone(),
                    counted: false,
                })
            }
            Some(checks) if is_textual(&parts.headers) => {
                return self.respond_checked(pool, parts, body, guard, checks).await;
            }
            _ => None,
        };
        let filter = meter
            .as_ref()
            .is_some_and(|m| m.strip_usage_chunk && is_stream)
            .then(UsageChunkFilter::default);
        if filter.is_some() {
            // The body loses the usage chunk: its length is not the pod's any more.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let meter = meter.and_then(|m| TokenMeter::of(&parts.headers, &pool.metrics, m.charge));
        Response::from_parts(
            parts,
            Body::new(GuardedBody {
                inner: body,
                guard,
                idle,
                meter,
                filter,
                output: stream_guard,
                ended: false,
            }),
        )
    }

    /// Reads a whole (JSON or text) answer and sends what the output guardrails let through:
    /// the answer, the answer masked, or a 400 naming why it was withheld. An answer too
    /// large to check is withheld too (502), never sent unchecked.
    async fn respond_checked(
        &self,
        pool: &Arc<EntityPool>,
        mut parts: hyper::http::response::Parts,
        body: Body,
        mut guard: RequestGuard,
        checks: &Arc<Checks>,
    ) -> Response {
        let labels = pool.labels();
        let (namespace, endpoint) = (labels.namespace.as_str(), labels.endpoint.as_str());
        let limit = self.config.max_body_bytes.max(MIN_CHECKED_ANSWER_BYTES);
        let collected = Limited::new(body, limit).collect().await;
        if collected.is_ok() {
            guard.answer_read();
        }
        drop(guard);
        let bytes = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return self.fail(
                    namespace,
                    endpoint,
                    ApiError::new(
                        ErrorKind::BadGateway,
                        format!(
                            "entity {:?}: the answer could not be read for the output guardrail \
                             (at most {limit} bytes are checked): {error}",
                            pool.name
                        ),
                    ),
                );
            }
        };
        let metrics = self.state.metrics();
        let bytes = match checks.check_answer(endpoint, &bytes) {
            Ok(None) => bytes,
            Ok(Some(masked)) => {
                metrics.guardrail(namespace, endpoint, "output", "masked");
                Bytes::from(masked)
            }
            Err(error) => {
                metrics.guardrail(namespace, endpoint, "output", "refused");
                return self.fail(namespace, endpoint, error);
            }
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(bytes))
    }

    /// Sends a cache hit to the capture sidecar of a ready pod of the entity that first
    /// answered, so the exchange becomes a row marked as a hit ([`sluice_contract::record`]).
    fn record_hit(
        &self,
        config: &LiveConfig,
        (parts, body, hit, upstream_path): (&Parts, &BufferedBody, &cache::Entry, &str),
        request_id: &HeaderValue,
        peer: SocketAddr,
    ) {
        let Some(pool) = config.entities.iter().find(|p| p.served_name == hit.entity) else {
            return;
        };
        let request = Recorded {
            parts: parts.clone(),
            upstream_path: upstream_path.to_string(),
            body: body.bytes().clone(),
            request_id: request_id.clone(),
            peer,
        };
        let head = RecordHead {
            request_len: 0,
            origin: RecordOrigin::Cache,
            status: hit.status,
            content_type: hit.content_type.clone(),
            duration_ms: None,
            incomplete: false,
        };
        self.recorders.send(pool, &request, &hit.body, head);
    }

    /// Sends a request the input guardrail refused to the capture sidecar of a ready pod of
    /// the entity it would have gone to, with its personal data masked, so the refusal is a
    /// row of the inference table too ([`RecordOrigin::Guardrail`]).
    fn record_refusal(
        &self,
        config: &LiveConfig,
        entity: Option<&str>,
        (parts, body, error, upstream_path): (&Parts, &Bytes, &ApiError, &str),
        request_id: &HeaderValue,
        peer: SocketAddr,
    ) {
        let pool = match entity {
            Some(entity) => config.entities.iter().find(|p| p.name == entity),
            None => pick_entity(config, &mut fastrand::Rng::new()),
        };
        let Some(pool) = pool else {
            return;
        };
        let request = Recorded {
            parts: parts.clone(),
            upstream_path: upstream_path.to_string(),
            body: guardrails::masked(body).map_or_else(|| body.clone(), Bytes::from),
            request_id: request_id.clone(),
            peer,
        };
        let head = RecordHead {
            request_len: 0,
            origin: RecordOrigin::Guardrail,
            status: error.kind.status().as_u16(),
            content_type: Some(HeaderValue::from_static("application/json")),
            duration_ms: None,
            incomplete: false,
        };
        let answer = serde_json::to_vec(&error.body()).unwrap_or_default();
        self.recorders.send(pool, &request, &answer, head);
    }

    /// Sends a shadow copy to an external entity's provider; its answer is counted and drained
    /// like a pod's.
    fn mirror_external(
        &self,
        pool: &Arc<EntityPool>,
        entity: Arc<External>,
        body: &BufferedBody,
        upstream_path: &str,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let route = external::Route::of(upstream_path, entity.task);
        let Ok(prepared) = external::prepare(&entity, &pool.name, route, body.bytes()) else {
            pool.metrics.shadow(ShadowOutcome::Error);
            return;
        };
        let (providers, keys, pool) = (self.providers.clone(), self.keys.clone(), pool.clone());
        let (timeout, body) = (self.config.request_timeout, body.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _body = body;
            let answered = tokio::time::timeout(timeout, async {
                let mut headers = prepared.headers;
                if let Some(reference) = &entity.key {
                    let key = keys.get(&entity.namespace, reference).await.ok()?;
                    external::authorize(&entity.api, &mut headers, &key).ok()?;
                }
                let response = providers
                    .post(&prepared.url)
                    .headers(headers)
                    .body(prepared.body)
                    .send()
                    .await
                    .ok()?;
                let ok = response.status().is_success();
                response.bytes().await.ok()?;
                Some(ok)
            })
            .await;
            let outcome = match answered {
                Ok(Some(true)) => ShadowOutcome::Ok,
                _ => ShadowOutcome::Error,
            };
            pool.metrics.shadow(outcome);
        });
    }

    /// Sends a copy of the request to each shadow entity whose percentage comes up; the
    /// answers are counted and drained, never collected or waited for. The copy keeps the body
    /// (and its bytes in the budget) until the shadow request is done.
    fn mirror(
        &self,
        config: &LiveConfig,
        parts: &Parts,
        body: &BufferedBody,
        upstream_path: &'static str,
        rng: &mut fastrand::Rng,
    ) {
        for (pool, percent) in &config.shadows {
            if rng.u32(..100) >= *percent {
                continue;
            }
            let Ok(permit) = self.shadow_permits.clone().try_acquire_owned() else {
                pool.metrics.shadow(ShadowOutcome::Shed);
                continue;
            };
            if let Some(entity) = pool.external() {
                self.mirror_external(pool, entity, body, upstream_path, permit);
                continue;
            }
            let backends = pool.backends();
            let Some(backend) = backend::pick(&backends, &[], rng).cloned() else {
                pool.metrics.shadow(ShadowOutcome::Unavailable);
                continue;
            };
            let mut request = upstream_request(
                backend.addr,
                upstream_path,
                parts,
                body.bytes().clone(),
                &request_id_of(&parts.headers),
                None,
            );
            request
                .headers_mut()
                .insert(names::SHADOW, HeaderValue::from_static("true"));
            let client = self.client.clone();
            let pool = pool.clone();
            let timeout = self.config.request_timeout;
            let body = body.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _body = body;
                let _in_flight = backend.start();
                let outcome = match tokio::time::timeout(timeout, async {
                    let response = client.request(request).await.ok()?;
                    let ok = response.status().is_success();
                    drain(response.into_body()).await.ok()?;
                    Some(ok)
                })
                .await
                {
                    Ok(Some(true)) => ShadowOutcome::Ok,
                    _ => ShadowOutcome::Error,
                };
                pool.metrics.shadow(outcome);
            });
        }
    }
}

/// The answer to a request the cache holds: its body, status, content type and entity, marked
/// `x-sluice-cache: hit`.
fn cached_answer(hit: cache::Entry, request_id: HeaderValue, version: i64) -> Response {
    let mut response = Response::new(Body::from(hit.body));
    *response.status_mut() =
        axum::http::StatusCode::from_u16(hit.status).unwrap_or(axum::http::StatusCode::OK);
    let headers = response.headers_mut();
    if let Some(kind) = hit.content_type {
        headers.insert(header::CONTENT_TYPE, kind);
    }
    headers.insert(names::SERVED_MODEL_NAME, hit.entity);
    headers.insert(names::REQUEST_ID, request_id);
    headers.insert(names::CONFIG_VERSION, HeaderValue::from(version));
    headers.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static("hit"),
    );
    response
}

/// What goes to the pod: the client's request head and body, the pod's path, and the peer.
struct Outgoing<'a> {
    parts: &'a Parts,
    body: BufferedBody,
    upstream_path: &'static str,
    peer: SocketAddr,
    /// The endpoint's output guardrails, applied to the answer.
    output: Option<&'a Arc<Checks>>,
    /// The endpoint records its exchanges (capture or usage tracking): an external
    /// provider's answer is sent to the entity's recorder.
    recorded: bool,
}

/// Picks a live entity by weight, among entities that can take the request now (a ready pod,
/// or a hold queue); when none can, by the plain weights (the request then waits or fails with
/// the entity's own reason).
fn pick_entity<'a>(config: &'a LiveConfig, rng: &mut fastrand::Rng) -> Option<&'a Arc<EntityPool>> {
    let usable = |i: usize| {
        let pool = &config.entities[i];
        if pool.has_ready() || pool.scale_to_zero() {
            config.weights[i]
        } else {
            0
        }
    };
    let index = backend::pick_weighted_by(config.entities.len(), usable, rng)
        .or_else(|| backend::pick_weighted(&config.weights, rng))?;
    config.entities.get(index)
}

/// Reads the endpoint name from an OpenAI-style body's `model` field.
fn endpoint_from_body(body: &Bytes) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    struct Model {
        model: Option<serde_json::Value>,
    }
    let parsed: Model = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    match parsed.model {
        Some(serde_json::Value::String(name)) if !name.is_empty() => Ok(name),
        Some(other) => Err(ApiError::invalid(format!(
            "`model` must be the serving endpoint's name as a string, got {other}"
        ))),
        None => Err(ApiError::bad_request(
            "the request body has no `model`; set it to the serving endpoint's name",
        )),
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Past `--max-body-bytes` (or the whole buffered-bytes budget): 413.
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// It does not fit in what is left of the buffered-bytes budget: 503.
    #[error(transparent)]
    Shed(#[from] Shed),
    /// Nothing arrived for `--body-idle-timeout`: 408.
    #[error("the request body sent nothing for {0:?} (--body-idle-timeout)")]
    Idle(Duration),
    /// Not all of it arrived within `--body-timeout`: 408.
    #[error("the request body did not arrive within {0:?} (--body-timeout)")]
    Deadline(Duration),
    /// The connection failed or the body was malformed: 400.
    #[error("could not read the request body: {0}")]
    Read(#[source] axum::Error),
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        let kind = match &error {
            BodyError::TooLarge(_) => ErrorKind::PayloadTooLarge,
            BodyError::Shed(shed) => return shed_error(*shed),
            BodyError::Idle(_) | BodyError::Deadline(_) => ErrorKind::RequestTimeout,
            BodyError::Read(_) => ErrorKind::BadRequest,
        };
        ApiError::new(kind, error.to_string())
    }
}

/// 503 + `Retry-After` for a request shed by a global budget.
fn shed_error(shed: Shed) -> ApiError {
    ApiError::new(ErrorKind::Unavailable, shed.to_string()).with_retry_after(SHED_RETRY_AFTER)
}

/// Reads `body` into memory, at most `limit` bytes, growing `reservation` before any byte is
/// kept: by the declared length at once (so a body that cannot fit is refused before it is
/// read), else frame by frame. Waits at most `idle` for each frame (zero: no limit).
///
/// The budget counts body bytes, not the allocator's slack: a body of undeclared length may
/// take up to as much again while its buffer grows.
async fn read_into(
    mut body: Body,
    declared: Option<usize>,
    limit: usize,
    idle: Duration,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    if declared.is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let expected = declared.unwrap_or(0);
    reservation.grow_to(expected)?;
    let mut buffer = Vec::with_capacity(expected);
    while let Some(frame) = next_frame(&mut body, idle).await? {
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = buffer.len() + data.len();
        if total > limit {
            return Err(BodyError::TooLarge(limit));
        }
        reservation.grow_to(total)?;
        buffer.extend_from_slice(&data);
    }
    Ok(Bytes::from(buffer))
}

/// The next frame of a request body, waiting at most `idle` for it (zero: no limit).
async fn next_frame(body: &mut Body, idle: Duration) -> Result<Option<Frame<Bytes>>, BodyError> {
    let frame = if idle.is_zero() {
        body.frame().await
    } else {
        tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| BodyError::Idle(idle))?
    };
    frame.transpose().map_err(BodyError::Read)
}

/// Reads a body to its end, keeping nothing.
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

/// The client's address as an `x-forwarded-for` value; IPv4 written by hand (this runs per
/// request, and `Display` for addresses is slow).
fn forwarded_for(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        for (place, divisor) in [(2, 100), (1, 10), (0, 1)] {
            if octet >= divisor || place == 0 {
                text[len] = b'0' + (octet / divisor) % 10;
                len += 1;
            }
        }
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// The request a pod gets: the client's method, headers (hop-by-hop ones dropped) and body, the
/// pod's `path` with the client's query, the request id and the client's address in
/// `x-forwarded-for`. In origin form, the URI not formatted when there is no query:
/// [`connections::send`] sets `Host`.
fn pod_request(
    path: &'static str,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
    peer: Option<SocketAddr>,
) -> hyper::Request<Full<Bytes>> {
    let uri = match parts.uri.query() {
        None => Uri::from_static(path),
        Some(query) => format!("{path}?{query}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static(path)),
    };
    request_to_pod(uri, parts, body, request_id, peer)
}

/// [`pod_request`] in absolute form, for the pooled client that shadow copies and records use.
pub(super) fn upstream_request(
    addr: SocketAddr,
    path: &str,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
    peer: Option<SocketAddr>,
) -> hyper::Request<Full<Bytes>> {
    let uri = match parts.uri.query() {
        Some(query) => format!("http://{addr}{path}?{query}"),
        None => format!("http://{addr}{path}"),
    };
    request_to_pod(
        uri.parse().unwrap_or_default(),
        parts,
        body,
        request_id,
        peer,
    )
}

fn request_to_pod(
    uri: Uri,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
    peer: Option<SocketAddr>,
) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.clone_from(&parts.headers);
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(names::REQUEST_ID, request_id.clone());
    if let Some(value) = peer.and_then(|peer| forwarded_for(peer.ip())) {
        headers.append(names::FORWARDED_FOR, value);
    }
    request
}

/// Turns a non-JSON error from a pod (an engine's plain-text 500, a proxy's HTML 502) into the
/// error body, keeping the status.
async fn upstream_error(
    pool: &Arc<EntityPool>,
    parts: axum::http::response::Parts,
    body: Body,
    mut guard: RequestGuard,
) -> Response {
    const KEEP: usize = 1024;
    let status = parts.status;
    let text = match tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(body, 64 * 1024).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => {
            guard.answer_read();
            let bytes = collected.to_bytes();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(KEEP)]).into_owned();
            text.trim().to_string()
        }
        _ => "(body unreadable)".to_string(),
    };
    drop(guard);
    let kind = if status.is_server_error() {
        ErrorKind::BadGateway
    } else {
        ErrorKind::BadRequest
    };
    let mut response = ApiError::new(
        kind,
        format!("entity {:?} answered {status}: {text}", pool.name),
    )
    .into_response();
    *response.status_mut() = status;
    for name in [SERVED_MODEL_NAME, REQUEST_ID] {
        if let Some(value) = parts.headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Accounts one proxied request: in flight on its backend and entity until the response body
/// ends (or the client goes away), then its duration.
struct RequestGuard {
    /// The connection the pod answers on, back to its pod once the answer was read whole.
    lease: Option<Lease>,
    /// In flight on a pod; `None` for an external entity's provider.
    _in_flight: Option<InFlight>,
    pool: Arc<EntityPool>,
    started: Instant,
}

impl RequestGuard {
    fn start(backend: &Arc<Backend>, pool: &Arc<EntityPool>) -> Self {
        pool.demand.started();
        Self {
            lease: None,
            _in_flight: Some(backend.start()),
            pool: pool.clone(),
            started: Instant::now(),
        }
    }

    /// A request to an external entity's provider.
    fn external(pool: &Arc<EntityPool>) -> Self {
        pool.demand.started();
        Self {
            lease: None,
            _in_flight: None,
            pool: pool.clone(),
            started: Instant::now(),
        }
    }
}

impl RequestGuard {
    /// The pod's answer was read to its end: its connection may carry another request.
    fn answer_read(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.finished();
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.pool.demand.finished();
        self.pool
            .metrics
            .latency
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// An answer of a pod, as `forward` hands it to `respond`.
struct Answer<'a> {
    response: hyper::Response<Body>,
    guard: RequestGuard,
    request_id: HeaderValue,
    meter: Option<Metering>,
    output: Option<&'a Arc<Checks>>,
}

/// Most bytes of an answer read whole for the output guardrails, at least (a larger
/// `--max-body-bytes` raises it).
const MIN_CHECKED_ANSWER_BYTES: usize = 16 << 20;

/// The request's id: the one it came with, else a new one.
fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&names::REQUEST_ID)
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// Whether an answer is read whole by the output guardrails: JSON or text.
fn is_textual(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/json") || v.contains("+json") || v.starts_with("text/")
        })
}

/// A streamed answer's output guardrail, and where its outcome is counted.
struct OutputStream {
    guard: StreamGuard,
    metrics: GatewayMetrics,
    counted: bool,
}

impl OutputStream {
    /// Counts what the guard did, once, when the stream ends.
    fn count(&mut self, labels: &EntityLabels) {
        if std::mem::replace(&mut self.counted, true) {
            return;
        }
        let action = match self.guard.outcome() {
            Outcome::Passed => return,
            Outcome::Masked => "masked",
            Outcome::Refused => "refused",
        };
        self.metrics
            .guardrail(&labels.namespace, &labels.endpoint, "output", action);
    }
}

/// The pod's response body, streamed through, holding the request's accounting until it ends,
/// and cut off when the pod sends nothing for its idle timeout.
struct GuardedBody {
    inner: Body,
    guard: RequestGuard,
    /// `None` when there is no idle timeout, or once it fired.
    idle: Option<IdleTimer>,
    /// Reads the answer's token counts, when it is metered.
    meter: Option<TokenMeter>,
    /// Removes the usage chunk the gateway asked for, when the client did not.
    filter: Option<UsageChunkFilter>,
    /// The output guardrails of a streamed answer.
    output: Option<OutputStream>,
    /// The guardrails withheld the rest of the answer: the body has ended.
    ended: bool,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        while let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(idle) = &mut this.idle {
                idle.frame_arrived();
            }
            let frame = match frame {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => {
                    this.guard.answer_read();
                    let mut rest = this
                        .filter
                        .take()
                        .map(UsageChunkFilter::finish)
                        .unwrap_or_default();
                    if let Some(output) = &mut this.output {
                        let mut checked = output.guard.push(&rest);
                        checked.extend(output.guard.finish());
                        output.count(this.guard.pool.labels());
                        rest = checked;
                    }
                    this.ended = true;
                    return Poll::Ready(
                        (!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest)))),
                    );
                }
            };
            if this.inner.is_end_stream() {
                // hyper may not ask for the end once the length is reached.
                this.guard.answer_read();
            }
            let Some(data) = frame.data_ref() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            if let Some(meter) = &mut this.meter {
                meter.feed(data);
            }
            if this.filter.is_none() && this.output.is_none() {
                return Poll::Ready(Some(Ok(frame)));
            }
            let mut passed = match &mut this.filter {
                Some(filter) => filter.push(data),
                None => data.to_vec(),
            };
            if let Some(output) = &mut this.output {
                passed = output.guard.push(&passed);
                if output.guard.outcome() == Outcome::Refused {
                    // The error event is the last thing the caller gets.
                    output.count(this.guard.pool.labels());
                    this.ended = true;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(passed)))));
                }
            }
            if !passed.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(passed)))));
            }
            // Nothing whole to pass on yet: read on.
        }
        let Some(idle) = &mut this.idle else {
            return Poll::Pending;
        };
        std::task::ready!(idle.poll_expired(cx));
        let error = ResponseIdle {
            entity: this.guard.pool.name.clone(),
            timeout: idle.timeout,
        };
        this.idle = None;
        tracing::warn!(endpoint = %this.guard.pool.labels().endpoint, %error, "cutting off a stalled answer");
        Poll::Ready(Some(Err(error.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.filter.is_none() && self.output.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.filter.is_some() || self.output.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// A pod's answer sent nothing for `--response-idle-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("entity {entity:?} sent nothing for {timeout:?} of its answer (--response-idle-timeout)")]
struct ResponseIdle {
    entity: String,
    timeout: Duration,
}

/// Fires once the gateway has waited `timeout` for the next frame of a body. Only time spent
/// waiting on the pod counts, never time the client took to read (the body is not polled
/// then). The timer is re-armed lazily, when it fires early, so a frame costs a clock read
/// rather than a timer update.
struct IdleTimer {
    timeout: Duration,
    /// When the current wait for a frame began; `None` while frames flow.
    waiting_since: Option<tokio::time::Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Counted when it fires.
    fired: Counter,
}

impl IdleTimer {
    fn new(timeout: Duration, fired: Counter) -> Self {
        Self {
            timeout,
            waiting_since: None,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            fired,
        }
    }

    fn frame_arrived(&mut self) {
        self.waiting_since = None;
    }

    /// Called when the body has no frame ready: Ready (and counted) once the wait reached the
    /// timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let due = since + self.timeout;
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if due <= tokio::time::Instant::now() {
                self.fired.inc();
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

async fn endpoint_invocations(
    AxumState(proxy): AxumState<Shared>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy
        .handle(Some(name), None, "/invocations", peer, request)
        .await
}

/// Human feedback on an earlier request of the endpoint ([`feedback`]).
async fn endpoint_feedback(
    AxumState(proxy): AxumState<Shared>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy.feedback(name, peer, request).await
}

/// MLflow AI Gateway's route: the endpoint its MLflow name maps to
/// ([`sluice_contract::mlflow::endpoint_name`]).
async fn mlflow_invocations(
    AxumState(proxy): AxumState<Shared>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let name = sluice_contract::mlflow::endpoint_name(&name).unwrap_or(name);
    proxy
        .handle(Some(name), None, "/invocations", peer, request)
        .await
}

async fn entity_invocations(
    AxumState(proxy): AxumState<Shared>,
    Path((name, entity)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy
        .handle(Some(name), Some(entity), "/invocations", peer, request)
        .await
}

async fn chat(
    AxumState(proxy): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy
        .handle(None, None, "/v1/chat/completions", peer, request)
        .await
}

async fn completions(
    AxumState(proxy): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy
        .handle(None, None, "/v1/completions", peer, request)
        .await
}

async fn embeddings(
    AxumState(proxy): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    proxy
        .handle(None, None, "/v1/embeddings", peer, request)
        .await
}

const ROUTES: &str = "POST /serving-endpoints/{name}/invocations, \
     /serving-endpoints/{name}/served-models/{entity}/invocations, \
     /serving-endpoints/v1/chat/completions, /serving-endpoints/v1/completions, \
     /serving-endpoints/v1/embeddings, GET /serving-endpoints/v1/models; in a cluster, the \
     management API under /api/2.0/serving-endpoints";

async fn models(AxumState(proxy): AxumState<Shared>, request: Request) -> Response {
    proxy.list_models(request.headers()).await
}

async fn unknown_route(AxumState(proxy): AxumState<Shared>, request: Request) -> Response {
    proxy.fail(
        "",
        "",
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no route {} {}; routes: {ROUTES}",
                request.method(),
                request.uri().path()
            ),
        ),
    )
}

async fn wrong_method(AxumState(proxy): AxumState<Shared>, request: Request) -> Response {
    let mut response = proxy.fail(
        "",
        "",
        ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{} is not allowed on {}; use POST",
                request.method(),
                request.uri().path()
            ),
        ),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use prometheus_client::registry::Registry;

    use super::super::metrics::GatewayMetrics;
    use super::*;

    fn budgets(max_buffered_bytes: usize) -> Arc<Budgets> {
        let metrics = GatewayMetrics::register(&mut Registry::default());
        Arc::new(Budgets::new(10, max_buffered_bytes, metrics.load().clone()))
    }

    /// A body of `chunks`, then `stall` (never ends) or the end.
    fn chunked(chunks: &[&'static [u8]], stall: bool) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|chunk| Ok(Bytes::from_static(chunk)))
            .collect();
        let stream = futures::stream::iter(chunks);
        if stall {
            Body::from_stream(stream.chain(futures::stream::pending()))
        } else {
            Body::from_stream(stream)
        }
    }

    #[tokio::test]
    async fn body_bytes_are_reserved_as_they_arrive_and_a_body_that_does_not_fit_is_shed() {
        let budgets = budgets(100);
        let mut other = budgets.reservation();
        other.grow_to(60).expect("fits");
        let mut reservation = budgets.reservation();
        let read = read_into(
            chunked(&[&[1; 30], &[2; 30]], false),
            None,
            1000,
            Duration::ZERO,
            &mut reservation,
        )
        .await;
        assert!(
            matches!(
                read,
                Err(BodyError::Shed(Shed::BufferedBytes { wanted: 30, .. }))
            ),
            "{read:?}"
        );
        assert_eq!(
            budgets.metrics().buffered_bytes.get(),
            90,
            "the first chunk fit"
        );
        drop(reservation);
        drop(other);
        assert_eq!(budgets.metrics().buffered_bytes.get(), 0);
        // With room, the body is read whole and holds exactly its length.
        let mut reservation = budgets.reservation();
        let bytes = read_into(
            chunked(&[b"ab", b"cd"], false),
            None,
            1000,
            Duration::ZERO,
            &mut reservation,
        )
        .await
        .expect("read");
        let body = BufferedBody::new(bytes, reservation);
        assert_eq!(&body.bytes()[..], b"abcd");
        assert_eq!(budgets.metrics().buffered_bytes.get(), 4);
        drop(body);
        assert_eq!(budgets.metrics().buffered_bytes.get(), 0);
    }

    #[tokio::test]
    async fn a_declared_length_is_reserved_before_reading_and_limits_hold() {
        let budgets = budgets(100);
        let mut reservation = budgets.reservation();
        let read = read_into(
            chunked(&[], true),
            Some(101),
            100,
            Duration::ZERO,
            &mut reservation,
        )
        .await;
        assert!(matches!(read, Err(BodyError::TooLarge(100))), "{read:?}");
        let mut first = budgets.reservation();
        first.grow_to(50).expect("fits");
        // Refused at once although the body never sends a byte.
        let read = read_into(
            chunked(&[], true),
            Some(60),
            100,
            Duration::ZERO,
            &mut reservation,
        )
        .await;
        assert!(matches!(read, Err(BodyError::Shed(_))), "{read:?}");
        // An undeclared body past the limit is cut as it grows.
        let read = read_into(
            chunked(&[&[0; 40], &[0; 40]], false),
            None,
            50,
            Duration::ZERO,
            &mut reservation,
        )
        .await;
        assert!(matches!(read, Err(BodyError::TooLarge(50))), "{read:?}");
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_cut_after_the_idle_timeout() {
        let budgets = budgets(100);
        let mut reservation = budgets.reservation();
        let read = read_into(
            chunked(&[b"{"], true),
            None,
            100,
            Duration::from_millis(50),
            &mut reservation,
        )
        .await;
        assert!(matches!(read, Err(BodyError::Idle(_))), "{read:?}");
        let error = ApiError::from(read.expect_err("idle"));
        assert_eq!(error.kind, ErrorKind::RequestTimeout);
        assert!(
            error.message.contains("--body-idle-timeout"),
            "{}",
            error.message
        );
        drop(reservation);
        assert_eq!(budgets.metrics().buffered_bytes.get(), 0);
    }

    #[test]
    fn a_shed_request_gets_503_with_retry_after_naming_the_budget() {
        let error = ApiError::from(BodyError::Shed(Shed::BufferedBytes {
            limit: 100,
            wanted: 30,
        }));
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert_eq!(error.retry_after, Some(SHED_RETRY_AFTER));
        assert!(
            error.message.contains("--max-buffered-bytes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn the_openai_routes_read_the_endpoint_from_model() {
        assert_eq!(
            endpoint_from_body(&Bytes::from_static(br#"{"model":"chat","messages":[]}"#))
                .expect("name"),
            "chat"
        );
        let missing =
            endpoint_from_body(&Bytes::from_static(br#"{"messages":[]}"#)).expect_err("no model");
        assert_eq!(missing.kind, ErrorKind::BadRequest);
        assert!(
            missing.message.contains("no `model`"),
            "{}",
            missing.message
        );
        let malformed = endpoint_from_body(&Bytes::from_static(b"{nope")).expect_err("bad json");
        assert!(
            malformed.message.contains("not valid JSON"),
            "{}",
            malformed.message
        );
        let typed = endpoint_from_body(&Bytes::from_static(br#"{"model":3}"#)).expect_err("type");
        assert!(typed.message.contains("got 3"), "{}", typed.message);
    }

    #[test]
    fn forwarded_addresses_are_written_as_display_would() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "fe80::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            assert_eq!(forwarded_for(ip).expect("value"), ip.to_string().as_str());
        }
    }

    #[test]
    fn requests_to_pods_drop_hop_by_hop_headers_and_carry_ids() {
        let (mut parts, ()) = axum::http::Request::builder()
            .method("POST")
            .uri("/serving-endpoints/x/invocations?a=1")
            .header("connection", "keep-alive")
            .header("host", "gateway")
            .header("authorization", "Bearer t")
            .body(())
            .expect("request")
            .into_parts();
        parts
            .headers
            .insert("te", HeaderValue::from_static("trailers"));
        let request = upstream_request(
            "127.0.0.5:8080".parse().expect("addr"),
            "/invocations",
            &parts,
            Bytes::from_static(b"{}"),
            &HeaderValue::from_static("abc"),
            Some("127.0.0.9:5555".parse().expect("addr")),
        );
        assert_eq!(request.uri(), "http://127.0.0.5:8080/invocations?a=1");
        let headers = request.headers();
        assert!(headers.get("connection").is_none());
        assert!(headers.get("te").is_none());
        assert!(headers.get("host").is_none());
        assert_eq!(headers["authorization"], "Bearer t");
        assert_eq!(headers[REQUEST_ID], "abc");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.9");
        // What the gateway's own connections send: origin form (they set Host).
        let direct = pod_request(
            "/invocations",
            &parts,
            Bytes::new(),
            &HeaderValue::from_static("abc"),
            None,
        );
        assert_eq!(direct.uri(), "/invocations?a=1");
        assert!(direct.headers().get("x-forwarded-for").is_none());
    }
}
