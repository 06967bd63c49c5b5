//! Steady load for fault-injection tests: workers POST one body in a loop to a set of base
//! URLs in turn, and count what was answered and what failed. A base URL that refuses a
//! connection is taken out of the rotation, as a load balancer's health check would eject it
//! (its refusal still counts as a failure).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The load's running workers.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

/// What the load saw, once stopped.
#[derive(Debug)]
pub struct Outcome {
    /// Requests answered 200.
    pub answered: usize,
    /// Every other outcome: the target and the status or error.
    pub failed: Vec<String>,
}

impl Load {
    /// Starts `workers` workers posting `body` (JSON) to `<base><path>` for each of `bases`.
    pub fn start(bases: Vec<String>, path: &str, body: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(RwLock::new(bases));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        let workers = (0..workers)
            .map(|worker| {
                let (stop, answered, live) = (stop.clone(), answered.clone(), live.clone());
                let (client, path, body) = (client.clone(), path.to_string(), body.to_string());
                tokio::spawn(async move {
                    let mut failed = Vec::new();
                    let mut turn = worker;
                    while !stop.load(Ordering::Relaxed) {
                        turn += 1;
                        let base = {
                            let live = live.read().unwrap_or_else(|e| e.into_inner());
                            if live.is_empty() {
                                break;
                            }
                            live[turn % live.len()].clone()
                        };
                        let sent = client
                            .post(format!("{base}{path}"))
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                failed.push(format!("{base}: {status} {text}"));
                            }
                            Err(e) => {
                                if e.is_connect() {
                                    live.write()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .retain(|b| b != &base);
                                }
                                failed.push(format!("{base}: {e}"));
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        Self {
            stop,
            answered,
            workers,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond those answered now are answered (at most `timeout`).
    pub async fn wait_for(&self, more: usize, timeout: Duration) {
        let target = self.answered() + more;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.answered() < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the workers and returns what they saw.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        for worker in self.workers {
            failed.extend(
                worker
                    .await
                    .unwrap_or_else(|e| vec![format!("worker: {e}")]),
            );
        }
        Outcome {
            answered: self.answered.load(Ordering::Relaxed),
            failed,
        }
    }
}
