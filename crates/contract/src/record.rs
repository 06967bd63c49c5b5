//! One exchange the gateway answered without a pod, sent to a capture sidecar afterwards so it
//! still becomes a row of the inference table: a response-cache hit (no model ran), a request
//! the input guardrail refused (no model ran either), or a call to an external model's
//! provider (the gateway called it; a *recorder*, the capture sidecar run alone with
//! `--record-only`, writes the rows).
//!
//! The record is one POST to the sidecar on the request's own path: the body is the request
//! followed by the answer, and [`RecordHead`] in the headers says where one ends and how the
//! exchange went. The sidecar records it and answers 204; nothing reaches a model. Clients
//! cannot send these headers (the gateway drops every `x-sluice-*` header a client sent).

use http::{HeaderMap, HeaderValue};

/// The request's length in bytes: the body holds the request, then the answer.
pub const RECORD: &str = "x-sluice-record";
/// Where the answer came from: `cache`, `guardrail`, `provider:<name>` or `feedback`
/// ([`RecordOrigin`]).
pub const RECORD_ORIGIN: &str = "x-sluice-record-origin";
/// The answer's status code.
pub const RECORD_STATUS: &str = "x-sluice-record-status";
/// The answer's content type.
pub const RECORD_CONTENT_TYPE: &str = "x-sluice-record-content-type";
/// Milliseconds from the request to the answer's end, as the gateway measured them.
pub const RECORD_DURATION_MS: &str = "x-sluice-record-duration-ms";
/// Set (`response`) when the answer did not run to its end (the caller went away, or the
/// provider broke off a stream), or when the gateway kept only its first
/// [`MAX_RECORDED_ANSWER_BYTES`].
pub const RECORD_INCOMPLETE: &str = "x-sluice-record-incomplete";

/// Most bytes of an answer the gateway keeps for a record: the capture sidecar's default copy
/// limit (`--max-payload-bytes`) and one more, so a longer answer is marked truncated there.
pub const MAX_RECORDED_ANSWER_BYTES: usize = (1 << 20) + 1;

/// Where a recorded answer came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOrigin {
    /// The gateway's response cache: no model ran, so there is no usage row.
    Cache,
    /// The gateway's input guardrail refused the request: no model ran, so there is no usage
    /// row. The request is recorded with its personal data masked (whatever the endpoint's
    /// PII setting: a request refused for carrying it must not leave it in the table), and
    /// the answer is the refusal the caller got.
    Guardrail,
    /// An external model's provider (`openai`, `anthropic`, …): its token counts make the
    /// usage row.
    Provider(String),
    /// Not an exchange: a person's feedback on an earlier request
    /// ([`crate::feedback::Feedback`] as JSON is the whole body), for the feedback table.
    Feedback,
}

impl RecordOrigin {
    fn header(&self) -> String {
        match self {
            Self::Cache => "cache".into(),
            Self::Guardrail => "guardrail".into(),
            Self::Provider(name) => format!("provider:{name}"),
            Self::Feedback => "feedback".into(),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.split_once(':') {
            None if text == "cache" => Some(Self::Cache),
            None if text == "guardrail" => Some(Self::Guardrail),
            None if text == "feedback" => Some(Self::Feedback),
            Some(("provider", name)) if !name.is_empty() => Some(Self::Provider(name.into())),
            _ => None,
        }
    }
}

/// How a recorded exchange went, carried in the record's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// Bytes of the body that are the request; the rest is the answer.
    pub request_len: usize,
    /// Where the answer came from.
    pub origin: RecordOrigin,
    /// The answer's status code.
    pub status: u16,
    /// The answer's content type, when it had one.
    pub content_type: Option<HeaderValue>,
    /// Milliseconds the exchange took, when measured (a cache hit takes none worth recording).
    pub duration_ms: Option<u64>,
    /// The answer is not whole ([`RECORD_INCOMPLETE`]).
    pub incomplete: bool,
}

/// Why a record's headers cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordHeadError {
    /// A header is missing or does not parse.
    #[error("{0} is missing or malformed")]
    Malformed(&'static str),
    /// The request is said to be longer than the whole body.
    #[error("{RECORD} says the request has {request} bytes, but the body has only {body}")]
    TooLong {
        /// What the header said.
        request: usize,
        /// The body's length.
        body: usize,
    },
}

impl RecordHead {
    /// Writes the head into `headers`.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(RECORD, HeaderValue::from(self.request_len));
        if let Ok(origin) = HeaderValue::from_str(&self.origin.header()) {
            headers.insert(RECORD_ORIGIN, origin);
        }
        headers.insert(RECORD_STATUS, HeaderValue::from(self.status));
        if let Some(kind) = &self.content_type {
            headers.insert(RECORD_CONTENT_TYPE, kind.clone());
        }
        if let Some(ms) = self.duration_ms {
            headers.insert(RECORD_DURATION_MS, HeaderValue::from(ms));
        }
        if self.incomplete {
            headers.insert(RECORD_INCOMPLETE, HeaderValue::from_static("response"));
        }
    }

    /// Whether `headers` carry a record (see [`RecordHead::read`]).
    pub fn is_record(headers: &HeaderMap) -> bool {
        headers.contains_key(RECORD)
    }

    /// Reads the head of a record whose body has `body_len` bytes.
    pub fn read(headers: &HeaderMap, body_len: usize) -> Result<Self, RecordHeadError> {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &'static str| {
            text(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| RecordHeadError::Malformed(name))
                })
                .transpose()
        };
        let request_len = number(RECORD)?
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(RecordHeadError::Malformed(RECORD))?;
        if request_len > body_len {
            return Err(RecordHeadError::TooLong {
                request: request_len,
                body: body_len,
            });
        }
        let origin = text(RECORD_ORIGIN)
            .and_then(RecordOrigin::parse)
            .ok_or(RecordHeadError::Malformed(RECORD_ORIGIN))?;
        let status = number(RECORD_STATUS)?
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (100..600).contains(n))
            .ok_or(RecordHeadError::Malformed(RECORD_STATUS))?;
        Ok(Self {
            request_len,
            origin,
            status,
            content_type: headers.get(RECORD_CONTENT_TYPE).cloned(),
            duration_ms: number(RECORD_DURATION_MS)?,
            incomplete: headers.contains_key(RECORD_INCOMPLETE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_reads_back_as_written() {
        for origin in [
            RecordOrigin::Cache,
            RecordOrigin::Guardrail,
            RecordOrigin::Provider("anthropic".into()),
            RecordOrigin::Feedback,
        ] {
            let head = RecordHead {
                request_len: 12,
                origin,
                status: 429,
                content_type: Some(HeaderValue::from_static("text/event-stream")),
                duration_ms: Some(840),
                incomplete: true,
            };
            let mut headers = HeaderMap::new();
            head.write(&mut headers);
            assert!(RecordHead::is_record(&headers));
            assert_eq!(RecordHead::read(&headers, 30), Ok(head));
        }
    }

    #[test]
    fn a_bad_head_is_named() {
        let mut headers = HeaderMap::new();
        assert!(!RecordHead::is_record(&headers));
        assert_eq!(
            RecordHead::read(&headers, 3),
            Err(RecordHeadError::Malformed(RECORD))
        );
        headers.insert(RECORD, HeaderValue::from_static("9"));
        assert_eq!(
            RecordHead::read(&headers, 3),
            Err(RecordHeadError::TooLong {
                request: 9,
                body: 3
            })
        );
        headers.insert(RECORD, HeaderValue::from_static("2"));
        headers.insert(RECORD_ORIGIN, HeaderValue::from_static("provider:"));
        assert_eq!(
            RecordHead::read(&headers, 3),
            Err(RecordHeadError::Malformed(RECORD_ORIGIN))
        );
        headers.insert(RECORD_ORIGIN, HeaderValue::from_static("cache"));
        headers.insert(RECORD_STATUS, HeaderValue::from_static("99"));
        assert_eq!(
            RecordHead::read(&headers, 3),
            Err(RecordHeadError::Malformed(RECORD_STATUS))
        );
        headers.insert(RECORD_STATUS, HeaderValue::from_static("200"));
        headers.insert(RECORD_DURATION_MS, HeaderValue::from_static("soon"));
        assert_eq!(
            RecordHead::read(&headers, 3),
            Err(RecordHeadError::Malformed(RECORD_DURATION_MS))
        );
        headers.remove(RECORD_DURATION_MS);
        let head = RecordHead::read(&headers, 3).expect("a cache hit");
        assert_eq!((head.origin, head.duration_ms), (RecordOrigin::Cache, None));
    }
}
