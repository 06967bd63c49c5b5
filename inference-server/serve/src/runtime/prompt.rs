//! Prompt models: a template with `{{variable}}` placeholders, rendered from the request and
//! sent as a chat to an OpenAI-compatible upstream.
//!
//! Variables: for chat and completions, `{{input}}` is the last user message (or the prompt)
//! and `extra_params` adds more; for `/invocations`, each row's columns are the variables (a
//! row that is a bare string is `{{input}}`). The upstream's answer comes back in OpenAI
//! shape; a streamed chat is passed through as it arrives.

use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};
use sluice_protocol::openai::{
    ChatMessage, ChatRequest, ChatResponse, CompletionChoice, CompletionRequest,
    CompletionResponse, Sampling, Usage, completion_id, unix_seconds,
};
use sluice_protocol::scoring::{ScoringInput, ScoringRequest};
use sluice_protocol::{ApiError, ErrorKind};

use super::{ChatReply, LoadContext, LoadError};
use crate::model_dir::{ModelSpec, PromptSpec};

/// A prompt template bound to its upstream.
pub struct PromptModel {
    name: String,
    prompt: PromptSpec,
    endpoint: String,
    api_key: Option<String>,
    client: reqwest::Client,
    timeout: std::time::Duration,
    metrics: crate::metrics::ServeMetrics,
}

impl PromptModel {
    /// Builds the HTTP client; reads the API key from the variable the manifest names.
    pub fn load(spec: &ModelSpec, context: &LoadContext) -> Result<Self, LoadError> {
        let prompt = spec
            .prompt
            .clone()
            .ok_or_else(|| LoadError::Unsupported("a prompt model needs a `prompt`".into()))?;
        let api_key = match &prompt.upstream.api_key_env {
            None => None,
            Some(variable) => Some(std::env::var(variable).map_err(|_| {
                LoadError::Unsupported(format!(
                    "the upstream API key variable `{variable}` is not set"
                ))
            })?),
        };
        let client = reqwest::Client::builder()
            .timeout(context.request_timeout)
            .connect_timeout(
                context
                    .request_timeout
                    .min(std::time::Duration::from_secs(10)),
            )
            .build()
            .map_err(|error| {
                LoadError::Unsupported(format!("cannot build the HTTP client: {error}"))
            })?;
        let endpoint = format!(
            "{}/chat/completions",
            prompt.upstream.url.trim_end_matches('/')
        );
        Ok(Self {
            name: spec.name.clone(),
            prompt,
            endpoint,
            api_key,
            client,
            timeout: context.request_timeout,
            metrics: context.metrics.clone(),
        })
    }

    /// A chat: the last user message is `{{input}}`; earlier turns are kept.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatReply, ApiError> {
        let mut history = request.messages;
        let last_user = history
            .iter()
            .rposition(|message| message.role == "user")
            .ok_or_else(|| {
                ApiError::invalid("`messages` has no user message to fill the template")
            })?;
        let input = history.remove(last_user).text_content();
        let variables = variables_with_input(&request.extra, input);
        let messages = self.messages(&history, &variables)?;
        if request.sampling.stream {
            return self
                .stream(messages, &request.sampling)
                .await
                .map(ChatReply::Stream);
        }
        let mut response = self.call(messages, &request.sampling).await?;
        response.model.clone_from(&self.name);
        Ok(ChatReply::Full(response))
    }

    /// Completions: each prompt is `{{input}}` of one upstream chat.
    pub async fn completions(
        &self,
        request: CompletionRequest,
    ) -> Result<CompletionResponse, ApiError> {
        if request.sampling.stream {
            return Err(ApiError::invalid(
                "`stream` is served for chat completions only; use /v1/chat/completions",
            ));
        }
        let calls = request.prompt.into_vec().into_iter().map(|prompt| {
            let variables = variables_with_input(&request.extra, prompt);
            let sampling = &request.sampling;
            async move { self.call(self.messages(&[], &variables)?, sampling).await }
        });
        let responses = futures::future::try_join_all(calls).await?;
        let mut usage = Usage::default();
        let choices = responses
            .into_iter()
            .enumerate()
            .map(|(index, response)| {
                usage = Usage::new(
                    usage.prompt_tokens + response.usage.prompt_tokens,
                    usage.completion_tokens + response.usage.completion_tokens,
                );
                let choice = response.choices.into_iter().next();
                CompletionChoice {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    text: choice
                        .as_ref()
                        .map(|c| c.message.text_content())
                        .unwrap_or_default(),
                    logprobs: None,
                    finish_reason: choice.and_then(|c| c.finish_reason),
                }
            })
            .collect();
        Ok(CompletionResponse {
            id: completion_id("cmpl"),
            object: "text_completion".to_string(),
            created: unix_seconds(),
            model: self.name.clone(),
            choices,
            usage,
        })
    }

    /// `/invocations`: one upstream chat per row; predictions are the answers' texts.
    /// `params` may set `temperature`, `max_tokens` and `top_p`.
    pub async fn predict(&self, request: ScoringRequest) -> Result<Value, ApiError> {
        let sampling: Sampling = serde_json::from_value(Value::Object(request.params))
            .map_err(|error| ApiError::invalid(format!("bad `params`: {error}")))?;
        let rows: Vec<Map<String, Value>> = match request.input {
            ScoringInput::Frame(frame) => frame
                .rows
                .into_iter()
                .map(|row| frame.columns.iter().cloned().zip(row).collect())
                .collect(),
            ScoringInput::Rows(rows) => rows
                .into_iter()
                .map(|row| variables_with_input(&Map::new(), value_text(&row)))
                .collect(),
        };
        let calls = rows.iter().map(|variables| {
            let sampling = &sampling;
            async move {
                let response = self.call(self.messages(&[], variables)?, sampling).await?;
                Ok::<_, ApiError>(
                    response
                        .choices
                        .first()
                        .map(|c| c.message.text_content())
                        .unwrap_or_default(),
                )
            }
        });
        Ok(Value::from(futures::future::try_join_all(calls).await?))
    }

    /// The messages sent upstream: the system message, earlier turns, the rendered template.
    fn messages(
        &self,
        history: &[ChatMessage],
        variables: &Map<String, Value>,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        let mut messages = Vec::with_capacity(history.len() + 2);
        if let Some(system) = &self.prompt.system {
            messages.push(ChatMessage::text("system", render(system, variables)?));
        }
        messages.extend(history.iter().cloned());
        messages.push(ChatMessage::text(
            "user",
            render(&self.prompt.template, variables)?,
        ));
        Ok(messages)
    }

    fn request(
        &self,
        messages: Vec<ChatMessage>,
        sampling: &Sampling,
        stream: bool,
    ) -> reqwest::RequestBuilder {
        let sampling = Sampling {
            stream,
            ..sampling.clone()
        };
        let mut body = json!({"model": self.prompt.upstream.model, "messages": messages});
        if let (Value::Object(body), Ok(Value::Object(fields))) =
            (&mut body, serde_json::to_value(sampling))
        {
            body.extend(fields);
        }
        let request = self.client.post(&self.endpoint).json(&body);
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn call(
        &self,
        messages: Vec<ChatMessage>,
        sampling: &Sampling,
    ) -> Result<ChatResponse, ApiError> {
        let response = self.send(self.request(messages, sampling, false)).await?;
        let response = response.json::<ChatResponse>().await.map_err(|error| {
            ApiError::new(
                ErrorKind::BadGateway,
                format!("the upstream answered an unreadable chat completion: {error}"),
            )
        })?;
        self.metrics.observe_tokens(
            response.usage.prompt_tokens,
            response.usage.completion_tokens,
        );
        Ok(response)
    }

    async fn stream(
        &self,
        messages: Vec<ChatMessage>,
        sampling: &Sampling,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<axum::body::Bytes, std::io::Error>>,
        ApiError,
    > {
        let response = self.send(self.request(messages, sampling, true)).await?;
        Ok(response
            .bytes_stream()
            .map_err(std::io::Error::other)
            .boxed())
    }

    fn upstream_error(&self, error: &reqwest::Error) -> ApiError {
        let endpoint = &self.endpoint;
        if error.is_timeout() {
            let limit = self.timeout;
            ApiError::new(
                ErrorKind::DeadlineExceeded,
                format!("the upstream {endpoint} did not answer within the {limit:?} deadline"),
            )
        } else {
            ApiError::new(
                ErrorKind::BadGateway,
                format!("cannot reach the upstream {endpoint}: {error}"),
            )
        }
    }

    /// Sends to the upstream; maps its failures to 502/504, and passes its verdict on the
    /// client's own values (400, 429) through.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.upstream_error(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let detail: String = text.chars().take(500).collect();
        let kind = match status.as_u16() {
            400 | 422 => ErrorKind::InvalidParameterValue,
            429 => ErrorKind::RequestLimitExceeded,
            _ => ErrorKind::BadGateway,
        };
        Err(ApiError::new(
            kind,
            format!("the upstream answered {status}: {detail}"),
        ))
    }
}

/// The template variables of a chat or completion: `extra_params` plus `input`.
fn variables_with_input(extra: &Map<String, Value>, input: String) -> Map<String, Value> {
    let mut variables = extra
        .get("extra_params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    variables.insert("input".to_string(), Value::String(input));
    variables
}

/// A value as template text: strings as they are, anything else as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Renders `{{name}}` placeholders (spaces inside the braces allowed) from `variables`.
pub fn render(template: &str, variables: &Map<String, Value>) -> Result<String, ApiError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = variables.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = variables.keys().map(String::as_str).collect();
            known.sort_unstable();
            ApiError::invalid(format!(
                "the prompt template needs `{name}`, which the request does not give (it gives: {})",
                known.join(", ")
            ))
        })?;
        out.push_str(&value_text(value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_variables_and_names_missing_ones() {
        let mut variables = Map::new();
        variables.insert("city".into(), json!("Lima"));
        variables.insert("days".into(), json!(3));
        assert_eq!(
            render("Plan {{ days }} days in {{city}}.", &variables).unwrap(),
            "Plan 3 days in Lima."
        );
        assert_eq!(
            render("no braces }} {{", &variables).unwrap(),
            "no braces }} {{"
        );
        let error = render("Hi {{name}}", &variables).unwrap_err();
        assert!(
            error.message.contains("`name`") && error.message.contains("city, days"),
            "{error}"
        );
    }
}
