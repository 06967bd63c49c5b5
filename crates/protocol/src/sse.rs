//! Server-sent events read incrementally ([`EventReader`]), and reassembly of a streamed OpenAI
//! response into the one body the same request would have got without `stream: true`: `chat.completion.chunk` deltas become one
//! `chat.completion` (content and tool-call arguments concatenated per choice), text-completion
//! chunks one `text_completion`. The last `usage` seen is kept (vLLM and OpenAI send it in a
//! final chunk when `stream_options.include_usage` is set).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The data payloads of the events in `raw`, in order, up to `[DONE]`.
fn events(raw: &str) -> Vec<String> {
    let mut reader = EventReader::default();
    let mut events = reader.push(raw.as_bytes());
    events.extend(reader.finish());
    if let Some(done) = events.iter().position(|e| e.trim() == "[DONE]") {
        events.truncate(done);
    }
    events
}

/// Server-sent events read as the bytes arrive: the data of each event once its blank line
/// has come, whatever the reads split (lines, `\r\n`, UTF-8 characters). `event:`, `id:`,
/// `retry:` and comment lines carry nothing a reader here needs.
#[derive(Debug, Default)]
pub struct EventReader {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl EventReader {
    /// The data of every event `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line_ended(&line) {
                events.push(event);
            }
        }
        events
    }

    /// The event left open when the stream ended, if any.
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            let _ = self.line_ended(&line);
        }
        self.data.take()
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let line = String::from_utf8_lossy(line);
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match self.data.as_mut() {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        // `event:`, `id:`, `retry:` and comments: the data names its own type.
        None
    }
}

#[derive(Debug, Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    text: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, ToolCall>,
    finish_reason: Value,
}

fn append(target: &mut Option<String>, piece: Option<&str>) {
    if let Some(piece) = piece {
        target.get_or_insert_with(String::new).push_str(piece);
    }
}

impl Choice {
    fn merge(&mut self, chunk: &Value) {
        if let Some(delta) = chunk.get("delta") {
            if let Some(role) = delta.get("role").filter(|r| !r.is_null()) {
                self.role.get_or_insert_with(|| role.clone());
            }
            append(
                &mut self.content,
                delta.get("content").and_then(Value::as_str),
            );
            append(
                &mut self.refusal,
                delta.get("refusal").and_then(Value::as_str),
            );
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let entry = self.tool_calls.entry(index).or_default();
                if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                    entry.id = Some(id.clone());
                }
                if let Some(kind) = call.get("type").filter(|v| !v.is_null()) {
                    entry.kind = Some(kind.clone());
                }
                if let Some(function) = call.get("function") {
                    if let Some(name) = function.get("name").and_then(Value::as_str) {
                        entry.name.push_str(name);
                    }
                    if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                        entry.arguments.push_str(arguments);
                    }
                }
            }
        }
        append(&mut self.text, chunk.get("text").and_then(Value::as_str));
        if let Some(reason) = chunk.get("finish_reason").filter(|r| !r.is_null()) {
            self.finish_reason = reason.clone();
        }
    }

    fn into_chat(self, index: u64) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".into(),
            self.role.unwrap_or_else(|| json!("assistant")),
        );
        message.insert(
            "content".into(),
            self.content.map_or(Value::Null, Value::String),
        );
        if let Some(refusal) = self.refusal {
            message.insert("refusal".into(), Value::String(refusal));
        }
        if !self.tool_calls.is_empty() {
            let calls = self
                .tool_calls
                .into_values()
                .map(|call| {
                    json!({
                        "id": call.id.unwrap_or(Value::Null),
                        "type": call.kind.unwrap_or_else(|| json!("function")),
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        json!({"index": index, "message": message, "finish_reason": self.finish_reason})
    }

    fn into_completion(self, index: u64) -> Value {
        json!({
            "index": index,
            "text": self.text.unwrap_or_default(),
            "logprobs": null,
            "finish_reason": self.finish_reason,
        })
    }
}

/// Reassembles the event stream `raw`. `None` when it is not an OpenAI chat or completion
/// stream (the caller then stores the raw text).
pub fn reassemble(raw: &str) -> Option<Value> {
    let events = events(raw);
    if events.is_empty() {
        return None;
    }
    let mut head: Option<Value> = None;
    let mut usage = Value::Null;
    let mut chat = false;
    let mut choices: BTreeMap<u64, Choice> = BTreeMap::new();
    for event in &events {
        let chunk: Value = serde_json::from_str(event).ok()?;
        // A stream that fails half-way ends with an error object: that is the answer.
        if chunk.get("error").is_some() && chunk.get("choices").is_none() {
            return Some(chunk);
        }
        let parts = chunk.get("choices")?.as_array()?;
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        for part in parts {
            chat |= part.get("delta").is_some();
            let index = part.get("index").and_then(Value::as_u64).unwrap_or(0);
            choices.entry(index).or_default().merge(part);
        }
        if head.is_none() {
            head = Some(chunk);
        }
    }
    let head = head?;
    let field = |name: &str| head.get(name).cloned().unwrap_or(Value::Null);
    let (object, choices): (&str, Vec<Value>) = if chat {
        (
            "chat.completion",
            choices
                .into_iter()
                .map(|(index, choice)| choice.into_chat(index))
                .collect(),
        )
    } else {
        (
            "text_completion",
            choices
                .into_iter()
                .map(|(index, choice)| choice.into_completion(index))
                .collect(),
        )
    };
    let mut body = json!({
        "id": field("id"),
        "object": object,
        "created": field("created"),
        "model": field("model"),
        "choices": choices,
    });
    if let Some(fingerprint) = head.get("system_fingerprint").filter(|v| !v.is_null()) {
        body["system_fingerprint"] = fingerprint.clone();
    }
    if !usage.is_null() {
        body["usage"] = usage;
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_whatever_the_split() {
        let text =
            "event: a\r\ndata: {\"x\":\"é\"}\r\n\r\n: comment\ndata: 1\ndata: 2\n\ndata: tail";
        for step in 1..=text.len() {
            let mut reader = EventReader::default();
            let mut events = Vec::new();
            for piece in text.as_bytes().chunks(step) {
                events.extend(reader.push(piece));
            }
            events.extend(reader.finish());
            assert_eq!(
                events,
                ["{\"x\":\"é\"}", "1\n2", "tail"],
                "split every {step}"
            );
        }
    }

    fn stream(chunks: &[Value]) -> String {
        let mut out = String::new();
        for chunk in chunks {
            out.push_str(&format!("data: {chunk}\r\n\r\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }

    #[test]
    fn chat_deltas_become_one_completion() {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let raw = stream(&[
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(json!({}), json!("stop")),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        ]);
        let body = reassemble(&raw).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["id"], "c1");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn tool_call_arguments_are_joined_per_call() {
        let call = |index: u64, id: Value, name: &str, args: &str| {
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": args}}
            ]}}]})
        };
        let raw = stream(&[
            call(0, json!("t0"), "f", "{\"a\":"),
            call(1, json!("t1"), "g", "{}"),
            call(0, Value::Null, "", "1}"),
        ]);
        let body = reassemble(&raw).unwrap();
        let calls = &body["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(calls[0]["id"], "t0");
        assert_eq!(calls[1]["function"]["name"], "g");
    }

    #[test]
    fn completion_text_and_multiline_data() {
        let raw = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n\
                   data: {\"id\":\"x\",\"choices\":\n\
                   data: [{\"index\":0,\"text\":\"b\",\"finish_reason\":\"length\"}]}\n\n";
        let body = reassemble(raw).unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "ab");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn other_streams_are_not_guessed() {
        assert!(reassemble("data: hello\n\n").is_none());
        assert!(reassemble("data: {\"tick\": 1}\n\n").is_none());
        assert!(reassemble("").is_none());
        let error = reassemble("data: {\"error\": {\"message\": \"boom\"}}\n\n").unwrap();
        assert_eq!(error["error"]["message"], "boom");
    }
}
