//! OpenAI chat completions to and from Anthropic's Messages API (`POST /v1/messages`,
//! `anthropic-version: 2023-06-01`).
//!
//! - Request: `system` and `developer` messages become the `system` prompt; user and assistant
//!   messages become content blocks (text, images from `image_url` as base64 or URL sources,
//!   assistant `tool_calls` as `tool_use` blocks, `tool` messages as `tool_result` blocks in a
//!   user turn; consecutive turns of one role are merged); `max_completion_tokens` or
//!   `max_tokens` (Anthropic requires one; else the entity's default), `temperature`, `top_p`,
//!   `stop` as `stop_sequences`, `user` as `metadata.user_id`, tools and `tool_choice`. A
//!   parameter with no Anthropic counterpart (`n` > 1, `logprobs`, `response_format`, …) is a
//!   400 that names it, never dropped in silence.
//! - Answer: a message becomes a `chat.completion` (text joined, `tool_use` as `tool_calls`,
//!   stop reasons mapped, `usage` with the input tokens Anthropic counted, cached included).
//! - Stream: each event becomes the `chat.completion.chunk` it stands for ([`StreamTranslator`]);
//!   `ping` and block boundaries send nothing; the usage chunk comes when the caller asked for
//!   it (`stream_options.include_usage`); `data: [DONE]` ends it; an `error` event becomes an
//!   error chunk.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ApiError;
use crate::sse::EventReader;
use serde_json::{Map, Value, json};

/// What the answer needs from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replying {
    /// Whether a streamed answer ends with a usage chunk.
    pub include_usage: bool,
}

/// Request parameters translated (or harmless to leave out: `stream_options` shapes only the
/// translated answer, `parallel_tool_calls: true` is Anthropic's default, `metadata` is
/// OpenAI's stored-completion tags).
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "n",
    "metadata",
];

/// The Messages API request for the OpenAI chat `request`, sent to `model`.
pub fn request(
    request: &Map<String, Value>,
    model: &str,
    default_max_tokens: u32,
) -> Result<(Map<String, Value>, Replying), ApiError> {
    for key in request.keys() {
        if !KNOWN.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "parameter {key:?} has no counterpart in Anthropic's Messages API; remove it \
                 to call this entity"
            )));
        }
    }
    if let Some(n) = request.get("n").and_then(Value::as_u64)
        && n != 1
    {
        return Err(ApiError::bad_request(
            "parameter \"n\": Anthropic answers one choice per request (n must be 1)",
        ));
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("\"messages\" must be an array of chat messages"))?;
    let (system, turns) = translate_messages(messages)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(default_max_tokens));
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system));
    }
    out.insert("messages".into(), Value::Array(turns));
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(value) = request.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), value.clone());
        }
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        out.insert("tools".into(), Value::Array(translate_tools(tools)?));
    }
    let parallel = request.get("parallel_tool_calls").and_then(Value::as_bool);
    if let Some(choice) = request.get("tool_choice") {
        let mut choice = translate_tool_choice(choice)?;
        if parallel == Some(false)
            && let Some(map) = choice.as_object_mut()
            && map.get("type").and_then(Value::as_str) != Some("none")
        {
            map.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
        out.insert("tool_choice".into(), choice);
    } else if parallel == Some(false) && out.contains_key("tools") {
        out.insert(
            "tool_choice".into(),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        );
    }
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((out, Replying { include_usage }))
}

/// The system prompt and the user/assistant turns of OpenAI `messages`.
fn translate_messages(messages: &[Value]) -> Result<(String, Vec<Value>), ApiError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_of(content, i)?);
                continue;
            }
            "user" => ("user", content_blocks(content, i)?),
            "assistant" => {
                let mut blocks = content_blocks(content, i)?;
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    blocks.push(tool_use(call, i)?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "messages[{i}]: a tool message needs tool_call_id"
                        ))
                    })?;
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": id,
                    "content": text_of(content, i)?,
                });
                ("user", vec![block])
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: role {other:?} is not one of system, developer, user, \
                     assistant, tool"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    if turns.is_empty() {
        return Err(ApiError::bad_request(
            "\"messages\" holds no user or assistant message",
        ));
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system.join("\n\n"), turns))
}

/// The text of a content that must be text (a string or text parts).
fn text_of(content: &Value, i: usize) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}]: a content part of type {other:?} cannot go here \
                             (only text)"
                        )));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::bad_request(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

/// Anthropic content blocks for an OpenAI content (a string or parts).
fn content_blocks(content: &Value, i: usize) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({
                    "type": "text",
                    "text": part.get("text").and_then(Value::as_str).unwrap_or(""),
                })),
                Some("image_url") => {
                    let url = part
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    image(url, i)
                }
                other => Err(ApiError::bad_request(format!(
                    "messages[{i}]: content part type {other:?} has no counterpart in \
                     Anthropic's Messages API"
                ))),
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

/// An image block for an `image_url`: a `data:` URL as a base64 source, else a URL source.
fn image(url: &str, i: usize) -> Result<Value, ApiError> {
    if let Some(data) = url.strip_prefix("data:") {
        let (media_type, payload) = data.split_once(";base64,").ok_or_else(|| {
            ApiError::bad_request(format!("messages[{i}]: an image data URL must be base64"))
        })?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": payload},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(ApiError::bad_request(format!(
        "messages[{i}]: image_url.url must be an http(s) or base64 data URL"
    )))
}

/// A `tool_use` block for an assistant's OpenAI tool call.
fn tool_use(call: &Value, i: usize) -> Result<Value, ApiError> {
    let id = call.get("id").and_then(Value::as_str).unwrap_or("");
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let input: Value = serde_json::from_str(if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    })
    .map_err(|error| {
        ApiError::bad_request(format!(
            "messages[{i}]: tool call {id:?} has arguments that are not JSON: {error}"
        ))
    })?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn translate_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}]: only function tools are translated to Anthropic"
                )));
            }
            let function = tool.get("function").unwrap_or(&Value::Null);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("tools[{i}].function.name is required"))
                })?;
            let mut out = json!({
                "name": name,
                "input_schema": function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(description) = function.get("description") {
                out["description"] = description.clone();
            }
            Ok(out)
        })
        .collect()
}

fn translate_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(ApiError::bad_request(format!(
                "tool_choice {other:?} is not auto, none, required or a function"
            ))),
        },
        Value::Object(_) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("tool_choice.function.name is required"))?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(ApiError::bad_request(
            "tool_choice must be a string or a function choice",
        )),
    }
}

/// OpenAI's finish reason for Anthropic's stop reason.
fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        None => Value::Null,
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        // end_turn, stop_sequence, pause_turn.
        Some(_) => json!("stop"),
    }
}

/// OpenAI usage for Anthropic usage: every input token counted, cache reads and writes too.
fn usage(usage: &Value) -> Value {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("input_tokens")
        + count("cache_creation_input_tokens")
        + count("cache_read_input_tokens");
    let completion = count("output_tokens");
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if usage.get("cache_read_input_tokens").is_some() {
        out["prompt_tokens_details"] = json!({"cached_tokens": count("cache_read_input_tokens")});
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `chat.completion` for a whole Anthropic message.
pub fn message(body: &[u8], _replying: &Replying) -> Result<Vec<u8>, String> {
    let message: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return Err("its type is not \"message\"".into());
    }
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            // Thinking blocks are the model's scratch work, not its answer.
            _ => {}
        }
    }
    let mut assistant = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        assistant["tool_calls"] = Value::Array(calls);
    }
    let completion = json!({
        "id": message.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now(),
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": assistant,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage(message.get("usage").unwrap_or(&Value::Null)),
    });
    serde_json::to_vec(&completion).map_err(|e| e.to_string())
}

/// Turns an Anthropic event stream into an OpenAI chunk stream, event by event, as the bytes
/// arrive (events may be split across reads anywhere).
#[derive(Debug)]
pub struct StreamTranslator {
    reader: EventReader,
    replying: Replying,
    id: Value,
    model: Value,
    created: u64,
    /// Input tokens from `message_start`, output tokens from the last `message_delta`.
    usage: Value,
    /// Content block index → tool call index, for tool_use blocks.
    tools: Vec<(u64, u64)>,
    done: bool,
}

impl StreamTranslator {
    /// A translator for a stream answering a request that asked `replying`.
    pub fn new(replying: Replying) -> Self {
        Self::created_at(replying, now())
    }

    /// [`new`](Self::new) with the chunks' `created` time (seconds since the epoch) given.
    pub fn created_at(replying: Replying, created: u64) -> Self {
        Self {
            reader: EventReader::default(),
            replying,
            id: Value::Null,
            model: Value::Null,
            created,
            usage: json!({}),
            tools: Vec::new(),
            done: false,
        }
    }

    /// The OpenAI bytes for the events `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.reader.push(bytes) {
            self.event(&event, &mut out);
        }
        out
    }

    /// What is left when the provider's stream ends: an event it did not close, and the end
    /// of the caller's stream if the provider never sent `message_stop`.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(event) = self.reader.finish() {
            self.event(&event, &mut out);
        }
        if !self.done {
            self.done = true;
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        let send = |out: &mut Vec<u8>, value: &Value| {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(value.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = event.get("message").unwrap_or(&Value::Null);
                self.id = message.get("id").cloned().unwrap_or(Value::Null);
                self.model = message.get("model").cloned().unwrap_or(Value::Null);
                if let Some(usage) = message.get("usage") {
                    self.usage = usage.clone();
                }
                let chunk = self.chunk(json!({"role": "assistant", "content": ""}), Value::Null);
                send(out, &chunk);
            }
            Some("content_block_start") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = event.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let call = self.tools.len() as u64;
                        self.tools.push((index, call));
                        let chunk = self.chunk(
                            json!({"tool_calls": [{
                                "index": call,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                            }]}),
                            Value::Null,
                        );
                        send(out, &chunk);
                    }
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            let chunk = self.chunk(json!({"content": text}), Value::Null);
                            send(out, &chunk);
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = event.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or(Value::Null);
                        let chunk = self.chunk(json!({"content": text}), Value::Null);
                        send(out, &chunk);
                    }
                    Some("input_json_delta") => {
                        let call = self
                            .tools
                            .iter()
                            .find(|(block, _)| *block == index)
                            .map(|(_, call)| *call)
                            .unwrap_or(0);
                        let partial = delta.get("partial_json").cloned().unwrap_or(json!(""));
                        let chunk = self.chunk(
                            json!({"tool_calls": [{"index": call, "function": {"arguments": partial}}]}),
                            Value::Null,
                        );
                        send(out, &chunk);
                    }
                    // thinking and signature deltas are not the answer.
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(output) = event.pointer("/usage/output_tokens") {
                    self.usage["output_tokens"] = output.clone();
                }
                for key in [
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                ] {
                    if let Some(value) = event
                        .pointer(&format!("/usage/{key}"))
                        .filter(|v| !v.is_null())
                    {
                        self.usage[key] = value.clone();
                    }
                }
                let stop = event.pointer("/delta/stop_reason").and_then(Value::as_str);
                let chunk = self.chunk(json!({}), finish_reason(stop));
                send(out, &chunk);
            }
            Some("message_stop") => {
                if self.replying.include_usage {
                    let chunk = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(&self.usage),
                    });
                    send(out, &chunk);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            Some("error") => {
                let error = event.get("error").unwrap_or(&Value::Null);
                send(
                    out,
                    &json!({"error": {
                        "message": error.get("message").cloned().unwrap_or(json!("the provider failed mid-stream")),
                        "type": error.get("type").cloned().unwrap_or(json!("provider_error")),
                    }}),
                );
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            // ping, content_block_stop.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_chat_request_becomes_a_messages_request() {
        let (out, replying) = request(
            &map(json!({
                "model": "ep",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                    {"role": "user", "content": "So?"}
                ],
                "max_tokens": 50,
                "stop": "END",
                "stream": true,
                "stream_options": {"include_usage": true},
                "user": "u1",
                "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false
            })),
            "claude-x",
            4096,
        )
        .unwrap();
        assert!(replying.include_usage);
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 50);
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({"user_id": "u1"}));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        let turns = out["messages"].as_array().unwrap();
        // The tool result and the next user message share one user turn.
        assert_eq!(turns.len(), 3, "{turns:?}");
        assert_eq!(turns[0]["content"][1]["source"]["media_type"], "image/png");
        assert_eq!(turns[1]["content"][0]["input"], json!({"q": 1}));
        assert_eq!(turns[2]["content"][0]["type"], "tool_result");
        assert_eq!(turns[2]["content"][1]["text"], "So?");
    }

    #[test]
    fn parameters_without_a_counterpart_are_named() {
        for (key, value) in [
            ("logprobs", json!(true)),
            ("response_format", json!({"type": "json_object"})),
            ("n", json!(2)),
        ] {
            let mut body = map(json!({"messages": [{"role": "user", "content": "x"}]}));
            body.insert(key.into(), value);
            let error = request(&body, "m", 10).unwrap_err();
            assert!(
                error.message.contains(&format!("\"{key}\"")),
                "{}",
                error.message
            );
        }
        let only_system = map(json!({"messages": [{"role": "system", "content": "x"}]}));
        assert!(request(&only_system, "m", 10).is_err());
    }

    #[test]
    fn a_message_becomes_a_chat_completion() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"},
                       {"type":"tool_use","id":"toolu_1","name":"look","input":{"q":2}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":2}}"#;
        let out: Value = serde_json::from_slice(
            &message(
                body,
                &Replying {
                    include_usage: false,
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":2}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 12);
        assert_eq!(out["usage"]["total_tokens"], 17);
    }

    #[test]
    fn a_stream_is_translated_event_by_event_across_any_split() {
        let stream = concat!(
            "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let whole = {
            let mut t = StreamTranslator::new(Replying {
                include_usage: true,
            });
            let mut out = t.push(stream.as_bytes());
            out.extend(t.finish());
            String::from_utf8(out).unwrap()
        };
        for step in [1, 7, 64] {
            let mut t = StreamTranslator::new(Replying {
                include_usage: true,
            });
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(step) {
                out.extend(t.push(piece));
            }
            out.extend(t.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                whole,
                "split every {step} bytes"
            );
        }
        let body = crate::sse::reassemble(&whole).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 25);
        assert_eq!(body["usage"]["completion_tokens"], 15);
        assert!(whole.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn an_error_event_ends_the_stream_with_an_error_chunk() {
        let mut t = StreamTranslator::new(Replying {
            include_usage: false,
        });
        let mut out = t.push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        out.extend(t.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("data: {\"error\":{\"message\":\"Overloaded\""),
            "{text}"
        );
        assert_eq!(text.matches("[DONE]").count(), 1);
    }
}
