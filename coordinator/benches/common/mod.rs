//! Shared by the overhead benchmarks: per-job overhead read back from a run's journal.

use std::collections::HashMap;
use std::path::Path;

#[allow(dead_code)] // not every benchmark reads journals
/// Seconds of the day of an RFC 3339 timestamp (runs never cross midnight here).
fn seconds_of_day(s: &str) -> f64 {
    let t = &s[11..23];
    t[0..2].parse::<f64>().unwrap() * 3600.0 + t[3..5].parse::<f64>().unwrap() * 60.0 + t[6..].parse::<f64>().unwrap()
}

/// Per finished job: journal `dispatched` → `finished` minus the job's own measured window,
/// in ms (the journal has millisecond timestamps). Sorted.
#[allow(dead_code)]
pub fn job_overheads_ms(run: &Path) -> Vec<f64> {
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let mut dispatched = HashMap::new();
    let mut overheads = Vec::new();
    for line in journal.lines().skip(1) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let job = r["job"].as_str().unwrap_or_default().to_owned();
        let at = seconds_of_day(r["at"].as_str().unwrap());
        match r["event"].as_str() {
            Some("dispatched") => {
                dispatched.insert(job, at);
            }
            Some("finished") => {
                let text =
                    std::fs::read_to_string(run.join("jobs").join(&job).join("attempt-1").join("result.json")).unwrap();
                let window = serde_json::from_str::<serde_json::Value>(&text).unwrap()["duration_s"].as_f64().unwrap();
                overheads.push((at - dispatched[&job] - window) * 1000.0);
            }
            _ => {}
        }
    }
    overheads.sort_by(f64::total_cmp);
    overheads
}

/// A sweep of `n` no-op synthetic jobs (1 prompt, 1 token, 0 ms; no baseline, warmup or
/// thermal floor), with `nodes` appended.
#[allow(dead_code)] // not every benchmark runs llem
pub fn noop_sweep(n: usize, nodes: &str) -> String {
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "name: noop\nmodel: noop\nengine: synthetic\nn_prompts: 1\nmax_output_tokens: 1\nsynthetic: {{ms_per_token: 0}}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 0}}, thermal_floor: {{max_s: 0}}}}\nsweep: {{decoding.seed: [{}]}}\nexecution: {{cycles: 1}}\n{nodes}",
        seeds.join(", ")
    )
}

/// utime + stime of a process, in seconds (/proc reports USER_HZ = 100 ticks per second).
#[allow(dead_code)] // not every benchmark samples CPU
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / 100.0)
}

/// The pids of the processes whose parent is `pid`, and their command names.
#[allow(dead_code)]
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            let parent: u32 = stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some((p, name))
        })
        .collect()
}

/// The sweep sizes to measure: `LLEM_BENCH_SIZES` (comma-separated), else 5,000 and 50,000.
#[allow(dead_code)] // not every benchmark grows a sweep
pub fn bench_sizes() -> Vec<usize> {
    std::env::var("LLEM_BENCH_SIZES")
        .unwrap_or_else(|_| "5000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("LLEM_BENCH_SIZES: numbers"))
        .collect()
}
