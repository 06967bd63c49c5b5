//! External model entities, served by the gateway itself: no pods, the provider called over
//! HTTPS with a key read from a Secret that never leaves the gateway.
//!
//! A request arrives in the OpenAI format on any of the endpoint's routes; [`prepare`] turns it
//! into the provider's request (the OpenAI API, Azure OpenAI, Anthropic's Messages API or a
//! Databricks serving endpoint, see [`sluice_contract::external::Api`]); [`answer`] turns the
//! provider's answer back into the OpenAI format, a stream event by event
//! ([`sluice_protocol::anthropic`]).
//! A provider's error becomes the gateway's error body with the status a caller can act on
//! ([`provider_error`]): its 429 stays a 429 with the provider's `Retry-After`, a rejected key
//! is the gateway's fault (502), never the caller's (401).

pub mod keys;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use sluice_contract::external::{self, Api};
use sluice_crds::common::SecretKeyRef;
use sluice_crds::{ExternalModel, ExternalTask};
use sluice_protocol::anthropic;
use sluice_protocol::error::error_chain;
use sluice_protocol::{ApiError, ErrorKind};

pub use keys::{ApiKey, Keys};

/// One external entity as the gateway calls it.
#[derive(Clone, Debug, PartialEq)]
pub struct External {
    /// The wire format and where.
    pub api: Api,
    /// The provider's model name.
    pub model: String,
    /// What the entity serves.
    pub task: ExternalTask,
    /// The namespace its key Secret lives in.
    pub namespace: String,
    /// The Secret key holding the provider's API key.
    pub key: Option<SecretKeyRef>,
}

/// Why this version of the gateway cannot call an external model: each setting it would not
/// act on, named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct Uncallable {
    /// The problems, one a setting.
    pub problems: Vec<String>,
}

impl External {
    /// The entity of `model` in `namespace`, or why this version cannot call it.
    pub fn of(model: &ExternalModel, namespace: &str) -> Result<Self, Uncallable> {
        let api = external::api(model).map_err(|problems| Uncallable { problems })?;
        Ok(Self {
            api,
            model: model.name.clone(),
            task: model.task,
            namespace: namespace.to_string(),
            key: model.api_key_secret_ref.clone(),
        })
    }
}

/// What the caller asked for, by route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
}

impl Route {
    /// The route of a request to `upstream_path` of an entity serving `task`; `/invocations`
    /// (and MLflow's `/endpoints/{name}/invocations`) means the entity's task.
    pub fn of(upstream_path: &str, task: ExternalTask) -> Self {
        match upstream_path {
            "/v1/chat/completions" => Self::Chat,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            _ => match task {
                ExternalTask::Chat => Self::Chat,
                ExternalTask::Completions => Self::Completions,
                ExternalTask::Embeddings => Self::Embeddings,
            },
        }
    }

    fn task(self) -> ExternalTask {
        match self {
            Self::Chat => ExternalTask::Chat,
            Self::Completions => ExternalTask::Completions,
            Self::Embeddings => ExternalTask::Embeddings,
        }
    }

    fn openai_path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// A provider request ready to send, and how its answer is read back.
#[derive(Debug)]
pub struct Prepared {
    /// Where it goes.
    pub url: String,
    /// Headers other than the key.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// How the answer becomes an OpenAI answer.
    pub reply: Reply,
}

/// How a provider's answer becomes the OpenAI answer the caller asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// It already is one.
    AsIs,
    /// An Anthropic message (or its event stream) into a chat completion.
    Anthropic(anthropic::Replying),
}

/// Turns the caller's OpenAI-format `body` for `route` into the request `entity`'s provider
/// takes. A route the entity does not serve, or a parameter the provider has no counterpart
/// for, is a 400 that names it.
pub fn prepare(
    entity: &External,
    name: &str,
    route: Route,
    body: &[u8],
) -> Result<Prepared, ApiError> {
    if route.task() != entity.task {
        return Err(ApiError::bad_request(format!(
            "entity {name:?} is an external {} model ({}); it does not serve {}",
            entity.api.label(),
            external::task_name(entity.task),
            external::task_name(route.task()),
        )));
    }
    let mut request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Err(error) => {
            return Err(ApiError::bad_request(format!(
                "the request body is not JSON: {error}"
            )));
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (url, body, reply) = match &entity.api {
        Api::OpenAi { base, organization } => {
            request.insert("model".into(), Value::String(entity.model.clone()));
            if let Some(organization) = organization
                && let Ok(value) = HeaderValue::from_str(organization)
            {
                headers.insert(HeaderName::from_static("openai-organization"), value);
            }
            (
                format!("{base}/{}", route.openai_path()),
                request,
                Reply::AsIs,
            )
        }
        Api::Azure {
            base,
            deployment,
            version,
            ..
        } => {
            // The deployment names the model; Azure ignores `model`.
            request.remove("model");
            (
                format!(
                    "{base}/openai/deployments/{deployment}/{}?api-version={version}",
                    route.openai_path()
                ),
                request,
                Reply::AsIs,
            )
        }
        Api::Databricks { base } => {
            request.remove("model");
            (
                format!("{base}/serving-endpoints/{}/invocations", entity.model),
                request,
                Reply::AsIs,
            )
        }
        Api::Anthropic {
            base,
            version,
            max_tokens,
        } => {
            let (body, replying) = anthropic::request(&request, &entity.model, *max_tokens)?;
            if let Ok(value) = HeaderValue::from_str(version) {
                headers.insert(HeaderName::from_static("anthropic-version"), value);
            }
            (
                format!("{base}/v1/messages"),
                body,
                Reply::Anthropic(replying),
            )
        }
    };
    let body = serde_json::to_vec(&Value::Object(body))
        .map_err(|error| ApiError::internal(format!("request could not be encoded: {error}")))?;
    Ok(Prepared {
        url,
        headers,
        body: Bytes::from(body),
        reply,
    })
}

/// Puts `key` where `api` expects it, marked sensitive so no log or debug output shows it.
pub fn authorize(api: &Api, headers: &mut HeaderMap, key: &ApiKey) -> Result<(), ApiError> {
    let (name, value) = match api {
        Api::OpenAi { .. } | Api::Databricks { .. } | Api::Azure { entra: true, .. } => {
            (header::AUTHORIZATION, format!("Bearer {}", key.expose()))
        }
        Api::Azure { entra: false, .. } => {
            (HeaderName::from_static("api-key"), key.expose().to_string())
        }
        Api::Anthropic { .. } => (
            HeaderName::from_static("x-api-key"),
            key.expose().to_string(),
        ),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        ApiError::new(
            ErrorKind::BadGateway,
            "the provider's API key holds characters a header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// Most bytes of a provider's error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most bytes of a whole (not streamed) Anthropic answer translated.
const ANSWER_LIMIT: usize = 16 << 20;

/// The caller's answer from the provider's `response`: an error as the gateway's error body,
/// a success as an OpenAI answer (a stream translated event by event). `key` is scrubbed from
/// anything the provider says.
pub async fn answer(
    entity: &External,
    name: &str,
    reply: &Reply,
    response: reqwest::Response,
    key: Option<&ApiKey>,
) -> Response {
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_limited(response, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        return provider_error(entity, name, status, &headers, &body, key).into_response();
    }
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    match reply {
        Reply::AsIs => passthrough(response),
        Reply::Anthropic(replying) if is_stream => {
            let translator = anthropic::StreamTranslator::new(replying.clone());
            let upstream = Box::pin(response.bytes_stream());
            let stream =
                futures::stream::unfold(Some((upstream, translator)), |state| async move {
                    let (mut upstream, mut translator) = state?;
                    match upstream.next().await {
                        Some(Ok(bytes)) => {
                            let out = Bytes::from(translator.push(&bytes));
                            Some((Ok(out), Some((upstream, translator))))
                        }
                        Some(Err(error)) => {
                            Some((Err(std::io::Error::other(error_chain(&error))), None))
                        }
                        None => Some((Ok(Bytes::from(translator.finish())), None)),
                    }
                });
            let mut response = Response::new(Body::from_stream(stream));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
        }
        Reply::Anthropic(replying) => {
            let body = match read_limited(response, ANSWER_LIMIT).await {
                Ok(body) => body,
                Err(error) => {
                    return ApiError::new(
                        ErrorKind::BadGateway,
                        format!(
                            "entity {name:?}: the provider's answer could not be read: {error}"
                        ),
                    )
                    .into_response();
                }
            };
            match anthropic::message(&body, replying) {
                Ok(completion) => {
                    let mut response = Response::new(Body::from(completion));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(error) => ApiError::new(
                    ErrorKind::BadGateway,
                    format!(
                        "entity {name:?}: Anthropic answered a message that is not one: {error}"
                    ),
                )
                .into_response(),
            }
        }
    }
}

/// An OpenAI-format answer passed on as it streams, with the provider's content type.
fn passthrough(response: reqwest::Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let stream = response
        .bytes_stream()
        .map(|item| item.map_err(|error| std::io::Error::other(error_chain(&error))));
    let mut answer = Response::new(Body::from_stream(stream));
    *answer.status_mut() = status;
    if let Some(content_type) = content_type {
        answer
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    answer
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| error_chain(&error))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("it is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The gateway's error for a provider's non-2xx answer. The status is one the caller can act
/// on: the caller's own mistakes (400, 413, 422) stay theirs; a rate limit stays a 429 with
/// the provider's `Retry-After`; an overloaded or unavailable provider is a 503; a timeout a
/// 504; a rejected key, a missing model or any other failure is the gateway's (502).
pub fn provider_error(
    entity: &External,
    name: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&ApiKey>,
) -> ApiError {
    let said = provider_message(body);
    let said = match key {
        Some(key) => key.scrub(&said),
        None => said,
    };
    let provider = entity.api.label();
    let retry_after = retry_after(headers);
    let (kind, what) = match status.as_u16() {
        400 | 413 | 422 => (ErrorKind::BadRequest, "refused the request"),
        401 | 403 => (
            ErrorKind::BadGateway,
            "refused the gateway's API key (check the Secret that apiKeySecretRef names)",
        ),
        404 => (
            ErrorKind::BadGateway,
            "does not know the model or the route",
        ),
        408 | 504 => (ErrorKind::DeadlineExceeded, "timed out"),
        429 => (
            ErrorKind::RequestLimitExceeded,
            "is rate limiting the gateway",
        ),
        503 | 529 => (ErrorKind::Unavailable, "is overloaded or unavailable"),
        _ => (ErrorKind::BadGateway, "failed"),
    };
    let mut error = ApiError::new(
        kind,
        format!("entity {name:?}: provider {provider} {what} ({status}): {said}"),
    );
    if let Some(after) = retry_after.filter(|_| {
        matches!(
            kind,
            ErrorKind::RequestLimitExceeded | ErrorKind::Unavailable
        )
    }) {
        error = error.with_retry_after(after);
    } else if kind == ErrorKind::Unavailable {
        error = error.with_retry_after(Duration::from_secs(1));
    }
    error
}

/// What a provider's error body says: OpenAI's `error.message`, Anthropic's `error.message`,
/// else the text itself (cut short).
fn provider_message(body: &[u8]) -> String {
    const KEEP: usize = 512;
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let message = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .or_else(|| value.pointer("/error"))
            .and_then(Value::as_str);
        if let Some(message) = message {
            return message.chars().take(KEEP).collect();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(no message)".to_string()
    } else {
        text.chars().take(KEEP).collect()
    }
}

/// The provider's `Retry-After` (seconds) or `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    text("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// The error for a provider that could not be reached or did not answer in time.
pub fn transport_error(
    name: &str,
    api: &Api,
    error: &reqwest::Error,
    key: Option<&ApiKey>,
) -> ApiError {
    let chain = error_chain(error);
    let chain = match key {
        Some(key) => key.scrub(&chain),
        None => chain,
    };
    let kind = if error.is_timeout() {
        ErrorKind::DeadlineExceeded
    } else {
        ErrorKind::BadGateway
    };
    ApiError::new(
        kind,
        format!(
            "entity {name:?}: provider {} could not be called: {chain}",
            api.label()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(api: Api, task: ExternalTask) -> External {
        External {
            api,
            model: "model-x".into(),
            task,
            namespace: "ml".into(),
            key: None,
        }
    }

    fn openai() -> Api {
        Api::OpenAi {
            base: "http://127.0.0.1:9/v1".into(),
            organization: Some("org-1".into()),
        }
    }

    #[test]
    fn an_openai_request_names_the_providers_model_and_route() {
        let prepared = prepare(
            &entity(openai(), ExternalTask::Chat),
            "a",
            Route::Chat,
            br#"{"model":"ep","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        )
        .unwrap();
        assert_eq!(prepared.url, "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(prepared.headers["openai-organization"], "org-1");
        let body: Value = serde_json::from_slice(&prepared.body).unwrap();
        assert_eq!(body["model"], "model-x");
        assert_eq!(body["temperature"], 0);
        let azure = Api::Azure {
            base: "http://127.0.0.1:9".into(),
            deployment: "d1".into(),
            version: "2024-10-21".into(),
            entra: false,
        };
        let prepared = prepare(
            &entity(azure, ExternalTask::Embeddings),
            "a",
            Route::of("/invocations", ExternalTask::Embeddings),
            br#"{"model":"ep","input":"hi"}"#,
        )
        .unwrap();
        assert_eq!(
            prepared.url,
            "http://127.0.0.1:9/openai/deployments/d1/embeddings?api-version=2024-10-21"
        );
        let body: Value = serde_json::from_slice(&prepared.body).unwrap();
        assert!(body.get("model").is_none(), "{body}");
    }

    #[test]
    fn a_route_the_entity_does_not_serve_is_named() {
        let error = prepare(
            &entity(openai(), ExternalTask::Chat),
            "a",
            Route::Embeddings,
            br#"{"input":"x"}"#,
        )
        .unwrap_err();
        assert_eq!(error.kind, ErrorKind::BadRequest);
        assert!(
            error.message.contains("llm/v1/embeddings"),
            "{}",
            error.message
        );
    }

    #[test]
    fn provider_errors_keep_what_the_caller_can_act_on_and_never_the_key() {
        let key = ApiKey::new("sk-secret-123456".into());
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        let e = entity(openai(), ExternalTask::Chat);
        let limited = provider_error(
            &e,
            "a",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"error":{"message":"slow down"}}"#,
            Some(&key),
        );
        assert_eq!(limited.kind, ErrorKind::RequestLimitExceeded);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
        let rejected = provider_error(
            &e,
            "a",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"error":{"message":"Incorrect API key provided: sk-secret-123456"}}"#,
            Some(&key),
        );
        assert_eq!(rejected.kind, ErrorKind::BadGateway);
        assert!(
            !rejected.message.contains("sk-secret-123456"),
            "{}",
            rejected.message
        );
        let overloaded = provider_error(
            &e,
            "a",
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            None,
        );
        assert_eq!(overloaded.kind, ErrorKind::Unavailable);
        assert!(
            overloaded.message.ends_with("Overloaded"),
            "{}",
            overloaded.message
        );
    }
}
