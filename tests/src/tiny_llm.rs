//! A tiny random Llama-architecture language model made in the test, written as a Hugging Face
//! checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) and as
//! a GGUF file with Q8_0 quantised matrices; plus an independent reference: a plain Rust
//! forward pass of the same architecture (no candle), used to compute greedy continuations.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

pub const HIDDEN: usize = 64;
pub const INTERMEDIATE: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const EPS: f32 = 1e-5;
pub const ROPE_THETA: f32 = 10_000.0;
pub const CONTEXT: usize = 8192;

/// The tokenizer's vocabulary: `\n`, printable ASCII, then the special tokens.
pub fn vocabulary() -> Vec<String> {
    let mut vocab = vec!["\n".to_string()];
    vocab.extend((0x20u8..=0x7e).map(|byte| (byte as char).to_string()));
    vocab.extend(["<s>", "</s>", "<unk>"].map(str::to_string));
    vocab
}

pub fn vocab_size() -> usize {
    vocabulary().len()
}

pub fn bos_id() -> u32 {
    token_id("<s>")
}

pub fn eos_id() -> u32 {
    token_id("</s>")
}

fn token_id(token: &str) -> u32 {
    vocabulary().iter().position(|t| t == token).unwrap() as u32
}

/// Token ids of `text` (one per character; the tokenizer adds nothing).
pub fn encode(text: &str) -> Vec<u32> {
    let vocab = vocabulary();
    text.chars()
        .map(|c| {
            vocab
                .iter()
                .position(|t| *t == c.to_string())
                .unwrap_or_else(|| panic!("{c:?} is not in the tiny vocabulary")) as u32
        })
        .collect()
}

pub fn decode(ids: &[u32]) -> String {
    let vocab = vocabulary();
    ids.iter().map(|&id| vocab[id as usize].as_str()).collect()
}

/// A character-level BPE tokenizer (no merges) with a `Fuse` decoder.
pub fn tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(id, token)| (token, json!(id)))
        .collect();
    let special = |token: &str| {
        json!({"id": token_id(token), "content": token, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special("<s>"), special("</s>"), special("<unk>")],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    })
}

/// A ChatML-like template using `bos_token` and a Python string method, as real ones do.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<{{ message.role }}>{{ message.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

/// The prompt [`CHAT_TEMPLATE`] makes of `(role, content)` messages (without the BOS token,
/// which is a special token: its id comes first).
pub fn chat_prompt(messages: &[(&str, &str)]) -> Vec<u32> {
    let mut text = String::new();
    for (role, content) in messages {
        text += &format!("<{role}>{}\n", content.trim());
    }
    text += "<assistant>";
    let mut ids = vec![bos_id()];
    ids.extend(encode(&text));
    ids
}

/// One layer's weights, matrices row-major as `[out][in]`.
#[derive(Clone)]
pub struct Layer {
    pub input_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
    /// q, k and v biases: Qwen2 has them, Llama not.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
}

impl Layer {
    fn with_bias(&self, which: usize, mut x: Vec<f32>) -> Vec<f32> {
        if let Some(biases) = &self.qkv_bias {
            for (v, b) in x.iter_mut().zip(&biases[which]) {
                *v += b;
            }
        }
        x
    }
}

/// The whole model.
#[derive(Clone)]
pub struct Model {
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub lm_head: Vec<f32>,
    /// Round matrix-product inputs to Q8_0 blocks first, as GGML's quantised matmul does.
    pub quantize_activations: bool,
}

/// How rotary embeddings pair dimensions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rope {
    /// Hugging Face's `rotate_half`: dimension i pairs with i + d/2.
    Halves,
    /// GGML's Llama: dimension 2i pairs with 2i + 1.
    Interleaved,
}

impl Model {
    /// Random weights from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut matrix = |rows: usize, cols: usize, scale: f32| -> Vec<f32> {
            (0..rows * cols)
                .map(|_| (rng.f32() * 2.0 - 1.0) * scale)
                .collect()
        };
        let vocab = vocab_size();
        let layers = (0..LAYERS)
            .map(|_| Layer {
                input_norm: vec![1.0; HIDDEN],
                q: matrix(HEADS * HEAD_DIM, HIDDEN, 0.3),
                k: matrix(KV_HEADS * HEAD_DIM, HIDDEN, 0.3),
                v: matrix(KV_HEADS * HEAD_DIM, HIDDEN, 0.3),
                o: matrix(HIDDEN, HEADS * HEAD_DIM, 0.3),
                post_norm: vec![1.0; HIDDEN],
                gate: matrix(INTERMEDIATE, HIDDEN, 0.3),
                up: matrix(INTERMEDIATE, HIDDEN, 0.3),
                down: matrix(HIDDEN, INTERMEDIATE, 0.3),
                qkv_bias: None,
            })
            .collect();
        let embed = matrix(vocab, HIDDEN, 1.0);
        let mut lm_head = matrix(vocab, HIDDEN, 1.0);
        // The special tokens get logit 0 against a wide spread, so greedy answers never end
        // early; [`Model::ending_at`] makes one that does.
        for token in ["<s>", "</s>", "<unk>"] {
            let id = token_id(token) as usize;
            lm_head[id * HIDDEN..(id + 1) * HIDDEN].fill(0.0);
        }
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let mut norm = |_: ()| -> Vec<f32> { (0..HIDDEN).map(|_| 0.5 + rng.f32()).collect() };
        let mut model = Self {
            embed,
            layers,
            norm: norm(()),
            lm_head,
            quantize_activations: false,
        };
        for layer in &mut model.layers {
            layer.input_norm = norm(());
            layer.post_norm = norm(());
        }
        model
    }

    /// Next-token logits after `tokens`, computed from scratch.
    pub fn logits(&self, tokens: &[u32], rope: Rope) -> Vec<f32> {
        let n = tokens.len();
        let mut x: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| self.embed[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].to_vec())
            .collect();
        for layer in &self.layers {
            let h: Vec<Vec<f32>> = x
                .iter()
                .map(|row| rms_norm(row, &layer.input_norm))
                .collect();
            let q: Vec<Vec<f32>> = h
                .iter()
                .enumerate()
                .map(|(pos, row)| {
                    rotate(
                        layer.with_bias(0, self.project(&layer.q, row)),
                        HEADS,
                        pos,
                        rope,
                    )
                })
                .collect();
            let k: Vec<Vec<f32>> = h
                .iter()
                .enumerate()
                .map(|(pos, row)| {
                    rotate(
                        layer.with_bias(1, self.project(&layer.k, row)),
                        KV_HEADS,
                        pos,
                        rope,
                    )
                })
                .collect();
            let v: Vec<Vec<f32>> = h
                .iter()
                .map(|row| layer.with_bias(2, self.project(&layer.v, row)))
                .collect();
            for i in 0..n {
                let mut attended = vec![0.0f32; HEADS * HEAD_DIM];
                for head in 0..HEADS {
                    let kv_head = head / (HEADS / KV_HEADS);
                    let qh = &q[i][head * HEAD_DIM..(head + 1) * HEAD_DIM];
                    let scores: Vec<f32> = (0..=i)
                        .map(|j| {
                            let kh = &k[j][kv_head * HEAD_DIM..(kv_head + 1) * HEAD_DIM];
                            dot(qh, kh) / (HEAD_DIM as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = weights.iter().sum();
                    for (j, w) in weights.iter().enumerate() {
                        let vh = &v[j][kv_head * HEAD_DIM..(kv_head + 1) * HEAD_DIM];
                        for d in 0..HEAD_DIM {
                            attended[head * HEAD_DIM + d] += w / total * vh[d];
                        }
                    }
                }
                let out = self.project(&layer.o, &attended);
                for d in 0..HIDDEN {
                    x[i][d] += out[d];
                }
            }
            for row in &mut x {
                let h = rms_norm(row, &layer.post_norm);
                let gate = self.project(&layer.gate, &h);
                let up = self.project(&layer.up, &h);
                let mixed: Vec<f32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let out = self.project(&layer.down, &mixed);
                for d in 0..HIDDEN {
                    row[d] += out[d];
                }
            }
        }
        let last = rms_norm(&x[n - 1], &self.norm);
        self.project(&self.lm_head, &last)
    }

    fn project(&self, w: &[f32], x: &[f32]) -> Vec<f32> {
        if self.quantize_activations {
            matvec(w, &q8_0_round_trip(x))
        } else {
            matvec(w, x)
        }
    }

    /// Greedy continuation of `prompt`: at most `max_tokens`, ending early at end-of-sequence.
    /// Answers the text and whether it ended at end-of-sequence.
    pub fn greedy(&self, prompt: &[u32], max_tokens: usize, rope: Rope) -> (String, bool) {
        let mut tokens = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..max_tokens {
            let logits = self.logits(&tokens, rope);
            let next = argmax(&logits);
            if next == eos_id() {
                return (decode(&out), true);
            }
            out.push(next);
            tokens.push(next);
        }
        (decode(&out), false)
    }

    /// The same weights as a Qwen2 model: random q/k/v biases added.
    pub fn qwen2(&self, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bias = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.f32() - 0.5).collect() };
        let mut model = self.clone();
        for layer in &mut model.layers {
            layer.qkv_bias = Some([
                bias(HEADS * HEAD_DIM),
                bias(KV_HEADS * HEAD_DIM),
                bias(KV_HEADS * HEAD_DIM),
            ]);
        }
        model
    }

    fn is_qwen2(&self) -> bool {
        self.layers[0].qkv_bias.is_some()
    }

    /// The model whose end-of-sequence logit slightly beats `token`'s wherever `token` would
    /// be the greedy choice, so a greedy answer ends where `token` first appeared.
    pub fn ending_at(&self, token: u32) -> Self {
        let mut model = self.clone();
        let (eos, token) = (eos_id() as usize, token as usize);
        let row: Vec<f32> = model.lm_head[token * HIDDEN..(token + 1) * HIDDEN]
            .iter()
            .map(|w| w * 1.05)
            .collect();
        model.lm_head[eos * HIDDEN..(eos + 1) * HIDDEN].copy_from_slice(&row);
        model
    }

    /// The model with q/k rows reordered for GGML's interleaved rotary pairs (what
    /// llama.cpp's converter does), so that it computes the same function under [`Rope::Interleaved`].
    pub fn permuted_for_ggml(&self) -> Self {
        let mut model = self.clone();
        for layer in &mut model.layers {
            layer.q = permute_rows(&layer.q, HEADS);
            layer.k = permute_rows(&layer.k, KV_HEADS);
        }
        model
    }

    fn tensors(&self) -> Vec<(String, Vec<f32>, Vec<usize>)> {
        let vocab = vocab_size();
        let mut out = vec![
            (
                "model.embed_tokens.weight".into(),
                self.embed.clone(),
                vec![vocab, HIDDEN],
            ),
            ("model.norm.weight".into(), self.norm.clone(), vec![HIDDEN]),
            (
                "lm_head.weight".into(),
                self.lm_head.clone(),
                vec![vocab, HIDDEN],
            ),
        ];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let qd = HEADS * HEAD_DIM;
            let kd = KV_HEADS * HEAD_DIM;
            out.extend([
                (
                    format!("{p}.input_layernorm.weight"),
                    layer.input_norm.clone(),
                    vec![HIDDEN],
                ),
                (
                    format!("{p}.self_attn.q_proj.weight"),
                    layer.q.clone(),
                    vec![qd, HIDDEN],
                ),
                (
                    format!("{p}.self_attn.k_proj.weight"),
                    layer.k.clone(),
                    vec![kd, HIDDEN],
                ),
                (
                    format!("{p}.self_attn.v_proj.weight"),
                    layer.v.clone(),
                    vec![kd, HIDDEN],
                ),
                (
                    format!("{p}.self_attn.o_proj.weight"),
                    layer.o.clone(),
                    vec![HIDDEN, qd],
                ),
                (
                    format!("{p}.post_attention_layernorm.weight"),
                    layer.post_norm.clone(),
                    vec![HIDDEN],
                ),
                (
                    format!("{p}.mlp.gate_proj.weight"),
                    layer.gate.clone(),
                    vec![INTERMEDIATE, HIDDEN],
                ),
                (
                    format!("{p}.mlp.up_proj.weight"),
                    layer.up.clone(),
                    vec![INTERMEDIATE, HIDDEN],
                ),
                (
                    format!("{p}.mlp.down_proj.weight"),
                    layer.down.clone(),
                    vec![HIDDEN, INTERMEDIATE],
                ),
            ]);
            if let Some([q, k, v]) = &layer.qkv_bias {
                out.extend([
                    (format!("{p}.self_attn.q_proj.bias"), q.clone(), vec![qd]),
                    (format!("{p}.self_attn.k_proj.bias"), k.clone(), vec![kd]),
                    (format!("{p}.self_attn.v_proj.bias"), v.clone(), vec![kd]),
                ]);
            }
        }
        out
    }

    /// Writes a Hugging Face checkpoint into `dir`: config, safetensors weights, tokenizer and
    /// tokenizer_config with [`CHAT_TEMPLATE`].
    pub fn write_safetensors(&self, dir: &Path) {
        let tensors: HashMap<String, Tensor> = self
            .tensors()
            .into_iter()
            .map(|(name, data, shape)| (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let mut config = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "rms_norm_eps": EPS, "rope_theta": ROPE_THETA,
            "max_position_embeddings": CONTEXT, "vocab_size": vocab_size(),
            "bos_token_id": bos_id(), "eos_token_id": eos_id(), "tie_word_embeddings": false,
            "hidden_act": "silu", "torch_dtype": "float32"
        });
        if self.is_qwen2() {
            config["architectures"] = json!(["Qwen2ForCausalLM"]);
            config["model_type"] = json!("qwen2");
            config["sliding_window"] = json!(CONTEXT);
            config["max_window_layers"] = json!(LAYERS);
            config["use_sliding_window"] = json!(false);
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        write_tokenizer(dir);
    }

    /// Writes `model.gguf` (architecture `llama`, matrices Q8_0, norms F32, q/k permuted for
    /// GGML) and the tokenizer into `dir`. Answers the model the GGUF file holds once
    /// dequantised, for the reference (use [`Rope::Interleaved`] with it).
    pub fn write_gguf(&self, dir: &Path) -> Model {
        let arch = if self.is_qwen2() { "qwen2" } else { "llama" };
        // GGML's Llama pairs rotary dimensions interleaved; its Qwen2 as Hugging Face does.
        let ggml = if self.is_qwen2() {
            self.clone()
        } else {
            self.permuted_for_ggml()
        };
        let rename = |name: &str| -> String {
            name.replace("model.embed_tokens", "token_embd")
                .replace("model.norm", "output_norm")
                .replace("lm_head", "output")
                .replace("model.layers.", "blk.")
                .replace("self_attn.q_proj", "attn_q")
                .replace("self_attn.k_proj", "attn_k")
                .replace("self_attn.v_proj", "attn_v")
                .replace("self_attn.o_proj", "attn_output")
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("input_layernorm", "attn_norm")
                .replace("mlp.gate_proj", "ffn_gate")
                .replace("mlp.up_proj", "ffn_up")
                .replace("mlp.down_proj", "ffn_down")
        };
        let mut quantized: Vec<(String, QTensor)> = Vec::new();
        let mut dequantized: HashMap<String, Vec<f32>> = HashMap::new();
        for (name, data, shape) in ggml.tensors() {
            let tensor = Tensor::from_vec(data, shape.clone(), &Device::Cpu).unwrap();
            let dtype = if shape.len() == 2 {
                GgmlDType::Q8_0
            } else {
                GgmlDType::F32
            };
            let q = QTensor::quantize(&tensor, dtype).unwrap();
            let back = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            dequantized.insert(name.clone(), back);
            quantized.push((rename(&name), q));
        }
        use gguf_file::Value as V;
        let key = |name: &str| format!("{arch}.{name}");
        let metadata = [
            ("general.architecture".to_string(), V::String(arch.into())),
            (key("attention.head_count"), V::U32(HEADS as u32)),
            (key("attention.head_count_kv"), V::U32(KV_HEADS as u32)),
            (key("block_count"), V::U32(LAYERS as u32)),
            (key("embedding_length"), V::U32(HIDDEN as u32)),
            (key("feed_forward_length"), V::U32(INTERMEDIATE as u32)),
            (key("rope.dimension_count"), V::U32(HEAD_DIM as u32)),
            (key("attention.layer_norm_rms_epsilon"), V::F32(EPS)),
            (key("rope.freq_base"), V::F32(ROPE_THETA)),
            (key("context_length"), V::U32(4096)),
            ("tokenizer.ggml.eos_token_id".to_string(), V::U32(eos_id())),
            ("tokenizer.ggml.bos_token_id".to_string(), V::U32(bos_id())),
        ];
        let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = quantized
            .iter()
            .map(|(name, q)| (name.as_str(), q))
            .collect();
        let mut file = std::fs::File::create(dir.join("model.gguf")).unwrap();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
        write_tokenizer(dir);
        let take = |name: &str| dequantized[name].clone();
        Model {
            quantize_activations: true,
            embed: take("model.embed_tokens.weight"),
            norm: take("model.norm.weight"),
            lm_head: take("lm_head.weight"),
            layers: (0..LAYERS)
                .map(|i| {
                    let p = format!("model.layers.{i}");
                    Layer {
                        input_norm: take(&format!("{p}.input_layernorm.weight")),
                        q: take(&format!("{p}.self_attn.q_proj.weight")),
                        k: take(&format!("{p}.self_attn.k_proj.weight")),
                        v: take(&format!("{p}.self_attn.v_proj.weight")),
                        o: take(&format!("{p}.self_attn.o_proj.weight")),
                        post_norm: take(&format!("{p}.post_attention_layernorm.weight")),
                        gate: take(&format!("{p}.mlp.gate_proj.weight")),
                        up: take(&format!("{p}.mlp.up_proj.weight")),
                        down: take(&format!("{p}.mlp.down_proj.weight")),
                        qkv_bias: self.is_qwen2().then(|| {
                            ["q", "k", "v"].map(|x| take(&format!("{p}.self_attn.{x}_proj.bias")))
                        }),
                    }
                })
                .collect(),
        }
    }
}

fn write_tokenizer(dir: &Path) {
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let config = json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A model directory for the tiny model in `format` (`safetensors` or `gguf`) and `task`.
/// Writes `model` into `dir` as a model folder of `format` (`gguf`: a Q8_0 GGUF file;
/// otherwise a Hugging Face checkpoint) with a `sluice-model.yaml` for `task`, and returns the
/// reference the answers must match (the GGUF file's rounded weights for `gguf`).
pub fn write_model_dir(dir: &Path, format: &str, task: &str, model: &Model) -> Model {
    let (file, reference) = if format == "gguf" {
        ("model.gguf", model.write_gguf(dir))
    } else {
        model.write_safetensors(dir);
        ("model.safetensors", model.clone())
    };
    let manifest = format!(
        "name: tiny-llama\nformat: {format}\ntask: {task}\nfiles: {{model: {file}, tokenizer: tokenizer.json}}\n"
    );
    std::fs::write(dir.join("sluice-model.yaml"), manifest)
        .unwrap_or_else(|e| panic!("writing the manifest in {}: {e}", dir.display()));
    reference
}

fn permute_rows(w: &[f32], heads: usize) -> Vec<f32> {
    let half = HEAD_DIM / 2;
    let mut out = vec![0.0; w.len()];
    for head in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let from = head * HEAD_DIM + t * half + i;
                let to = head * HEAD_DIM + 2 * i + t;
                out[to * HIDDEN..(to + 1) * HIDDEN]
                    .copy_from_slice(&w[from * HIDDEN..(from + 1) * HIDDEN]);
            }
        }
    }
    out
}

/// `x` quantised to Q8_0 (blocks of 32 with an f16 scale) and back, as GGML quantises the
/// input of a Q8_0 matrix product.
fn q8_0_round_trip(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|block| {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let d16 = round_to_f16(d);
            block.iter().map(move |v| (v * id).round() * d16)
        })
        .collect()
}

/// `x` rounded to the nearest half-precision value (normal range, ties to even).
fn round_to_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let bias = 0x0fff + ((bits >> 13) & 1);
    f32::from_bits((bits + bias) & !0x1fff)
}

fn rms_norm(x: &[f32], weight: &[f32]) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + EPS).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * scale * w).collect()
}

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len()).map(|row| dot(row, x)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rotate(mut x: Vec<f32>, heads: usize, pos: usize, rope: Rope) -> Vec<f32> {
    let half = HEAD_DIM / 2;
    for head in 0..heads {
        let base = head * HEAD_DIM;
        for i in 0..half {
            let freq = 1.0 / ROPE_THETA.powf(2.0 * i as f32 / HEAD_DIM as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = match rope {
                Rope::Halves => (base + i, base + i + half),
                Rope::Interleaved => (base + 2 * i, base + 2 * i + 1),
            };
            let (xa, xb) = (x[a], x[b]);
            x[a] = xa * cos - xb * sin;
            x[b] = xb * cos + xa * sin;
        }
    }
    x
}

pub fn argmax(values: &[f32]) -> u32 {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}
