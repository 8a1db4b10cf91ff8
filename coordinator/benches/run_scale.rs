//! Benchmark: the coordinator's cost as a sweep grows (issue 14). Runs `llem run` (the
//! release binaries, local transport) on N no-op synthetic jobs for each N, and prints
//! wall time, llem's own CPU (user + system, sampled from /proc every 20 ms until it
//! exits) and its peak RSS, per job. The goal: CPU per job at the largest N ≤ 1.2 × CPU per
//! job at the smallest (linear), and peak RSS ≤ 4 KB per job at 50,000.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench run_scale
//!   (LLEM_BENCH_SIZES=1000,4000 changes the sizes; default 5000,50000)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Peak resident set of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn main() {
    let sizes = common::bench_sizes();
    println!(
        "{:>8} {:>9} {:>9} {:>12} {:>10} {:>12}",
        "jobs", "wall s", "CPU s", "CPU/job ms", "peak MB", "RSS/job KB"
    );
    let mut per_job = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("noop.yaml"), common::noop_sweep(n, "")).unwrap();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llem"))
            .args(["run", "noop.yaml", "--runs-dir", "runs"])
            .current_dir(dir.path())
            .env("LLEM_STATE_DIR", dir.path().join("state"))
            .env("LLEM_POWERCAP_ROOT", dir.path().join("none"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        // Drained on a thread, or a full pipe would stall llem.
        let drain = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let (mut cpu, mut rss) = (0.0, 0);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            // Read before the exit is reaped: the last sample is within 20 ms of the end.
            cpu = common::cpu_s(pid).unwrap_or(cpu);
            rss = peak_rss_kib(pid).unwrap_or(rss);
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = start.elapsed().as_secs_f64();
        let err = drain.join().unwrap();
        assert!(status.success(), "llem run failed on {n} jobs:\n{err}");
        let (cpu_ms, rss_kb) = (cpu * 1000.0 / n as f64, rss as f64 * 1.024 / n as f64);
        println!("{n:>8} {wall:>9.1} {cpu:>9.2} {cpu_ms:>12.3} {:>10.0} {rss_kb:>12.1}", rss as f64 * 1.024 / 1000.0);
        per_job.push(cpu_ms);
    }
    if let (Some(first), Some(last)) = (per_job.first(), per_job.last()) {
        println!("CPU per job, largest ÷ smallest: {:.2} (goal ≤ 1.2)", last / first);
    }
}
