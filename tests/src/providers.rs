//! `inference-server/tests/gateway/providers.py`: local stand-ins for OpenAI, Azure OpenAI and
//! Anthropic that check each request against the provider's official SDK types (the `openai`
//! and `anthropic` packages of the project's `.venv`) and answer the documented samples.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::unused_loopback_port;
use crate::repo_root;

/// The running stand-ins; killed when dropped.
pub struct Providers {
    child: Child,
    /// Where they answer (loopback).
    pub addr: SocketAddr,
}

impl Providers {
    /// Starts the stand-ins expecting `key`, and waits until they answer.
    pub async fn start(key: &str) -> Providers {
        let port = unused_loopback_port();
        let root = repo_root();
        let child = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("inference-server/tests/gateway/providers.py"))
            .args(["--port", &port.to_string(), "--key", key])
            .stdout(Stdio::null())
            .spawn()
            .expect("providers.py starts (run .ci/setup for the .venv)");
        let providers = Providers {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let health = format!("http://{}/health", providers.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return providers;
            }
            assert!(Instant::now() < deadline, "providers.py did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Requests received, by `"<path> <model>"`.
    pub async fn calls(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/calls", self.addr))
            .await
            .expect("calls")
            .json()
            .await
            .expect("calls JSON")
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
