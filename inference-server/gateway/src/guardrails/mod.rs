//! Guardrails (`spec.aiGateway.guardrails`): what a request may carry before it reaches a
//! model (`input`), and what an answer may carry before it reaches the caller (`output`). Pure
//! steps over the buffered JSON body, and for streamed answers over their events
//! ([`output::StreamGuard`]):
//!
//! - personal data ([`pii`]): `BLOCK` refuses (400 naming the kinds found), `MASK` replaces each
//!   finding in every string value with its typed placeholder (`<EMAIL_ADDRESS>`);
//! - `invalidKeywords`: text that contains one (case-insensitive) is refused;
//! - `validTopics` (input only): a chat request whose user messages mention none of them
//!   (case-insensitive word or phrase match) is refused.
//!
//! The input verdict travels to the capture sidecar in the `x-sluice-guardrails` header (a
//! request-metadata entry of the inference table).

pub mod output;
pub use sluice_protocol::pii;

use std::collections::BTreeSet;

use serde_json::Value;
use sluice_crds::{GuardrailParameters, PiiBehavior, ServingEndpoint};
use sluice_protocol::ApiError;

use self::pii::PiiKind;

/// The guardrails of one endpoint, each direction ready to apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Guardrails {
    /// On requests, when set with a check that acts.
    pub input: Option<Checks>,
    /// On answers, when set with a check that acts.
    pub output: Option<std::sync::Arc<Checks>>,
}

/// The checks of one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checks {
    /// What to do with personal data.
    pub pii: PiiBehavior,
    /// Refused keywords, lowercased.
    pub invalid_keywords: Vec<String>,
    /// Allowed topics of chat requests, lowercased (empty: any topic; input only).
    pub valid_topics: Vec<String>,
}

/// What the guardrails did to a request that may go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The kinds of personal data masked.
    pub masked: BTreeSet<PiiKind>,
    /// The body with every finding masked, when something was.
    pub body: Option<Vec<u8>>,
}

impl Verdict {
    /// The `x-sluice-guardrails` header value: `input=pass` or `input=masked:<KIND>,…`.
    pub fn header(&self) -> String {
        if self.masked.is_empty() {
            "input=pass".into()
        } else {
            let kinds: Vec<&str> = self.masked.iter().map(|k| k.name()).collect();
            format!("input=masked:{}", kinds.join(","))
        }
    }
}

/// The guardrails of `endpoint`'s spec.
pub fn of(endpoint: &ServingEndpoint) -> Guardrails {
    let spec = endpoint
        .spec
        .ai_gateway
        .as_ref()
        .and_then(|g| g.guardrails.as_ref());
    Guardrails {
        input: spec.and_then(|g| g.input.as_ref()).and_then(Checks::of),
        output: spec
            .and_then(|g| g.output.as_ref())
            .and_then(Checks::of)
            .map(std::sync::Arc::new),
    }
}

impl Checks {
    /// The checks `parameters` ask for, `None` when none acts.
    fn of(parameters: &GuardrailParameters) -> Option<Self> {
        let lower = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|k| k.trim().to_lowercase())
                .filter(|k| !k.is_empty())
                .collect()
        };
        let checks = Self {
            pii: parameters
                .pii
                .as_ref()
                .map(|p| p.behavior)
                .unwrap_or_default(),
            invalid_keywords: lower(&parameters.invalid_keywords),
            valid_topics: lower(&parameters.valid_topics),
        };
        (checks != Self::default()).then_some(checks)
    }

    /// The first refused keyword in `texts`, if any.
    fn keyword_in<'a>(&self, texts: impl Iterator<Item = &'a str>) -> Option<&str> {
        if self.invalid_keywords.is_empty() {
            return None;
        }
        let lowered: Vec<String> = texts.map(str::to_lowercase).collect();
        self.invalid_keywords
            .iter()
            .find(|k| lowered.iter().any(|t| t.contains(k.as_str())))
            .map(String::as_str)
    }
}

/// Every string value of `value`, keys aside.
fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Masks every finding in every string value of `value`; adds the kinds masked to `kinds`.
fn mask_strings(value: &mut Value, kinds: &mut BTreeSet<PiiKind>) {
    match value {
        Value::String(s) => {
            let spans = pii::find(s);
            if let Some(masked) = pii::mask(s, &spans) {
                kinds.extend(spans.iter().map(|span| span.kind));
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, kinds)),
        Value::Object(map) => map.values_mut().for_each(|v| mask_strings(v, kinds)),
        _ => {}
    }
}

/// The text of a chat request's user messages (string or `text` parts), lowercased; `None`
/// when the body is not a chat request.
fn user_text(body: &Value) -> Option<String> {
    let messages = body.get("messages")?.as_array()?;
    let mut text = String::new();
    for message in messages.iter().filter(|m| m["role"] == "user") {
        match &message["content"] {
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .for_each(|t| {
                    text.push(' ');
                    text.push_str(t);
                }),
            _ => {}
        }
        text.push('\n');
    }
    Some(text.to_lowercase())
}

/// Whether `phrase` occurs in `text` on word boundaries.
fn mentions(text: &str, phrase: &str) -> bool {
    text.match_indices(phrase).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + phrase.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// `body` with every finding of personal data masked (JSON string values, or the whole text),
/// `None` when it holds none: how a refused request is recorded.
pub fn masked(body: &[u8]) -> Option<Vec<u8>> {
    let mask = Checks {
        pii: PiiBehavior::MASK,
        ..Checks::default()
    };
    mask.check("", body).ok().and_then(|verdict| verdict.body)
}

impl Checks {
    /// Checks a request `body` (JSON; other bodies are checked as text) for endpoint
    /// `endpoint`: the error to answer, or the verdict (with the masked body) to go on with.
    pub fn check(&self, endpoint: &str, body: &[u8]) -> Result<Verdict, ApiError> {
        let mut json: Value = match serde_json::from_slice(body) {
            Ok(json) => json,
            Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
        };
        let mut texts = Vec::new();
        strings(&json, &mut texts);
        if let Some(keyword) = self.keyword_in(texts.iter().copied()) {
            return Err(ApiError::bad_request(format!(
                "the input guardrail of serving endpoint {endpoint:?} refuses the request: it \
                 contains the keyword {keyword:?}"
            )));
        }
        if !self.valid_topics.is_empty()
            && let Some(text) = user_text(&json)
            && !self.valid_topics.iter().any(|t| mentions(&text, t))
        {
            return Err(ApiError::bad_request(format!(
                "the input guardrail of serving endpoint {endpoint:?} refuses the request: it is \
                 about none of the allowed topics ({})",
                self.valid_topics.join(", ")
            )));
        }
        match self.pii {
            PiiBehavior::NONE => Ok(Verdict::default()),
            PiiBehavior::BLOCK => {
                let found: BTreeSet<&str> = texts
                    .iter()
                    .flat_map(|t| pii::find(t))
                    .map(|span| span.kind.name())
                    .collect();
                if found.is_empty() {
                    Ok(Verdict::default())
                } else {
                    Err(ApiError::bad_request(format!(
                        "the input guardrail of serving endpoint {endpoint:?} refuses the \
                         request: it contains personal data ({})",
                        found.into_iter().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
            PiiBehavior::MASK => {
                let mut masked = BTreeSet::new();
                mask_strings(&mut json, &mut masked);
                if masked.is_empty() {
                    return Ok(Verdict::default());
                }
                let body = match &json {
                    // A body that was not JSON stays text.
                    Value::String(text) if serde_json::from_slice::<Value>(body).is_err() => {
                        text.clone().into_bytes()
                    }
                    json => serde_json::to_vec(json).unwrap_or_default(),
                };
                Ok(Verdict {
                    masked,
                    body: Some(body),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guardrails(pii: PiiBehavior) -> Checks {
        Checks {
            pii,
            invalid_keywords: vec!["project falcon".into()],
            valid_topics: vec!["billing".into(), "iris".into()],
        }
    }

    #[test]
    fn blocking_names_the_kinds_and_masking_rewrites_only_strings() {
        let body = br#"{"messages": [{"role": "user", "content": "billing: mail jo@x.org, card 4111 1111 1111 1111"}], "max_tokens": 5}"#;
        let error = guardrails(PiiBehavior::BLOCK)
            .check("chat", body)
            .unwrap_err();
        assert!(
            error.message.contains("CREDIT_CARD, EMAIL_ADDRESS"),
            "{}",
            error.message
        );
        let verdict = guardrails(PiiBehavior::MASK)
            .check("chat", body)
            .expect("masked");
        let masked: Value = serde_json::from_slice(verdict.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            masked["messages"][0]["content"],
            "billing: mail <EMAIL_ADDRESS>, card <CREDIT_CARD>"
        );
        assert_eq!(masked["max_tokens"], 5);
        assert_eq!(verdict.header(), "input=masked:EMAIL_ADDRESS,CREDIT_CARD");
        // A refused request is recorded masked, whatever the endpoint's PII setting.
        assert_eq!(super::masked(body), verdict.body);
        assert_eq!(
            super::masked(b"mail jo@x.org").as_deref(),
            Some(&b"mail <EMAIL_ADDRESS>"[..])
        );
        assert_eq!(super::masked(br#"{"inputs": [[1, 2]]}"#), None);
    }

    #[test]
    fn keywords_and_topics_refuse_with_a_reason() {
        let g = guardrails(PiiBehavior::NONE);
        let refused = |body: &str| g.check("chat", body.as_bytes()).map_err(|e| e.message);
        assert!(
            refused(r#"{"messages": [{"role": "user", "content": "Iris and Project FALCON"}]}"#)
                .unwrap_err()
                .contains("\"project falcon\"")
        );
        assert!(
            refused(r#"{"messages": [{"role": "user", "content": "tell me a joke"}]}"#)
                .unwrap_err()
                .contains("billing, iris")
        );
        assert!(refused(r#"{"messages": [{"role": "user", "content": "Iris petals?"}]}"#).is_ok());
        assert!(
            refused(r#"{"messages": [{"role": "user", "content": "irises? no: virisol"}]}"#)
                .is_err(),
            "topics match whole words"
        );
        assert!(
            refused(r#"{"inputs": [[1, 2]]}"#).is_ok(),
            "topics apply to chats only"
        );
    }
}
