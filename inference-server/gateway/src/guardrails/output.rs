//! Output guardrails (`spec.aiGateway.guardrails.output`): answers checked before they reach
//! the caller.
//!
//! - A whole answer (JSON, or text) is checked at once ([`Checks::check_answer`]): a refused
//!   one becomes a 400 naming why, a masked one is sent with its findings replaced.
//! - A streamed answer (server-sent events) goes through a [`StreamGuard`]: the text of each
//!   choice (`delta.content` of chat chunks, `text` of completion chunks) is held back by
//!   [`HOLD_BACK_CHARS`] characters, so a finding that spans chunks is masked whole and never
//!   sent half-way; the rest is released at the choice's `finish_reason` (or the stream's end).
//!   A refusal mid-stream ends the stream with an error event: the status line (200) has gone.
//!   Events of other shapes are checked one by one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_crds::PiiBehavior;
use sluice_protocol::ApiError;

use super::pii::{self, PiiKind, Span};
use super::{Checks, mask_strings, strings};

/// Characters of each choice's text held back from the caller until more text shows that no
/// finding straddles them: longer than every kind's longest form (an IBAN with spaces is 42,
/// an IPv6 address 39) and most e-mail addresses.
pub const HOLD_BACK_CHARS: usize = 96;

/// What the output guardrails did to one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing found.
    #[default]
    Passed,
    /// Findings were masked.
    Masked,
    /// The answer was withheld.
    Refused,
}

impl Checks {
    /// Checks a whole answer: `Ok(None)` to send it as it is, `Ok(Some(body))` to send the
    /// masked body, `Err` to answer the error instead.
    pub fn check_answer(&self, endpoint: &str, body: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let mut json = parsed
            .clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned()));
        let mut texts = Vec::new();
        strings(&json, &mut texts);
        if let Some(keyword) = self.keyword_in(texts.iter().copied()) {
            return Err(withheld(endpoint, &format!("the keyword {keyword:?}")));
        }
        match self.pii {
            PiiBehavior::NONE => Ok(None),
            PiiBehavior::BLOCK => {
                let kinds: Vec<PiiKind> = texts
                    .iter()
                    .flat_map(|t| pii::find(t))
                    .map(|s| s.kind)
                    .collect();
                if kinds.is_empty() {
                    Ok(None)
                } else {
                    Err(withheld(endpoint, &personal_data(kinds)))
                }
            }
            PiiBehavior::MASK => {
                let mut masked = std::collections::BTreeSet::new();
                mask_strings(&mut json, &mut masked);
                if masked.is_empty() {
                    return Ok(None);
                }
                Ok(Some(match (&json, parsed) {
                    (Value::String(text), None) => text.clone().into_bytes(),
                    (json, _) => serde_json::to_vec(json).unwrap_or_default(),
                }))
            }
        }
    }
}

fn personal_data(kinds: impl IntoIterator<Item = PiiKind>) -> String {
    let kinds: std::collections::BTreeSet<&str> = kinds.into_iter().map(PiiKind::name).collect();
    format!(
        "personal data ({})",
        kinds.into_iter().collect::<Vec<_>>().join(", ")
    )
}

fn withheld(endpoint: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "the output guardrail of serving endpoint {endpoint:?} withheld the answer: it contains \
         {what}"
    ))
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Checks a streamed answer event by event; see the module documentation.
#[derive(Debug)]
pub struct StreamGuard {
    checks: Arc<Checks>,
    endpoint: String,
    /// The line being read.
    line: Vec<u8>,
    /// The lines of the event being read.
    event: Vec<String>,
    /// Per choice index: text received and not yet released.
    pending: BTreeMap<u64, String>,
    /// The top-level fields of the last chunk (`id`, `model`, …), for a chunk of our own that
    /// releases what is left at the end.
    last_head: Map<String, Value>,
    outcome: Outcome,
}

impl StreamGuard {
    /// A guard applying `checks` to an answer of `endpoint`.
    pub fn new(checks: Arc<Checks>, endpoint: &str) -> Self {
        Self {
            checks,
            endpoint: endpoint.to_string(),
            line: Vec::new(),
            event: Vec::new(),
            pending: BTreeMap::new(),
            last_head: Map::new(),
            outcome: Outcome::Passed,
        }
    }

    /// What the guard did so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Takes the next bytes of the stream; answers the bytes to send now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.outcome == Outcome::Refused {
                break;
            }
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            if line.ends_with('\r') {
                line.pop();
            }
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                self.emit(event, &mut out);
            } else {
                self.event.push(line);
            }
        }
        out
    }

    /// The stream ended: releases what is held (an unfinished event, held text).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.outcome == Outcome::Refused {
            return out;
        }
        if !self.line.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            self.event.push(line);
        }
        if !self.event.is_empty() {
            let event = std::mem::take(&mut self.event);
            self.emit(event, &mut out);
        }
        self.release_rest(&mut out);
        out
    }

    /// Checks one event and writes what may be sent of it.
    fn emit(&mut self, lines: Vec<String>, out: &mut Vec<u8>) {
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        let payload = data.join("\n");
        if payload == "[DONE]" {
            // Whatever is held goes before the end marker.
            self.release_rest(out);
            if self.outcome == Outcome::Refused {
                return;
            }
            write_event(out, &lines);
            return;
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&payload) else {
            // Not JSON (or no data): checked as text.
            return self.emit_other(lines, out);
        };
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            return self.emit_json(chunk, &lines, out);
        };
        for (position, choice) in choices.iter_mut().enumerate() {
            let index = choice["index"].as_u64().unwrap_or(position as u64);
            let finished = !choice["finish_reason"].is_null();
            let received = match text_slot(choice) {
                Some(slot) => slot.as_str().unwrap_or_default().to_string(),
                // A chunk without text (the last one's `delta: {}`) still releases what is
                // held when it finishes the choice.
                None if finished && self.pending.contains_key(&index) => String::new(),
                None => continue,
            };
            self.pending.entry(index).or_default().push_str(&received);
            let text = match self.release(index, finished) {
                Ok(text) => text,
                Err(error) => return self.refuse(&error, out),
            };
            match text_slot(choice) {
                Some(slot) => *slot = Value::String(text),
                None if text.is_empty() => {}
                None => put_text(choice, text),
            }
        }
        self.last_head = chunk
            .iter()
            .filter(|(k, _)| k.as_str() != "choices" && k.as_str() != "usage")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        write_data(out, &lines, &Value::Object(chunk));
    }

    /// A JSON event without choices: its string values checked on their own.
    fn emit_json(&mut self, chunk: Map<String, Value>, lines: &[String], out: &mut Vec<u8>) {
        let body = Value::Object(chunk);
        match self
            .checks
            .check_answer(&self.endpoint, body.to_string().as_bytes())
        {
            Err(error) => self.refuse(&error, out),
            Ok(None) => write_event(out, lines),
            Ok(Some(masked)) => {
                self.outcome = Outcome::Masked;
                let value: Value = serde_json::from_slice(&masked).unwrap_or(body);
                write_data(out, lines, &value);
            }
        }
    }

    /// An event whose data is not JSON: its data checked as text.
    fn emit_other(&mut self, lines: Vec<String>, out: &mut Vec<u8>) {
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("data:"))
            .collect();
        if data.is_empty() {
            return write_event(out, &lines);
        }
        match self
            .checks
            .check_answer(&self.endpoint, data.join("\n").as_bytes())
        {
            Err(error) => self.refuse(&error, out),
            Ok(None) => write_event(out, &lines),
            Ok(Some(masked)) => {
                self.outcome = Outcome::Masked;
                let text = String::from_utf8_lossy(&masked).into_owned();
                let mut kept: Vec<String> = lines
                    .iter()
                    .filter(|l| !l.starts_with("data:"))
                    .cloned()
                    .collect();
                kept.extend(text.split('\n').map(|l| format!("data:{l}")));
                write_event(out, &kept);
            }
        }
    }

    /// Releases the text of choice `index` that may go now: all of it when `finished`, else
    /// all but the last [`HOLD_BACK_CHARS`] (never cutting a finding), masked; or the refusal.
    fn release(&mut self, index: u64, finished: bool) -> Result<String, ApiError> {
        let text = self.pending.remove(&index).unwrap_or_default();
        let spans = self.findings(&text);
        let mut cut = if finished {
            text.len()
        } else {
            let keep = text
                .char_indices()
                .rev()
                .nth(HOLD_BACK_CHARS - 1)
                .map_or(0, |(at, _)| at);
            floor_boundary(&text, keep)
        };
        // Never cut a finding; moving the cut back may land in another (a keyword inside an
        // address), so until none is cut.
        while let Some(span) = spans.iter().find(|s| s.start < cut && s.end > cut) {
            cut = span.start;
        }
        let (sent, held) = text.split_at(cut);
        if !held.is_empty() {
            self.pending.insert(index, held.to_string());
        }
        let sent_spans: Vec<Span> = spans.into_iter().filter(|s| s.end <= cut).collect();
        if let Some(keyword) = self.keyword_at(sent, &sent_spans) {
            return Err(withheld(
                &self.endpoint,
                &format!("the keyword {keyword:?}"),
            ));
        }
        let found: Vec<Span> = sent_spans
            .into_iter()
            .filter(|s| s.kind != KEYWORD)
            .collect();
        match self.checks.pii {
            PiiBehavior::BLOCK if !found.is_empty() => Err(withheld(
                &self.endpoint,
                &personal_data(found.iter().map(|s| s.kind)),
            )),
            PiiBehavior::MASK if !found.is_empty() => {
                self.outcome = Outcome::Masked;
                Ok(pii::mask(sent, &found).unwrap_or_default())
            }
            _ => Ok(sent.to_string()),
        }
    }

    /// Findings in `text`: personal data (unless `NONE`) and refused keywords (as spans of the
    /// [`KEYWORD`] marker kind), none overlapping.
    fn findings(&self, text: &str) -> Vec<Span> {
        let mut spans = if self.checks.pii == PiiBehavior::NONE {
            Vec::new()
        } else {
            pii::find(text)
        };
        let lowered = text.to_ascii_lowercase();
        for keyword in &self.checks.invalid_keywords {
            for (at, _) in lowered.match_indices(&keyword.to_ascii_lowercase()) {
                spans.push(Span {
                    kind: KEYWORD,
                    start: at,
                    end: at + keyword.len(),
                });
            }
        }
        spans
    }

    fn keyword_at<'a>(&'a self, sent: &str, spans: &[Span]) -> Option<&'a str> {
        spans.iter().find(|s| s.kind == KEYWORD).and_then(|s| {
            let found = sent[s.start..s.end].to_ascii_lowercase();
            self.checks
                .invalid_keywords
                .iter()
                .find(|k| k.to_ascii_lowercase() == found)
                .map(String::as_str)
        })
    }

    /// Releases every choice's held text in one chunk of our own (before `[DONE]` or at the
    /// stream's end).
    fn release_rest(&mut self, out: &mut Vec<u8>) {
        let indices: Vec<u64> = self.pending.keys().copied().collect();
        let mut choices = Vec::new();
        for index in indices {
            match self.release(index, true) {
                Ok(text) if text.is_empty() => {}
                Ok(text) => choices.push(serde_json::json!({
                    "index": index, "delta": {"content": text}, "finish_reason": null
                })),
                Err(error) => return self.refuse(&error, out),
            }
        }
        if choices.is_empty() {
            return;
        }
        let mut chunk = self.last_head.clone();
        chunk.insert("choices".into(), Value::Array(choices));
        write_data(out, &[], &Value::Object(chunk));
    }

    /// Ends the stream with an error event naming why.
    fn refuse(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        self.outcome = Outcome::Refused;
        self.pending.clear();
        let event = serde_json::json!({
            "error": {"message": error.message, "type": "invalid_request_error",
                      "code": "BAD_REQUEST"},
            "error_code": "BAD_REQUEST",
            "message": error.message,
        });
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
}

/// The marker kind of a refused keyword among the findings of a stream (never masked).
const KEYWORD: PiiKind = PiiKind::Keyword;

/// The text field of a streamed choice: `delta.content` (chat) or `text` (completions).
fn text_slot(choice: &mut Value) -> Option<&mut Value> {
    if choice.get("text").is_some_and(Value::is_string) {
        return choice.get_mut("text");
    }
    let delta = choice.get_mut("delta")?;
    if delta.get("content").is_some_and(Value::is_string) {
        return delta.get_mut("content");
    }
    None
}

/// Gives a choice that had no text field the text released for it.
fn put_text(choice: &mut Value, text: String) {
    if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
        delta.insert("content".into(), Value::String(text));
    } else if let Some(choice) = choice.as_object_mut() {
        choice.insert("text".into(), Value::String(text));
    }
}

fn write_event(out: &mut Vec<u8>, lines: &[String]) {
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Writes the event `lines` with its data replaced by `data`.
fn write_data(out: &mut Vec<u8>, lines: &[String], data: &Value) {
    for line in lines.iter().filter(|l| !l.starts_with("data:")) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(pii: PiiBehavior) -> Arc<Checks> {
        Arc::new(Checks {
            pii,
            invalid_keywords: vec!["project falcon".into()],
            valid_topics: Vec::new(),
        })
    }

    fn chunk(text: &str, finish: Option<&str>) -> String {
        // The last chunk has an empty delta, as OpenAI sends it.
        let delta = match finish {
            None => serde_json::json!({"content": text}),
            Some(_) => serde_json::json!({}),
        };
        let event = serde_json::json!({"id": "c1", "object": "chat.completion.chunk",
            "model": "m", "choices": [{"index": 0, "delta": delta,
            "finish_reason": finish}]});
        format!("data: {event}\n\n")
    }

    /// The text a client reassembles from `bytes`, and whether it saw an error event.
    fn received(bytes: &[u8]) -> (String, Option<String>) {
        let mut text = String::new();
        let mut error = None;
        for line in String::from_utf8_lossy(bytes).lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(data).unwrap();
            if let Some(message) = event["error"]["message"].as_str() {
                error = Some(message.to_string());
            }
            for choice in event["choices"].as_array().into_iter().flatten() {
                text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            }
        }
        (text, error)
    }

    /// Streams `pieces` through a guard, split into one chunk each and cut at odd bytes.
    fn stream(guard: &mut StreamGuard, pieces: &[&str]) -> Vec<u8> {
        let mut wire = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            wire.push_str(&chunk(piece, None));
            if last {
                wire.push_str(&chunk("", Some("stop")));
            }
        }
        wire.push_str("data: [DONE]\n\n");
        let mut out = Vec::new();
        for part in wire.as_bytes().chunks(7) {
            out.extend(guard.push(part));
        }
        out.extend(guard.finish());
        out
    }

    #[test]
    fn a_finding_split_across_chunks_is_masked_whole_and_never_sent_in_part() {
        let mut guard = StreamGuard::new(checks(PiiBehavior::MASK), "chat");
        let pieces = [
            "Write to jo",
            "hn.sm",
            "ith@exa",
            "mple.com or call +44 20 79",
            "46 0958, thanks.",
        ];
        let out = stream(&mut guard, &pieces);
        let (text, error) = received(&out);
        assert_eq!(error, None);
        assert_eq!(
            text,
            "Write to <EMAIL_ADDRESS> or call <PHONE_NUMBER>, thanks."
        );
        let wire = String::from_utf8_lossy(&out);
        for part in ["john", "smith", "exa", "7946", "0958"] {
            assert!(!wire.contains(part), "{part} reached the wire: {wire}");
        }
        assert_eq!(guard.outcome(), Outcome::Masked);
        assert!(wire.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn however_the_text_is_chunked_the_caller_gets_the_same_masked_text() {
        let text = "Hi! Reach me at ana.lopez@example.org or +1 415 555 0132; my IBAN is \
                    GB82 WEST 1234 5698 7654 32 and my IP 10.20.30.40. Thanks, Ana";
        let mut first: Option<String> = None;
        for size in 1..=23 {
            let pieces: Vec<&str> = text
                .as_bytes()
                .chunks(size)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            let mut guard = StreamGuard::new(checks(PiiBehavior::MASK), "chat");
            let out = stream(&mut guard, &pieces);
            let (received, error) = received(&out);
            assert_eq!(error, None);
            assert!(pii::find(&received).is_empty(), "{size}: {received}");
            match &first {
                None => first = Some(received),
                Some(first) => assert_eq!(first, &received, "chunks of {size}"),
            }
        }
        assert_eq!(
            first.as_deref(),
            Some(
                "Hi! Reach me at <EMAIL_ADDRESS> or <PHONE_NUMBER>; my IBAN is <IBAN_CODE> and \
                 my IP <IP_ADDRESS>. Thanks, Ana"
            )
        );
    }

    #[test]
    fn blocking_ends_the_stream_with_an_error_before_the_finding() {
        let mut guard = StreamGuard::new(checks(PiiBehavior::BLOCK), "chat");
        let filler = "word ".repeat(40);
        let out = stream(
            &mut guard,
            &[&filler, "my card is 4111 1111", " 1111 1111 ok", &filler],
        );
        let (text, error) = received(&out);
        assert!(error.unwrap().contains("personal data (CREDIT_CARD)"));
        assert!(!text.contains("4111"), "{text}");
        assert_eq!(guard.outcome(), Outcome::Refused);
        assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    }

    #[test]
    fn keywords_are_refused_even_across_chunks() {
        let mut guard = StreamGuard::new(checks(PiiBehavior::NONE), "chat");
        let out = stream(&mut guard, &["About Project Fal", "con: nothing."]);
        let (text, error) = received(&out);
        assert!(error.unwrap().contains("\"project falcon\""));
        assert!(!text.to_lowercase().contains("falcon"));
    }

    #[test]
    fn whole_answers_are_masked_or_withheld() {
        let body = br#"{"choices": [{"message": {"content": "ip 10.1.2.3"}}], "usage": {"prompt_tokens": 1}}"#;
        let masked = checks(PiiBehavior::MASK)
            .check_answer("chat", body)
            .unwrap()
            .unwrap();
        let value: Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!(value["choices"][0]["message"]["content"], "ip <IP_ADDRESS>");
        assert_eq!(value["usage"]["prompt_tokens"], 1);
        let error = checks(PiiBehavior::BLOCK)
            .check_answer("chat", body)
            .unwrap_err();
        assert!(
            error.message.contains("withheld the answer"),
            "{}",
            error.message
        );
        assert_eq!(
            checks(PiiBehavior::MASK)
                .check_answer("chat", b"{\"ok\": 1}")
                .unwrap(),
            None
        );
    }
}
