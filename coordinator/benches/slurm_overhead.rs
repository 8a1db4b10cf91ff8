//! Benchmark: a Slurm sweep's per-job overhead against a bare `srun -n1 true` measured in
//! the same run, and 2 GPU slots × 500 no-op jobs through agent steps: wall time and the
//! coordinator's CPU (llem itself, and the `srun`/`salloc` processes it starts, sampled
//! from /proc every 20 ms). A real slurmctld/slurmd (the tests' harness), one node with
//! two fake GPUs as gres. Target: per-job overhead ≤ 1.5 × `srun -n1 true`.
//!
//!   cargo build --release --bins && cargo bench -p llem --bench slurm_overhead
//!   (LLEM_BENCH_JOBS changes the job count)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llem_tests::slurm::SlurmCluster;

mod common;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of `n` runs of a Slurm command.
fn timed(cluster: &SlurmCluster, n: usize, args: &[&str]) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let ok = cluster.command("srun").args(args).stdout(Stdio::null()).status().unwrap();
            assert!(ok.success(), "srun {args:?}");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn main() {
    let jobs = std::env::var("LLEM_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let cluster = SlurmCluster::start(dir.path(), 8, 2).unwrap();

    // Theirs: a job of one step each time; and a step into a held allocation.
    let mut bare = timed(&cluster, 20, &["-n1", "true"]);
    let said = cluster.command("salloc").args(["--no-shell", "-n1"]).output().unwrap();
    let held = llem::run::slurm::granted_job_id(&String::from_utf8_lossy(&said.stderr)).unwrap();
    let mut step = timed(&cluster, 20, &[&format!("--jobid={held}"), "--exact", "-n1", "true"]);
    cluster.command("scancel").arg(&held).status().unwrap();
    cluster.wait_until_empty(Duration::from_secs(30));

    // Ours: no-op jobs on the two GPU slots of one allocation.
    let nodes = "device: cuda\nnodes:\n  slurm: {partition: gpu, nodes: 1, gpus_per_node: 2}\n";
    std::fs::write(dir.path().join("noop.yaml"), common::noop_sweep(jobs, nodes)).unwrap();
    let llem = std::path::Path::new(env!("CARGO_BIN_EXE_llem"));
    // This build's agent (a `llem-agent-cuda` left next to it by an older build would win).
    let agent = llem.with_file_name("llem-agent");
    // To a file: a pipe nobody reads until the end could fill and stall llem.
    let log = dir.path().join("llem.stderr");
    let start = Instant::now();
    let mut child = Command::new(llem)
        .args(["run", "noop.yaml"])
        .current_dir(dir.path())
        .env("SLURM_CONF", &cluster.conf)
        .env("LLEM_STATE_DIR", dir.path().join("agent-state"))
        .env("LLEM_POWERCAP_ROOT", dir.path().join("no-powercap"))
        .env("LLEM_AGENT", &agent)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut llem_cpu, mut helpers): (f64, HashMap<u32, f64>) = (0.0, HashMap::new());
    let status = loop {
        if let Some(c) = common::cpu_s(pid) {
            llem_cpu = c;
        }
        for (p, name) in common::children_of(pid) {
            if name == "srun" || name == "salloc" {
                if let Some(c) = common::cpu_s(p) {
                    helpers.insert(p, c);
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "llem failed: {stderr}");
    let run = std::fs::read_dir(dir.path().join("runs")).unwrap().flatten().next().unwrap().path();
    let mut ours = common::job_overheads_ms(&run);
    assert_eq!(ours.len(), jobs, "every job finished");
    let p90 = ours[ours.len() * 9 / 10];
    let (o, b, s) = (median(&mut ours), median(&mut bare), median(&mut step));
    let helper_cpu: f64 = helpers.values().sum();
    println!(
        "slurm_overhead: {jobs} no-op jobs on 2 GPU slots (agent steps of one allocation): per-job overhead median {o:.2} ms, p90 {p90:.2} ms; \
         bare `srun -n1 true` median {b:.1} ms (ratio {:.3}); a step into a held allocation median {s:.1} ms; \
         wall {wall:.2} s; llem CPU {llem_cpu:.2} s ({:.2} ms per job); srun/salloc CPU {helper_cpu:.2} s ({} processes)",
        o / b,
        llem_cpu * 1000.0 / jobs as f64,
        helpers.len()
    );
    cluster.wait_until_empty(Duration::from_secs(30));
}
