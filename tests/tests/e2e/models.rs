//! Every architecture the candle engine reads, from GGUF and from Hugging Face folders,
//! on tiny models written here with deterministic random weights (no downloads): each
//! loads, generates exact token counts, and gives the same output batched and alone.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType};
use llem_agent::clock::SystemClock;
use llem_agent::workload::candle::CandleEngine;
use llem_agent::workload::Engine as _;
use llem_tests::tiny_models::{self, Dims};

fn write_gguf(path: &Path, arch: &str) {
    tiny_models::write_gguf(path, arch, &Dims::TINY, GgmlDType::Q8_0).expect("write gguf");
}

fn write_hf(dir: &Path, model_type: &str) {
    tiny_models::write_hf(dir, model_type, &Dims::TINY).expect("write hf folder");
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
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
    let dir = tempfile::tempdir().expect("tmp");
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let path = dir.path().join(format!("{arch}.gguf"));
        write_gguf(&path, arch);
        check(dir.path(), &path.display().to_string(), "auto");
    }
}

#[test]
fn hugging_face_folders_load_at_each_precision() {
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
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
