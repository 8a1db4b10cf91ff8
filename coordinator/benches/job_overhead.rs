//! Benchmark: per-job overhead of the local transport. Runs `llem run` (the release
//! binaries) on 100 no-op synthetic jobs (1 prompt, 1 token, 0 ms, no baseline, warmup or
//! thermal floor) and reads the journal: dispatch → finished per job, minus the job's own
//! measured window. Target: ≤ 5 ms median.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench job_overhead

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;

fn parse_time(s: &str) -> f64 {
    // 2026-11-27T17:16:02.761Z → seconds of the day (runs never cross midnight here).
    let t = &s[11..23];
    let h: f64 = t[0..2].parse().unwrap();
    let m: f64 = t[3..5].parse().unwrap();
    let sec: f64 = t[6..].parse().unwrap();
    h * 3600.0 + m * 60.0 + sec
}

fn main() {
    let dir = std::env::temp_dir().join(format!("llem-overhead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    std::fs::write(
        dir.join("noop.yaml"),
        format!(
            "name: noop\nmodel: noop\nengine: synthetic\nn_prompts: 1\nmax_output_tokens: 1\nsynthetic: {{ms_per_token: 0}}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 0}}, thermal_floor: {{max_s: 0}}}}\nsweep: {{decoding.seed: [{}]}}\nexecution: {{cycles: 1}}\n",
            seeds.join(", ")
        ),
    )
    .unwrap();
    let llem = env!("CARGO_BIN_EXE_llem");
    let start = std::time::Instant::now();
    let out = Command::new(llem)
        .args(["run", "noop.yaml", "--runs-dir", "runs"])
        .current_dir(&dir)
        .env("LLEM_STATE_DIR", dir.join("state"))
        .env("LLEM_POWERCAP_ROOT", dir.join("none"))
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.join("runs")).unwrap().flatten().next().unwrap().path();
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let mut dispatched = std::collections::HashMap::new();
    let mut overheads = Vec::new();
    for line in journal.lines().skip(1) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let job = r["job"].as_str().unwrap_or_default().to_owned();
        let at = parse_time(r["at"].as_str().unwrap());
        match r["event"].as_str() {
            Some("dispatched") => {
                dispatched.insert(job, at);
            }
            Some("finished") => {
                let text =
                    std::fs::read_to_string(run.join("jobs").join(&job).join("attempt-1").join("result.json")).unwrap();
                let result: serde_json::Value = serde_json::from_str(&text).unwrap();
                let window = result["duration_s"].as_f64().unwrap();
                overheads.push((at - dispatched[&job] - window) * 1000.0);
            }
            _ => {}
        }
    }
    overheads.sort_by(f64::total_cmp);
    let n = overheads.len();
    println!(
        "job_overhead: {n} no-op jobs in {wall:.2} s wall; per-job overhead (dispatch → finished − measured window): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        overheads[n / 2],
        overheads[n * 9 / 10],
        overheads[n - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
