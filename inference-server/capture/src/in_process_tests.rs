//! The capture proxy tested in-process: its router called with `tower::ServiceExt::oneshot` in
//! front of a real model server on a loopback port; the exchange is read back from the queue
//! the table writer drains. The end-to-end tests (`inference-server/tests/capture_*.rs`) run the
//! same path through the binary and read the table with DuckDB and pyarrow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::exchange::RawExchange;
use crate::metrics::{CaptureMetrics, UsageLabels};
use crate::proxy::{Limits, Proxy, ProxyConfig, UsageTracking};
use crate::queue::{Overflow, Popped, Queue};

/// A model server on a free loopback port: `/invocations` answers a prediction and the
/// headers it received.
async fn model() -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/invocations",
            axum::routing::post(|headers: HeaderMap, body: String| async move {
                let received: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                    .collect();
                axum::Json(json!({"predictions": [1], "echo": body, "headers": received}))
            }),
        )
        .route(
            "/v1/completions",
            axum::routing::post(|| async {
                axum::Json(json!({
                    "choices": [{"text": "hi"}],
                    "usage": {"prompt_tokens": 1500, "completion_tokens": 500}
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn proxy(upstream: SocketAddr, sampling_fraction: f64) -> (axum::Router, Arc<Queue>) {
    let (router, queue, _) = proxy_with(upstream, sampling_fraction, None);
    (router, queue)
}

fn proxy_with(
    upstream: SocketAddr,
    sampling_fraction: f64,
    usage: Option<UsageTracking>,
) -> (axum::Router, Arc<Queue>, CaptureMetrics) {
    let queue = Arc::new(Queue::new(1 << 20, Overflow::DropOldest));
    proxy_on(
        upstream,
        sampling_fraction,
        usage,
        queue,
        Duration::from_secs(10),
    )
}

fn proxy_on(
    upstream: SocketAddr,
    sampling_fraction: f64,
    usage: Option<UsageTracking>,
    queue: Arc<Queue>,
    block_timeout: Duration,
) -> (axum::Router, Arc<Queue>, CaptureMetrics) {
    let metrics = CaptureMetrics::default();
    let proxy = Proxy::new(
        ProxyConfig {
            upstream: Some(upstream),
            health_path: "/health".into(),
            upstream_timeout: Duration::from_secs(5),
            block_timeout,
            sampling_fraction,
            limits: Limits {
                max_payload_bytes: 1 << 20,
                memory_bytes: 16 << 20,
            },
            usage,
            feedback: true,
        },
        queue.clone(),
        metrics.clone(),
        Arc::new(Registry::default()),
    );
    (Arc::new(proxy).router(), queue, metrics)
}

/// What the queue holds, waiting up to `wait` for something to arrive.
async fn queued(queue: Arc<Queue>, wait: Duration) -> Vec<RawExchange> {
    let popped = tokio::task::spawn_blocking(move || queue.pop(1 << 20, wait))
        .await
        .expect("pop");
    match popped {
        Popped::Items(rows) => rows,
        Popped::Closed => panic!("the queue is open"),
    }
}

async fn post(
    router: axum::Router,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    post_to(router, "/invocations", headers, body).await
}

async fn post_to(
    router: axum::Router,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .oneshot(request.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The headers of a feedback record of `body`.
fn feedback_head(body: &str) -> HeaderMap {
    let head = sluice_contract::record::RecordHead {
        request_len: body.len(),
        origin: sluice_contract::record::RecordOrigin::Feedback,
        status: 200,
        content_type: None,
        duration_ms: None,
        incomplete: false,
    };
    let mut headers = HeaderMap::new();
    head.write(&mut headers);
    headers
}

fn pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_feedback_record_is_queued_for_the_feedback_table_whatever_the_sampling() {
    // Sampling 0: no exchange is recorded, feedback still is.
    let (router, queue) = proxy(model().await, 0.0);
    let body = r#"{"request_id":"r-1","label":"fraud","rating":1.0}"#;
    let head = feedback_head(body);
    let mut headers = pairs(&head);
    headers.extend([("x-request-id", "fb-7"), ("x-sluice-requester", "alice")]);
    let (status, _, _) = post_to(router.clone(), "/sluice/feedback", &headers, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let rows = queued(queue, Duration::from_secs(2)).await;
    assert_eq!(rows.len(), 1);
    let feedback = rows[0].feedback.as_ref().expect("a feedback");
    assert_eq!(
        (feedback.request_id.as_str(), feedback.label.as_deref()),
        ("r-1", Some("fraud"))
    );
    assert_eq!(rows[0].request_id, "fb-7");
    assert_eq!(rows[0].requester.as_deref(), Some("alice"));
    let row = rows[0].clone().finish(&Default::default());
    assert_eq!((row.request, row.response), (None, None), "no bodies");

    // A body that is not a feedback is refused by name; nothing is queued.
    let bad = r#"{"label":"fraud"}"#;
    let head = feedback_head(bad);
    let headers = pairs(&head);
    let (status, _, answer) = post_to(router, "/sluice/feedback", &headers, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("request_id"), "{answer}");
}

#[tokio::test]
async fn an_exchange_passes_through_and_is_recorded_with_the_callers_identity() {
    let (router, queue) = proxy(model().await, 1.0);
    let body = r#"{"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}"#;
    let (status, headers, answer) = post(
        router,
        &[
            ("x-request-id", "req-7"),
            ("x-sluice-requester", "alice@example.com"),
            ("x-sluice-groups", "risk,ml"),
            ("x-sluice-key-id", "0123456789ab"),
            // What an auth proxy (or a caller) may add: never the recorded identity.
            ("x-forwarded-user", "mallory"),
            ("connection", "x-private"),
            ("x-private", "1"),
        ],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["echo"], body, "the body reaches the model unchanged");
    assert_eq!(headers["x-request-id"], "req-7");
    assert!(
        answer["headers"].get("x-private").is_none(),
        "hop-by-hop stays here"
    );
    let rows = queued(queue, Duration::from_secs(5)).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.request_id, "req-7");
    assert_eq!(row.requester.as_deref(), Some("alice@example.com"));
    assert!(
        row.metadata
            .get(sluice_contract::metadata::TIME_TO_FIRST_BYTE_MS)
            .and_then(|ms| ms.parse::<i64>().ok())
            .is_some_and(|ms| ms >= 0),
        "{:?}",
        row.metadata
    );
    assert_eq!(
        row.metadata.get("requester_groups").map(String::as_str),
        Some("risk,ml")
    );
    assert_eq!(
        row.metadata.get("api_key_id").map(String::as_str),
        Some("0123456789ab")
    );
    assert_eq!(row.status_code, 200);
    assert_eq!(row.request, body.as_bytes());
    let recorded: Value = serde_json::from_slice(&row.response).expect("response JSON");
    assert_eq!(recorded["predictions"], json!([1]));
}

#[tokio::test]
async fn an_unsampled_exchange_is_answered_and_not_recorded() {
    let (router, queue) = proxy(model().await, 0.0);
    let (status, _, _) = post(router, &[], "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(queued(queue, Duration::from_millis(200)).await.is_empty());
}

#[tokio::test]
async fn with_usage_tracking_an_unsampled_exchange_is_metered_and_costed_without_bodies() {
    let labels = UsageLabels {
        endpoint: "chat".into(),
        entity: "chat-1".into(),
        currency: "USD".into(),
    };
    let price = sluice_contract::usage::parse_price_arg("USD:input=0.5,output=2").expect("price");
    let tracking = UsageTracking {
        price: Some(price),
        labels: labels.clone(),
    };
    let (router, queue, metrics) = proxy_with(model().await, 0.0, Some(tracking));
    let (status, _, answer) = post_to(
        router,
        "/v1/completions",
        &[("x-sluice-requester", "alice")],
        r#"{"prompt": "hi", "usage_context": {"project": "p1"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let rows = queued(queue, Duration::from_secs(5)).await;
    assert_eq!(rows.len(), 1, "every request is a usage row");
    let raw = &rows[0];
    assert!(raw.usage_only);
    assert!(raw.response.is_empty(), "the answer is metered, not copied");
    let usage = raw.usage.expect("metered");
    let tokens = usage.tokens.expect("the answer reported tokens");
    assert_eq!((tokens.input, tokens.output), (Some(1500), Some(500)));
    // 1.5k input at 0.5 and 0.5k output at 2 per 1k tokens.
    assert_eq!(usage.cost, Some(1.75));
    let row = raw.clone().finish(&Default::default());
    assert_eq!(row.request, None, "no body reaches a usage-only row");
    assert_eq!(row.usage.expect("usage").usage_context["project"], "p1");
    assert_eq!(metrics.usage_requests.get_or_create(&labels).get(), 1);
    assert_eq!(
        metrics.usage_output_tokens.get_or_create(&labels).get(),
        500
    );
    assert_eq!(metrics.usage_cost.get_or_create(&labels).get(), 1.75);
}

/// A model that counts the requests it answers.
async fn counting_model() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/invocations",
        axum::routing::post({
            let hits = hits.clone();
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"predictions": [1]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test]
async fn with_overflow_block_a_full_queue_holds_requests_at_the_door_and_drops_nothing() {
    use std::sync::atomic::Ordering;
    let (model, hits) = counting_model().await;
    // One exchange fills the queue; nobody writes it out until the test pops.
    let queue = Arc::new(Queue::new(1, Overflow::Block));
    let (router, queue, metrics) = proxy_on(model, 1.0, None, queue, Duration::from_millis(200));
    let (status, _, _) = post(router.clone(), &[], "{\"n\": 1}").await;
    assert_eq!(status, StatusCode::OK);

    // Full: the next request waits its 200 ms and is refused before reaching the model.
    let (status, headers, answer) = post(router.clone(), &[], "{\"n\": 2}").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        answer.to_string().contains("overflow policy block"),
        "{answer}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the model never saw it");
    assert_eq!(metrics.refused.get(), 1);
    assert_eq!(queue.len(), 1, "nothing dropped to make room");

    // A request waiting at the door goes through once the writer takes the queued row.
    let waiting = tokio::spawn(post(router, &[], "{\"n\": 3}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "still waiting for room");
    let first = queued(queue.clone(), Duration::ZERO).await;
    assert_eq!(first.len(), 1);
    let (status, _, _) = waiting.await.expect("request");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let second = queued(queue, Duration::from_secs(5)).await;
    assert_eq!(second[0].request, b"{\"n\": 3}");
    let dropped: u64 = [
        crate::metrics::DropReason::QueueFull,
        crate::metrics::DropReason::SpoolFull,
    ]
    .into_iter()
    .map(|reason| {
        metrics
            .dropped
            .get_or_create(&crate::metrics::DropLabels { reason })
            .get()
    })
    .sum();
    assert_eq!(dropped, 0);
}
