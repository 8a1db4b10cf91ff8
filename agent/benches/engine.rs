//! Benchmark: candle engine prefill and decode speed on a GGUF, for `scripts/bench-engine`
//! (which runs llama.cpp on the same file, prompt, thread count and token count, and
//! prints the ratio). Prints one JSON line.
//!
//!   RAYON_NUM_THREADS=2 cargo bench -p llem-agent --bench engine -- MODEL.gguf "PROMPT" 64

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use llem_agent::clock::SystemClock;
use llem_agent::workload::candle::{rss_mb, timed_greedy, CandleEngine};
use llem_agent::workload::Engine as _;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let model = args.first().cloned().unwrap_or_else(|| "models/gemma-3-270m-q4_k_m.gguf".to_owned());
    let prompt = args.get(1).cloned().unwrap_or_else(|| "Explain why the sky is blue.".to_owned());
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let spec = llem_common::spec::experiment_from_yaml("bench", &format!("model: {model:?}\nn_prompts: 1\n")).unwrap();
    let clock = SystemClock::default();
    let dir = std::env::temp_dir();
    // Benches run in the package directory; model paths are given from the repository root.
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut engine = CandleEngine::new(&spec, &clock, base, &dir).unwrap();
    engine.load().unwrap();
    let ids = engine.encode(&prompt);
    // One untimed run so both sides start warm.
    timed_greedy(&mut engine, &ids, 4).unwrap();
    let (prefill, decode, tokens) = timed_greedy(&mut engine, &ids, n).unwrap();
    println!(
        "{}",
        serde_json::json!({
            "engine": "candle",
            "prompt_tokens": ids.len(),
            "decode_tokens": n,
            "prefill_s": prefill,
            "decode_s": decode,
            "prefill_tok_s": ids.len() as f64 / prefill,
            "decode_tok_s": n as f64 / decode,
            "peak_rss_mb": rss_mb("VmHWM:"),
            "threads": candle_core::utils::get_num_threads(),
            "text": engine.decode(&tokens),
        })
    );
}
