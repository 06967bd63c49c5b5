//! Log-probabilities of generated tokens (OpenAI's `logprobs`): what a request asks, the
//! log-softmax of the model's raw next-token logits at each step, and the two answer shapes
//! (chat's `logprobs.content`, completions' `tokens` / `token_logprobs` / `top_logprobs` /
//! `text_offset`).
//!
//! The distribution is the model's own (before temperature and `top_p`), as OpenAI and
//! llama.cpp report it. `return_tokens_as_token_ids` (vLLM's extension) writes each token as
//! `token_id:<id>`, so a client can tell apart two spellings of the same text.

use serde_json::{Map, Value, json};
use sluice_protocol::ApiError;
use tokenizers::Tokenizer;

use super::unsupported::Route;

/// Most alternatives per token: OpenAI's limits (chat 20, completions 5).
const MOST_TOP_CHAT: u64 = 20;
const MOST_TOP_COMPLETIONS: u64 = 5;

/// What a request asks of log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    /// Alternatives reported per token besides the chosen one.
    pub top: usize,
    /// Tokens written as `token_id:<id>`.
    pub token_ids: bool,
}

/// One generated token: its log-probability and the best alternatives, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The `top` most likely tokens and theirs.
    pub top: Vec<(u32, f32)>,
}

/// Reads `logprobs` (chat: a boolean, with `top_logprobs` 0–20; completions: 0–5) and
/// `return_tokens_as_token_ids`; `None` when no log-probabilities are asked for.
pub fn asked(extra: &Map<String, Value>, route: Route) -> Result<Option<Asked>, ApiError> {
    let field = |name: &str| extra.get(name).filter(|value| !value.is_null());
    let count = |name: &str, value: &Value, most: u64| {
        value
            .as_u64()
            .filter(|n| *n <= most)
            .map(|n| n as usize)
            .ok_or_else(|| {
                ApiError::invalid(format!("`{name}` is {value}; it must be 0 to {most}"))
            })
    };
    let top = match route {
        Route::Chat => {
            let wanted = match field("logprobs") {
                None => false,
                Some(Value::Bool(wanted)) => *wanted,
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "`logprobs` is {other}; it is true or false"
                    )));
                }
            };
            let top = field("top_logprobs")
                .map(|value| count("top_logprobs", value, MOST_TOP_CHAT))
                .transpose()?;
            match (wanted, top) {
                (false, Some(top)) if top > 0 => {
                    return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`"));
                }
                (false, _) => return Ok(None),
                (true, top) => top.unwrap_or(0),
            }
        }
        Route::Completions => match field("logprobs") {
            None => return Ok(None),
            Some(value) => count("logprobs", value, MOST_TOP_COMPLETIONS)?,
        },
    };
    let token_ids = match field("return_tokens_as_token_ids") {
        None => false,
        Some(Value::Bool(on)) => *on,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`return_tokens_as_token_ids` is {other}; it is true or false"
            )));
        }
    };
    Ok(Some(Asked { top, token_ids }))
}

/// The log-probability of `chosen` and the `top` best tokens, from raw logits.
pub fn of(logits: &[f32], chosen: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max
        + logits
            .iter()
            .map(|logit| f64::from(logit - max).exp())
            .sum::<f64>()
            .ln() as f32;
    let logprob = |id: usize| logits[id] - log_sum;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &logit) in logits.iter().enumerate() {
            if best.len() < top || logit > best[best.len() - 1].1 {
                let at = best.partition_point(|(_, other)| *other >= logit);
                best.insert(at, (id as u32, logit));
                best.truncate(top);
            }
        }
    }
    TokenLogprob {
        id: chosen,
        logprob: logprob(chosen as usize),
        top: best
            .into_iter()
            .map(|(id, _)| (id, logprob(id as usize)))
            .collect(),
    }
}

/// How a token is written: its text, or `token_id:<id>`.
fn spell(tokenizer: &Tokenizer, id: u32, asked: Asked) -> String {
    if asked.token_ids {
        return format!("token_id:{id}");
    }
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
pub fn chat(tokens: &[TokenLogprob], tokenizer: &Tokenizer, asked: Asked) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = spell(tokenizer, id, asked);
        let bytes = tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
            .into_bytes();
        json!({"token": token, "logprob": logprob, "bytes": bytes})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|token| {
            let mut value = entry(token.id, token.logprob);
            value["top_logprobs"] = token
                .top
                .iter()
                .map(|(id, logprob)| entry(*id, *logprob))
                .collect();
            value
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs`: `tokens`, `token_logprobs`, `top_logprobs` (a map per token),
/// `text_offset` (where each token's text starts in the answer).
pub fn completion(tokens: &[TokenLogprob], tokenizer: &Tokenizer, asked: Asked) -> Value {
    let mut offset = 0;
    let mut text_offset = Vec::with_capacity(tokens.len());
    for token in tokens {
        text_offset.push(offset);
        offset += tokenizer
            .decode(&[token.id], false)
            .unwrap_or_default()
            .len();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|token| {
            token
                .top
                .iter()
                .map(|(id, logprob)| (spell(tokenizer, *id, asked), json!(logprob)))
                .collect::<Map<String, Value>>()
                .into()
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|token| spell(tokenizer, token.id, asked)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|token| token.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0_f32.ln()];
        let token = of(&logits, 2, 2);
        let sum: f32 = logits.iter().map(|x| x.exp()).sum();
        assert!((token.logprob - (2.0f32.exp() / sum).ln()).abs() < 1e-6);
        assert_eq!(
            token.top.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!((token.top[0].1 - (3.0f32.exp() / sum).ln()).abs() < 1e-6);
        assert!(of(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn requests_are_read_per_route_and_bad_values_named() {
        let read = |body: Value, route| asked(body.as_object().unwrap(), route);
        assert_eq!(read(json!({}), Route::Chat).unwrap(), None);
        assert_eq!(read(json!({"logprobs": false}), Route::Chat).unwrap(), None);
        assert_eq!(
            read(json!({"logprobs": true, "top_logprobs": 3}), Route::Chat).unwrap(),
            Some(Asked {
                top: 3,
                token_ids: false
            })
        );
        assert_eq!(
            read(
                json!({"logprobs": 0, "return_tokens_as_token_ids": true}),
                Route::Completions
            )
            .unwrap(),
            Some(Asked {
                top: 0,
                token_ids: true
            })
        );
        for (body, route, needle) in [
            (
                json!({"top_logprobs": 2}),
                Route::Chat,
                "needs `logprobs: true`",
            ),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                Route::Chat,
                "0 to 20",
            ),
            (json!({"logprobs": 6}), Route::Completions, "0 to 5"),
            (json!({"logprobs": 2}), Route::Chat, "true or false"),
        ] {
            let error = read(body, route).unwrap_err().message;
            assert!(error.contains(needle), "{error}");
        }
    }
}
