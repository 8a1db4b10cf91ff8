//! The candle engine on the real demo model (Gemma 3 270M Q4_K_M), against llama.cpp:
//! the tokenizer built from the GGUF vocabulary, greedy continuations, batching, and a
//! whole job through the real agent binary.

use std::path::PathBuf;
use std::process::Command;

use llem_agent::clock::SystemClock;
use llem_agent::workload::candle::tokenizer::{GgufTokenizer, Tokenize};
use llem_agent::workload::candle::{timed_greedy, CandleEngine};
use llem_agent::workload::Engine as _;
use llem_tests::{binary, repo_root};

fn demo_model() -> PathBuf {
    let path = repo_root().join("models").join("gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-demo-model (scripts/test does)", path.display());
    path
}

fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("tests").join("fixtures").join(name)).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect()
}

fn engine_for(yaml: &str) -> (CandleEngine<'static>, ()) {
    static CLOCK: std::sync::OnceLock<SystemClock> = std::sync::OnceLock::new();
    let clock = CLOCK.get_or_init(SystemClock::default);
    let spec = llem_common::spec::experiment_from_yaml(
        "test",
        &format!("model: {:?}\n{yaml}", demo_model().display().to_string()),
    )
    .unwrap_or_else(|(_, d)| panic!("{d:?}"));
    let mut engine = CandleEngine::new(&spec, clock, &repo_root(), &std::env::temp_dir()).expect("engine");
    engine.load().expect("the demo model loads");
    (engine, ())
}

#[test]
fn tokenizer_from_gguf_agrees_with_llama_cpp() {
    let fixture = fixture("tokenizer-gemma3.json");
    let mut file = std::fs::File::open(demo_model()).expect("open model");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
    let tokenizer = GgufTokenizer::from_gguf(&content).expect("vocabulary");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tokenizer.encode(text, true);
        if got != want {
            wrong.push(format!("{text:?}\n  llama.cpp {want:?}\n  llem      {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} strings tokenise differently:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[test]
fn greedy_tokens_match_llama_cpp() {
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
    let fixture = fixture("greedy-gemma3.json");
    let (mut engine, ()) = engine_for("n_prompts: 1\n");
    let mut report = Vec::new();
    for case in fixture["cases"].as_array().expect("cases") {
        let input = ids(&case["input_ids"]);
        assert_eq!(engine.encode(case["prompt"].as_str().expect("prompt")), input, "same prompt ids as llama.cpp");
        let want = ids(&case["greedy"]);
        let (_, _, got) = timed_greedy(&mut engine, &input, want.len() - 1).expect("generates");
        let agree = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
        eprintln!("{:?}: {agree}/{} greedy tokens as llama.cpp", case["prompt"], want.len());
        report.push((case["prompt"].to_string(), agree, want, got));
    }
    for (prompt, agree, want, got) in &report {
        assert!(
            *agree >= 8,
            "{prompt}: only the first {agree} tokens agree\n  llama.cpp {want:?}\n  llem      {got:?}"
        );
    }
}

#[test]
fn batched_generation_equals_unbatched() {
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
    // Prompts of different lengths, so the batch is padded and masked.
    let (mut engine, ()) =
        engine_for("n_prompts: 4\nbatch_size: 4\nmax_output_tokens: 12\ndecoding: {ignore_eos: true}\n");
    let lengths: Vec<usize> = engine.prompt_ids().iter().map(Vec::len).collect();
    assert!(lengths.iter().min() < lengths.iter().max(), "{lengths:?}");
    let batched = engine.generate_batch(&[0, 1, 2, 3]).expect("batched");
    for (i, tokens) in batched.iter().enumerate() {
        let alone = engine.generate_batch(&[i]).expect("alone");
        assert_eq!(tokens, &alone[0], "prompt {i} (length {})", lengths[i]);
        assert_eq!(tokens.len(), 12);
    }
}

#[test]
fn agent_runs_the_demo_model_with_exact_counts() {
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
    let dir = tempfile::tempdir().expect("tmp");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "model: {:?}\nengine: candle\nn_prompts: 3\nbatch_size: 2\nmax_output_tokens: 6\nmax_input_tokens: 10\nsave_outputs: true\ndecoding: {{ignore_eos: true}}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 1}}, thermal_floor: {{max_s: 0}}}}\n",
            demo_model().display().to_string()
        ),
    )
    .expect("job");
    let out = Command::new(binary("llem-agent"))
        .args(["run", "--job"])
        .arg(&job)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("LLEM_POWERCAP_ROOT", dir.path().join("none"))
        .output()
        .expect("agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/result.json")).expect("result"))
            .expect("json");
    assert_eq!(result["tokens"]["output"], 18, "3 prompts × 6 tokens");
    // Input: each builtin prompt's own ids, truncated to 10, no padding.
    let (engine, ()) = engine_for("n_prompts: 3\nmax_input_tokens: 10\n");
    let expected: usize = engine.prompt_ids().iter().map(Vec::len).sum();
    assert_eq!(result["tokens"]["input"], expected);
    let latency = &result["latency"];
    assert_eq!(latency["ttft_ms"]["n"], 3);
    assert_eq!(latency["itl_ms"]["n"], 15, "5 gaps per 6-token output");
    assert!(latency["ttft_ms"]["p50"].as_f64().expect("ttft") > 0.0);
    assert!(result["flops"]["total"].as_f64().expect("flops") > 0.0);
    assert!(result["energy"]["total_j"].is_null());
    let outputs = std::fs::read_to_string(dir.path().join("out/outputs.jsonl")).expect("outputs.jsonl");
    assert_eq!(outputs.lines().count(), 3);
    let first: serde_json::Value = serde_json::from_str(outputs.lines().next().expect("line")).expect("json");
    assert_eq!(first["output_tokens"], 6);
    assert!(!first["output"].as_str().expect("text").is_empty());
}
