//! Human feedback on an earlier request: what a client sends to
//! `POST /serving-endpoints/{name}/feedback`, checked by the gateway, and what the gateway
//! hands a capture sidecar (a record of origin `feedback`, [`crate::record`]) to become a row
//! of the endpoint's feedback table (`<prefix>_feedback`), joinable with the inference table on
//! `request_id`.
//!
//! ```json
//! {"request_id": "7c1e…", "label": "fraud", "rating": 1, "comment": "correct, caught it"}
//! ```
//!
//! `request_id` is the id the gateway answered the request with (`x-request-id`). At least one
//! of `label` (the truth, for the monitor's quality metrics; a string, number or boolean),
//! `rating` (any number: thumbs up/down as 1/-1, stars as 1–5) and `comment` is required.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest `request_id` taken.
pub const MAX_REQUEST_ID_CHARS: usize = 256;
/// Longest `label` taken, in characters.
pub const MAX_LABEL_CHARS: usize = 1024;
/// Longest `comment` taken, in characters.
pub const MAX_COMMENT_CHARS: usize = 16 * 1024;
/// Largest feedback body read, in bytes.
pub const MAX_FEEDBACK_BYTES: usize = 64 * 1024;

/// One piece of feedback, checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The request it is about (its `x-request-id`).
    pub request_id: String,
    /// The true answer, as text (a number or boolean label as its JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Why a feedback body was refused; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedbackError {
    /// Not a JSON object.
    #[error("the feedback body is not a JSON object: {0}")]
    NotAnObject(String),
    /// A field is missing, has the wrong type or is too long.
    #[error("feedback field '{field}' {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A field this API does not know (a misspelling would otherwise be lost).
    #[error("unknown feedback field '{0}' (known: request_id, label, rating, comment)")]
    Unknown(String),
    /// Nothing to record.
    #[error("feedback needs at least one of 'label', 'rating' and 'comment'")]
    Empty,
}

fn field(field: &'static str, problem: impl Into<String>) -> FeedbackError {
    FeedbackError::Field {
        field,
        problem: problem.into(),
    }
}

fn text(
    value: &Value,
    name: &'static str,
    max: usize,
    numbers: bool,
) -> Result<String, FeedbackError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(n) if numbers => n.to_string(),
        Value::Bool(b) if numbers => b.to_string(),
        _ if numbers => return Err(field(name, "must be a string, a number or a boolean")),
        _ => return Err(field(name, "must be a string")),
    };
    if text.chars().count() > max {
        return Err(field(name, format!("is longer than {max} characters")));
    }
    Ok(text)
}

impl Feedback {
    /// Reads and checks a client's feedback body.
    pub fn parse(body: &[u8]) -> Result<Self, FeedbackError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| FeedbackError::NotAnObject(error.to_string()))?;
        let Value::Object(object) = value else {
            return Err(FeedbackError::NotAnObject(format!(
                "it is {}",
                match value {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            )));
        };
        if let Some(unknown) = object
            .keys()
            .find(|key| !matches!(key.as_str(), "request_id" | "label" | "rating" | "comment"))
        {
            return Err(FeedbackError::Unknown(unknown.clone()));
        }
        let request_id = match object.get("request_id") {
            None | Some(Value::Null) => return Err(field("request_id", "is required")),
            Some(value) => text(value, "request_id", MAX_REQUEST_ID_CHARS, false)?,
        };
        if request_id.trim().is_empty() {
            return Err(field("request_id", "is empty"));
        }
        let label = match object.get("label") {
            None | Some(Value::Null) => None,
            Some(value) => Some(text(value, "label", MAX_LABEL_CHARS, true)?),
        };
        let rating = match object.get("rating") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_f64()
                    .filter(|r| r.is_finite())
                    .ok_or_else(|| field("rating", "is not a finite number"))?,
            ),
            Some(_) => return Err(field("rating", "must be a number")),
        };
        let comment = match object.get("comment") {
            None | Some(Value::Null) => None,
            Some(value) => Some(text(value, "comment", MAX_COMMENT_CHARS, false)?),
        };
        if label.is_none() && rating.is_none() && comment.is_none() {
            return Err(FeedbackError::Empty);
        }
        Ok(Self {
            request_id,
            label,
            rating,
            comment,
        })
    }

    /// The checked feedback as the gateway sends it on.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_is_read_and_labels_become_text() {
        let feedback =
            Feedback::parse(br#"{"request_id": "r1", "label": 1, "rating": 4.5, "comment": "ok"}"#)
                .unwrap();
        assert_eq!(
            feedback,
            Feedback {
                request_id: "r1".into(),
                label: Some("1".into()),
                rating: Some(4.5),
                comment: Some("ok".into()),
            }
        );
        assert_eq!(Feedback::parse(&feedback.to_json()), Ok(feedback));
        let thumbs = Feedback::parse(br#"{"request_id": "r2", "label": true}"#).unwrap();
        assert_eq!(thumbs.label.as_deref(), Some("true"));
    }

    #[test]
    fn bad_feedback_names_the_field() {
        let error = |body: &str| Feedback::parse(body.as_bytes()).unwrap_err().to_string();
        assert!(error("[1]").contains("not a JSON object"));
        assert!(error(r#"{"label": "x"}"#).contains("'request_id' is required"));
        assert!(
            error(r#"{"request_id": 7, "label": "x"}"#).contains("'request_id' must be a string")
        );
        assert!(error(r#"{"request_id": " ", "label": "x"}"#).contains("'request_id' is empty"));
        assert!(error(r#"{"request_id": "r"}"#).contains("at least one of"));
        assert!(
            error(r#"{"request_id": "r", "rating": "5"}"#).contains("'rating' must be a number")
        );
        assert!(
            error(r#"{"request_id": "r", "label": [1]}"#)
                .contains("'label' must be a string, a number")
        );
        assert!(
            error(r#"{"request_id": "r", "lable": "x"}"#)
                .contains("unknown feedback field 'lable'")
        );
        let long = format!(
            r#"{{"request_id": "r", "comment": "{}"}}"#,
            "x".repeat(MAX_COMMENT_CHARS + 1)
        );
        assert!(error(&long).contains("'comment' is longer than"));
    }
}
