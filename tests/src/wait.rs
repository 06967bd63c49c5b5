//! Waiting for the cluster to converge: poll, never sleep a fixed time, never assert a duration.
//!
//! Tests on the shared control plane call [`on_cluster`] or, when pods run on the test
//! kubelet, [`on_nodes`]; a test with logs of its own (a process it started, a container)
//! passes them to [`eventually`].

use std::{future::Future, time::Duration};

use crate::cluster::{LocalNodes, shared};

/// [`eventually`] on the shared control plane: past `timeout`, fails the test with `what` and
/// the control plane's component logs.
pub async fn on_cluster<T, Fut>(what: &str, timeout: Duration, check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    eventually(what, timeout, || shared().dump_logs(), check).await
}

/// [`eventually`] for pods on the test kubelet `nodes`: past `timeout`, fails the test with
/// `what`, the control plane's component logs and the kubelet's journal and container logs.
pub async fn on_nodes<T, Fut>(
    nodes: &LocalNodes,
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let logs = || format!("{}{}", shared().dump_logs(), nodes.kubelet.dump_logs());
    eventually(what, timeout, logs, check).await
}

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
