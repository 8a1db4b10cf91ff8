//! Benchmark: per-job overhead of the local transport. Runs `llem run` (the release
//! binaries) on 100 no-op synthetic jobs (1 prompt, 1 token, 0 ms, no baseline, warmup or
//! thermal floor) and reads the journal: dispatch → finished per job, minus the job's own
//! measured window. Target: ≤ 5 ms median.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench job_overhead

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;

mod common;

fn main() {
    let dir = std::env::temp_dir().join(format!("llem-overhead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("noop.yaml"), common::noop_sweep(100, "")).unwrap();
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
    let overheads = common::job_overheads_ms(&run);
    let n = overheads.len();
    println!(
        "job_overhead: {n} no-op jobs in {wall:.2} s wall; per-job overhead (dispatch → finished − measured window): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        overheads[n / 2],
        overheads[n * 9 / 10],
        overheads[n - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
