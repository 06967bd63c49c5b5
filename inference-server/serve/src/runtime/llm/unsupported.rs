//! Request fields the builtin language-model runtime does not act on, refused by name.
//!
//! OpenAI clients send a field only when their caller sets it, so a field that changes what
//! the model answers (tool calls, a response format, penalties, log-probabilities …) and is
//! not implemented must be a 400 naming it, never silently ignored. A field at its no-effect
//! value (`tool_choice: "none"`, a penalty of 0) is accepted. (`response_format` and
//! `logprobs` are read by [`super::json_mode`] and [`super::logprobs`].) Fields that do not change the answer (`user`, `metadata`,
//! `store` …) and fields unknown here are left alone.

use serde_json::{Map, Value};
use sluice_protocol::ApiError;

/// Which route the fields came with: a few fields differ between them (`logprobs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// Whether `value` is the no-effect value of `field`; `None` for a field this module does not
/// judge.
fn inert(field: &str, value: &Value) -> Option<bool> {
    let zero = |value: &Value| value.is_null() || value.as_f64() == Some(0.0);
    let empty = |value: &Value| {
        value.is_null()
            || value.as_array().is_some_and(Vec::is_empty)
            || value.as_object().is_some_and(Map::is_empty)
    };
    Some(match field {
        "tools" | "functions" | "logit_bias" => empty(value),
        "tool_choice" | "function_call" => value.is_null() || value == "none",
        "presence_penalty" | "frequency_penalty" => zero(value),
        "repetition_penalty" => value.is_null() || value.as_f64() == Some(1.0),
        "top_k" => value.is_null() || matches!(value.as_i64(), Some(-1 | 0)),
        "min_p" => zero(value),
        "echo" => value.is_null() || value == false,
        "suffix" => value.is_null() || value == "",
        "best_of" => value.is_null() || value.as_u64() == Some(1),
        "modalities" => value.is_null() || *value == serde_json::json!(["text"]),
        "audio" | "prediction" => value.is_null(),
        _ => return None,
    })
}

/// The first field of `extra` that would change the answer and is not implemented, as a 400
/// naming it.
pub fn refuse(extra: &Map<String, Value>) -> Result<(), ApiError> {
    for (field, value) in extra {
        if inert(field, value) == Some(false) {
            return Err(ApiError::invalid(format!(
                "`{field}` is not supported by the builtin language-model runtime (got \
                 {value}); leave it out, or serve the model on an engine that implements it"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: Value) -> Result<(), String> {
        refuse(body.as_object().unwrap()).map_err(|error| error.message)
    }

    #[test]
    fn fields_that_would_change_the_answer_are_named() {
        for (body, field) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"top_k": 40}), "top_k"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        ] {
            let error = check(body).unwrap_err();
            assert!(error.contains(&format!("`{field}`")), "{error}");
        }
        let error = check(json!({"echo": true})).unwrap_err();
        assert!(error.contains("`echo`"), "{error}");
    }

    #[test]
    fn no_effect_values_and_harmless_fields_pass() {
        let body = json!({
            "tools": [], "tool_choice": "none",
            "presence_penalty": 0, "frequency_penalty": 0.0, "user": "u-1", "metadata": {"team": "a"}, "store": false,
            "some_vendor_field": 3,
        });
        assert_eq!(check(body), Ok(()));
        let body = json!({"echo": false, "best_of": 1, "suffix": ""});
        assert_eq!(check(body), Ok(()));
    }
}
