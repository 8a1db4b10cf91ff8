//! Benchmark: per-job overhead of a no-op job over a warm SSH connection, against a fresh
//! `ssh host true` measured in the same run. A real sshd on 127.0.0.2 (the test harness's).
//! Target: our overhead ≤ 0.1 × theirs and ≤ 10 ms median.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench ssh_overhead

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use llem_tests::{client_key, Sshd};

fn seconds_of_day(s: &str) -> f64 {
    let t = &s[11..23];
    t[0..2].parse::<f64>().unwrap() * 3600.0 + t[3..5].parse::<f64>().unwrap() * 60.0 + t[6..].parse::<f64>().unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let key = client_key(dir.path());
    let node = Sshd::start(dir.path(), 0);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, node.known_hosts_line()).unwrap();

    // Theirs: a fresh connection per command.
    let mut fresh: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            let ok = Command::new("ssh")
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "ControlMaster=no",
                    "-o",
                    "ControlPath=none",
                ])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", kh.display()))
                .args([
                    "-i",
                    &key.display().to_string(),
                    "-p",
                    &node.port.to_string(),
                    "-l",
                    "root",
                    &node.host,
                    "true",
                ])
                .status()
                .unwrap();
            assert!(ok.success());
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();

    // Ours: 100 no-op jobs on that node.
    let seeds: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    std::fs::write(
        dir.path().join("noop.yaml"),
        format!(
            "name: noop\nmodel: noop\nengine: synthetic\nn_prompts: 1\nmax_output_tokens: 1\nsynthetic: {{ms_per_token: 0}}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 0}}, thermal_floor: {{max_s: 0}}}}\nsweep: {{decoding.seed: [{}]}}\nexecution: {{cycles: 1}}\nnodes:\n  - {{name: n1, host: {}, port: {}, user: root, identity_file: {:?}, known_hosts: {:?}}}\n",
            seeds.join(", "),
            node.host,
            node.port,
            key.display().to_string(),
            kh.display().to_string()
        ),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_llem")).args(["run", "noop.yaml"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().next().unwrap().path();
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let mut dispatched = std::collections::HashMap::new();
    let mut ours = Vec::new();
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
                ours.push((at - dispatched[&job] - window) * 1000.0);
            }
            _ => {}
        }
    }
    let (o, t) = (median(&mut ours), median(&mut fresh));
    println!(
        "ssh_overhead: {} no-op jobs over one warm connection: median {o:.2} ms per job; fresh `ssh host true`: median {t:.2} ms; ratio {:.3}",
        ours.len(),
        o / t
    );
}
