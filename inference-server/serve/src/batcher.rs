//! Micro-batching: concurrent requests to one model are gathered for a short window (or until
//! a maximum batch is reached) and run as one model call on a blocking thread. With a zero
//! window a batch is whatever is queued when the worker is free.
//!
//! One worker task owns the model call, so calls never overlap; while a batch runs, the next
//! one fills in the channel. The channel is bounded: when it is full the caller gets 429
//! instead of an unbounded queue.

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{ApiError, ErrorKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::ServeMetrics;

/// Jobs waiting for the worker before callers are refused with 429.
const QUEUE_CAPACITY: usize = 1024;

/// How a batch of inputs is run: one output per input, in order.
pub type BatchFn<I, O> = dyn Fn(Vec<I>) -> Vec<Result<O, ApiError>> + Send + Sync;

/// Window and size of a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// How long the first job of a batch waits for others.
    pub window: Duration,
    /// Most items (rows, texts) in one batch; a bigger job runs alone.
    pub max_items: usize,
}

struct Job<I, O> {
    input: I,
    items: usize,
    reply: oneshot::Sender<Result<O, ApiError>>,
}

/// A handle to a batching worker; cheap to clone.
pub struct Batcher<I, O> {
    jobs: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the worker. `runtime` labels the batch-size metric. Must run inside tokio.
    pub fn spawn(
        runtime: &'static str,
        policy: BatchPolicy,
        metrics: ServeMetrics,
        run: Arc<BatchFn<I, O>>,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(worker(runtime, policy, metrics, run, receiver));
        Self { jobs }
    }

    /// Submits one input of `items` items and waits for its output.
    pub async fn call(&self, input: I, items: usize) -> Result<O, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job {
                input,
                items,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::new(
                    ErrorKind::RequestLimitExceeded,
                    format!(
                        "the model queue is full ({QUEUE_CAPACITY} requests waiting); retry later"
                    ),
                )
                .with_retry_after(Duration::from_secs(1)),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::internal("the model worker stopped")
                }
            })?;
        answer
            .await
            .map_err(|_| ApiError::internal("the model worker dropped the request"))?
    }
}

async fn worker<I: Send + 'static, O: Send + 'static>(
    runtime: &'static str,
    policy: BatchPolicy,
    metrics: ServeMetrics,
    run: Arc<BatchFn<I, O>>,
    mut receiver: mpsc::Receiver<Job<I, O>>,
) {
    while let Some(first) = receiver.recv().await {
        let mut items = first.items;
        let mut batch = vec![first];
        let deadline = Instant::now() + policy.window;
        while items < policy.max_items {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(job)) => {
                    items += job.items;
                    batch.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Callers that gave up (deadline passed) need no model time.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.observe_batch(runtime, batch.iter().map(|job| job.items).sum());
        let (inputs, replies): (Vec<I>, Vec<_>) =
            batch.into_iter().map(|job| (job.input, job.reply)).unzip();
        let run = Arc::clone(&run);
        let count = inputs.len();
        let outputs = tokio::task::spawn_blocking(move || run(inputs))
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, runtime, "model call panicked");
                vec![]
            });
        let mut outputs = outputs.into_iter();
        for reply in replies {
            let output = outputs.next().unwrap_or_else(|| {
                Err(ApiError::internal(format!(
                    "the {runtime} model call failed for a batch of {count}"
                )))
            });
            // The caller may have given up; nothing to do then.
            let _ = reply.send(output);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_a_batch_and_keep_their_order() {
        let metrics = ServeMetrics::register(&mut Registry::default());
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher: Batcher<u32, u32> = Batcher::spawn(
            "test",
            BatchPolicy {
                window: Duration::from_millis(50),
                max_items: 8,
            },
            metrics,
            Arc::new(move |inputs: Vec<u32>| {
                seen.lock().unwrap().push(inputs.len());
                inputs.into_iter().map(|x| Ok(x * 10)).collect()
            }),
        );
        let calls = (0..4).map(|x| {
            let batcher = batcher.clone();
            async move { batcher.call(x, 1).await }
        });
        let outputs = futures::future::join_all(calls).await;
        assert_eq!(outputs, vec![Ok(0), Ok(10), Ok(20), Ok(30)]);
        assert_eq!(*sizes.lock().unwrap(), vec![4]);
    }

    #[tokio::test]
    async fn without_a_window_requests_queued_during_a_call_form_the_next_batch() {
        let metrics = ServeMetrics::register(&mut Registry::default());
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher: Batcher<u32, u32> = Batcher::spawn(
            "test",
            BatchPolicy {
                window: Duration::ZERO,
                max_items: 8,
            },
            metrics,
            Arc::new(move |inputs: Vec<u32>| {
                seen.lock().unwrap().push(inputs.len());
                std::thread::sleep(Duration::from_millis(100));
                inputs.into_iter().map(Ok).collect()
            }),
        );
        let first = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(0, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let rest = (1..5).map(|x| {
            let batcher = batcher.clone();
            async move { batcher.call(x, 1).await }
        });
        let outputs = futures::future::join_all(rest).await;
        assert_eq!(first.await.unwrap(), Ok(0));
        assert_eq!(outputs, vec![Ok(1), Ok(2), Ok(3), Ok(4)]);
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4]);
    }

    #[tokio::test]
    async fn a_panicking_model_answers_500_and_the_worker_survives() {
        let metrics = ServeMetrics::register(&mut Registry::default());
        let batcher: Batcher<u32, u32> = Batcher::spawn(
            "test",
            BatchPolicy {
                window: Duration::from_millis(1),
                max_items: 1,
            },
            metrics,
            Arc::new(|inputs: Vec<u32>| {
                assert!(inputs[0] != 0, "boom");
                inputs.into_iter().map(Ok).collect()
            }),
        );
        assert_eq!(
            batcher.call(0, 1).await.unwrap_err().kind,
            ErrorKind::Internal
        );
        assert_eq!(batcher.call(7, 1).await, Ok(7));
    }
}
