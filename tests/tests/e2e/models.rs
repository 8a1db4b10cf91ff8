//! Every architecture the candle engine reads, from GGUF and from Hugging Face folders,
//! on tiny models written here with deterministic random weights (no downloads): each
//! loads, generates exact token counts, and gives the same output batched and alone.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use llem_agent::clock::SystemClock;
use llem_agent::workload::candle::CandleEngine;
use llem_agent::workload::Engine as _;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const LAYERS: usize = 2;
const VOCAB: usize = 320;

/// Deterministic values in ±0.08 (SplitMix64).
fn random(shape: &[usize], seed: u64) -> Tensor {
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
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn ones(n: usize) -> Tensor {
    Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("ones")
}

/// (llama.cpp role name, shape) of every tensor of a layer.
fn layer_tensors(arch: &str) -> Vec<(&'static str, Vec<usize>)> {
    let mut t = vec![
        ("attn_norm.weight", vec![HIDDEN]),
        ("attn_q.weight", vec![HEADS * HEAD_DIM, HIDDEN]),
        ("attn_k.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
        ("attn_v.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
        ("attn_output.weight", vec![HIDDEN, HEADS * HEAD_DIM]),
        ("ffn_norm.weight", vec![HIDDEN]),
        ("ffn_gate.weight", vec![FFN, HIDDEN]),
        ("ffn_up.weight", vec![FFN, HIDDEN]),
        ("ffn_down.weight", vec![HIDDEN, FFN]),
    ];
    if arch == "qwen2" {
        t.extend([
            ("attn_q.bias", vec![HEADS * HEAD_DIM]),
            ("attn_k.bias", vec![KV_HEADS * HEAD_DIM]),
            ("attn_v.bias", vec![KV_HEADS * HEAD_DIM]),
        ]);
    }
    if arch.starts_with("qwen3") || arch.starts_with("gemma3") {
        t.extend([("attn_q_norm.weight", vec![HEAD_DIM]), ("attn_k_norm.weight", vec![HEAD_DIM])]);
    }
    if arch.starts_with("gemma3") {
        t.extend([("post_attention_norm.weight", vec![HIDDEN]), ("post_ffw_norm.weight", vec![HIDDEN])]);
    }
    t
}

fn norm_or_random(name: &str, shape: &[usize], seed: u64) -> Tensor {
    if name.contains("norm") {
        ones(shape[0])
    } else {
        random(shape, seed)
    }
}

/// A SentencePiece vocabulary: control tokens, 256 byte tokens, then letters and pieces.
fn vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
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
    while tokens.len() < VOCAB {
        tokens.push(format!("x{}", tokens.len()));
        types.push(1);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

fn write_gguf(path: &Path, arch: &str) {
    let (tokens, scores, types) = vocab();
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("embedding_length"), Value::U32(HIDDEN as u32)),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
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
        // A window shorter than the prompts, so the sliding mask matters.
        meta.push((key("attention.sliding_window"), Value::U32(4)));
        meta.push((key("attention.sliding_window_type"), Value::U32(2)));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let q = |t: &Tensor, quantized: bool| {
        QTensor::quantize(t, if quantized { GgmlDType::Q8_0 } else { GgmlDType::F32 }).expect("quantize")
    };
    tensors.push(("token_embd.weight".into(), q(&random(&[VOCAB, HIDDEN], 1), true)));
    tensors.push(("output_norm.weight".into(), q(&ones(HIDDEN), false)));
    for l in 0..LAYERS {
        for (i, (name, shape)) in layer_tensors(arch).into_iter().enumerate() {
            let t = norm_or_random(name, &shape, 100 + (l * 50 + i) as u64);
            tensors.push((format!("blk.{l}.{name}"), q(&t, shape.len() == 2)));
        }
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("create gguf");
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).expect("write gguf");
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
        other => panic!("no HF name for {other}"),
    };
    format!("model.layers.{layer}.{name}")
}

fn write_hf(dir: &Path, model_type: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let arch = if model_type == "gemma3_text" { "gemma3" } else { model_type };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("model.embed_tokens.weight".into(), random(&[VOCAB, HIDDEN], 1));
    tensors.insert("model.norm.weight".into(), ones(HIDDEN));
    for l in 0..LAYERS {
        for (i, (name, shape)) in layer_tensors(arch).into_iter().enumerate() {
            let mut t = norm_or_random(name, &shape, 100 + (l * 50 + i) as u64);
            if model_type.starts_with("gemma") && name.contains("norm") {
                // Hugging Face Gemma stores w and computes (1 + w).
                t = (t - 1.0).expect("sub");
            }
            tensors.insert(hf_name(model_type, &format!("{l}|{name}")), t);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("safetensors");
    let mut config = serde_json::json!({
        "model_type": model_type, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "head_dim": HEAD_DIM, "vocab_size": VOCAB, "eos_token_id": 2,
        "intermediate_size": FFN,
    });
    if model_type == "gemma3_text" {
        config["sliding_window"] = 4.into();
        config["sliding_window_pattern"] = 2.into();
        config["query_pre_attn_scalar"] = HEAD_DIM.into();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    // A word-level tokenizer over a few words; other words map to <unk>.
    let words = ["<unk>", "<s>", "</s>", "alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| ((*w).to_owned(), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("tokenizer");
}

const PROMPTS: &str = "{\"prompt\": \"alpha beta gamma delta epsilon zeta alpha beta\"}\n{\"prompt\": \"alpha\"}\n{\"prompt\": \"abcd ab cd e a b\"}\n{\"prompt\": \"gamma delta ab\"}\n";

/// Loads `model` and checks exact counts and batched = unbatched.
fn check(dir: &Path, model: &str, precision: &str) {
    std::fs::write(dir.join("prompts.jsonl"), PROMPTS).expect("prompts");
    let yaml = format!(
        "model: {model:?}\nprecision: {precision}\nn_prompts: 4\nbatch_size: 4\nmax_output_tokens: 7\ndataset: {{path: {:?}}}\ndecoding: {{ignore_eos: true}}\n",
        dir.join("prompts.jsonl").display().to_string()
    );
    let spec = llem_common::spec::experiment_from_yaml("t", &yaml).unwrap_or_else(|(_, d)| panic!("{d:?}"));
    let clock = SystemClock::default();
    let mut engine = CandleEngine::new(&spec, &clock, dir, dir).expect("engine");
    engine.load().unwrap_or_else(|e| panic!("{model}: {e}"));
    let lengths: Vec<usize> = engine.prompt_ids().iter().map(Vec::len).collect();
    assert!(lengths.iter().min() < lengths.iter().max(), "{model}: prompts must differ in length: {lengths:?}");
    let batched = engine.generate_batch(&[0, 1, 2, 3]).expect("batched");
    for (i, tokens) in batched.iter().enumerate() {
        assert_eq!(tokens.len(), 7, "{model}: exact output count");
        let alone = engine.generate_batch(&[i]).expect("alone");
        assert_eq!(tokens, &alone[0], "{model} ({precision}): prompt {i} differs batched and alone");
    }
    let metrics = engine.measure().expect("measure");
    assert_eq!(metrics.iter().map(|m| m.output_tokens).sum::<u64>(), 28);
    assert_eq!(metrics.iter().map(|m| m.input_tokens as usize).sum::<usize>(), lengths.iter().sum::<usize>());
}

#[test]
fn every_gguf_architecture_loads_and_batches() {
    let dir = tempfile::tempdir().expect("tmp");
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let path = dir.path().join(format!("{arch}.gguf"));
        write_gguf(&path, arch);
        check(dir.path(), &path.display().to_string(), "auto");
    }
}

#[test]
fn hugging_face_folders_load_at_each_precision() {
    let dir = tempfile::tempdir().expect("tmp");
    for (model_type, precision) in
        [("llama", "f32"), ("qwen2", "f32"), ("qwen3", "bf16"), ("gemma3_text", "f32"), ("llama", "f16")]
    {
        let folder = dir.path().join(format!("{model_type}-{precision}"));
        write_hf(&folder, model_type);
        check(dir.path(), &folder.display().to_string(), precision);
    }
}

#[test]
fn unsupported_architectures_name_the_supported_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("mamba.gguf");
    let mut file = std::fs::File::create(&path).expect("create");
    let arch = Value::String("mamba".into());
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).expect("write");
    drop(file);
    let spec = llem_common::spec::experiment_from_yaml("t", &format!("model: {:?}\n", path.display().to_string()))
        .unwrap_or_else(|(_, d)| panic!("{d:?}"));
    let clock = SystemClock::default();
    let mut engine = CandleEngine::new(&spec, &clock, dir.path(), dir.path()).expect("engine");
    let err = engine.load().expect_err("mamba is not supported").to_string();
    assert!(err.contains("`mamba`") && err.contains("gemma3, gemma, llama, qwen2, qwen3, phi3"), "{err}");
}
