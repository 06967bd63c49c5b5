//! The sidecar's HTTP/1.1 server, with the two-step stop that capture needs: after SIGTERM
//! every connection finishes the exchange in progress and then closes (no more keep-alive);
//! at the drain deadline the connections still open are closed at once, without waiting for
//! their exchanges (a stream that never ends must not hold the pod past its grace period).
//!
//! `axum::serve` offers only the first step (its graceful shutdown waits for every
//! connection), so the accept loop is here: each connection is a task of one [`JoinSet`].

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The connections of one listener.
#[derive(Debug)]
pub struct Connections {
    router: Router,
    tasks: JoinSet<()>,
    closing: watch::Sender<bool>,
}

impl Connections {
    /// No connections yet; each will be served by `router`.
    pub fn new(router: Router) -> Self {
        Self {
            router,
            tasks: JoinSet::new(),
            closing: watch::Sender::new(false),
        }
    }

    /// Accepts connections from `listener` for as long as the future is polled.
    pub async fn accept(&mut self, listener: &TcpListener) {
        loop {
            while self.tasks.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::error!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Small SSE frames leave at once.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let service = TowerToHyperService::new(self.router.clone());
            let mut closing = self.closing.subscribe();
            self.tasks.spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = pin!(connection);
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        return;
                    }
                    _ = closing.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
                }
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
    }

    /// Asks every connection to close once its exchange in progress is done (idle ones close
    /// at once).
    pub fn finish_in_flight(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when every connection has closed.
    pub async fn closed(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Closes every connection still open, at once (their exchanges are dropped mid-way), and
    /// returns how many there were.
    pub async fn close_all(mut self) -> usize {
        let open = self.tasks.len();
        self.tasks.shutdown().await;
        open
    }
}

/// Errors of one connection that never reached us; the listener itself is fine.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
