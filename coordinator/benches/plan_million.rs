//! Benchmark: read, expand and graph a 1,000,000-point sweep; print wall time and peak
//! memory. Not a test: it prints figures for docs/performance.md.
//!
//!   cargo bench -p llem --bench plan_million
//!   cargo bench -p llem --bench plan_million -- --monotone   # with monotone edges

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

fn list(range: std::ops::Range<u32>) -> String {
    format!("[{}]", range.map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let monotone = std::env::args().any(|a| a == "--monotone");
    // 10 × 10 × 100 × 100 = 1,000,000 points, one cycle.
    let yaml = format!(
        "model: m.gguf\nengine: synthetic\nsweep:\n  batch_size: {}\n  max_output_tokens: {}\n  n_prompts: {}\n  decoding.seed: {}\nexecution: {{cycles: 1, order: shuffled, seed: 1{}}}\n",
        list(1..11),
        list(1..11),
        list(1..101),
        list(0..100),
        if monotone { ", monotone: [batch_size]" } else { "" }
    );
    let dir = std::env::temp_dir().join(format!("llem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("million.yaml");
    std::fs::write(&path, yaml).unwrap();

    let start = Instant::now();
    let sweep = llem::sweep::load(&path).unwrap();
    let loaded = start.elapsed();
    let expansion = llem::expand::expand(&sweep).unwrap();
    let expanded = start.elapsed();
    drop(expansion);
    let before_plan = start.elapsed();
    let plan = llem::plan::Plan::build(sweep).unwrap();
    let total = start.elapsed() - (before_plan - loaded);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "plan_million: {} points, {} jobs, {} graph tasks, {} edges{}",
        plan.expansion.points.len(),
        plan.expansion.jobs.len(),
        plan.graph.node_count(),
        plan.graph.edge_count(),
        if monotone { " (monotone: batch_size)" } else { "" }
    );
    println!("  load        {:>8.3} s", loaded.as_secs_f64());
    println!("  expand      {:>8.3} s (alone)", (expanded - loaded).as_secs_f64());
    println!("  expand+plan {:>8.3} s", (total - loaded).as_secs_f64());
    println!("  total       {:>8.3} s", total.as_secs_f64());
    match peak_rss_mib() {
        Some(mib) => println!("  peak RSS    {mib:>8.0} MiB"),
        None => println!("  peak RSS    unknown (no /proc/self/status)"),
    }
}
