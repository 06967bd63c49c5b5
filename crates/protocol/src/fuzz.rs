//! What must hold for any input of each parser, one function per fuzz target: the targets in
//! `fuzz/` (at the repository root) call these, and the tests run them over the seed corpora
//! and the inputs that once failed (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`), so a
//! plain `cargo test` keeps those fixed without the fuzzer. Each function panics when a
//! property breaks; a parser that refuses an input with an error is fine.
//!
//! Each parser is driven the way its caller drives it (`serve`'s routes, the capture sidecar's
//! recorder, `serve`'s model directory contract).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::anthropic::{Replying, StreamTranslator};
use crate::manifest;
use crate::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest};
use crate::pii as personal;
use crate::scoring::{self, Frame, ScoringInput, ScoringRequest};
use crate::sse;
use crate::usage::{AnswerFormat, TokenCounts, UsageChunkFilter, UsageMeter};

/// A property check: panics when `data` breaks it.
pub type Check = fn(data: &[u8]);

/// The fuzz targets, by name (the folder names under `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: [(&str, Check); 8] = [
    ("scoring_json", scoring_json),
    ("scoring_csv", scoring_csv),
    ("openai_request", openai_request),
    ("sse_reassemble", sse_reassemble),
    ("manifest", manifest),
    ("usage_meter", usage_meter),
    ("anthropic_stream", anthropic_stream),
    ("pii", pii),
];

/// A JSON `/invocations` body: a request that parses has rows, a frame's rows are as wide as
/// its columns, and the request written back in its canonical form (`dataframe_split` for a
/// frame, `inputs` for rows) parses to the same rows and params.
pub fn scoring_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(request) = scoring::parse_body(value, data) else {
        return;
    };
    check_frame_shape(&request.input);
    let canonical = canonical_json(&request);
    let text = canonical.to_string();
    let again = scoring::parse_body(canonical, text.as_bytes())
        .unwrap_or_else(|error| panic!("{text} does not parse again: {error}"));
    // The layout is the body's form, which the canonical form changes on purpose.
    assert_eq!(
        (again.input, again.params),
        (request.input, request.params),
        "{text} parses to another request"
    );
}

/// A CSV `/invocations` body: a request that parses is a frame with rows as wide as its header,
/// and the frame written back as CSV parses to the same frame.
pub fn scoring_csv(data: &[u8]) {
    let Ok(request) = scoring::parse_csv(data) else {
        return;
    };
    check_frame_shape(&request.input);
    let ScoringInput::Frame(frame) = &request.input else {
        panic!("a CSV body gave rows without columns: {:?}", request.input);
    };
    assert!(request.params.is_empty(), "a CSV body has no params");
    let csv = frame_csv(frame);
    let again = scoring::parse_csv(&csv).unwrap_or_else(|error| {
        panic!(
            "{:?} does not parse again: {error}",
            String::from_utf8_lossy(&csv)
        )
    });
    assert_eq!(again, request, "{:?}", String::from_utf8_lossy(&csv));
}

/// An OpenAI chat, completions or embeddings body, read both ways `serve` reads one: straight
/// into the route's type (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`), and as a
/// JSON value first (`/invocations` with `messages`, `prompt` or `input`). A request that parses
/// is written back into a body that parses to the same request.
///
/// The two readings are not compared: they differ on bodies that are not strict JSON (bytes
/// that are not UTF-8 inside a field the type ignores; a repeated key, which the route refuses
/// and a JSON value resolves to the last one). See docs/fuzzing.md.
pub fn openai_request(data: &[u8]) {
    for chat in openai_bodies::<ChatRequest>(data) {
        for message in &chat.messages {
            let _ = message.text_content();
        }
        let _ = chat.sampling.stop_sequences();
        let _ = chat.sampling.include_usage();
    }
    for completion in openai_bodies::<CompletionRequest>(data) {
        let _ = completion.sampling.stop_sequences();
        let _ = completion.prompt.into_vec();
    }
    for embeddings in openai_bodies::<EmbeddingsRequest>(data) {
        let _ = embeddings.encoding();
        let _ = embeddings.input.into_vec();
    }
}

/// `T` read from `data` straight and through a JSON value, where it parses, each checked to
/// survive writing back.
fn openai_bodies<T>(data: &[u8]) -> Vec<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let direct = serde_json::from_slice::<T>(data).ok();
    let via_value = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|value| serde_json::from_value::<T>(value).ok());
    let requests: Vec<T> = direct.into_iter().chain(via_value).collect();
    for request in &requests {
        // Through a value, not text: serde_json parses floats to the nearest value only with its
        // `float_roundtrip` feature, and that is serde_json's business, not this crate's.
        let written = serde_json::to_value(request).expect("a request serialises");
        let again: T = serde_json::from_value(written.clone())
            .unwrap_or_else(|error| panic!("{written} does not parse again: {error}"));
        assert_eq!(&again, request, "{written} parses to another request");
    }
    requests
}

/// An Anthropic event stream as the gateway translates it for an OpenAI client: what the
/// caller gets does not depend on how the stream was cut into reads, and it is a run of
/// `data:` events, each a JSON object, then `data: [DONE]` exactly once, last. The first byte
/// chooses the cut and whether the caller asked for usage.
pub fn anthropic_stream(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(first >> 1).max(1);
    let replying = Replying {
        include_usage: first & 1 == 1,
    };
    let translate = |step: usize| {
        let mut translator = StreamTranslator::created_at(replying.clone(), 0);
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            out.extend(translator.push(piece));
        }
        out.extend(translator.finish());
        out
    };
    let whole = translate(stream.len().max(1));
    assert_eq!(
        translate(step),
        whole,
        "the translation depends on the reads"
    );
    assert_eq!(translate(1), whole, "the translation depends on the reads");
    let text = String::from_utf8(whole).expect("the translation is UTF-8");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    assert_eq!(
        events.iter().filter(|e| **e == "data: [DONE]").count(),
        1,
        "{text}"
    );
    for event in &events[..events.len() - 1] {
        let json = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?}"));
        let value: Value = serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("{json} is not JSON: {error}"));
        assert!(value.is_object(), "{json}");
    }
}

/// Text as the guardrails and the capture sidecar scan it (decoded lossily): the findings are
/// in order, never overlap, are not empty and lie on character boundaries, and masking
/// replaces exactly them with `<KIND>`, leaving every other byte as it was.
pub fn pii(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let spans = personal::find(&text);
    let mut at = 0;
    for span in &spans {
        assert!(
            span.start >= at && span.start < span.end && span.end <= text.len(),
            "{spans:?}"
        );
        assert!(
            text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
            "{spans:?}"
        );
        at = span.end;
    }
    let Some(masked) = personal::mask(&text, &spans) else {
        assert!(spans.is_empty());
        return;
    };
    let mut expected = String::new();
    let mut at = 0;
    for span in &spans {
        expected.push_str(&text[at..span.start]);
        expected.push_str(&format!("<{}>", span.kind.name()));
        at = span.end;
    }
    expected.push_str(&text[at..]);
    assert_eq!(masked, expected);
}

/// A streamed response as the capture sidecar records it (UTF-8 decoded lossily): the
/// reassembled body, when there is one, is a JSON object whose text parses again.
pub fn sse_reassemble(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let Some(body) = sse::reassemble(&raw) else {
        return;
    };
    assert!(body.is_object(), "reassembled into a non-object: {body}");
    if body.get("error").is_none() {
        assert!(
            body["choices"].is_array(),
            "reassembled without choices: {body}"
        );
    }
    let text = body.to_string();
    let again: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("the recorded body {text} is not JSON: {error}"));
    assert!(again.is_object());
}

/// An answer as the gateway meters it while it streams to the client: the token counts do not
/// depend on how the answer is cut into frames; for a JSON object they are those of its
/// `usage` member as `serde_json` reads it (member names compared as written: an escaped name
/// such as `us\u0061ge` is not `usage`); a stream passed through the usage-chunk filter loses
/// exactly its usage-only events, whatever the framing. The first byte chooses where the
/// frames are cut.
pub fn usage_meter(data: &[u8]) {
    let Some((&cut, answer)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let metered = |format: AnswerFormat, step: usize| {
        let mut meter = UsageMeter::new(format);
        for frame in answer.chunks(step) {
            meter.feed(frame);
        }
        meter.finish()
    };
    for format in [AnswerFormat::Json, AnswerFormat::EventStream] {
        let whole = metered(format, answer.len().max(1));
        assert_eq!(
            metered(format, step),
            whole,
            "{format:?} counts depend on framing"
        );
        assert_eq!(
            metered(format, 1),
            whole,
            "{format:?} counts depend on framing"
        );
    }
    if !answer.windows(2).any(|w| w == b"\\u")
        && let Ok(body) = serde_json::from_slice::<Value>(answer)
        && body.is_object()
    {
        assert_eq!(
            metered(AnswerFormat::Json, step),
            TokenCounts::from_body(&body),
            "the meter disagrees with serde_json on {body}"
        );
    }
    let filtered = |step: usize| {
        let mut filter = UsageChunkFilter::default();
        let mut out = Vec::new();
        for frame in answer.chunks(step) {
            out.extend(filter.push(frame));
        }
        out.extend(filter.finish());
        out
    };
    let whole = filtered(answer.len().max(1));
    assert_eq!(
        filtered(step),
        whole,
        "the filter's output depends on framing"
    );
    assert!(whole.len() <= answer.len(), "the filter added bytes");
}

/// A manifest as `serve` reads the model directory: the text as an `MLmodel` and as a
/// `sluice-model.yaml` (with the ModelVersion's format, task and signature stood in for by
/// plain strings and YAML). Nothing may panic.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = manifest::parse_mlmodel(text);
    let _ = manifest::parse_sluice_manifest::<String, String, serde_norway::Value>(text);
}

fn check_frame_shape(input: &ScoringInput) {
    assert!(!input.is_empty(), "a request that parses has rows");
    if let ScoringInput::Frame(frame) = input {
        for (index, row) in frame.rows.iter().enumerate() {
            assert_eq!(
                row.len(),
                frame.columns.len(),
                "row {index} of {frame:?} is not as wide as the columns"
            );
        }
    }
}

/// The request as `dataframe_split` (a frame) or `inputs` (rows), with its params.
fn canonical_json(request: &ScoringRequest) -> Value {
    let mut body = Map::new();
    match &request.input {
        ScoringInput::Frame(frame) => {
            body.insert(
                "dataframe_split".into(),
                json!({"columns": frame.columns, "data": frame.rows}),
            );
        }
        ScoringInput::Rows(rows) => {
            body.insert("inputs".into(), Value::Array(rows.clone()));
        }
    }
    if !request.params.is_empty() {
        body.insert("params".into(), Value::Object(request.params.clone()));
    }
    Value::Object(body)
}

/// A frame of CSV cells (numbers, strings, nulls) written as CSV with a header row.
fn frame_csv(frame: &Frame) -> Vec<u8> {
    // A reader drops one byte-order mark at the start, so a first column whose name starts with
    // U+FEFF (the body had two) is written after one.
    let bom: &[u8] = match frame.columns.first() {
        Some(first) if first.starts_with('\u{feff}') => "\u{feff}".as_bytes(),
        _ => b"",
    };
    let mut writer = csv::Writer::from_writer(bom.to_vec());
    writer
        .write_record(&frame.columns)
        .expect("writing to memory");
    for row in &frame.rows {
        let cells = row.iter().map(|cell| match cell {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        writer.write_record(cells).expect("writing to memory");
    }
    writer.into_inner().expect("writing to memory")
}
