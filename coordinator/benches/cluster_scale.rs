//! Benchmark: 32 simulated nodes (a real sshd each, on 127.0.0.2–33) × 2,000 no-op jobs.
//! Checks that every job completes, and prints the wall time and the coordinator's CPU:
//! the `llem` process itself, and its `ssh` clients (one multiplexing session per node
//! and the master connections), sampled from /proc every 20 ms until llem exits.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench cluster_scale
//!   (LLEM_BENCH_NODES / LLEM_BENCH_JOBS change the sizes)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llem_tests::{client_key, Sshd};

mod common;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The pids of ssh processes that use llem `pid`'s control directory.
fn ssh_clients(pid: u32) -> Vec<u32> {
    let needle = format!("llem-ssh-{pid}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("ssh") && cmd.contains(&needle)
        })
        .collect()
}

fn main() {
    let (n_nodes, n_jobs) = (env_or("LLEM_BENCH_NODES", 32), env_or("LLEM_BENCH_JOBS", 2000));
    let dir = tempfile::tempdir().unwrap();
    let key = client_key(dir.path());
    let nodes: Vec<Sshd> = (0..n_nodes as u8).map(|n| Sshd::start(dir.path(), n)).collect();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, nodes.iter().map(Sshd::known_hosts_line).collect::<String>()).unwrap();
    let mut list = String::from("nodes:\n");
    for (i, n) in nodes.iter().enumerate() {
        list += &format!(
            "  - {{name: n{i}, host: {}, port: {}, user: root, identity_file: {:?}, known_hosts: {:?}}}\n",
            n.host,
            n.port,
            key.display().to_string(),
            kh.display().to_string()
        );
    }
    std::fs::write(dir.path().join("noop.yaml"), common::noop_sweep(n_jobs, &list)).unwrap();

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llem"))
        .args(["run", "noop.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut llem_cpu, mut ssh_cpu) = (0.0, HashMap::new());
    let status = loop {
        if let Some(c) = common::cpu_s(pid) {
            llem_cpu = c;
        }
        for p in ssh_clients(pid) {
            if let Some(c) = common::cpu_s(p) {
                ssh_cpu.insert(p, c);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed().as_secs_f64();
    assert!(status.success(), "llem failed");
    let run = std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().next().unwrap().path();
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let finished = journal.matches("\"finished\"").count();
    assert_eq!(finished, n_jobs, "every job completes");
    let overheads = common::job_overheads_ms(&run);
    let median = overheads[overheads.len() / 2];
    let p99 = overheads[(overheads.len() * 99 / 100).min(overheads.len() - 1)];
    let ssh_total: f64 = ssh_cpu.values().sum();
    println!(
        "cluster_scale: {n_nodes} nodes × {n_jobs} no-op jobs: all {finished} finished in {wall:.1} s ({:.0} jobs/s); \
         llem CPU {llem_cpu:.2} s ({:.2} ms per job), its ssh clients {ssh_total:.2} s ({} processes seen); \
         per-job overhead median {median:.1} ms, p99 {p99:.1} ms",
        n_jobs as f64 / wall,
        llem_cpu * 1000.0 / n_jobs as f64,
        ssh_cpu.len()
    );
}
