//! Waiting for the cluster to converge: poll, never sleep a fixed time, never assert a duration.

use std::{future::Future, time::Duration};

/// Polls `check` every 250 ms until it yields a value. Past `timeout`, fails the test with
/// `what` and the logs `context` returns (component or container logs).
pub async fn eventually<T, Fut>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    eventually_every(what, timeout, Duration::from_millis(250), context, check).await
}

/// [`eventually`], polling every `every` (single processes on loopback answer in
/// milliseconds; a cluster converges in seconds).
pub async fn eventually_every<T, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(every).await;
    }
}
