//! Reading request bodies: content type, size limit and the slow-client mark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures::StreamExt;

use sluice_protocol::{ApiError, ErrorKind};

/// What a body is, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (also assumed when no content type is given).
    Json,
    /// `text/csv` or `application/csv`.
    Csv,
}

/// Set while a handler is still receiving the body, so the deadline layer can tell a slow
/// client (408) from a slow model (504).
#[derive(Clone, Debug, Default)]
pub struct ReceivingBody(pub Arc<AtomicBool>);

impl ReceivingBody {
    /// Whether the body was still being received.
    pub fn is_receiving(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The body's format; 415 for anything but JSON or CSV in UTF-8.
pub fn body_format(headers: &HeaderMap, csv_allowed: bool) -> Result<BodyFormat, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let unsupported = |what: String| ApiError::new(ErrorKind::UnsupportedMediaType, what);
    let text = value
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type".to_string()))?;
    let mut parts = text.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default().to_ascii_lowercase();
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim_matches('"').to_ascii_lowercase();
        if name.eq_ignore_ascii_case("charset") && value != "utf-8" && value != "utf8" {
            return Err(unsupported(format!(
                "charset `{value}` is not supported; send UTF-8"
            )));
        }
    }
    match media.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "text/csv" | "application/csv" if csv_allowed => Ok(BodyFormat::Csv),
        _ => {
            let accepted = if csv_allowed {
                "application/json, text/csv or application/csv"
            } else {
                "application/json"
            };
            Err(unsupported(format!(
                "Content-Type `{media}` is not supported here; send {accepted}"
            )))
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    receiving: Option<&ReceivingBody>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    if let Some(receiving) = receiving {
        receiving.0.store(true, Ordering::Relaxed);
    }
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request(format!("cannot read the request body: {error}"))
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    if let Some(receiving) = receiving {
        receiving.0.store(false, Ordering::Relaxed);
    }
    if buffer.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn content_types() {
        assert_eq!(body_format(&HeaderMap::new(), true), Ok(BodyFormat::Json));
        assert_eq!(
            body_format(&with_type("application/json; charset=UTF-8"), true),
            Ok(BodyFormat::Json)
        );
        assert_eq!(
            body_format(&with_type("text/csv"), true),
            Ok(BodyFormat::Csv)
        );
        assert_eq!(
            body_format(&with_type("application/csv"), true),
            Ok(BodyFormat::Csv)
        );
        assert_eq!(
            body_format(&with_type("text/csv"), false).unwrap_err().kind,
            ErrorKind::UnsupportedMediaType
        );
        assert_eq!(
            body_format(&with_type("text/plain"), true)
                .unwrap_err()
                .kind,
            ErrorKind::UnsupportedMediaType
        );
        assert!(
            body_format(&with_type("application/json; charset=latin1"), true)
                .unwrap_err()
                .message
                .contains("latin1")
        );
    }

    #[tokio::test]
    async fn limits_and_empty_bodies() {
        let headers = HeaderMap::new();
        let body = read_body(Body::from("0123456789"), &headers, 10, None)
            .await
            .unwrap();
        assert_eq!(body.len(), 10);
        let error = read_body(Body::from("0123456789x"), &headers, 10, None)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::PayloadTooLarge);
        let error = read_body(Body::from("  \n"), &headers, 10, None)
            .await
            .unwrap_err();
        assert!(error.message.contains("empty"));
    }
}
