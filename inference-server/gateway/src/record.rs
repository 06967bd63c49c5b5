//! Exchanges no pod answered, handed to a capture sidecar so they still become rows of the
//! endpoint's tables ([`sluice_contract::record`]): a response-cache hit goes to a sidecar of
//! the entity that first answered; a request the input guardrail refused, to a sidecar of the
//! entity it would have gone to; an external provider's answer goes to the entity's
//! recorder (a capture sidecar run alone, which the operator starts per external entity of an
//! endpoint with capture or usage tracking).
//!
//! Records are sent in the background once the answer has ended, within the shadow requests'
//! in-flight budget; the caller never waits for one. A record that cannot be sent (no ready
//! sidecar, the budget full, the sidecar refused or timed out) is counted in
//! `sluice_gateway_records_unsent_total`, never retried.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header, request::Parts};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sluice_contract::record::{MAX_RECORDED_ANSWER_BYTES, RecordHead, RecordOrigin};
use tokio::sync::Semaphore;

use super::backend;
use super::metrics::{GatewayMetrics, RecordSource};
use super::proxy::upstream_request;
use super::state::EntityPool;

/// Sends records to capture sidecars.
#[derive(Clone, Debug)]
pub struct Recorders {
    client: Client<HttpConnector, Full<Bytes>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    metrics: GatewayMetrics,
}

/// The request a record is about, as the gateway forwarded it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The client's request head (with the identity headers the gateway set).
    pub parts: Parts,
    /// The path a pod would have been sent.
    pub upstream_path: String,
    /// The request's body as sent on (after input guardrails).
    pub body: Bytes,
    /// The request id.
    pub request_id: HeaderValue,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Recorders {
    /// Records sent with `client`, at most as many at once as `permits` allow, each given
    /// `timeout`.
    pub fn new(
        client: Client<HttpConnector, Full<Bytes>>,
        permits: Arc<Semaphore>,
        timeout: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            client,
            permits,
            timeout,
            metrics,
        }
    }

    /// Sends `answer` to a ready sidecar of `pool` as the record of `request`, in the
    /// background.
    pub fn send(&self, pool: &EntityPool, request: &Recorded, answer: &[u8], head: RecordHead) {
        let source = match head.origin {
            RecordOrigin::Cache => RecordSource::Cache,
            RecordOrigin::Guardrail => RecordSource::Guardrail,
            RecordOrigin::Provider(_) => RecordSource::Provider,
            RecordOrigin::Feedback => RecordSource::Feedback,
        };
        let labels = pool.labels().clone();
        let metrics = self.metrics.clone();
        let unsent = move || metrics.record_unsent(&labels.namespace, &labels.endpoint, source);
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(entity = %pool.name, "a record could not be sent: too many in flight");
            unsent();
            return;
        };
        let Some(outgoing) = Self::outgoing(pool, request, answer, head) else {
            tracing::debug!(entity = %pool.name, "a record could not be sent: no ready sidecar");
            unsent();
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Delivery::Refused(why) = this.post(outgoing).await {
                tracing::debug!(%why, "a sidecar did not take a record");
                unsent();
            }
        });
    }

    /// Sends `answer` to a ready sidecar of `pool` as the record of `request`, and waits
    /// for its answer (within the record timeout).
    pub async fn deliver(
        &self,
        pool: &EntityPool,
        request: &Recorded,
        answer: &[u8],
        head: RecordHead,
    ) -> Delivery {
        match Self::outgoing(pool, request, answer, head) {
            Some(outgoing) => self.post(outgoing).await,
            None => Delivery::Refused("no ready sidecar".into()),
        }
    }

    /// The record's request to one ready sidecar of `pool`.
    fn outgoing(
        pool: &EntityPool,
        request: &Recorded,
        answer: &[u8],
        mut head: RecordHead,
    ) -> Option<hyper::Request<Full<Bytes>>> {
        let addr = {
            let backends = pool.backends();
            backend::pick(&backends, &[], &mut fastrand::Rng::new()).map(|b| b.addr)?
        };
        head.request_len = request.body.len();
        let mut both = Vec::with_capacity(request.body.len() + answer.len());
        both.extend_from_slice(&request.body);
        both.extend_from_slice(answer);
        let mut outgoing = upstream_request(
            addr,
            &request.upstream_path,
            &request.parts,
            Bytes::from(both),
            &request.request_id,
            Some(request.peer),
        );
        head.write(outgoing.headers_mut());
        Some(outgoing)
    }

    async fn post(&self, outgoing: hyper::Request<Full<Bytes>>) -> Delivery {
        let sent = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(outgoing)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
        })
        .await;
        match sent {
            Ok(Ok(())) => Delivery::Taken,
            Ok(Err(why)) => Delivery::Refused(why),
            Err(_) => Delivery::Refused(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Whether a sidecar took a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// It answered with a success.
    Taken,
    /// It could not be reached, refused it or did not answer in time: why.
    Refused(String),
}

/// An external provider's answer on its way to the caller, kept (up to
/// [`MAX_RECORDED_ANSWER_BYTES`]) and sent as a record when it ends, or when the caller goes
/// away first (then marked incomplete).
pub struct RecordingBody {
    inner: Body,
    kept: Vec<u8>,
    cut: bool,
    pending: Option<Pending>,
}

struct Pending {
    recorders: Recorders,
    pool: Arc<EntityPool>,
    request: Recorded,
    provider: String,
    status: u16,
    content_type: Option<HeaderValue>,
    started: Instant,
}

impl RecordingBody {
    /// Wraps the answer `response` of `provider` to `request`, started at `started`.
    pub fn wrap(
        recorders: &Recorders,
        pool: &Arc<EntityPool>,
        request: Recorded,
        provider: &str,
        started: Instant,
        response: axum::response::Response,
    ) -> axum::response::Response {
        let (parts, inner) = response.into_parts();
        let pending = Pending {
            recorders: recorders.clone(),
            pool: pool.clone(),
            request,
            provider: provider.to_string(),
            status: parts.status.as_u16(),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            started,
        };
        let body = Self {
            inner,
            kept: Vec::new(),
            cut: false,
            pending: Some(pending),
        };
        axum::response::Response::from_parts(parts, Body::new(body))
    }

    fn keep(&mut self, data: &[u8]) {
        let room = MAX_RECORDED_ANSWER_BYTES.saturating_sub(self.kept.len());
        if data.len() > room {
            self.cut = true;
        }
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Sends the record (once); `whole` when the answer ran to its end.
    fn end(&mut self, whole: bool) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let head = RecordHead {
            request_len: 0,
            origin: RecordOrigin::Provider(p.provider),
            status: p.status,
            content_type: p.content_type,
            duration_ms: Some(u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            // A cut answer is marked truncated by the sidecar's own copy limit.
            incomplete: !whole,
        };
        p.recorders
            .send(&p.pool, &p.request, &std::mem::take(&mut self.kept), head);
    }
}

impl hyper::body::Body for RecordingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !self.cut
                {
                    self.keep(data);
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    /// The caller went away before the answer ended: what came is still recorded.
    fn drop(&mut self) {
        self.end(false);
    }
}
