//! JSON mode (`response_format: {"type": "json_object"}`) by constrained decoding: at every
//! step only tokens that keep the answer a prefix of a JSON object may be chosen, and the
//! generation ends when the object closes, so a finished answer always parses.
//!
//! - [`Recognizer`]: a byte-level pushdown recognizer of JSON (RFC 8259), fed one byte at a
//!   time; it answers whether the bytes so far can still become a whole value.
//! - [`Vocabulary`]: every token's bytes, read once from the tokenizer.
//! - [`JsonConstraint`]: the recognizer of one answer (this one, or a schema's:
//!   [`super::json_schema`]), masking the logits of each step.
//!
//! An answer cut by `max_tokens` before its object closes ends with `finish_reason: "length"`
//! and is not whole JSON, as OpenAI's is not. Whitespace between tokens is capped so that a
//! model cannot loop on newlines, and nesting at 64 containers.

use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_protocol::ApiError;
use tokenizers::Tokenizer;

use super::json_schema::{self, Schema, SchemaRecognizer};

/// Most whitespace bytes in a row outside strings.
const MOST_WHITESPACE: u8 = 24;

/// What `response_format` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// A JSON text the schema accepts.
    JsonSchema(Arc<Schema>),
}

/// Reads `response_format`: absent or `text` is free text; `json_object` is JSON mode;
/// `json_schema` compiles `json_schema.schema` (a 400 naming what it cannot enforce); other
/// types are a 400 naming them.
pub fn response_format(extra: &Map<String, Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = extra
        .get("response_format")
        .filter(|value| !value.is_null())
    else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|json_schema| json_schema.get("schema"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`response_format.json_schema.schema` is missing; put the JSON Schema \
                         there",
                    )
                })?;
            Ok(Some(ResponseFormat::JsonSchema(json_schema::compile(
                schema,
            )?)))
        }
        Some(other) => Err(ApiError::invalid(format!(
            "`response_format.type` `{other}` is not supported by the builtin language-model \
             runtime (it answers `text`, `json_object` and `json_schema`)"
        ))),
        None => Err(ApiError::invalid(format!(
            "`response_format` is {format}; it needs a `type` (`text`, `json_object` or \
             `json_schema`)"
        ))),
    }
}

/// Where the recognizer is inside the value it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Before the top-level value (only `{` may start it).
    Start,
    /// A value is expected (after `:`, or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Inside a string; `key` when it is an object key.
    String { key: bool, escape: Escape },
    /// Inside a number.
    Number(Number),
    /// Inside `true`, `false` or `null`: the bytes still to come.
    Literal(&'static [u8]),
    /// After a value inside a container: `,` or the container's close.
    AfterValue,
    /// The top-level value is whole.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    /// Plain string content.
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and this many hex digits.
    Unicode(u8),
}

/// Number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Number {
    Minus,
    Zero,
    Integer,
    Dot,
    Fraction,
    E,
    ExponentSign,
    Exponent,
}

impl Number {
    /// The state after a number's first byte, if it can start one.
    pub(super) fn start(byte: u8) -> Option<Self> {
        match byte {
            b'-' => Some(Self::Minus),
            b'0' => Some(Self::Zero),
            b'1'..=b'9' => Some(Self::Integer),
            _ => None,
        }
    }

    /// Whether the number so far is an integer (no fraction or exponent yet).
    pub(super) fn integral(self) -> bool {
        matches!(self, Self::Minus | Self::Zero | Self::Integer)
    }

    /// Whether a number may end here.
    pub(super) fn whole(self) -> bool {
        matches!(
            self,
            Self::Zero | Self::Integer | Self::Fraction | Self::Exponent
        )
    }

    pub(super) fn next(self, byte: u8) -> Option<Self> {
        Some(match (self, byte) {
            (Self::Minus, b'0') => Self::Zero,
            (Self::Minus, b'1'..=b'9') => Self::Integer,
            (Self::Integer, b'0'..=b'9') => Self::Integer,
            (Self::Zero | Self::Integer, b'.') => Self::Dot,
            (Self::Dot | Self::Fraction, b'0'..=b'9') => Self::Fraction,
            (Self::Zero | Self::Integer | Self::Fraction, b'e' | b'E') => Self::E,
            (Self::E, b'+' | b'-') => Self::ExponentSign,
            (Self::E | Self::ExponentSign | Self::Exponent, b'0'..=b'9') => Self::Exponent,
            _ => return None,
        })
    }
}

/// Most containers open at once (the stack is a 64-bit word, so that trying a token on a copy
/// of the recognizer costs no allocation).
const MOST_DEPTH: u8 = 64;

/// Open containers, innermost in the lowest bit: 1 for an object, 0 for an array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stack {
    bits: u64,
    depth: u8,
}

impl Stack {
    fn push(&mut self, object: bool) -> bool {
        if self.depth == MOST_DEPTH {
            return false;
        }
        self.bits = (self.bits << 1) | u64::from(object);
        self.depth += 1;
        true
    }

    /// Whether the innermost container is an object; `None` at the top level.
    fn last(self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
    }

    fn is_empty(self) -> bool {
        self.depth == 0
    }
}

/// A byte-level JSON recognizer whose top-level value is an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recognizer {
    stack: Stack,
    lex: Lex,
    /// Whitespace bytes in a row.
    whitespace: u8,
}

impl Default for Recognizer {
    fn default() -> Self {
        Self {
            stack: Stack::default(),
            lex: Lex::Start,
            whitespace: 0,
        }
    }
}

impl Recognizer {
    /// A recognizer of any one JSON value (not only an object).
    pub fn any() -> Self {
        Self {
            lex: Lex::Value,
            ..Self::default()
        }
    }

    /// Whether the top-level object is whole.
    pub fn is_done(&self) -> bool {
        self.lex == Lex::Done
    }

    /// Whether the value read so far is whole: done, or a top-level number that may end here
    /// (a number ends only at the byte after it).
    pub fn ended(&self) -> bool {
        match self.lex {
            Lex::Done => true,
            Lex::Number(number) => self.stack.is_empty() && number.whole(),
            _ => false,
        }
    }

    /// Feeds `bytes`; false (and the recognizer is left in an unspecified state) when they
    /// cannot continue a JSON object.
    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&byte| self.feed(byte))
    }

    /// Feeds one byte; false when it cannot continue a JSON object.
    pub fn feed(&mut self, byte: u8) -> bool {
        let outside_string = !matches!(self.lex, Lex::String { .. });
        if outside_string && matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            // Whitespace ends a number, and may stand between any two tokens.
            if let Lex::Number(number) = self.lex {
                if !number.whole() {
                    return false;
                }
                self.close_value();
            }
            if matches!(self.lex, Lex::Literal(_) | Lex::Done) {
                return false;
            }
            self.whitespace += 1;
            return self.whitespace <= MOST_WHITESPACE;
        }
        self.whitespace = 0;
        match self.lex {
            Lex::Start => self.open(byte, true),
            Lex::Value => self.start_value(byte),
            Lex::ValueOrClose => byte == b']' && self.close(false) || self.start_value(byte),
            Lex::KeyOrClose => byte == b'}' && self.close(true) || self.start_key(byte),
            Lex::Key => self.start_key(byte),
            Lex::Colon => {
                self.lex = Lex::Value;
                byte == b':'
            }
            Lex::String { key, escape } => self.string(byte, key, escape),
            Lex::Number(number) => match number.next(byte) {
                Some(next) => {
                    self.lex = Lex::Number(next);
                    true
                }
                None if number.whole() => {
                    self.close_value();
                    self.feed(byte)
                }
                None => false,
            },
            Lex::Literal(rest) => match rest.split_first() {
                Some((&expected, rest)) if expected == byte => {
                    if rest.is_empty() {
                        self.close_value();
                    } else {
                        self.lex = Lex::Literal(rest);
                    }
                    true
                }
                _ => false,
            },
            Lex::AfterValue => {
                let object = self.stack.last().unwrap_or(false);
                match byte {
                    b',' => {
                        self.lex = if object { Lex::Key } else { Lex::Value };
                        true
                    }
                    b'}' if object => self.close(true),
                    b']' if !object => self.close(false),
                    _ => false,
                }
            }
            Lex::Done => false,
        }
    }

    /// `{` or `[` (`{` only at the top).
    fn open(&mut self, byte: u8, top: bool) -> bool {
        match byte {
            b'{' => {
                self.lex = Lex::KeyOrClose;
                self.stack.push(true)
            }
            b'[' if !top => {
                self.lex = Lex::ValueOrClose;
                self.stack.push(false)
            }
            _ => false,
        }
    }

    fn start_value(&mut self, byte: u8) -> bool {
        self.lex = match byte {
            b'{' | b'[' => return self.open(byte, false),
            b'"' => Lex::String {
                key: false,
                escape: Escape::None,
            },
            b'-' => Lex::Number(Number::Minus),
            b'0' => Lex::Number(Number::Zero),
            b'1'..=b'9' => Lex::Number(Number::Integer),
            b't' => Lex::Literal(b"rue"),
            b'f' => Lex::Literal(b"alse"),
            b'n' => Lex::Literal(b"ull"),
            _ => return false,
        };
        true
    }

    fn start_key(&mut self, byte: u8) -> bool {
        self.lex = Lex::String {
            key: true,
            escape: Escape::None,
        };
        byte == b'"'
    }

    fn string(&mut self, byte: u8, key: bool, escape: Escape) -> bool {
        let escape = match (escape, byte) {
            (Escape::None, b'"') => {
                if key {
                    self.lex = Lex::Colon;
                } else {
                    self.close_value();
                }
                return true;
            }
            (Escape::None, b'\\') => Escape::Backslash,
            (Escape::None, 0x00..=0x1f) => return false,
            (Escape::None, _) => Escape::None,
            (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                Escape::None
            }
            (Escape::Backslash, b'u') => Escape::Unicode(0),
            (Escape::Unicode(digits), byte) if byte.is_ascii_hexdigit() => {
                if digits == 3 {
                    Escape::None
                } else {
                    Escape::Unicode(digits + 1)
                }
            }
            _ => return false,
        };
        self.lex = Lex::String { key, escape };
        true
    }

    /// A value ended inside its container (or at the top).
    fn close_value(&mut self) {
        self.lex = if self.stack.is_empty() {
            Lex::Done
        } else {
            Lex::AfterValue
        };
    }

    /// Closes the innermost container, if it is of the kind `object` says.
    fn close(&mut self, object: bool) -> bool {
        if self.stack.last() != Some(object) {
            return false;
        }
        self.stack.pop();
        self.close_value();
        true
    }
}

/// Every token's bytes, and which tokens are special (never allowed in JSON mode).
pub struct Vocabulary {
    bytes: Vec<Option<Vec<u8>>>,
}

impl Vocabulary {
    /// Reads every token of `tokenizer`: its decoded text (a token that is only part of a
    /// UTF-8 character decodes to U+FFFD, which is allowed where any text is: in a string).
    /// Special tokens (`None`) are never allowed.
    pub fn of(tokenizer: &Tokenizer) -> Self {
        let size = tokenizer.get_vocab_size(true);
        let special: std::collections::HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let bytes = (0..size as u32)
            .map(|id| {
                if special.contains(&id) {
                    return None;
                }
                tokenizer
                    .decode(&[id], false)
                    .ok()
                    .filter(|text| !text.is_empty())
                    .map(String::into_bytes)
            })
            .collect();
        Self { bytes }
    }
}

/// The recognizer behind a constraint.
#[derive(Clone, Debug)]
enum Grammar {
    /// Any JSON object.
    Object(Recognizer),
    /// What a schema accepts.
    Schema(SchemaRecognizer),
}

impl Grammar {
    fn feed_all(&mut self, bytes: &[u8]) -> bool {
        match self {
            Self::Object(recognizer) => recognizer.feed_all(bytes),
            Self::Schema(recognizer) => recognizer.feed_all(bytes),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Object(recognizer) => recognizer.is_done(),
            Self::Schema(recognizer) => recognizer.is_done(),
        }
    }
}

/// The constraint of one answer in JSON mode or with a schema.
pub struct JsonConstraint {
    grammar: Grammar,
}

impl JsonConstraint {
    /// A constraint at the start of an answer in `format`.
    pub fn new(format: &ResponseFormat) -> Self {
        let grammar = match format {
            ResponseFormat::JsonObject => Grammar::Object(Recognizer::default()),
            ResponseFormat::JsonSchema(schema) => {
                Grammar::Schema(SchemaRecognizer::new(Arc::clone(schema)))
            }
        };
        Self { grammar }
    }

    /// Whether the answer is whole (the generation ends there).
    pub fn is_done(&self) -> bool {
        self.grammar.is_done()
    }

    /// Whether `token` may come next.
    fn allows(&self, vocabulary: &Vocabulary, token: u32) -> bool {
        let Some(Some(bytes)) = vocabulary.bytes.get(token as usize) else {
            return false;
        };
        self.grammar.clone().feed_all(bytes)
    }

    /// Sets the logits of every token that cannot continue the answer to minus infinity;
    /// false when no token can. `greedy`: only the best allowed token matters, so tokens are
    /// tried best first and the rest are masked without being checked.
    pub fn mask(&self, vocabulary: &Vocabulary, logits: &mut [f32], greedy: bool) -> bool {
        if greedy {
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_unstable_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
            let best = order
                .into_iter()
                .find(|token| self.allows(vocabulary, *token));
            for (token, logit) in logits.iter_mut().enumerate() {
                if Some(token as u32) != best {
                    *logit = f32::NEG_INFINITY;
                }
            }
            return best.is_some();
        }
        let mut any = false;
        for (token, logit) in logits.iter_mut().enumerate() {
            if self.allows(vocabulary, token as u32) {
                any = true;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        any
    }

    /// Takes the chosen token into the answer.
    pub fn advance(&mut self, vocabulary: &Vocabulary, token: u32) {
        if let Some(Some(bytes)) = vocabulary.bytes.get(token as usize) {
            let fed = self.grammar.feed_all(bytes);
            debug_assert!(fed, "a masked-out token was chosen");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> (bool, bool) {
        let mut recognizer = Recognizer::default();
        let fed = recognizer.feed_all(text.as_bytes());
        (fed, fed && recognizer.is_done())
    }

    #[test]
    fn whole_objects_are_done_and_prefixes_are_alive() {
        for text in [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#" {"a": [1, -2.5e+3, 0, true, false, null, "x\"y\u00e9"], "b": {"c": {}}}"#,
            "{\"é\":\n  [ [], {} ]}",
        ] {
            assert_eq!(accepts(text), (true, true), "{text}");
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            for end in 0..text.len() {
                if text.is_char_boundary(end) {
                    assert!(
                        accepts(&text[..end]).0,
                        "prefix of {text}: {}",
                        &text[..end]
                    );
                }
            }
        }
    }

    #[test]
    fn what_json_refuses_is_refused() {
        for text in [
            "[1]",
            "\"x\"",
            "{a: 1}",
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}x"#,
            r#"{"a": tru}"#,
            r#"{"a": 1,}"#,
            r#"{"a": [1,]}"#,
            r#"{"a": "\q"}"#,
            "{\"a\": \"line\nbreak\"}",
            r#"{"a": 1]"#,
            r#"{} {}"#,
        ] {
            assert!(!accepts(text).1, "{text}");
        }
        // Endless whitespace is cut off, and so is nesting past 64 containers.
        assert!(!accepts(&format!("{{{}", " ".repeat(100))).0);
        let deep = format!("{{\"a\": {}", "[".repeat(63));
        assert!(accepts(&deep).0);
        assert!(!accepts(&format!("{deep}[")).0);
    }
}
