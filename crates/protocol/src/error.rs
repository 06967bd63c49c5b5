//! The one error body every route answers with: `{"error_code": "...", "message": "..."}`.
//!
//! Codes follow MLflow's `ErrorCode` names where one fits (`BAD_REQUEST`,
//! `INVALID_PARAMETER_VALUE`, `ENDPOINT_NOT_FOUND`, `REQUEST_LIMIT_EXCEEDED`,
//! `TEMPORARILY_UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL_ERROR`), so MLflow clients read them
//! as they read MLflow's own scoring server.
//!
//! With the `axum` feature (on by default) an [`ApiError`] is an axum response.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// What went wrong, which decides the HTTP status and the `error_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body could not be read as the protocol says (malformed JSON, no input key, ...): 400.
    BadRequest,
    /// The body parsed, but a value is wrong for the model (type, shape, missing column): 400.
    InvalidParameterValue,
    /// No such route: 404.
    NotFound,
    /// The route exists but not for this method: 405.
    MethodNotAllowed,
    /// The named resource (a ServingEndpoint the management API was asked about) does not
    /// exist: 404 `RESOURCE_DOES_NOT_EXIST`.
    ResourceDoesNotExist,
    /// A resource of that name exists already: 409 `RESOURCE_ALREADY_EXISTS`.
    ResourceAlreadyExists,
    /// The resource is busy (a config update in progress) or changed under the request: 409
    /// `RESOURCE_CONFLICT`.
    ResourceConflict,
    /// A route of the upstream API this server does not provide: 501 `NOT_IMPLEMENTED`.
    NotImplemented,
    /// The client did not finish sending its body in time: 408.
    RequestTimeout,
    /// The body is larger than `--max-body-bytes`: 413.
    PayloadTooLarge,
    /// A content type other than JSON or CSV, or a charset other than UTF-8: 415.
    UnsupportedMediaType,
    /// No credentials, or credentials that do not prove who the caller is: 401, with
    /// `WWW-Authenticate: Bearer`.
    Unauthenticated,
    /// The caller is known but may not do this: 403.
    PermissionDenied,
    /// Too many requests: 429.
    RequestLimitExceeded,
    /// An unexpected failure inside the server: 500.
    Internal,
    /// An upstream (the chat endpoint of a prompt model) failed or answered garbage: 502.
    BadGateway,
    /// The model is not loaded (yet, or ever): 503, with `Retry-After` where retrying helps.
    Unavailable,
    /// The request ran past its deadline: 504.
    DeadlineExceeded,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::InvalidParameterValue => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ResourceDoesNotExist => StatusCode::NOT_FOUND,
            Self::ResourceAlreadyExists | Self::ResourceConflict => StatusCode::CONFLICT,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::RequestLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error_code` string of the body; also the bounded `error_code` metric label.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::InvalidParameterValue => "INVALID_PARAMETER_VALUE",
            Self::NotFound => "ENDPOINT_NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::ResourceDoesNotExist => "RESOURCE_DOES_NOT_EXIST",
            Self::ResourceAlreadyExists => "RESOURCE_ALREADY_EXISTS",
            Self::ResourceConflict => "RESOURCE_CONFLICT",
            Self::NotImplemented => "NOT_IMPLEMENTED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::PayloadTooLarge => "REQUEST_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::RequestLimitExceeded => "REQUEST_LIMIT_EXCEEDED",
            Self::Internal => "INTERNAL_ERROR",
            Self::BadGateway => "UPSTREAM_ERROR",
            Self::Unavailable => "TEMPORARILY_UNAVAILABLE",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
        }
    }
}

/// The wire form of an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `BAD_REQUEST`.
    pub error_code: String,
    /// What was wrong, for a person.
    pub message: String,
}

/// An error answered to a client; renders as [`ErrorBody`] with the kind's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// What was wrong, for a person.
    pub message: String,
    /// For 503 and 429: how long the client should wait before retrying.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `BAD_REQUEST`: the body does not follow the protocol.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// 400 `INVALID_PARAMETER_VALUE`: a value does not fit the model.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameterValue, message)
    }

    /// 500 `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Adds a `Retry-After` to the response.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_code: self.kind.code().to_string(),
            message: self.message.clone(),
        }
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        use http::{HeaderValue, header};

        let mut response = (self.kind.status(), axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        // Lets the metrics layer label the error without re-parsing the body.
        response.extensions_mut().insert(self.kind);
        response
    }
}

/// An error and its chain of causes, `outer: inner: innermost` (for messages about failures of
/// other parts, where the innermost cause is usually what a person needs).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_and_codes() {
        assert_eq!(
            ErrorKind::RequestLimitExceeded.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ErrorKind::RequestLimitExceeded.code(),
            "REQUEST_LIMIT_EXCEEDED"
        );
        assert_eq!(
            ErrorKind::DeadlineExceeded.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ErrorKind::InvalidParameterValue.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[cfg(feature = "axum")]
    #[test]
    fn unavailable_carries_retry_after() {
        use axum::response::IntoResponse;
        use http::header;

        let response = ApiError::new(ErrorKind::Unavailable, "loading")
            .with_retry_after(Duration::from_millis(200))
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
