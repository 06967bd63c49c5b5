//! Decoding: the parameters of one generation, checked against the request and the model's
//! context, and the incremental detokenizer that turns generated tokens into text deltas while
//! holding back text that may be the start of a stop sequence.

use candle_transformers::generation::{LogitsProcessor, Sampling as Sampler};
use tokenizers::Tokenizer;

use sluice_protocol::ApiError;
use sluice_protocol::openai::Sampling;

use super::json_mode::ResponseFormat;

/// Tokens generated when a request names no `max_tokens` (fewer if the context is shorter).
pub const DEFAULT_MAX_TOKENS: usize = 1024;
/// Most stop sequences one request may give (OpenAI's limit).
const MAX_STOP_SEQUENCES: usize = 4;

/// How one sequence is generated.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass; 1 keeps the whole distribution.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Text that ends the generation (not included in the answer).
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives (`logprobs`).
    pub logprobs: Option<usize>,
    /// Constrain the answer to a format (`response_format`).
    pub format: Option<ResponseFormat>,
}

impl GenerationParams {
    /// Checks the request's sampling fields. `prompt_tokens` and `context` (the model's
    /// context length) bound `max_tokens`. OpenAI's defaults: temperature 1, top_p 1.
    pub fn new(
        sampling: &Sampling,
        prompt_tokens: usize,
        context: usize,
    ) -> Result<Self, ApiError> {
        if prompt_tokens == 0 {
            return Err(ApiError::invalid(
                "the prompt is empty after tokenization; send some text",
            ));
        }
        let room = context.saturating_sub(prompt_tokens);
        if room == 0 {
            return Err(ApiError::invalid(format!(
                "the prompt has {prompt_tokens} tokens, which fills the model's context of \
                 {context} tokens; shorten it"
            )));
        }
        let max_tokens = match sampling.max_tokens {
            None => room.min(DEFAULT_MAX_TOKENS),
            Some(0) => return Err(ApiError::invalid("`max_tokens` must be at least 1")),
            Some(asked) => {
                let asked = asked as usize;
                if asked > room {
                    return Err(ApiError::invalid(format!(
                        "`max_tokens` is {asked}, but the prompt ({prompt_tokens} tokens) leaves \
                         room for {room} in the model's context of {context}"
                    )));
                }
                asked
            }
        };
        let temperature = sampling.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(format!(
                "`temperature` is {temperature}; it must be between 0 and 2"
            )));
        }
        let top_p = sampling.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(format!(
                "`top_p` is {top_p}; it must be greater than 0 and at most 1"
            )));
        }
        let stop = sampling.stop_sequences();
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid(format!(
                "`stop` has {} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
                stop.len()
            )));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("`stop` has an empty string"));
        }
        Ok(Self {
            max_tokens,
            temperature,
            top_p,
            seed: sampling.seed.unwrap_or_else(|| fastrand::u64(..)),
            stop,
            logprobs: None,
            format: None,
        })
    }

    /// The same parameters with another seed (the next choice of `n`).
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }

    /// Whether decoding is greedy (temperature 0).
    pub fn greedy(&self) -> bool {
        self.temperature < 1e-6
    }

    /// The sampler these parameters describe.
    pub fn sampler(&self) -> LogitsProcessor {
        let sampling = if self.greedy() {
            Sampler::ArgMax
        } else if self.top_p < 1.0 {
            Sampler::TopP {
                p: self.top_p,
                temperature: self.temperature,
            }
        } else {
            Sampler::All {
                temperature: self.temperature,
            }
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// What one more token did to the text.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// Text that is now safe to send (may be empty).
    Text(String),
    /// A stop sequence was generated: the text before it, and generation ends.
    Stop(String),
}

/// Turns tokens into text, one token at a time.
///
/// Tokens are decoded in a sliding window (the last fully decoded token onward) so that
/// decoders which strip a leading space or merge bytes give the same text as decoding the
/// whole sequence, and a token ending inside a UTF-8 character waits for the next one. Text
/// that could be the start of a stop sequence is held back until it is known not to be one.
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the decoding window.
    prefix_offset: usize,
    /// End of the tokens already turned into text.
    read_offset: usize,
    /// Everything decoded so far.
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stop: Vec<String>,
}

impl TextStream {
    /// A stream that ends at any of `stop`.
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            sent: 0,
            stop,
        }
    }

    /// Adds a generated token.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Delta, String> {
        self.ids.push(id);
        let prefix = self.decode(tokenizer, self.prefix_offset, self.read_offset)?;
        let window = self.decode(tokenizer, self.prefix_offset, self.ids.len())?;
        if window.len() > prefix.len()
            && !window.ends_with('\u{FFFD}')
            && let Some(new) = window.get(prefix.len()..)
        {
            self.text.push_str(new);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(self.release(false))
    }

    /// Ends the stream: whatever is left, including held-back text and a trailing partial
    /// character.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Delta, String> {
        if self.read_offset < self.ids.len() {
            let prefix = self.decode(tokenizer, self.prefix_offset, self.read_offset)?;
            let window = self.decode(tokenizer, self.prefix_offset, self.ids.len())?;
            if let Some(new) = window.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.read_offset = self.ids.len();
        }
        Ok(self.release(true))
    }

    fn decode(&self, tokenizer: &Tokenizer, from: usize, to: usize) -> Result<String, String> {
        if from >= to {
            return Ok(String::new());
        }
        tokenizer
            .decode(&self.ids[from..to], true)
            .map_err(|error| format!("cannot decode generated tokens: {error}"))
    }

    /// Hands out the text that is final: up to a stop sequence, or all but a possible start
    /// of one (everything when `all`).
    fn release(&mut self, all: bool) -> Delta {
        // A stop sequence can only begin in the part not yet sent (earlier text was checked).
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stop
            .iter()
            .filter_map(|stop| self.text[from..].find(stop.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = found {
            let at = at.max(self.sent);
            let piece = self.text[self.sent..at].to_string();
            self.sent = at;
            return Delta::Stop(piece);
        }
        let mut end = self.text.len();
        if !all {
            let held = self
                .stop
                .iter()
                .map(|stop| held_back(&self.text, stop))
                .max()
                .unwrap_or(0);
            end -= held;
            while !self.text.is_char_boundary(end) {
                end -= 1;
            }
        }
        let end = end.max(self.sent);
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        Delta::Text(piece)
    }
}

/// Length of the longest end of `text` that is a proper start of `stop`.
fn held_back(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&len| stop.is_char_boundary(len) && text.ends_with(&stop[..len]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer whose tokens are single characters (and `é` as two byte tokens).
    fn tokenizer() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = ["a", "b", "c", " ", "S", "T"]
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), serde_json::json!(id)))
            .chain([
                ("<0xC3>".to_string(), serde_json::json!(6)),
                ("<0xA9>".to_string(), serde_json::json!(7)),
            ])
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true,
                      "vocab": vocab, "merges": []}
        });
        Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap()
    }

    fn run(stop: &[&str], ids: &[u32]) -> (Vec<String>, bool) {
        let tokenizer = tokenizer();
        let mut stream = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for &id in ids {
            match stream.push(&tokenizer, id).unwrap() {
                Delta::Text(text) => pieces.push(text),
                Delta::Stop(text) => {
                    pieces.push(text);
                    return (pieces, true);
                }
            }
        }
        match stream.finish(&tokenizer).unwrap() {
            Delta::Text(text) | Delta::Stop(text) => pieces.push(text),
        }
        (pieces, false)
    }

    #[test]
    fn text_arrives_token_by_token_and_split_characters_wait() {
        let (pieces, stopped) = run(&[], &[0, 6, 7, 1]);
        assert_eq!(pieces, ["a", "", "é", "b", ""]);
        assert!(!stopped);
    }

    #[test]
    fn stop_sequences_are_cut_and_their_starts_held_back() {
        // "ab STc": "ST" stops; "S" is held until "T" arrives.
        let (pieces, stopped) = run(&["ST"], &[0, 1, 3, 4, 5, 2]);
        assert_eq!(pieces, ["a", "b", " ", "", ""]);
        assert!(stopped);
        // "S" then "a": the held "S" is released.
        let (pieces, stopped) = run(&["ST"], &[4, 0]);
        assert_eq!(pieces, ["", "Sa", ""]);
        assert!(!stopped);
        // A held start is flushed at the end.
        let (pieces, _) = run(&["ST"], &[0, 4]);
        assert_eq!(pieces.concat(), "aS");
    }

    #[test]
    fn parameters_are_checked_against_the_context() {
        let sampling =
            |json: serde_json::Value| -> Sampling { serde_json::from_value(json).unwrap() };
        let params = GenerationParams::new(&sampling(serde_json::json!({})), 10, 100).unwrap();
        assert_eq!(
            (params.max_tokens, params.temperature, params.top_p),
            (90, 1.0, 1.0)
        );
        let error =
            GenerationParams::new(&sampling(serde_json::json!({"max_tokens": 95})), 10, 100)
                .unwrap_err();
        assert!(error.message.contains("room for 90"), "{error}");
        for bad in [
            serde_json::json!({"temperature": 3.0}),
            serde_json::json!({"top_p": 0.0}),
            serde_json::json!({"max_tokens": 0}),
            serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}),
            serde_json::json!({"stop": ""}),
        ] {
            assert!(
                GenerationParams::new(&sampling(bad.clone()), 10, 100).is_err(),
                "{bad}"
            );
        }
        assert!(GenerationParams::new(&sampling(serde_json::json!({})), 100, 100).is_err());
        assert!(GenerationParams::new(&sampling(serde_json::json!({})), 0, 100).is_err());
    }
}
