//! `spec.aiGateway.rateLimits` in standalone gateways: two replicas sharing a real
//! `redis-server` hold one 60 calls/min budget over a whole window of load from 4 clients; a
//! tokens/min budget is charged from the usage of streamed chat answers of a real model
//! (`serve` with a tiny Llama), also of a stream that did not ask for usage; Redis killed mid-run: `--rate-limit-fail-mode open` lets
//! requests through and `closed` refuses them, both counted, and both recover when Redis is
//! back; without Redis each replica allows its share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::tiny_llm::{self, Model};
use crate::common::{Server, temp_dir, unused_loopback_port};
use crate::harness::{Gateway, Upstream};

/// A `redis-server` on a loopback port, without persistence.
struct Redis {
    child: Child,
    port: u16,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        Self::start_on(unused_loopback_port())
    }

    fn start_on(port: u16) -> Redis {
        let dir = temp_dir("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (run .ci/setup)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = TcpStream::connect(("127.0.0.1", port))
                .ok()
                .and_then(|mut s| {
                    s.write_all(b"PING\r\n").ok()?;
                    let mut answer = [0u8; 7];
                    s.read_exact(&mut answer).ok()?;
                    Some(answer == *b"+PONG\r\n")
                });
            if pong == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis {
            child,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Endpoint `ep` served by entity `a`, with `limits` (a YAML flow list).
fn limited(limits: &str) -> String {
    format!(
        "apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {{name: ep}}
spec:
  servedEntities:
    - {{name: a, model: m, version: 1}}
  aiGateway:
    rateLimits: {limits}
"
    )
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Sleeps until `offset` seconds into the next one-minute window; when that window ends.
async fn next_window(offset: f64) -> Instant {
    let now = now_seconds();
    let start = (now / 60.0).floor() * 60.0 + 60.0;
    tokio::time::sleep(Duration::from_secs_f64(start + offset - now)).await;
    Instant::now() + Duration::from_secs_f64(60.0 - offset)
}

/// Waits until the current window has at least `needed` seconds left.
async fn window_with(needed: f64) {
    if 60.0 - now_seconds() % 60.0 < needed {
        next_window(0.2).await;
    }
}

async fn invoke(gateway: &Gateway) -> (u16, Option<String>, Value) {
    let response = gateway
        .client
        .post(format!("{}/serving-endpoints/ep/invocations", gateway.base))
        .header("content-type", "application/json")
        .body(r#"{"inputs": [[1.0]]}"#)
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_sharing_redis_hold_one_budget_under_load() {
    let redis = Redis::start();
    let upstream = Upstream::python("a", None).await;
    let manifest = limited("[{calls: 60, key: endpoint, renewalPeriod: minute}]");
    let flags = ["--rate-limit-redis", redis.url.as_str()];
    let replicas = [
        Gateway::start(&manifest, &[("a", upstream.addr)], &flags).await,
        Gateway::start(&manifest, &[("a", upstream.addr)], &flags).await,
    ];
    // One whole window of load: 4 clients, alternating replicas.
    let end = next_window(0.3).await - Duration::from_millis(800);
    let replicas = std::sync::Arc::new(replicas);
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let replicas = replicas.clone();
            tokio::spawn(async move {
                let (mut admitted, mut limited, mut other) = (0u32, 0u32, Vec::new());
                let mut turn = client;
                while Instant::now() < end {
                    let (status, retry, body) = invoke(&replicas[turn % 2]).await;
                    turn += 1;
                    match status {
                        200 => admitted += 1,
                        429 => {
                            assert_eq!(body["error_code"], "REQUEST_LIMIT_EXCEEDED", "{body}");
                            let retry: u64 = retry
                                .and_then(|r| r.parse().ok())
                                .expect("Retry-After in seconds");
                            assert!((1..=60).contains(&retry), "{retry}");
                            limited += 1;
                        }
                        _ => other.push(format!("{status} {body}")),
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                (admitted, limited, other)
            })
        })
        .collect();
    let (mut admitted, mut limited) = (0, 0);
    for client in clients {
        let (a, l, other) = client.await.expect("client");
        assert!(other.is_empty(), "unexpected answers: {other:?}");
        admitted += a;
        limited += l;
    }
    assert!(
        (58..=62).contains(&admitted),
        "60 calls/min across both replicas: {admitted} admitted, {limited} refused"
    );
    assert!(limited > 100, "the load went on past the budget: {limited}");
    let mut counted = 0.0;
    for replica in replicas.iter() {
        counted += replica
            .metric("sluice_gateway_rate_limited_total{namespace=\"default\",endpoint=\"ep\",measure=\"calls\"}")
            .await;
    }
    assert_eq!(counted as u32, limited, "every 429 is counted");
}

/// A chat completion streamed through `gateway`, usage asked for or not: the status, the last
/// usage any chunk reported, and whether a usage-only chunk (`"choices": []`) came.
async fn streamed_chat(gateway: &Gateway, include_usage: bool) -> (u16, Option<Value>, bool) {
    let response = gateway
        .client
        .post(format!(
            "{}/serving-endpoints/v1/chat/completions",
            gateway.base
        ))
        .json(&json!({
            "model": "ep",
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 6,
            "stream": true,
            "stream_options": {"include_usage": include_usage},
        }))
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .collect();
    let usage = chunks
        .iter()
        .rev()
        .find_map(|chunk| chunk.get("usage").filter(|u| !u.is_null()).cloned());
    let usage_only = chunks
        .iter()
        .any(|chunk| chunk["choices"].as_array().is_some_and(Vec::is_empty));
    (status, usage, usage_only)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_budget_is_charged_from_streamed_answers() {
    let redis = Redis::start();
    let (dir, _) = tiny_llm::model_dir("ratelimit-chat", "gguf", "llm/v1/chat", &Model::random(11));
    let server = Server::start(&dir, &[]).await;
    server.wait_ready().await;
    let addr = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("server address");
    // The first answer tells how many tokens one request uses; the budget lets two through.
    let probe = Gateway::start(&limited("[]"), &[("a", addr)], &[]).await;
    let (status, usage, usage_only) = streamed_chat(&probe, true).await;
    assert_eq!(
        (status, usage_only),
        (200, true),
        "usage asked for, usage sent"
    );
    let usage = usage.expect("the model reports usage when asked");
    let per_request = usage["prompt_tokens"].as_u64().expect("prompt tokens")
        + usage["completion_tokens"]
            .as_u64()
            .expect("completion tokens");
    assert!(
        probe
            .metric("sluice_gateway_tokens_total{namespace=\"default\",endpoint=\"ep\",entity=\"a\",direction=\"output\"}")
            .await
            >= 1.0,
        "{}",
        probe.metrics().await
    );
    drop(probe);

    let budget = 2 * per_request - 1;
    let gateway = Gateway::start(
        &limited(&format!(
            "[{{tokens: {budget}, key: user, renewalPeriod: minute}}]"
        )),
        &[("a", addr)],
        &["--rate-limit-redis", redis.url.as_str()],
    )
    .await;
    window_with(20.0).await;
    assert_eq!(streamed_chat(&gateway, true).await.0, 200);
    // Tokens are charged once the answer has ended, in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A stream that does not ask for usage is charged too, and the usage-only chunk the
    // gateway asked for in its place never reaches the client.
    let (status, _, usage_only) = streamed_chat(&gateway, false).await;
    assert_eq!((status, usage_only), (200, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = gateway
        .client
        .post(format!("{}/serving-endpoints/v1/chat/completions", gateway.base))
        .json(&json!({"model": "ep", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.expect("error body");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "{budget} tokens per minute per user (system:anonymous)"
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_the_fail_mode_holds_and_is_counted() {
    let mut redis = Redis::start();
    let upstream = Upstream::python("a", None).await;
    let manifest = limited("[{calls: 100000, key: user, renewalPeriod: minute}]");
    let start = |mode: &'static str| {
        let (manifest, url) = (manifest.clone(), redis.url.clone());
        let addr = upstream.addr;
        async move {
            Gateway::start(
                &manifest,
                &[("a", addr)],
                &["--rate-limit-redis", &url, "--rate-limit-fail-mode", mode],
            )
            .await
        }
    };
    let open = start("open").await;
    let closed = start("closed").await;
    for gateway in [&open, &closed] {
        assert_eq!(invoke(gateway).await.0, 200);
    }

    redis.kill();
    for _ in 0..3 {
        assert_eq!(
            invoke(&open).await.0,
            200,
            "fail-open lets requests through"
        );
        let (status, retry, body) = invoke(&closed).await;
        assert_eq!(status, 503, "fail-closed refuses: {body}");
        assert!(retry.is_some());
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(&redis.url), "{message}");
    }
    let failures = |outcome: &str| {
        format!("sluice_gateway_rate_limit_store_failures_total{{outcome=\"{outcome}\"}}")
    };
    assert_eq!(open.metric(&failures("admitted")).await, 3.0);
    assert_eq!(closed.metric(&failures("refused")).await, 3.0);

    // Redis comes back on the same port: both count again.
    let _redis = Redis::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (invoke(&open).await.0, invoke(&closed).await.0);
        if (a, b) == (200, 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: open {a}, closed {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn without_redis_each_replica_allows_its_share() {
    let upstream = Upstream::python("a", None).await;
    let gateway = Gateway::start(
        &limited("[{calls: 5, key: endpoint, renewalPeriod: minute}]"),
        &[("a", upstream.addr)],
        &["--rate-limit-replicas", "2"],
    )
    .await;
    window_with(10.0).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(invoke(&gateway).await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "5 split over 2 replicas: 3 each"
    );
}

/// An engine that reports usage only when asked (as OpenAI does): a stream that does not ask is
/// made to, the usage-only chunk is kept from the client, and its tokens are charged.
#[tokio::test]
async fn a_stream_that_does_not_ask_for_usage_is_still_charged() {
    let upstream = Upstream::python("a", None).await;
    let gateway = Gateway::start(
        &limited("[{tokens: 10, key: endpoint, renewalPeriod: minute}]"),
        &[("a", upstream.addr)],
        &[],
    )
    .await;
    window_with(10.0).await;
    // 7 tokens each: the second call starts at 7 of 10 and ends at 14.
    for _ in 0..2 {
        let (status, usage, usage_only) = streamed_chat(&gateway, false).await;
        assert_eq!((status, usage, usage_only), (200, None, false));
    }
    let (status, _, _) = streamed_chat(&gateway, false).await;
    assert_eq!(
        status, 429,
        "the tokens of streams that asked for nothing were charged"
    );
    // The client that asks gets its chunk.
    let open = Gateway::start(&limited("[]"), &[("a", upstream.addr)], &[]).await;
    let (status, usage, usage_only) = streamed_chat(&open, true).await;
    assert_eq!((status, usage_only), (200, true));
    assert_eq!(usage.expect("usage")["total_tokens"], 7);
}
