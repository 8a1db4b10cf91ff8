//! Models with deterministic random weights, written as GGUF or as a Hugging Face folder,
//! for every architecture the candle engine reads: the e2e tests load tiny ones, and
//! `llem-tiny-model` writes larger ones on a GPU machine that has no network (the demo
//! GGUF is too big to carry there).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The shape of a model. K-quant block types need `hidden` and `ffn` to be multiples of 256.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub layers: usize,
    pub vocab: usize,
}

impl Dims {
    /// The e2e tests' models: loads in milliseconds.
    pub const TINY: Dims = Dims { hidden: 64, heads: 4, kv_heads: 2, head_dim: 16, ffn: 128, layers: 2, vocab: 320 };

    /// Non-embedding parameters (what FLOPs are counted from), for the llama layout.
    pub fn layer_params(&self) -> usize {
        let attn =
            self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden;
        self.layers * (attn + 3 * self.hidden * self.ffn)
    }
}

/// Deterministic values in ±0.08 (SplitMix64).
pub fn random(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % 10_000) as f32 / 10_000.0 * 0.16 - 0.08
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn ones(n: usize) -> candle_core::Result<Tensor> {
    Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)
}

/// (llama.cpp role name, shape) of every tensor of a layer.
fn layer_tensors(arch: &str, d: &Dims) -> Vec<(&'static str, Vec<usize>)> {
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut t = vec![
        ("attn_norm.weight", vec![d.hidden]),
        ("attn_q.weight", vec![q, d.hidden]),
        ("attn_k.weight", vec![kv, d.hidden]),
        ("attn_v.weight", vec![kv, d.hidden]),
        ("attn_output.weight", vec![d.hidden, q]),
        ("ffn_norm.weight", vec![d.hidden]),
        ("ffn_gate.weight", vec![d.ffn, d.hidden]),
        ("ffn_up.weight", vec![d.ffn, d.hidden]),
        ("ffn_down.weight", vec![d.hidden, d.ffn]),
    ];
    if arch == "qwen2" {
        t.extend([("attn_q.bias", vec![q]), ("attn_k.bias", vec![kv]), ("attn_v.bias", vec![kv])]);
    }
    if arch.starts_with("qwen3") || arch.starts_with("gemma3") {
        t.extend([("attn_q_norm.weight", vec![d.head_dim]), ("attn_k_norm.weight", vec![d.head_dim])]);
    }
    if arch.starts_with("gemma3") {
        t.extend([("post_attention_norm.weight", vec![d.hidden]), ("post_ffw_norm.weight", vec![d.hidden])]);
    }
    t
}

fn norm_or_random(name: &str, shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    if name.contains("norm") {
        ones(shape[0])
    } else {
        random(shape, seed)
    }
}

/// A SentencePiece vocabulary: control tokens, 256 byte tokens, then letters and pieces.
fn vocab(size: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for piece in ["\u{2581}", "a", "b", "c", "d", "e", "\u{2581}a", "\u{2581}b", "ab", "cd", "\u{2581}ab"] {
        tokens.push(piece.to_owned());
        types.push(1);
    }
    while tokens.len() < size {
        tokens.push(format!("x{}", tokens.len()));
        types.push(1);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

/// Writes a GGUF of `arch` whose matrices are quantized to `matrices` (norms stay F32).
pub fn write_gguf(path: &Path, arch: &str, d: &Dims, matrices: GgmlDType) -> candle_core::Result<()> {
    let (tokens, scores, types) = vocab(d.vocab);
    let key = |k: &str| format!("{arch}.{k}");
    let u32_of = |n: usize| Value::U32(n as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("embedding_length"), u32_of(d.hidden)),
        (key("block_count"), u32_of(d.layers)),
        (key("attention.head_count"), u32_of(d.heads)),
        (key("attention.head_count_kv"), u32_of(d.kv_heads)),
        (key("attention.key_length"), u32_of(d.head_dim)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.scores".into(), Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    if arch == "gemma3" {
        // A window shorter than the test prompts, so the sliding mask matters.
        meta.push((key("attention.sliding_window"), Value::U32(4)));
        meta.push((key("attention.sliding_window_type"), Value::U32(2)));
    }
    let q = |t: &Tensor, matrix: bool| QTensor::quantize(t, if matrix { matrices } else { GgmlDType::F32 });
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push(("token_embd.weight".into(), q(&random(&[d.vocab, d.hidden], 1)?, true)?));
    tensors.push(("output_norm.weight".into(), q(&ones(d.hidden)?, false)?));
    for l in 0..d.layers {
        for (i, (name, shape)) in layer_tensors(arch, d).into_iter().enumerate() {
            let t = norm_or_random(name, &shape, 100 + (l * 50 + i) as u64)?;
            tensors.push((format!("blk.{l}.{name}"), q(&t, shape.len() == 2)?));
        }
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)
}

fn hf_name(model_type: &str, role: &str) -> String {
    let gemma3 = model_type == "gemma3_text";
    let (layer, r) = role.split_once('|').unwrap_or(("", role));
    let name = match r {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_norm.weight" if gemma3 => "pre_feedforward_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "post_attention_norm.weight" => "post_attention_layernorm.weight",
        "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => unreachable!("no HF name for {other}"),
    };
    format!("model.layers.{layer}.{name}")
}

/// Writes a Hugging Face folder (f32 safetensors, config.json, a word-level tokenizer.json
/// over a few words: others map to `<unk>`).
pub fn write_hf(dir: &Path, model_type: &str, d: &Dims) -> candle_core::Result<()> {
    std::fs::create_dir_all(dir)?;
    let arch = if model_type == "gemma3_text" { "gemma3" } else { model_type };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("model.embed_tokens.weight".into(), random(&[d.vocab, d.hidden], 1)?);
    tensors.insert("model.norm.weight".into(), ones(d.hidden)?);
    for l in 0..d.layers {
        for (i, (name, shape)) in layer_tensors(arch, d).into_iter().enumerate() {
            let mut t = norm_or_random(name, &shape, 100 + (l * 50 + i) as u64)?;
            if model_type.starts_with("gemma") && name.contains("norm") {
                // Hugging Face Gemma stores w and computes (1 + w).
                t = (t - 1.0)?;
            }
            tensors.insert(hf_name(model_type, &format!("{l}|{name}")), t);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let mut config = serde_json::json!({
        "model_type": model_type, "hidden_size": d.hidden, "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads, "num_hidden_layers": d.layers, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "head_dim": d.head_dim, "vocab_size": d.vocab, "eos_token_id": 2,
        "intermediate_size": d.ffn,
    });
    if model_type == "gemma3_text" {
        config["sliding_window"] = 4.into();
        config["sliding_window_pattern"] = 2.into();
        config["query_pre_attn_scalar"] = d.head_dim.into();
    }
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let words = ["<unk>", "<s>", "</s>", "alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| ((*w).to_owned(), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())?;
    Ok(())
}
