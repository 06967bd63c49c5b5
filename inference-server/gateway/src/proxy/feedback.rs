//! `POST /serving-endpoints/{name}/feedback`: a person's feedback on an earlier request
//! ([`sluice_contract::feedback`]), authorised like a query of the endpoint, checked here, and
//! handed to one of the endpoint's capture sidecars as a record of origin `feedback`; the
//! sidecar writes it to the endpoint's feedback table (`<prefix>_feedback`).
//!
//! Unlike the records of cache hits and providers' answers, the caller waits for the sidecar:
//! `200` means the row is in the sidecar's queue, and a feedback that could not be handed over
//! is a `503` to retry, never a silent loss. Every outcome is counted in
//! `sluice_gateway_feedback_total`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use sluice_contract::feedback::{Feedback, MAX_FEEDBACK_BYTES};
use sluice_contract::headers::names;
use sluice_contract::record::{RecordHead, RecordOrigin};
use sluice_protocol::error::{ApiError, ErrorKind};

use super::Proxy;
use crate::metrics::FeedbackOutcome;
use crate::record::{Delivery, Recorded};

/// The sidecars' route for feedback records.
pub const FEEDBACK_PATH: &str = "/sluice/feedback";

impl Proxy {
    /// Takes one feedback for endpoint `name`, within the gateway's in-flight budget.
    pub(super) async fn feedback(
        &self,
        name: String,
        peer: SocketAddr,
        request: Request<Body>,
    ) -> Response {
        match self.budgets.admit() {
            Ok(slot) => slot.hold_until_end_of(self.take_feedback(name, peer, request).await),
            Err(shed) => self.fail("", "", super::shed_error(shed)),
        }
    }

    async fn take_feedback(
        &self,
        name: String,
        peer: SocketAddr,
        request: Request<Body>,
    ) -> Response {
        let (mut parts, body) = request.into_parts();
        let caller = match self.caller_of(&mut parts.headers).await {
            Ok(caller) => caller,
            Err(refusal) => return refusal,
        };
        let table = self.state.table();
        let endpoint = match super::endpoint(&table, &name) {
            Ok(endpoint) => endpoint,
            Err(error) => return self.fail("", "", error),
        };
        let (namespace, endpoint_name) = (endpoint.namespace.as_str(), endpoint.name.as_str());
        if let Err(refusal) = self.authorize(&caller, namespace, endpoint_name).await {
            return refusal;
        }
        let count = |outcome| {
            self.state
                .metrics()
                .feedback(namespace, endpoint_name, outcome);
        };
        let read = axum::body::to_bytes(body, MAX_FEEDBACK_BYTES);
        let bytes = match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(Ok(bytes)) => bytes,
            Err(_) => {
                count(FeedbackOutcome::Refused);
                return self.fail(
                    namespace,
                    endpoint_name,
                    ApiError::new(
                        ErrorKind::RequestTimeout,
                        format!(
                            "the feedback body did not arrive within {:?}",
                            self.config.body_timeout
                        ),
                    ),
                );
            }
            Ok(Err(_)) => {
                count(FeedbackOutcome::Refused);
                return self.fail(
                    namespace,
                    endpoint_name,
                    ApiError::new(
                        ErrorKind::PayloadTooLarge,
                        format!("a feedback body holds at most {MAX_FEEDBACK_BYTES} bytes"),
                    ),
                );
            }
        };
        let feedback = match Feedback::parse(&bytes) {
            Ok(feedback) => feedback,
            Err(error) => {
                count(FeedbackOutcome::Refused);
                return self.fail(
                    namespace,
                    endpoint_name,
                    ApiError::new(ErrorKind::InvalidParameterValue, error.to_string()),
                );
            }
        };
        if !endpoint.policies.captured {
            count(FeedbackOutcome::Refused);
            return self.fail(
                namespace,
                endpoint_name,
                ApiError::bad_request(format!(
                    "serving endpoint {endpoint_name:?} does not capture its requests \
                     (spec.autoCapture.enabled is false), so it has no feedback table"
                )),
            );
        }
        // Any ready sidecar of the endpoint writes the same tables.
        let pool = endpoint
            .config
            .as_ref()
            .and_then(|config| config.entities.iter().find(|pool| pool.has_ready()));
        let Some(pool) = pool else {
            count(FeedbackOutcome::Unavailable);
            return self.fail(
                namespace,
                endpoint_name,
                ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "serving endpoint {endpoint_name:?} has no ready pod to record the \
                         feedback; retry once it has"
                    ),
                )
                .with_retry_after(std::time::Duration::from_secs(5)),
            );
        };
        let request_id = super::request_id_of(&parts.headers);
        let body = axum::body::Bytes::from(feedback.to_json());
        let head = RecordHead {
            request_len: body.len(),
            origin: RecordOrigin::Feedback,
            status: 200,
            content_type: Some(HeaderValue::from_static("application/json")),
            duration_ms: None,
            incomplete: false,
        };
        let recorded = Recorded {
            parts,
            upstream_path: FEEDBACK_PATH.to_string(),
            body,
            request_id: request_id.clone(),
            peer,
        };
        match self.recorders.deliver(pool, &recorded, &[], head).await {
            Delivery::Taken => {
                count(FeedbackOutcome::Recorded);
                let mut response = axum::Json(serde_json::json!({
                    "request_id": feedback.request_id,
                    "feedback_id": request_id.to_str().unwrap_or_default(),
                }))
                .into_response();
                response.headers_mut().insert(names::REQUEST_ID, request_id);
                response
            }
            Delivery::Refused(message) => {
                count(FeedbackOutcome::Unavailable);
                self.fail(
                    namespace,
                    endpoint_name,
                    ApiError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the endpoint's capture sidecar did not take the feedback: {message}"
                        ),
                    )
                    .with_retry_after(std::time::Duration::from_secs(1)),
                )
            }
        }
    }
}
