//! Kept-open HTTP/1.1 connections to one pod. Each [`Backend`] owns its idle list (a lock per
//! pod, held for one push or pop, never shared between pods); a request takes a connection
//! and gives it back once its answer was read to the end ([`Lease`]).
//!
//! A connection is made before any byte of the request is written, so a pod that refuses it
//! hands the request back whole ([`Failure::Connect`]) and the caller sends that same request
//! to another pod: nothing is cloned per attempt. A kept-open connection the pod has closed
//! meanwhile is dropped and the request goes on the next one (hyper hands back a request it
//! never wrote).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::backend::Backend;

/// The request body the gateway sends to pods (read whole before routing).
pub type Outbound = Request<Full<Bytes>>;

/// Longest a pod may take to accept a connection before another pod is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most kept-open connections per pod; more are closed when their answer ends.
const MAX_IDLE: usize = 1024;
/// A connection unused for this long is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The kept-open connections of one pod.
#[derive(Debug)]
pub struct Connections {
    /// The `Host` header requests to this pod carry.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Connections {
    /// No connection yet to the pod at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            host,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Kept-open connections now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection still young enough; older ones are closed.
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum Failure {
    /// No connection to the pod: the request was not written and comes back whole.
    Connect {
        /// The request, for another pod (boxed: this is the rare path).
        request: Box<Outbound>,
        /// Why the pod could not be reached.
        error: ConnectError,
    },
    /// The request was written (in part or whole) and the pod did not answer.
    Answer(hyper::Error),
}

/// Why no connection to a pod could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The pod refused or the network failed.
    #[error("connecting to {addr} failed")]
    Io {
        /// The pod.
        addr: SocketAddr,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The pod took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to {addr} took longer than {CONNECT_TIMEOUT:?}")]
    Timeout {
        /// The pod.
        addr: SocketAddr,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("starting HTTP/1.1 with {addr} failed")]
    Handshake {
        /// The pod.
        addr: SocketAddr,
        /// hyper's reason.
        #[source]
        source: hyper::Error,
    },
}

/// A connection taken for one request: back to its pod's idle list when dropped, if the
/// answer was read to its end ([`Lease::finished`]); closed otherwise.
#[derive(Debug)]
pub struct Lease {
    sender: Option<SendRequest<Full<Bytes>>>,
    backend: Arc<Backend>,
    finished: bool,
}

impl Lease {
    /// The answer was read to its end: the connection may carry the next request.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.finished
            && let Some(sender) = self.sender.take()
        {
            self.backend.connections.put(sender);
        }
    }
}

/// Sends `request` to `backend` on a kept-open connection, or a new one.
pub async fn send(
    backend: &Arc<Backend>,
    mut request: Outbound,
) -> Result<(Response<Incoming>, Lease), Failure> {
    let connections = &backend.connections;
    request
        .headers_mut()
        .insert(header::HOST, connections.host.clone());
    while let Some(mut sender) = connections.take() {
        // Waits for the connection to finish reading the previous answer; fails when the pod
        // closed it.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, lease(sender, backend))),
            Err(mut error) => match error.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(Failure::Answer(error.into_error())),
            },
        }
    }
    let mut sender = match connect(backend.addr).await {
        Ok(sender) => sender,
        Err(error) => {
            return Err(Failure::Connect {
                request: Box::new(request),
                error,
            });
        }
    };
    match sender.send_request(request).await {
        Ok(response) => Ok((response, lease(sender, backend))),
        Err(error) => Err(Failure::Answer(error)),
    }
}

fn lease(sender: SendRequest<Full<Bytes>>, backend: &Arc<Backend>) -> Lease {
    Lease {
        sender: Some(sender),
        backend: backend.clone(),
        finished: false,
    }
}

/// A new connection to `addr`, its reading and writing driven by a task of its own.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    // Answers and streamed tokens leave at once.
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "connection to a pod ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A pod answering `ok` to everything, counting the connections it accepted.
    async fn pod() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let answer = service_fn(|request: Request<Incoming>| async move {
                        let host = request.headers()[header::HOST].clone();
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!(
                            "ok {}",
                            host.to_str().unwrap_or("")
                        )))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request() -> Outbound {
        Request::post("/invocations")
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    }

    async fn read(response: Response<Incoming>) -> String {
        let body = response.into_body().collect().await.expect("body");
        String::from_utf8(body.to_bytes().to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn an_answer_read_to_its_end_leaves_its_connection_for_the_next_request() {
        let (addr, accepted) = pod().await;
        let backend = Arc::new(Backend::new(addr));
        for _ in 0..3 {
            let (response, mut lease) = send(&backend, request()).await.expect("answer");
            assert_eq!(
                read(response).await,
                format!("ok {addr}"),
                "Host is the pod"
            );
            lease.finished();
            drop(lease);
            assert_eq!(backend.connections.idle(), 1);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection carried all three"
        );
    }

    #[tokio::test]
    async fn an_answer_not_read_to_its_end_closes_its_connection() {
        let (addr, accepted) = pod().await;
        let backend = Arc::new(Backend::new(addr));
        let (_unread, lease) = send(&backend, request()).await.expect("answer");
        drop(lease);
        assert_eq!(backend.connections.idle(), 0);
        let (response, _lease) = send(&backend, request()).await.expect("answer");
        assert_eq!(read(response).await, format!("ok {addr}"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_hands_the_request_back_whole() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let backend = Arc::new(Backend::new(addr));
        let Err(Failure::Connect { request, error }) = send(&backend, request()).await else {
            panic!("a closed port must refuse the connection");
        };
        assert!(matches!(error, ConnectError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
        assert_eq!(request.uri(), "/invocations");
        assert_eq!(request.headers()["x-request-id"], "abc");
        let body = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"{}");
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_is_dropped_and_the_request_goes_on_a_new_one() {
        let (addr, accepted) = pod().await;
        let backend = Arc::new(Backend::new(addr));
        // A kept-open connection whose pod end is gone.
        let stale = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stale_addr = stale.local_addr().expect("addr");
        let client = tokio::spawn(connect(stale_addr));
        let (server_end, _) = stale.accept().await.expect("accept");
        let sender = client.await.expect("join").expect("connect");
        drop(server_end);
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.connections.put(sender);
        let (response, _lease) = send(&backend, request()).await.expect("answer");
        assert_eq!(read(response).await, format!("ok {addr}"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
