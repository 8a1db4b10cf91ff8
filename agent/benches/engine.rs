//! Benchmark: candle engine prefill and decode speed on a GGUF, for `scripts/bench-engine`
//! (which runs llama.cpp on the same file, prompt, thread count and token count, and
//! prints the ratio). Prints one JSON line.
//!
//!   RAYON_NUM_THREADS=2 cargo bench -p llem-agent --bench engine -- MODEL.gguf "PROMPT" 64 [1,4,8] [256]
//!
//! With a list of batch sizes, also the aggregate decode speed of that many copies of the
//! prompt decoded together; with a prompt length, the prefill speed of a prompt that long
//! (the prompt repeated, cut to that many tokens).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use llem_agent::clock::SystemClock;
use llem_agent::workload::candle::{rss_mb, timed_greedy, timed_greedy_batch, CandleEngine};
use llem_agent::workload::Engine as _;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let model = args.first().cloned().unwrap_or_else(|| "models/gemma-3-270m-q4_k_m.gguf".to_owned());
    let prompt = args.get(1).cloned().unwrap_or_else(|| "Explain why the sky is blue.".to_owned());
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let batches: Vec<usize> =
        args.get(3).map(|a| a.split(',').filter_map(|b| b.parse().ok()).collect()).unwrap_or_default();
    let long: Option<usize> = args.get(4).and_then(|a| a.parse().ok());
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
    let batched: Vec<serde_json::Value> = batches
        .iter()
        .map(|&b| {
            let (_, decode) = timed_greedy_batch(&mut engine, &ids, b, n).unwrap();
            serde_json::json!({"batch": b, "decode_tok_s": (b * n) as f64 / decode})
        })
        .collect();
    let long_prompt = long.map(|len| {
        let text = vec![prompt.as_str(); 20].join(" ");
        let ids: Vec<u32> = engine.encode(&text).into_iter().take(len).collect();
        timed_greedy_batch(&mut engine, &ids, 1, 0).unwrap();
        let (prefill, _) = timed_greedy_batch(&mut engine, &ids, 1, 0).unwrap();
        (ids.len(), ids.len() as f64 / prefill)
    });
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
            "batched": batched,
            "long_prompt_tokens": long_prompt.map(|l| l.0),
            "long_prefill_tok_s": long_prompt.map(|l| l.1),
        })
    );
}
