//! Token counts read from a model's answer: the `usage` object of an OpenAI-style body (or of
//! the chunks of a streamed one), found while the answer streams past without keeping it.
//!
//! [`UsageMeter`] is fed each frame of the answer as it goes to the client. For a JSON body it
//! follows the top-level object and keeps only the bytes of its `usage` member; for server-sent
//! events it reads one line at a time and parses only `data:` lines that mention `usage`. It
//! holds at most [`MAX_KEPT`] bytes whatever the answer's size, so metering costs no buffering.
//! OpenAI (`prompt_tokens`, `completion_tokens`) and Anthropic (`input_tokens`,
//! `output_tokens`, split over `message_start` and `message_delta` events) counts are both read.

use serde_json::Value;

/// Most bytes the meter keeps: of the `usage` member, or of one event line.
pub const MAX_KEPT: usize = 64 << 10;

/// Tokens one request used, as its answer reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Tokens read (`prompt_tokens` or `input_tokens`).
    pub input: Option<u64>,
    /// Tokens generated (`completion_tokens` or `output_tokens`).
    pub output: Option<u64>,
}

impl TokenCounts {
    /// The counts of a `usage` object; `None` when it holds neither count.
    pub fn from_usage(usage: &Value) -> Option<Self> {
        let count = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|key| usage.get(*key).and_then(Value::as_u64))
        };
        let counts = Self {
            input: count(["prompt_tokens", "input_tokens"]),
            output: count(["completion_tokens", "output_tokens"]),
        };
        (counts.input.is_some() || counts.output.is_some()).then_some(counts)
    }

    /// The counts of a whole body's `usage` member, if it has one.
    pub fn from_body(body: &Value) -> Option<Self> {
        body.get("usage").and_then(Self::from_usage)
    }

    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input.unwrap_or(0) + self.output.unwrap_or(0)
    }

    /// These counts, with each count `later` reports replacing this one's (a stream's last
    /// chunk repeats the totals; Anthropic reports input and output in different events).
    fn merge(self, later: Self) -> Self {
        Self {
            input: later.input.or(self.input),
            output: later.output.or(self.output),
        }
    }
}

/// How an answer is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerFormat {
    /// One JSON object.
    Json,
    /// Server-sent events whose `data:` lines are JSON objects.
    EventStream,
}

impl AnswerFormat {
    /// The format a `Content-Type` announces; `None` for anything that carries no usage.
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => Some(Self::EventStream),
            "application/json" => Some(Self::Json),
            _ if essence.ends_with("+json") => Some(Self::Json),
            _ => None,
        }
    }
}

/// Reads the token counts of an answer fed to it frame by frame.
#[derive(Debug)]
pub struct UsageMeter {
    format: AnswerFormat,
    json: JsonUsage,
    line: Vec<u8>,
    line_too_long: bool,
    found: Option<TokenCounts>,
}

impl UsageMeter {
    /// A meter for an answer of `format`.
    pub fn new(format: AnswerFormat) -> Self {
        Self {
            format,
            json: JsonUsage::default(),
            line: Vec::new(),
            line_too_long: false,
            found: None,
        }
    }

    /// Takes the next bytes of the answer.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self.format {
            AnswerFormat::Json => self.json.feed(bytes),
            AnswerFormat::EventStream => self.feed_lines(bytes),
        }
    }

    /// The counts the answer reported, once it has ended.
    pub fn finish(mut self) -> Option<TokenCounts> {
        match self.format {
            AnswerFormat::Json => self.json.finish(),
            AnswerFormat::EventStream => {
                if !self.line.is_empty() {
                    self.end_line();
                }
                self.found
            }
        }
    }

    fn feed_lines(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.keep(&bytes[..end]);
                    self.end_line();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.keep(bytes);
                    return;
                }
            }
        }
    }

    fn keep(&mut self, piece: &[u8]) {
        if self.line_too_long {
            return;
        }
        if self.line.len() + piece.len() > MAX_KEPT {
            self.line_too_long = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(piece);
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.line_too_long = false;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if !contains(data, b"\"usage\"") {
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        // Anthropic's `message_start` nests it: {"message": {"usage": …}}.
        let counts = TokenCounts::from_body(&chunk)
            .or_else(|| chunk.get("message").and_then(TokenCounts::from_body));
        if let Some(counts) = counts {
            self.found = Some(self.found.unwrap_or_default().merge(counts));
        }
    }
}

/// The body of a streamed OpenAI request (`"stream": true`) that does not ask for usage, with
/// `stream_options.include_usage` set, so the answer's last chunk reports its tokens; `None`
/// when the body streams nothing, already asks, or is not a JSON object. The client then gets
/// the answer through a [`UsageChunkFilter`], which removes the chunk it did not ask for.
pub fn request_usage(body: &[u8]) -> Option<Vec<u8>> {
    if !contains(body, b"\"stream\"") {
        return None;
    }
    let mut request: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    if request.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let options = match options {
        Value::Object(options) => options,
        // A malformed `stream_options` is the model server's to refuse.
        _ => return None,
    };
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&request).ok()
}

/// Passes a server-sent event stream through, whole events at a time, without the usage-only
/// chunk (`"choices": []` with a `usage`) that [`request_usage`] made the model send.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    pending: Vec<u8>,
}

impl UsageChunkFilter {
    /// Takes the next bytes of the stream; the complete events to pass on now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let Some(end) = last_event_end(&self.pending) else {
            return Vec::new();
        };
        let rest = self.pending.split_off(end);
        let complete = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::with_capacity(complete.len());
        let mut start = 0;
        while let Some((event_end, next)) = next_event_end(&complete, start) {
            let event = &complete[start..event_end];
            if !is_usage_only(event) {
                out.extend_from_slice(&complete[start..next]);
            }
            start = next;
        }
        out.extend_from_slice(&complete[start..]);
        out
    }

    /// What is left once the stream ended (an event without its closing blank line).
    pub fn finish(self) -> Vec<u8> {
        if is_usage_only(&self.pending) {
            Vec::new()
        } else {
            self.pending
        }
    }
}

/// Where the event starting at `from` ends (before its blank line) and the next one starts.
fn next_event_end(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\n' && bytes[i + 1] == b'\n' {
            return Some((i, i + 2));
        }
        if bytes[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        i += 1;
    }
    None
}

fn last_event_end(bytes: &[u8]) -> Option<usize> {
    let mut end = None;
    let mut from = 0;
    while let Some((_, next)) = next_event_end(bytes, from) {
        end = Some(next);
        from = next;
    }
    end
}

/// Whether `event` is a chunk with no choices and a usage: the one asked for by the gateway.
fn is_usage_only(event: &[u8]) -> bool {
    if !contains(event, b"\"usage\"") {
        return false;
    }
    let data: Vec<&[u8]> = event
        .split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .collect();
    let [data] = data.as_slice() else {
        return false;
    };
    let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(|u| !u.is_null())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Follows one JSON object byte by byte and keeps the value of its top-level `usage` member.
#[derive(Debug, Default)]
struct JsonUsage {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a member name.
    at_name: bool,
    /// The member name being read (only its first bytes).
    name: Vec<u8>,
    /// The last member name read at depth 1.
    last_name: Vec<u8>,
    /// The bytes of the `usage` value while it is read.
    value: Option<Vec<u8>>,
    /// The finished `usage` value.
    usage: Option<Vec<u8>>,
}

impl JsonUsage {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        if self.in_string {
            if let Some(value) = self.value.as_mut() {
                push_capped(value, b);
            } else if self.depth == 1 && self.at_name && !self.escaped && b != b'"' {
                push_capped_name(&mut self.name, b);
            }
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 1 && self.at_name && self.value.is_none() {
                    self.last_name = std::mem::take(&mut self.name);
                }
            }
            return;
        }
        let before = self.depth;
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        if before == 0 && b == b'{' {
            // The top-level object opens: a member name comes next.
            self.at_name = true;
            return;
        }
        if before == 1 {
            // Punctuation of the top-level object itself.
            match b {
                b':' if self.at_name => {
                    self.at_name = false;
                    if self.last_name == b"usage" {
                        self.value = Some(Vec::new());
                    }
                    return;
                }
                b',' | b'}' => {
                    if let Some(value) = self.value.take() {
                        self.usage = Some(value);
                    }
                    self.at_name = b == b',';
                    return;
                }
                _ => {}
            }
        }
        if let Some(value) = self.value.as_mut() {
            push_capped(value, b);
        }
    }

    fn finish(self) -> Option<TokenCounts> {
        let usage = self.usage?;
        let usage: Value = serde_json::from_slice(&usage).ok()?;
        TokenCounts::from_usage(&usage)
    }
}

fn push_capped(value: &mut Vec<u8>, b: u8) {
    if value.len() < MAX_KEPT {
        value.push(b);
    }
}

fn push_capped_name(name: &mut Vec<u8>, b: u8) {
    if name.len() < 16 {
        name.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(format: AnswerFormat, body: &str, piece: usize) -> Option<TokenCounts> {
        let mut meter = UsageMeter::new(format);
        for chunk in body.as_bytes().chunks(piece) {
            meter.feed(chunk);
        }
        meter.finish()
    }

    fn counts(input: u64, output: u64) -> Option<TokenCounts> {
        Some(TokenCounts {
            input: Some(input),
            output: Some(output),
        })
    }

    #[test]
    fn a_json_answer_gives_its_top_level_usage_whatever_the_framing() {
        let body = r#"{"id": "x", "choices": [{"message": {"content": "a \"usage\": {\"prompt_tokens\": 99}", "usage": {"prompt_tokens": 1}}}], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}, "model": "m"}"#;
        for piece in [1, 2, 3, 7, 64, body.len()] {
            assert_eq!(
                metered(AnswerFormat::Json, body, piece),
                counts(7, 5),
                "{piece}"
            );
        }
        let last = r#"{"data": [[0.1, 0.2]], "usage": {"prompt_tokens": 3, "total_tokens": 3}}"#;
        assert_eq!(
            metered(AnswerFormat::Json, last, 5),
            Some(TokenCounts {
                input: Some(3),
                output: None
            })
        );
        for none in [
            r#"{"predictions": [1, 2]}"#,
            r#"{"usage": null}"#,
            "not json",
            r#"[{"usage": {"prompt_tokens": 1}}]"#,
            "",
        ] {
            assert_eq!(metered(AnswerFormat::Json, none, 3), None, "{none}");
        }
    }

    #[test]
    fn a_stream_gives_its_usage_chunk() {
        let stream = "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}], \"usage\": null}\n\n\
                      data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 4, \"completion_tokens\": 9}}\r\n\r\n\
                      data: [DONE]\n\n";
        for piece in [1, 5, 33, stream.len()] {
            assert_eq!(
                metered(AnswerFormat::EventStream, stream, piece),
                counts(4, 9)
            );
        }
        let anthropic = "event: message_start\ndata: {\"type\": \"message_start\", \"message\": {\"usage\": {\"input_tokens\": 11, \"output_tokens\": 1}}}\n\n\
                         event: message_delta\ndata: {\"type\": \"message_delta\", \"usage\": {\"output_tokens\": 6}}\n\n";
        assert_eq!(
            metered(AnswerFormat::EventStream, anthropic, 10),
            counts(11, 6)
        );
        let without =
            "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(metered(AnswerFormat::EventStream, without, 4), None);
    }

    #[test]
    fn the_meter_keeps_little_whatever_the_answer() {
        let huge = format!(
            "{{\"data\": \"{}\", \"usage\": {{\"prompt_tokens\": 2}}}}",
            "x".repeat(4 * MAX_KEPT)
        );
        let mut meter = UsageMeter::new(AnswerFormat::Json);
        meter.feed(huge.as_bytes());
        assert!(meter.json.value.is_none() && meter.json.name.len() <= 16);
        assert_eq!(meter.finish().and_then(|c| c.input), Some(2));
        let long_line = format!(
            "data: {}\n\ndata: {{\"usage\": {{\"prompt_tokens\": 1, \"completion_tokens\": 2}}}}\n\n",
            "y".repeat(2 * MAX_KEPT)
        );
        assert_eq!(
            metered(AnswerFormat::EventStream, &long_line, 4096),
            counts(1, 2)
        );
    }

    #[test]
    fn a_stream_is_made_to_report_usage_and_the_client_never_sees_it() {
        let asked =
            request_usage(br#"{"model": "m", "stream": true, "messages": []}"#).expect("rewritten");
        let asked: Value = serde_json::from_slice(&asked).expect("json");
        assert_eq!(asked["stream_options"]["include_usage"], true);
        assert_eq!(asked["model"], "m");
        for unchanged in [
            &br#"{"stream": false}"#[..],
            br#"{"stream": true, "stream_options": {"include_usage": true}}"#,
            br#"{"messages": []}"#,
            b"not json",
        ] {
            assert_eq!(request_usage(unchanged), None);
        }

        let stream = "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}], \"usage\": null}\n\n\
                      data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 4, \"completion_tokens\": 1}}\n\n\
                      data: [DONE]\n\n";
        for piece in [1, 3, 50, stream.len()] {
            let mut filter = UsageChunkFilter::default();
            let mut meter = UsageMeter::new(AnswerFormat::EventStream);
            let mut out = Vec::new();
            for chunk in stream.as_bytes().chunks(piece) {
                meter.feed(chunk);
                out.extend(filter.push(chunk));
            }
            out.extend(filter.finish());
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}], \"usage\": null}\n\ndata: [DONE]\n\n"
            );
            assert_eq!(meter.finish(), counts(4, 1), "metered before filtering");
        }
    }

    #[test]
    fn content_types_choose_the_format() {
        for (value, format) in [
            ("application/json", Some(AnswerFormat::Json)),
            ("Application/JSON; charset=utf-8", Some(AnswerFormat::Json)),
            ("application/problem+json", Some(AnswerFormat::Json)),
            (
                "text/event-stream; charset=utf-8",
                Some(AnswerFormat::EventStream),
            ),
            ("text/csv", None),
        ] {
            assert_eq!(AnswerFormat::of_content_type(value), format, "{value}");
        }
    }
}
