//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), turned into a
//! Hugging Face [`Tokenizer`] that splits and merges text as llama.cpp does with the same file.
//!
//! Two vocabulary kinds are read, the ones chat models ship:
//! - `gpt2`: byte-level BPE with its merges; the text is first split by the regular
//!   expressions of its pre-tokenizer family (`tokenizer.ggml.pre`), as llama.cpp splits it.
//! - `llama`: SentencePiece BPE with piece scores; merges are derived from the scores (the
//!   highest-scoring pair first, as SentencePiece merges), unknown bytes fall back to the
//!   `<0xNN>` byte tokens, and spaces become `▁` with one prepended when
//!   `tokenizer.ggml.add_space_prefix` says so (the default).
//!
//! Control and user-defined tokens (`tokenizer.ggml.token_type` 3 and 4) are matched whole in
//! the input, as chat templates print them. BOS/EOS are added around a prompt when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` ask (llama.cpp's defaults when absent).
//! Everything here is a pure step from the metadata; loading the file is the caller's.

use std::collections::{BTreeSet, HashMap, HashSet};

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp numbers them.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// GPT-2's split: contractions, letters, digits, other symbols, whitespace.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split: letters with one leading non-letter, digits in threes.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with every digit alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of a GGUF file and the special tokens a chat template prints.
pub struct GgufVocab {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The beginning-of-sequence token's text, if the vocabulary names one.
    pub bos_token: Option<String>,
    /// The end-of-sequence token's text, if the vocabulary names one.
    pub eos_token: Option<String>,
    /// Tokens that end a generation: EOS, the end-of-turn and end-of-message tokens the file
    /// names, and the control tokens chat formats end a turn with (llama.cpp stops at the same).
    pub end_of_generation: BTreeSet<u32>,
}

/// Token texts that end a turn in the chat formats of common model families.
const END_OF_TURN_TEXTS: [&str; 9] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// Why a GGUF file's tokenizer cannot be built; the message names the metadata key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VocabError(String);

/// Whether the metadata carries a tokenizer at all.
pub fn has_vocab(metadata: &HashMap<String, GgufValue>) -> bool {
    metadata.contains_key("tokenizer.ggml.model") && metadata.contains_key("tokenizer.ggml.tokens")
}

/// Builds the tokenizer from a GGUF file's metadata.
pub fn read(metadata: &HashMap<String, GgufValue>) -> Result<GgufVocab, VocabError> {
    let meta = Metadata(metadata);
    let model = meta.text("tokenizer.ggml.model")?;
    let tokens = meta.texts("tokenizer.ggml.tokens")?;
    let types = match metadata.get("tokenizer.ggml.token_type") {
        Some(_) => meta.integers("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(VocabError(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let token = |key: &str| -> Result<Option<(u32, String)>, VocabError> {
        let Some(id) = meta.optional_u32(key)? else {
            return Ok(None);
        };
        let text = tokens.get(id as usize).ok_or_else(|| {
            VocabError(format!(
                "{key} is {id}, outside the {} tokens",
                tokens.len()
            ))
        })?;
        Ok(Some((id, text.clone())))
    };
    let bos = token("tokenizer.ggml.bos_token_id")?;
    let eos = token("tokenizer.ggml.eos_token_id")?;
    let unknown = token("tokenizer.ggml.unknown_token_id")?;
    let mut end_of_generation: BTreeSet<u32> = tokens
        .iter()
        .enumerate()
        .filter(|(_, text)| END_OF_TURN_TEXTS.contains(&text.as_str()))
        .filter_map(|(id, _)| u32::try_from(id).ok())
        .collect();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        end_of_generation.extend(token(key)?.map(|(id, _)| id));
    }

    let (body, add_bos_default) = match model.as_str() {
        "gpt2" => {
            let pre = meta.optional_text("tokenizer.ggml.pre")?;
            let merges = meta.texts("tokenizer.ggml.merges")?;
            (
                byte_level(pre.as_deref(), &tokens, merges)?,
                pre_adds_bos(pre.as_deref()),
            )
        }
        "llama" => {
            let scores = meta.floats("tokenizer.ggml.scores")?;
            if scores.len() != tokens.len() {
                return Err(VocabError(format!(
                    "tokenizer.ggml.scores has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            let space_prefix = meta
                .optional_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let unknown = unknown.as_ref().map(|(_, text)| text.as_str());
            (
                sentencepiece(&tokens, &types, &scores, unknown, space_prefix),
                true,
            )
        }
        other => {
            return Err(VocabError(format!(
                "tokenizer.ggml.model `{other}` is not read by the builtin runtime (it reads \
                 `gpt2` and `llama`); put the model's tokenizer.json beside the GGUF file"
            )));
        }
    };
    let add_bos = meta
        .optional_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = meta
        .optional_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let mut document = body;
    document["version"] = json!("1.0");
    document["truncation"] = Value::Null;
    document["padding"] = Value::Null;
    document["added_tokens"] = added_tokens(&tokens, &types);
    let bos_added = bos.as_ref().filter(|_| add_bos);
    let eos_added = eos.as_ref().filter(|_| add_eos);
    document["post_processor"] = post_processor(bos_added, eos_added);
    let tokenizer: Tokenizer = serde_json::from_value(document)
        .map_err(|error| VocabError(format!("the GGUF vocabulary makes no tokenizer: {error}")))?;
    Ok(GgufVocab {
        tokenizer,
        bos_token: bos.map(|(_, text)| text),
        eos_token: eos.map(|(_, text)| text),
        end_of_generation,
    })
}

/// The split expressions of a `gpt2` vocabulary's pre-tokenizer family, and whether its merges
/// are skipped for a piece that is itself a token, as llama.cpp groups the names
/// `convert_hf_to_gguf.py` writes.
fn split_patterns(pre: Option<&str>) -> Result<(Vec<&'static str>, bool), VocabError> {
    Ok(match pre.unwrap_or("default") {
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_SPLIT,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
        ),
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4" | "roberta-bpe" => {
            (vec![GPT2_SPLIT], false)
        }
        "starcoder" | "smollm" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_SPLIT], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "smaug-bpe" | "dbrx" => {
            (vec![LLAMA3_SPLIT], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (vec![QWEN2_SPLIT], false),
        other => {
            return Err(VocabError(format!(
                "tokenizer.ggml.pre `{other}` is not a pre-tokenizer the builtin runtime knows \
                 (default, gpt-2, starcoder, smollm, llama-bpe, qwen2 and their aliases); put \
                 the model's tokenizer.json beside the GGUF file"
            )));
        }
    })
}

/// Whether llama.cpp adds BOS for this pre-tokenizer when the file does not say.
fn pre_adds_bos(pre: Option<&str>) -> bool {
    matches!(
        pre,
        Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral")
    )
}

/// A byte-level BPE tokenizer (model, pre-tokenizer, decoder) of a `gpt2` vocabulary.
fn byte_level(
    pre: Option<&str>,
    tokens: &[String],
    merges: Vec<String>,
) -> Result<Value, VocabError> {
    let (patterns, ignore_merges) = split_patterns(pre)?;
    let mut steps: Vec<Value> = patterns
        .into_iter()
        .map(|pattern| {
            json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                   "invert": false})
        })
        .collect();
    steps.push(
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                      "use_regex": false}),
    );
    Ok(json!({
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                    "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocabulary(tokens),
            "merges": merges,
        },
    }))
}

/// A SentencePiece BPE tokenizer of a `llama` vocabulary: merges ranked by the merged
/// piece's score, byte fallback, `▁` for spaces.
fn sentencepiece(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    unknown: Option<&str>,
    space_prefix: bool,
) -> Value {
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unknown,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocabulary(tokens),
            "merges": score_merges(tokens, types, scores),
        },
    })
}

/// Every pair of pieces that joins into a normal piece, best merged piece first (ties: the
/// left piece's id, then the right's), as SentencePiece's BPE picks the best-scoring join.
fn score_merges(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<Vec<String>> {
    let mergeable = |id: usize| !matches!(types[id], TYPE_CONTROL | TYPE_BYTE | TYPE_UNKNOWN);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| mergeable(*id))
        .map(|(id, text)| (text.as_str(), id))
        .collect();
    let mut pairs = Vec::new();
    for (merged, text) in tokens.iter().enumerate().filter(|(id, _)| mergeable(*id)) {
        for (at, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                pairs.push((scores[merged], l, r));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    pairs
        .into_iter()
        .map(|(_, l, r)| vec![tokens[l].clone(), tokens[r].clone()])
        .collect()
}

/// Token text → id; a text listed twice keeps its first id (llama.cpp's lookup keeps the last
/// written, but duplicates are only ever unused padding entries).
fn vocabulary(tokens: &[String]) -> Value {
    let mut seen = HashSet::new();
    let mut vocab = serde_json::Map::new();
    for (id, text) in tokens.iter().enumerate() {
        if seen.insert(text.as_str()) {
            vocab.insert(text.clone(), json!(id));
        }
    }
    Value::Object(vocab)
}

/// Control and user-defined tokens, matched whole in the input; control tokens are special
/// (left out of decoded text).
fn added_tokens(tokens: &[String], types: &[i32]) -> Value {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (text, kind))| {
            matches!(**kind, TYPE_CONTROL | TYPE_USER_DEFINED) && !text.is_empty()
        })
        .map(|(id, (text, kind))| {
            json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *kind == TYPE_CONTROL})
        })
        .collect()
}

/// BOS before and EOS after a prompt, when the vocabulary adds them.
fn post_processor(bos: Option<&(u32, String)>, eos: Option<&(u32, String)>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let mut special = serde_json::Map::new();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    if let Some((id, text)) = bos {
        special.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
        single.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    if let Some((id, text)) = eos {
        special.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
        single.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": text, "type_id": 1}}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair,
           "special_tokens": special})
}

/// Typed reads of the metadata, each error naming its key.
struct Metadata<'a>(&'a HashMap<String, GgufValue>);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&GgufValue, VocabError> {
        self.0
            .get(key)
            .ok_or_else(|| VocabError(format!("the GGUF metadata has no `{key}`")))
    }

    fn wrong(key: &str, what: &str, error: candle_core::Error) -> VocabError {
        VocabError(format!("`{key}` is not {what}: {error}"))
    }

    fn text(&self, key: &str) -> Result<String, VocabError> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|error| Self::wrong(key, "a string", error))
    }

    fn optional_text(&self, key: &str) -> Result<Option<String>, VocabError> {
        self.0.get(key).map(|_| self.text(key)).transpose()
    }

    fn optional_u32(&self, key: &str) -> Result<Option<u32>, VocabError> {
        self.0
            .get(key)
            .map(|value| {
                value
                    .to_u32()
                    .or_else(|_| {
                        value
                            .to_i32()
                            .and_then(|n| u32::try_from(n).map_err(candle_core::Error::wrap))
                    })
                    .map_err(|error| Self::wrong(key, "a token id", error))
            })
            .transpose()
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, VocabError> {
        self.0
            .get(key)
            .map(|value| {
                value
                    .to_bool()
                    .map_err(|error| Self::wrong(key, "a boolean", error))
            })
            .transpose()
    }

    fn array(&self, key: &str) -> Result<&Vec<GgufValue>, VocabError> {
        self.get(key)?
            .to_vec()
            .map_err(|error| Self::wrong(key, "an array", error))
    }

    fn texts(&self, key: &str) -> Result<Vec<String>, VocabError> {
        self.array(key)?
            .iter()
            .map(|value| value.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|error| Self::wrong(key, "an array of strings", error))
    }

    fn integers(&self, key: &str) -> Result<Vec<i32>, VocabError> {
        self.array(key)?
            .iter()
            .map(GgufValue::to_i32)
            .collect::<Result<_, _>>()
            .map_err(|error| Self::wrong(key, "an array of 32-bit integers", error))
    }

    fn floats(&self, key: &str) -> Result<Vec<f32>, VocabError> {
        self.array(key)?
            .iter()
            .map(GgufValue::to_f32)
            .collect::<Result<_, _>>()
            .map_err(|error| Self::wrong(key, "an array of 32-bit floats", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> GgufValue {
        GgufValue::Array(
            items
                .iter()
                .map(|s| GgufValue::String((*s).into()))
                .collect(),
        )
    }

    fn metadata(entries: Vec<(&str, GgufValue)>) -> HashMap<String, GgufValue> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// A byte-level vocabulary: the bytes of "hello world" and their merges.
    fn gpt2() -> HashMap<String, GgufValue> {
        let tokens = [
            "<|end|>",
            "<|start|>",
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "w",
            "r",
            "d",
            "1",
            "2",
            "he",
            "ll",
            "hell",
            "hello",
            "Ġw",
            "or",
            "Ġwor",
            "Ġworld",
            "ld",
            "!",
        ];
        let mut types = vec![GgufValue::I32(1); tokens.len()];
        types[0] = GgufValue::I32(TYPE_CONTROL);
        types[1] = GgufValue::I32(TYPE_CONTROL);
        metadata(vec![
            ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", GgufValue::String("smollm".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", GgufValue::Array(types)),
            (
                "tokenizer.ggml.merges",
                strings(&[
                    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
                ]),
            ),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(0)),
        ])
    }

    fn ids(vocab: &GgufVocab, text: &str, special: bool) -> Vec<u32> {
        vocab
            .tokenizer
            .encode(text, special)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    #[test]
    fn byte_level_vocabularies_merge_split_pieces_and_match_control_tokens() {
        let vocab = read(&gpt2()).unwrap();
        assert_eq!(ids(&vocab, "hello world", true), [15, 19]);
        // smollm splits every digit alone.
        assert_eq!(ids(&vocab, "12", true), [10, 11]);
        // Control tokens are matched whole and left out of decoded text.
        assert_eq!(ids(&vocab, "<|start|>hello<|end|>", false), [1, 15, 0]);
        assert_eq!(
            vocab.tokenizer.decode(&[1, 15, 19, 0], true).unwrap(),
            "hello world"
        );
        assert_eq!(vocab.bos_token.as_deref(), Some("<|start|>"));
        assert_eq!(vocab.eos_token.as_deref(), Some("<|end|>"));
        assert_eq!(vocab.end_of_generation, BTreeSet::from([0]));
    }

    #[test]
    fn bos_is_added_when_the_file_asks() {
        let mut meta = gpt2();
        meta.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true));
        assert_eq!(ids(&read(&meta).unwrap(), "hello", true), [1, 15]);
        assert_eq!(ids(&read(&meta).unwrap(), "hello", false), [15]);
    }

    #[test]
    fn sentencepiece_vocabularies_merge_by_score_and_fall_back_to_bytes() {
        let mut tokens = vec!["<unk>", "<s>", "</s>"];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(bytes.iter().map(String::as_str));
        let normal = ["▁", "h", "i", "▁h", "hi", "▁hi", "!"];
        tokens.extend(normal);
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
        types.extend([TYPE_BYTE; 256]);
        types.extend([1; 7]);
        // "▁hi" scores best, then "▁h" over "hi": "▁" + "h" join first, then with "i".
        let mut scores = vec![0.0f32; 259];
        scores.extend([-1.0, -2.0, -2.0, -3.0, -4.0, -1.0, -5.0]);
        let meta = metadata(vec![
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ]);
        let vocab = read(&meta).unwrap();
        let hi = 259 + 5;
        let bang = 259 + 6;
        // BOS by default; a space is prepended; "é" is not a piece: its two UTF-8 bytes.
        assert_eq!(ids(&vocab, "hi!é", true), [1, hi, bang, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(
            vocab
                .tokenizer
                .decode(&[1, hi, bang, 3 + 0xC3, 3 + 0xA9], true)
                .unwrap(),
            "hi!é"
        );
    }

    #[test]
    fn unknown_kinds_and_broken_metadata_are_named() {
        let mut meta = gpt2();
        meta.insert(
            "tokenizer.ggml.pre".into(),
            GgufValue::String("mystery".into()),
        );
        let error = read(&meta).err().unwrap().to_string();
        assert!(error.contains("tokenizer.ggml.pre `mystery`"), "{error}");
        let mut meta = gpt2();
        meta.insert(
            "tokenizer.ggml.model".into(),
            GgufValue::String("bert".into()),
        );
        let error = read(&meta).err().unwrap().to_string();
        assert!(error.contains("tokenizer.ggml.model `bert`"), "{error}");
        let mut meta = gpt2();
        meta.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(999));
        let error = read(&meta).err().unwrap().to_string();
        assert!(
            error.contains("tokenizer.ggml.eos_token_id is 999"),
            "{error}"
        );
        let mut meta = gpt2();
        meta.remove("tokenizer.ggml.merges");
        let error = read(&meta).err().unwrap().to_string();
        assert!(error.contains("no `tokenizer.ggml.merges`"), "{error}");
    }
}
