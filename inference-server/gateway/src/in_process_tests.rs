//! The proxy tested in-process: its router called with `tower::ServiceExt::oneshot`, real HTTP
//! upstreams on loopback ports, no gateway process. The end-to-end tests
//! (`inference-server/tests/gateway/`, `tests/tests/gateway_cluster.rs`) cover the same paths
//! through a real binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::keys::{self, KeyFile};
use crate::auth::{Auth, AuthSettings, KeySource};
use crate::metrics::{AuthOutcome, FallbackReason, GatewayMetrics};
use crate::proxy::{Proxy, ProxyConfig};
use crate::ratelimit::RateLimiter;
use crate::routing::Policies;
use crate::routing::{ConfigSpec, EndpointSpec, EntitySpec, HoldPolicy};
use crate::state::State;
use sluice_crds::{RateLimit, RateLimitKey, RenewalPeriod};

/// A model server on a free loopback port that answers `/invocations` with its name and the
/// headers it received.
async fn upstream(name: &'static str) -> SocketAddr {
    let app = axum::Router::new().route(
        "/invocations",
        axum::routing::post(move |headers: HeaderMap| async move {
            let received: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                .collect();
            axum::Json(json!({
                "predictions": [name],
                "headers": received,
                "usage": {"prompt_tokens": 3, "completion_tokens": 4},
            }))
        }),
    );
    serve(app).await
}

/// A model server on a free loopback port that answers every `/invocations` with `status` and a
/// plain-text body, as a failing engine does.
async fn failing(status: u16) -> SocketAddr {
    let app = axum::Router::new().route(
        "/invocations",
        axum::routing::post(move || async move {
            (
                StatusCode::from_u16(status).expect("status"),
                "engine exploded",
            )
        }),
    );
    serve(app).await
}

/// Serves `app` on a free loopback port.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn entity(name: &str, backends: Vec<SocketAddr>, hold: Option<HoldPolicy>) -> EntitySpec {
    EntitySpec {
        name: name.into(),
        scale_to_zero: hold.is_some(),
        hold: hold.unwrap_or(HoldPolicy {
            max_held: 100,
            timeout: Duration::from_secs(120),
        }),
        backends,
        warming: Vec::new(),
        external: None,
        unsupported: None,
    }
}

fn proxy(entities: Vec<EntitySpec>, routes: Vec<(String, u32)>) -> axum::Router {
    guarded(entities, routes, Auth::open()).0
}

/// The proxy checking callers with `auth`, and its metrics.
fn guarded(
    entities: Vec<EntitySpec>,
    routes: Vec<(String, u32)>,
    auth: Auth,
) -> (axum::Router, GatewayMetrics) {
    limited(entities, routes, auth, Vec::new())
}

/// The proxy checking callers with `auth` and holding the endpoint to `rate_limits`, and its
/// metrics.
fn limited(
    entities: Vec<EntitySpec>,
    routes: Vec<(String, u32)>,
    auth: Auth,
    rate_limits: Vec<RateLimit>,
) -> (axum::Router, GatewayMetrics) {
    governed(
        entities,
        routes,
        auth,
        Policies {
            rate_limits,
            ..Policies::default()
        },
    )
}

/// The proxy checking callers with `auth` and applying `policies` (`spec.aiGateway`), and its
/// metrics.
fn governed(
    entities: Vec<EntitySpec>,
    routes: Vec<(String, u32)>,
    auth: Auth,
    policies: Policies,
) -> (axum::Router, GatewayMetrics) {
    let state = Arc::new(State::new(GatewayMetrics::register(
        &mut Registry::default(),
    )));
    state.apply(&[EndpointSpec {
        namespace: "ml".into(),
        name: "fraud".into(),
        policies,
        config: Some(ConfigSpec {
            version: 3,
            entities,
            routes,
            shadows: Vec::new(),
        }),
    }]);
    let config = ProxyConfig {
        max_body_bytes: 1 << 20,
        body_timeout: Duration::from_secs(5),
        body_idle_timeout: Duration::from_secs(5),
        max_in_flight: 64,
        max_buffered_bytes: 16 << 20,
        request_timeout: Duration::from_secs(5),
        response_idle_timeout: Duration::from_secs(5),
        max_attempts: 3,
        max_shadow_in_flight: 8,
    };
    let metrics = state.metrics().clone();
    let limiter = Arc::new(RateLimiter::local(1, metrics.clone()));
    (
        Arc::new(Proxy::new(
            state,
            config,
            Arc::new(auth),
            limiter,
            Arc::new(crate::external::Keys::standalone()),
        ))
        .router(),
        metrics,
    )
}

async fn call(
    router: axum::Router,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(Body::from(
            r#"{"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}"#,
        ))
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

#[tokio::test]
async fn a_request_reaches_the_weighted_entity_which_is_named_in_the_answer() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let router = proxy(
        vec![entity("a", vec![a], None), entity("b", vec![b], None)],
        vec![("a".into(), 0), ("b".into(), 100)],
    );
    for _ in 0..5 {
        let (status, headers, body) = call(
            router.clone(),
            "/serving-endpoints/fraud/invocations",
            &[("x-request-id", "req-1")],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["predictions"], json!(["b"]));
        assert_eq!(headers["served-model-name"], "b");
        assert_eq!(headers["x-sluice-config-version"], "3");
        assert_eq!(headers["x-request-id"], "req-1", "the client's id is kept");
        assert_eq!(body["headers"]["x-request-id"], "req-1", "and passed on");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_and_those_connection_names_never_reach_the_pod() {
    let a = upstream("a").await;
    let router = proxy(vec![entity("a", vec![a], None)], vec![("a".into(), 100)]);
    let (status, _, body) = call(
        router,
        "/serving-endpoints/fraud/invocations",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = &body["headers"];
    assert_eq!(received["x-kept"], "1");
    for dropped in ["x-private", "proxy-authorization", "connection"] {
        assert!(
            received.get(dropped).is_none(),
            "{dropped} reached the pod: {received}"
        );
    }
    assert_eq!(
        received["x-forwarded-for"], "127.0.0.1",
        "the peer is named to the pod"
    );
}

#[tokio::test]
async fn a_sleeping_entity_holds_for_its_published_timeout_then_answers_503() {
    let hold = HoldPolicy {
        max_held: 5,
        timeout: Duration::from_millis(200),
    };
    let router = proxy(
        vec![entity("a", Vec::new(), Some(hold))],
        vec![("a".into(), 100)],
    );
    let started = tokio::time::Instant::now();
    let (status, headers, body) = call(router, "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() >= hold.timeout,
        "held for the entity's timeout before giving up"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_endpoint_is_a_404_naming_it() {
    let router = proxy(Vec::new(), Vec::new());
    let (status, _, body) = call(router, "/serving-endpoints/nope/invocations", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("nope")),
        "{body}"
    );
    assert!(body["error_code"].is_string(), "{body}");
}

/// A proxy that takes the API keys of a keys file, and a key for `fraud` only and one for
/// another endpoint.
fn keyed(upstream: SocketAddr) -> (axum::Router, GatewayMetrics, String, String) {
    let mint = |endpoint: &str| {
        keys::mint(
            "batch-scorer",
            vec!["risk".into()],
            vec![endpoint.into()],
            None,
        )
        .expect("random")
    };
    let (ours, theirs) = (mint("ml/fraud"), mint("ml/churn"));
    let path = std::env::temp_dir().join(format!("sluice-keys-{}.yaml", ours.record.id));
    let records = vec![ours.record, theirs.record];
    std::fs::write(&path, serde_norway::to_string(&records).expect("yaml")).expect("write");
    // Kept while the test runs: a keys file that disappears holds no keys.
    let file = KeyFile::open(&path).expect("keys file");
    let auth = Auth::new(
        AuthSettings {
            allow_anonymous: false,
            cache_ttl: Duration::from_secs(10),
            cache_size: 100,
        },
        None,
        KeySource::File(file),
    );
    let (router, metrics) = guarded(
        vec![entity("a", vec![upstream], None)],
        vec![("a".into(), 100)],
        auth,
    );
    (router, metrics, ours.key, theirs.key)
}

#[tokio::test]
async fn callers_without_a_valid_key_get_401_and_out_of_scope_ones_403() {
    let (router, metrics, _, theirs) = keyed(upstream("a").await);
    let path = "/serving-endpoints/fraud/invocations";
    let (status, headers, body) = call(router.clone(), path, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"sluice\"");
    assert_eq!(body["error_code"], "UNAUTHENTICATED");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Authorization: Bearer")),
        "{body}"
    );
    let forged = format!("sluice_{}_{}", "0".repeat(12), "1".repeat(64));
    let (status, _, body) = call(
        router.clone(),
        path,
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = call(
        router,
        path,
        &[("authorization", &format!("Bearer {theirs}"))],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error_code"], "PERMISSION_DENIED");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ml/fraud") && m.contains("ml/churn")),
        "names the endpoint and the key's scope: {body}"
    );
    assert_eq!(metrics.auth_total(AuthOutcome::Unauthenticated), 2);
    assert_eq!(metrics.auth_total(AuthOutcome::Forbidden), 1);
}

#[tokio::test]
async fn the_pod_sees_the_verified_identity_never_the_clients_claim_or_credentials() {
    let (router, metrics, ours, _) = keyed(upstream("a").await);
    let (status, _, body) = call(
        router,
        "/serving-endpoints/fraud/invocations",
        &[
            ("authorization", &format!("Bearer {ours}")),
            ("x-sluice-requester", "mallory"),
            ("x-sluice-groups", "system:masters"),
            ("x-sluice-shadow", "true"),
            ("x-forwarded-user", "mallory"),
            ("x-forwarded-email", "mallory@example.com"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = &body["headers"];
    assert_eq!(received["x-sluice-requester"], "batch-scorer");
    assert_eq!(received["x-sluice-groups"], "risk");
    assert_eq!(received["x-sluice-key-id"].as_str().map(str::len), Some(12));
    for gone in [
        "authorization",
        "x-sluice-shadow",
        "x-forwarded-user",
        "x-forwarded-email",
    ] {
        assert!(
            received.get(gone).is_none(),
            "{gone} reached the pod: {received}"
        );
    }
    assert_eq!(metrics.auth_total(AuthOutcome::Allowed), 1);
}

/// `GET` of `path` with `headers`: status and JSON body.
async fn get(router: axum::Router, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::empty()).expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_model_list_holds_the_endpoints_the_caller_may_query() {
    let (router, _, ours, theirs) = keyed(upstream("a").await);
    let path = "/serving-endpoints/v1/models";
    let (status, body) = get(router.clone(), path, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = get(
        router.clone(),
        path,
        &[("authorization", &format!("Bearer {ours}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(
        body["data"],
        json!([{"id": "fraud", "object": "model", "created": 0, "owned_by": "ml"}])
    );
    let (status, body) = get(
        router,
        path,
        &[("authorization", &format!("Bearer {theirs}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!([]), "a key for ml/churn sees no fraud");
}

/// Waits until the current one-minute budget window has at least 5 s left, so a test's calls
/// all fall in one window.
async fn inside_one_window() {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if second >= 55 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
}

fn rate_limit(key: RateLimitKey, calls: Option<i64>, tokens: Option<i64>) -> RateLimit {
    RateLimit {
        calls,
        tokens,
        key,
        principal: None,
        renewal_period: RenewalPeriod::Minute,
    }
}

#[tokio::test]
async fn a_spent_call_budget_answers_429_with_when_it_renews() {
    let a = upstream("a").await;
    let (router, metrics) = limited(
        vec![entity("a", vec![a], None)],
        vec![("a".into(), 100)],
        Auth::open(),
        vec![rate_limit(RateLimitKey::User, Some(2), None)],
    );
    inside_one_window().await;
    for _ in 0..2 {
        let (status, _, body) =
            call(router.clone(), "/serving-endpoints/fraud/invocations", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, headers, body) = call(router, "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_code"], "REQUEST_LIMIT_EXCEEDED");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("2 calls per minute per user (system:anonymous)"),
        "{message}"
    );
    let retry: u64 = headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(metrics.rate_limited_total("ml", "fraud", "calls"), 1);
}

#[tokio::test]
async fn tokens_are_read_from_answers_and_charged_after_the_fact() {
    let a = upstream("a").await;
    let (router, _) = limited(
        vec![entity("a", vec![a], None)],
        vec![("a".into(), 100)],
        Auth::open(),
        vec![rate_limit(RateLimitKey::Endpoint, None, Some(10))],
    );
    inside_one_window().await;
    // Each answer reports 3 + 4 tokens: the second call starts at 7 of 10 and ends at 14.
    for _ in 0..2 {
        let (status, _, body) =
            call(router.clone(), "/serving-endpoints/fraud/invocations", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _, body) = call(router, "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("10 tokens per minute per endpoint")),
        "{body}"
    );
}

#[tokio::test]
async fn a_failed_entity_passes_the_request_to_the_next_in_order() {
    let (broken, busy, good) = (failing(500).await, failing(429).await, upstream("c").await);
    let entities = || {
        vec![
            entity("a", vec![broken], None),
            entity("b", vec![busy], None),
            // No pod at all: unavailable.
            entity("down", Vec::new(), None),
            entity("c", vec![good], None),
        ]
    };
    let routes = || {
        vec![
            ("a".to_string(), 100),
            ("b".to_string(), 0),
            ("down".to_string(), 0),
            ("c".to_string(), 0),
        ]
    };
    let (router, metrics) = governed(
        entities(),
        routes(),
        Auth::open(),
        Policies {
            fallback: true,
            ..Policies::default()
        },
    );
    let (status, headers, body) =
        call(router.clone(), "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers["served-model-name"], "c",
        "the answer names who gave it"
    );
    assert_eq!(body["predictions"], json!(["c"]));
    for (entity, reason) in [
        ("a", FallbackReason::ServerError),
        ("b", FallbackReason::RateLimited),
        ("down", FallbackReason::Unavailable),
    ] {
        assert_eq!(metrics.fallback_total(entity, reason), 1, "{entity}");
    }

    // Asking for one entity by name never falls back.
    let (status, headers, _) = call(
        router,
        "/serving-endpoints/fraud/served-models/a/invocations",
        &[],
    )
    .await;
    assert_eq!(
        (status, &headers["served-model-name"]),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            &"a".parse().expect("header")
        )
    );

    // Without fallback the first failure is the answer.
    let (router, _) = governed(entities(), routes(), Auth::open(), Policies::default());
    let (status, headers, _) = call(router, "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["served-model-name"], "a");
}

#[tokio::test]
async fn when_every_entity_fails_the_last_failure_is_the_answer() {
    let (broken, busy) = (failing(500).await, failing(429).await);
    let (router, metrics) = governed(
        vec![
            entity("a", vec![broken], None),
            entity("b", vec![busy], None),
        ],
        vec![("a".into(), 0), ("b".into(), 100)],
        Auth::open(),
        Policies {
            fallback: true,
            ..Policies::default()
        },
    );
    // b first (all the traffic), then a, each once.
    let (status, headers, _) = call(router, "/serving-endpoints/fraud/invocations", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["served-model-name"], "a");
    assert_eq!(metrics.fallback_total("b", FallbackReason::RateLimited), 1);
    assert_eq!(metrics.fallback_total("a", FallbackReason::ServerError), 0);
}

/// A model server that answers `/invocations` with the body it received.
async fn echo() -> SocketAddr {
    let app = axum::Router::new().route(
        "/invocations",
        axum::routing::post(|headers: HeaderMap, body: String| async move {
            axum::Json(json!({
                "received": body,
                "guardrails": headers
                    .get(sluice_contract::headers::GUARDRAILS)
                    .and_then(|v| v.to_str().ok()),
                "pii_in_answers": headers
                    .get(sluice_contract::headers::PII_IN_ANSWERS)
                    .and_then(|v| v.to_str().ok()),
            }))
        }),
    );
    serve(app).await
}

async fn send_text(
    router: axum::Router,
    text: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::post("/serving-endpoints/fraud/invocations")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = json!({"messages": [{"role": "user", "content": text}]}).to_string();
    let mut request = request.body(Body::from(body)).expect("request");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn input_guardrails_mask_personal_data_and_refuse_keywords_and_off_topic_chats() {
    let model = echo().await;
    let guardrails = |pii| {
        Some(crate::guardrails::Checks {
            pii,
            invalid_keywords: vec!["project falcon".into()],
            valid_topics: vec!["billing".into()],
        })
    };
    let routes = || vec![("a".to_string(), 100)];
    let (router, metrics) = governed(
        vec![entity("a", vec![model], None)],
        routes(),
        Auth::open(),
        Policies {
            guardrails: crate::guardrails::Guardrails {
                input: guardrails(sluice_crds::PiiBehavior::MASK),
                output: None,
            },
            ..Policies::default()
        },
    );
    let text = "billing question from jo@example.com, card 4111 1111 1111 1111";
    let (status, answer) = send_text(
        router.clone(),
        text,
        // A client cannot claim a verdict: the gateway sets it.
        &[("x-sluice-guardrails", "input=pass")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let received: Value = serde_json::from_str(answer["received"].as_str().unwrap()).unwrap();
    assert_eq!(
        received["messages"][0]["content"],
        "billing question from <EMAIL_ADDRESS>, card <CREDIT_CARD>",
        "the model never sees the personal data"
    );
    assert_eq!(
        answer["guardrails"],
        "input=masked:EMAIL_ADDRESS,CREDIT_CARD"
    );
    // No output guardrail on personal data: the recorded answer is left as it is (a client
    // cannot ask for masking either).
    let (_, answer) = send_text(
        router.clone(),
        "billing",
        &[("x-sluice-pii-in-answers", "mask")],
    )
    .await;
    assert_eq!(answer["pii_in_answers"], Value::Null);
    let (status, answer) = send_text(router.clone(), "billing for Project Falcon", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("project falcon"),
        "{answer}"
    );
    let (status, answer) = send_text(router.clone(), "tell me a joke", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("allowed topics (billing)"),
        "{answer}"
    );
    let (status, answer) = send_text(router, "billing, nothing personal", &[]).await;
    assert_eq!(
        (status, &answer["guardrails"]),
        (StatusCode::OK, &json!("input=pass"))
    );
    assert_eq!(
        metrics.guardrail_total("ml", "fraud", "input", "refused"),
        2
    );
    assert_eq!(metrics.guardrail_total("ml", "fraud", "input", "masked"), 1);

    let (router, _) = governed(
        vec![entity("a", vec![model], None)],
        routes(),
        Auth::open(),
        Policies {
            guardrails: crate::guardrails::Guardrails {
                input: guardrails(sluice_crds::PiiBehavior::BLOCK),
                output: None,
            },
            ..Policies::default()
        },
    );
    let (status, answer) = send_text(router, "billing: my SSN is 078-05-1120", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error_code"], "BAD_REQUEST");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("personal data (US_SSN)"),
        "{answer}"
    );
}

/// A model whose answers carry personal data: `/invocations` as one JSON answer, or streamed
/// in chunks that split the e-mail address when the request asks for `stream`.
async fn leaky() -> SocketAddr {
    let app =
        axum::Router::new().route(
            "/invocations",
            axum::routing::post(|body: String| async move {
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                if request["stream"] != json!(true) {
                    return axum::Json(json!({
                        "choices": [{"index": 0, "message": {"role": "assistant",
                            "content": "Mail jo.smith@example.com, or ask for Project Falcon"}}],
                    }))
                    .into_response();
                }
                let pieces = ["Mail jo", ".smi", "th@exam", "ple.com now", ""];
                let events: Vec<String> = pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    let last = i + 1 == pieces.len();
                    let delta = if last { json!({}) } else { json!({"content": piece}) };
                    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                        "choices": [{"index": 0, "delta": delta,
                        "finish_reason": if last { json!("stop") } else { Value::Null }}]});
                    format!("data: {chunk}\n\n")
                })
                .chain(["data: [DONE]\n\n".to_string()])
                .collect();
                let stream = futures::stream::iter(
                    events.into_iter().map(Ok::<_, std::convert::Infallible>),
                );
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .expect("response")
            }),
        );
    serve(app).await
}

async fn post_json(router: axum::Router, body: Value) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::post("/serving-endpoints/fraud/invocations")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn output_guardrails_mask_answers_whole_and_streamed_and_withhold_keywords() {
    let model = leaky().await;
    let with = |pii, keywords: &[&str]| {
        governed(
            vec![entity("a", vec![model], None)],
            vec![("a".to_string(), 100)],
            Auth::open(),
            Policies {
                guardrails: crate::guardrails::Guardrails {
                    input: None,
                    output: Some(Arc::new(crate::guardrails::Checks {
                        pii,
                        invalid_keywords: keywords.iter().map(|k| k.to_string()).collect(),
                        valid_topics: Vec::new(),
                    })),
                },
                ..Policies::default()
            },
        )
    };
    let (router, metrics) = with(sluice_crds::PiiBehavior::MASK, &[]);
    let (status, _, body) = post_json(router.clone(), json!({"messages": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Mail <EMAIL_ADDRESS>, or ask for Project Falcon"
    );
    let (status, headers, body) = post_json(router, json!({"messages": [], "stream": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("content-length").is_none());
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let v: Value = serde_json::from_str(d).expect("chunk");
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(text, "Mail <EMAIL_ADDRESS> now");
    assert!(!body.contains("smi") && !body.contains("exam"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(
        metrics.guardrail_total("ml", "fraud", "output", "masked"),
        2
    );

    let (router, metrics) = with(sluice_crds::PiiBehavior::NONE, &["project falcon"]);
    let (status, _, body) = post_json(router, json!({"messages": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("withheld the answer") && body.contains("project falcon"),
        "{body}"
    );
    assert!(!body.contains("jo.smith"), "{body}");
    assert_eq!(
        metrics.guardrail_total("ml", "fraud", "output", "refused"),
        1
    );
}

#[tokio::test]
async fn with_output_guardrails_on_personal_data_the_pod_is_told_to_mask_what_it_records() {
    let model = echo().await;
    for (pii, told) in [
        (sluice_crds::PiiBehavior::MASK, json!("mask")),
        (sluice_crds::PiiBehavior::BLOCK, json!("mask")),
        (sluice_crds::PiiBehavior::NONE, Value::Null),
    ] {
        let (router, _) = governed(
            vec![entity("a", vec![model], None)],
            vec![("a".to_string(), 100)],
            Auth::open(),
            Policies {
                guardrails: crate::guardrails::Guardrails {
                    input: None,
                    output: Some(Arc::new(crate::guardrails::Checks {
                        pii,
                        invalid_keywords: vec!["never-said".into()],
                        valid_topics: Vec::new(),
                    })),
                },
                ..Policies::default()
            },
        );
        let (status, answer) = send_text(router, "hello", &[]).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["pii_in_answers"], told, "{pii:?}");
    }
}

/// Posts `body` as feedback on endpoint `fraud`.
async fn feedback(router: axum::Router, body: &str) -> (StatusCode, Value) {
    let mut request = Request::post("/serving-endpoints/fraud/feedback")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn feedback_is_handed_to_a_sidecar_as_a_record_and_bad_feedback_is_refused_by_field() {
    // What the sidecar's port receives (the capture sidecar itself is tested with real
    // processes in the inference-server tests).
    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let app = axum::Router::new().route(
        "/sluice/feedback",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sent = sent.clone();
            async move {
                let _ = sent.send((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let sidecar = serve(app).await;
    let captured = Policies {
        captured: true,
        ..Policies::default()
    };
    let (router, _) = governed(
        vec![entity("a", vec![sidecar], None)],
        vec![("a".into(), 100)],
        Auth::open(),
        captured.clone(),
    );
    let (status, answer) = feedback(
        router.clone(),
        r#"{"request_id": "r-1", "label": 1, "comment": "caught"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["request_id"], "r-1");
    assert!(
        answer["feedback_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let (headers, body) = received.recv().await.expect("the sidecar got the record");
    assert_eq!(headers["x-sluice-record-origin"], "feedback");
    assert_eq!(headers["x-sluice-record"], body.len().to_string().as_str());
    let sent: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        sent,
        json!({"request_id": "r-1", "label": "1", "comment": "caught"})
    );

    for (body, named) in [
        (r#"{"label": "x"}"#, "request_id"),
        (r#"{"request_id": "r", "rating": "five"}"#, "rating"),
        (r#"{"request_id": "r", "labell": "x"}"#, "labell"),
        (r#"{"request_id": "r"}"#, "at least one"),
        ("not json", "not a JSON object"),
    ] {
        let (status, answer) = feedback(router.clone(), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(named),
            "{body}: {answer}"
        );
    }
    assert!(
        received.try_recv().is_err(),
        "nothing refused reached the sidecar"
    );

    // An endpoint without capture has no feedback table.
    let (router, _) = governed(
        vec![entity("a", vec![sidecar], None)],
        vec![("a".into(), 100)],
        Auth::open(),
        Policies::default(),
    );
    let (status, answer) = feedback(router, r#"{"request_id": "r", "rating": 1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("autoCapture"),
        "{answer}"
    );

    // No ready pod: 503 to retry, never a silent loss.
    let (router, _) = governed(
        vec![entity("a", Vec::new(), None)],
        vec![("a".into(), 100)],
        Auth::open(),
        captured,
    );
    let (status, answer) = feedback(router, r#"{"request_id": "r", "rating": 1}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
}
