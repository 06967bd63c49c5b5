//! Traffic splits by weight, through real `serve` processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{Server, iris_onnx, model_dir};
use crate::harness::{Gateway, two_entities};

const IRIS: &str = r#"{"inputs": [[5.1, 3.5, 1.4, 0.2]]}"#;

async fn iris() -> Server {
    let dir = model_dir(
        "iris",
        &[
            (
                "sluice-model.yaml",
                b"format: onnx\ntask: predict\nfiles: {model: iris.onnx}\n",
            ),
            ("iris.onnx", &iris_onnx()),
        ],
    );
    let server = Server::start(&dir, &[]).await;
    server.wait_ready().await;
    server
}

fn addr(server: &Server) -> std::net::SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// Sends `total` requests, `concurrency` at a time; counts answers per entity and failures.
async fn load(
    gateway: &Arc<Gateway>,
    total: usize,
    concurrency: usize,
) -> (usize, usize, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let gateway = gateway.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let (mut a, mut b, mut failures) = (0, 0, Vec::new());
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let answer = gateway
                    .post("/serving-endpoints/ep/invocations", IRIS)
                    .await;
                match (answer.status, answer.entity.as_str()) {
                    (200, "a") => a += 1,
                    (200, "b") => b += 1,
                    _ => failures.push(format!(
                        "{} {}: {}",
                        answer.status, answer.entity, answer.body
                    )),
                }
            }
            (a, b, failures)
        }));
    }
    let mut totals = (0, 0, Vec::new());
    for worker in workers {
        let (a, b, failures) = worker.await.expect("worker");
        totals.0 += a;
        totals.1 += b;
        totals.2.extend(failures);
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_of_10000_requests_is_within_one_and_a_half_points() {
    let (a, b) = (iris().await, iris().await);
    let gateway = Arc::new(
        Gateway::start(
            &two_entities(90, "", ""),
            &[("a", addr(&a)), ("b", addr(&b))],
            &[],
        )
        .await,
    );
    let (to_a, to_b, failures) = load(&gateway, 10_000, 32).await;
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let share_b = to_b as f64 / (to_a + to_b) as f64 * 100.0;
    assert!(
        (8.5..=11.5).contains(&share_b),
        "b answered {share_b:.2}% ({to_b} of {})",
        to_a + to_b
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_change_shifts_traffic_without_dropping_a_request() {
    let (a, b) = (iris().await, iris().await);
    let gateway = Arc::new(
        Gateway::start(
            &two_entities(100, "", ""),
            &[("a", addr(&a)), ("b", addr(&b))],
            &[],
        )
        .await,
    );
    let (to_a, to_b, failures) = load(&gateway, 200, 8).await;
    assert_eq!((to_a, to_b, failures.len()), (200, 0, 0));
    // Flip the split while requests keep flowing.
    let flowing = {
        let gateway = gateway.clone();
        tokio::spawn(async move { load(&gateway, 6000, 8).await })
    };
    let answered_by_a =
        r#"sluice_gateway_requests_total{namespace="default",endpoint="ep",entity="a",code="2xx"}"#;
    while gateway.metric(answered_by_a).await < 500.0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gateway.rewrite(&two_entities(0, "", ""));
    let (during_a, during_b, failures) = flowing.await.expect("load");
    assert!(
        failures.is_empty(),
        "{} failed during the change: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(during_a > 0 && during_b > 0, "a {during_a}, b {during_b}");
    let (after_a, after_b, failures) = load(&gateway, 200, 8).await;
    assert_eq!((after_a, after_b, failures.len()), (0, 200, 0));
}
