//! One captured exchange as the proxy leaves it ([`RawExchange`]: bytes and facts, cheap to
//! make on the request path) and its conversion into a table row, done later by the spool
//! writer: UTF-8 decoding, reassembly of streamed responses, token counts and the client's
//! request id from the body.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_contract::metadata as row_keys;
use sluice_protocol::usage::TokenCounts;
use sluice_protocol::{pii, sse};

use crate::table::PayloadRecord;
use crate::table::record::{PAYLOAD_NOT_UTF8, STREAM_NOT_REASSEMBLED};
use crate::table::usage::UsageFacts;

/// What every row of this sidecar shares.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The ServingEndpoint.
    pub endpoint: String,
    /// The served entity.
    pub entity: String,
    /// The registered model.
    pub model: String,
    /// The model version.
    pub model_version: String,
    /// The sampling fraction in force.
    pub sampling_fraction: f64,
    /// The currency of usage costs, when the entity has a price.
    pub currency: Option<String>,
}

/// What the proxy measured of a tracked exchange's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeteredUsage {
    /// The token counts the answer reported, read from its bytes as they passed.
    pub tokens: Option<TokenCounts>,
    /// The cost at the entity's price.
    pub cost: Option<f64>,
}

/// A finished exchange before it becomes a row.
#[derive(Clone, Debug, Default)]
pub struct RawExchange {
    /// The id assigned or propagated.
    pub request_id: String,
    /// The client's id, when a header carried it.
    pub client_request_id: Option<String>,
    /// The caller, as the gateway asserted it.
    pub requester: Option<String>,
    /// Arrival, ms since the epoch.
    pub timestamp_ms: i64,
    /// First request byte to last response byte.
    pub execution_time_ms: i64,
    /// The status answered.
    pub status_code: u16,
    /// The copied request body (possibly cut).
    pub request: Vec<u8>,
    /// The copied response body (possibly cut).
    pub response: Vec<u8>,
    /// The response was a server-sent event stream.
    pub response_is_stream: bool,
    /// Request facts (method, path, content types, ...).
    pub metadata: BTreeMap<String, String>,
    /// `logging_error_codes` known on the request path.
    pub codes: Vec<&'static str>,
    /// Not sampled for the payload table: recorded only for its usage row (the request was
    /// copied to read its ids, the response only metered).
    pub usage_only: bool,
    /// The usage measured, when usage is tracked.
    pub usage: Option<MeteredUsage>,
    /// Mask personal data in the recorded answer (the endpoint's output guardrails act on it).
    pub mask_answer_pii: bool,
    /// A feedback on an earlier request (a row of the feedback table only).
    pub feedback: Option<sluice_contract::feedback::Feedback>,
}

impl RawExchange {
    /// Bytes held, for the queue's accounting.
    pub fn size(&self) -> usize {
        self.request.len() + self.response.len() + 256
    }

    /// The table row of this exchange.
    pub fn finish(self, identity: &Identity) -> PayloadRecord {
        let mut codes: Vec<String> = self.codes.iter().map(|c| (*c).to_string()).collect();
        let mut text = |bytes: Vec<u8>| -> Option<String> {
            if bytes.is_empty() {
                return None;
            }
            Some(match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(error) => {
                    let code = PAYLOAD_NOT_UTF8.to_string();
                    if !codes.contains(&code) {
                        codes.push(code);
                    }
                    String::from_utf8_lossy(error.as_bytes()).into_owned()
                }
            })
        };
        let request = text(self.request);
        let mut response = text(self.response);
        let mut response_json: Option<Value> = None;
        if self.response_is_stream {
            match response.as_deref().and_then(sse::reassemble) {
                Some(body) => {
                    response = Some(body.to_string());
                    response_json = Some(body);
                }
                None if response.is_some() => codes.push(STREAM_NOT_REASSEMBLED.into()),
                None => {}
            }
        } else if let Some(body) = response.as_deref()
            && has(body, "\"usage\"")
        {
            // Parsed only for its token counts (`TokenCounts::from_body` reads `usage`).
            response_json = parse_object(body);
        }
        // The answer as the caller could see it: personal data masked (counted from the answer
        // as the model gave it, before masking, so token counts stay the model's).
        let response_masked = self.mask_answer_pii.then(|| {
            response
                .as_deref()
                .and_then(|text| pii::mask(text, &pii::find(text)))
        });
        let tokens = self
            .usage
            .and_then(|u| u.tokens)
            .or_else(|| response_json.as_ref().and_then(TokenCounts::from_body));
        let count = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
        let request_json = request
            .as_deref()
            .filter(|body| {
                has(body, "\"client_request_id\"")
                    || (self.usage.is_some() && has(body, "\"usage_context\""))
            })
            .and_then(parse_object);
        let client_request_id = self.client_request_id.or_else(|| {
            match request_json.as_ref()?.get("client_request_id") {
                Some(Value::String(id)) => Some(id.clone()),
                Some(Value::Number(id)) => Some(id.to_string()),
                _ => None,
            }
        });
        let usage = self.usage.map(|metered| UsageFacts {
            usage_context: request_json
                .as_ref()
                .and_then(|body| body.get("usage_context"))
                .map(usage_context)
                .unwrap_or_default(),
            cost: metered.cost,
            currency: metered.cost.and(identity.currency.clone()),
        });
        let mut metadata = self.metadata;
        // The cost beside the payload too, so the monitor's operational profile needs no join.
        if let Some(usage) = &usage
            && let Some(cost) = usage.cost
        {
            metadata.insert(row_keys::COST.into(), cost.to_string());
            if let Some(currency) = &usage.currency {
                metadata.insert(row_keys::CURRENCY.into(), currency.clone());
            }
        }
        let response = match response_masked {
            Some(Some(masked)) => {
                metadata.insert("answer_pii".into(), "masked".into());
                Some(masked)
            }
            _ => response,
        };
        let (request, response) = if self.usage_only {
            // Copied only to read ids and the usage context: no payload row holds them.
            (None, None)
        } else {
            (request, response)
        };
        PayloadRecord {
            request_id: self.request_id,
            client_request_id,
            timestamp_ms: self.timestamp_ms,
            status_code: i32::from(self.status_code),
            execution_time_ms: self.execution_time_ms,
            request,
            response,
            request_metadata: metadata,
            endpoint: identity.endpoint.clone(),
            served_entity: identity.entity.clone(),
            model: identity.model.clone(),
            model_version: identity.model_version.clone(),
            requester: self.requester,
            input_token_count: count(tokens.and_then(|t| t.input)),
            output_token_count: count(tokens.and_then(|t| t.output)),
            sampling_fraction: identity.sampling_fraction,
            logging_error_codes: codes,
            usage_only: self.usage_only,
            usage,
            feedback: self.feedback,
        }
    }
}

/// A request's `usage_context` object as string pairs (non-string values as JSON text).
fn usage_context(value: &Value) -> BTreeMap<String, String> {
    let Some(object) = value.as_object() else {
        return BTreeMap::new();
    };
    object
        .iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), text)
        })
        .collect()
}

/// Whether `needle` occurs in `body` (SIMD search: bodies may be megabytes).
fn has(body: &str, needle: &str) -> bool {
    memchr::memmem::find(body.as_bytes(), needle.as_bytes()).is_some()
}

/// Parses `body` when it looks like one JSON object.
fn parse_object(body: &str) -> Option<Value> {
    if !body.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::record::REQUEST_TRUNCATED;

    fn identity() -> Identity {
        Identity {
            endpoint: "chat".into(),
            entity: "chat-1".into(),
            model: "llama".into(),
            model_version: "1".into(),
            sampling_fraction: 0.5,
            currency: None,
        }
    }

    #[test]
    fn token_counts_and_client_ids_come_from_the_bodies() {
        let raw = RawExchange {
            request_id: "r".into(),
            status_code: 200,
            request: br#"{"messages": [], "client_request_id": "mine"}"#.to_vec(),
            response: br#"{"usage": {"prompt_tokens": 4, "completion_tokens": 9}}"#.to_vec(),
            ..Default::default()
        };
        let row = raw.finish(&identity());
        assert_eq!(row.client_request_id.as_deref(), Some("mine"));
        assert_eq!(row.input_token_count, Some(4));
        assert_eq!(row.output_token_count, Some(9));
        assert_eq!(row.served_entity, "chat-1");
        assert_eq!(row.sampling_fraction, 0.5);
    }

    #[test]
    fn usage_only_rows_keep_ids_context_and_metered_tokens_but_no_bodies() {
        let raw = RawExchange {
            request_id: "r".into(),
            status_code: 200,
            request: br#"{"client_request_id": 7, "usage_context": {"project": "p", "n": 2}}"#
                .to_vec(),
            usage_only: true,
            usage: Some(MeteredUsage {
                tokens: Some(TokenCounts {
                    input: Some(5),
                    output: Some(6),
                }),
                cost: Some(0.5),
            }),
            ..Default::default()
        };
        let identity = Identity {
            currency: Some("USD".into()),
            ..identity()
        };
        let row = raw.finish(&identity);
        assert_eq!(row.client_request_id.as_deref(), Some("7"));
        assert_eq!(
            (
                row.request_metadata[row_keys::COST].as_str(),
                row.request_metadata[row_keys::CURRENCY].as_str()
            ),
            ("0.5", "USD"),
            "the cost beside the payload"
        );
        assert_eq!((row.request, row.response), (None, None));
        assert_eq!(
            (row.input_token_count, row.output_token_count),
            (Some(5), Some(6))
        );
        let usage = row.usage.expect("tracked");
        assert_eq!(usage.usage_context["project"], "p");
        assert_eq!(usage.usage_context["n"], "2");
        assert_eq!(
            (usage.cost, usage.currency.as_deref()),
            (Some(0.5), Some("USD"))
        );
        assert!(row.usage_only);
    }

    #[test]
    fn personal_data_in_a_guarded_answer_is_masked_in_the_row_even_split_across_events() {
        let stream = concat!(
            "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"Mail jane.d\"}}]}\n\n",
            "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"oe@example.com now\"}}]}\n\n",
            "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 5}}\n\n",
            "data: [DONE]\n\n",
        );
        let raw = |mask: bool| RawExchange {
            status_code: 200,
            response: stream.as_bytes().to_vec(),
            response_is_stream: true,
            mask_answer_pii: mask,
            ..Default::default()
        };
        let row = raw(true).finish(&identity());
        let answer = row.response.expect("an answer");
        assert!(answer.contains("Mail <EMAIL_ADDRESS> now"), "{answer}");
        assert!(!answer.contains("example.com"), "{answer}");
        assert_eq!(row.request_metadata["answer_pii"], "masked");
        assert_eq!(row.output_token_count, Some(5), "the model's own counts");
        let unguarded = raw(false).finish(&identity());
        assert!(
            unguarded
                .response
                .expect("an answer")
                .contains("jane.doe@example.com")
        );
        assert!(!unguarded.request_metadata.contains_key("answer_pii"));
    }

    #[test]
    fn bad_bytes_and_odd_streams_are_kept_and_flagged() {
        let raw = RawExchange {
            request: vec![b'{', 0xff],
            response: b"data: tick\n\n".to_vec(),
            response_is_stream: true,
            codes: vec![REQUEST_TRUNCATED],
            ..Default::default()
        };
        let row = raw.finish(&identity());
        assert_eq!(row.request.as_deref(), Some("{\u{fffd}"));
        assert_eq!(row.response.as_deref(), Some("data: tick\n\n"));
        assert_eq!(
            row.logging_error_codes,
            [REQUEST_TRUNCATED, PAYLOAD_NOT_UTF8, STREAM_NOT_REASSEMBLED]
        );
        assert_eq!(row.input_token_count, None);
    }
}
