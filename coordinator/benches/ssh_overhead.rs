//! Benchmark: per-job overhead of a no-op job over a warm SSH connection, against a fresh
//! `ssh host true` measured in the same run. A real sshd on 127.0.0.2 (the test harness's).
//! Target: our overhead ≤ 0.1 × theirs and ≤ 10 ms median.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench ssh_overhead

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use llem_tests::{client_key, Sshd};

mod common;

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
    let nodes = format!(
        "nodes:\n  - {{name: n1, host: {}, port: {}, user: root, identity_file: {:?}, known_hosts: {:?}}}\n",
        node.host,
        node.port,
        key.display().to_string(),
        kh.display().to_string()
    );
    std::fs::write(dir.path().join("noop.yaml"), common::noop_sweep(100, &nodes)).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_llem")).args(["run", "noop.yaml"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().next().unwrap().path();
    let mut ours = common::job_overheads_ms(&run);
    let (o, t) = (median(&mut ours), median(&mut fresh));
    println!(
        "ssh_overhead: {} no-op jobs over one warm connection: median {o:.2} ms per job; fresh `ssh host true`: median {t:.2} ms; ratio {:.3}",
        ours.len(),
        o / t
    );
}
