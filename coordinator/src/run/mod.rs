//! `llem run` and `llem resume`: the dispatcher and the rooms around it.
//!
//! * `dispatcher.rs` owns the pure scheduler, feeds it what agents report, carries out
//!   its effects and journals every step before acting on it, so a run killed at any
//!   moment resumes without losing or repeating a finished job; `agent_messages.rs` is
//!   what it does with each message an agent sends.
//! * `connect.rs` is the transport seam (`Connector`, `Session`), with one implementation
//!   per transport: `local.rs`, `ssh.rs` (+ `deploy.rs`, the agent as it travels), over
//!   `session.rs` (a child process speaking the protocol).
//! * `artifacts.rs` receives files in chunks and checks them against the manifest;
//!   `rundir.rs` is the run directory; `journal.rs` its journal; `progress.rs` the
//!   terminal; `results.rs` and `report.rs` what is made of the results (`report_plots.rs`
//!   draws the plots, `report_server.rs` those of server sweeps).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use llem_common::spec::Device;

use crate::expand::point_spec;
use crate::plan::{Dep, Plan};
use crate::scheduler::{JobInput, Need, Slot, SlotKind};

mod agent_messages;
pub mod artifacts;
pub mod connect;
pub mod deploy;
mod dispatcher;
pub mod journal;
mod lifecycle;
pub mod local;
pub mod progress;
pub mod report;
mod report_plots;
mod report_server;
pub mod results;
pub mod rundir;
pub mod session;
pub mod slurm;
mod srun_io;
pub mod ssh;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use connect::{agent_binary, connector_for, ConnectOptions, Connector};
pub use rundir::RunDir;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    AllSucceeded,
    SomeFailed,
    Interrupted,
    /// What the run ran on is gone (its Slurm allocation ended), saying why: the jobs
    /// that did not finish are not failed, and `llem resume` runs them.
    Stopped(String),
}

/// What an earlier run of this directory left: jobs that ended (not run again), the
/// attempts used per job (new attempts count on from there), and their failures.
#[derive(Debug, Default)]
pub struct Earlier {
    pub done: Vec<(String, journal::Outcome)>,
    pub attempts: HashMap<String, u32>,
    /// Failures that count against `retries`, per job.
    pub failures: HashMap<String, u32>,
}

/// The scheduler's view of a plan: needs, eligible nodes, cycles, monotone edges and the
/// model each job needs prepared.
pub fn scheduler_jobs(plan: &Plan) -> Vec<JobInput> {
    let exp = &plan.expansion;
    let mut after: Vec<Vec<u32>> = vec![Vec::new(); exp.jobs.len()];
    let job_of: HashMap<_, u32> = plan.job_nodes.iter().enumerate().map(|(j, n)| (*n, j as u32)).collect();
    for e in plan.graph.raw_edges() {
        if e.weight != Dep::After {
            continue;
        }
        if let (Some(&from), Some(&to)) = (job_of.get(&e.source()), job_of.get(&e.target())) {
            after[to as usize].push(from);
        }
    }
    exp.jobs
        .iter()
        .enumerate()
        .map(|(j, job)| {
            let point = &exp.points[job.point as usize];
            let spec = point_spec(&plan.sweep, exp, point);
            let need = match spec.device {
                Device::Cpu => Need::Cpu,
                Device::Cuda(_) if spec.gpu_count() > 1 => Need::Gpus(spec.gpu_count()),
                Device::Cuda(None) => Need::AnyGpu,
                Device::Cuda(Some(i)) => Need::Gpu(i),
            };
            JobInput {
                need,
                nodes: exp.placements[point.placement as usize].clone(),
                cycle: job.cycle,
                after: std::mem::take(&mut after[j]),
                model: exp.models[point.model as usize].reads_files.then_some(point.model),
            }
        })
        .collect()
}

/// Device slots of every node: its CPU, and its GPUs (`gpus: N` when given, else each GPU
/// a job placed there names; `cuda` uses GPU 0). Returns the slots and their names.
pub fn node_slots(plan: &Plan, jobs: &[JobInput]) -> (Vec<Slot>, Vec<String>) {
    let mut slots = Vec::new();
    let mut names = Vec::new();
    for (n, node) in plan.sweep.nodes.iter().enumerate() {
        let n = n as u16;
        let mut gpus: Vec<u32> = match node.gpus {
            Some(count) => (0..count).collect(),
            None => jobs
                .iter()
                .filter(|j| j.nodes.contains(&n))
                .flat_map(|j| match j.need {
                    Need::Gpu(i) => i..i + 1,
                    Need::AnyGpu => 0..1,
                    // A job of n GPUs on a node whose count is not given: GPUs 0 to n−1.
                    Need::Gpus(n) => 0..n,
                    Need::Cpu => 0..0,
                })
                .collect(),
        };
        gpus.sort_unstable();
        gpus.dedup();
        slots.push(Slot::new(n, SlotKind::Cpu));
        names.push(format!("{}/cpu", node.name));
        for g in gpus {
            slots.push(Slot::new(n, SlotKind::Gpu(g)));
            names.push(format!("{}/cuda:{g}", node.name));
        }
    }
    (slots, names)
}

/// Runs (or resumes) a plan in `run`, reaching each node through the connector its
/// transport gives. Ctrl-C interrupts it (cancels running jobs cleanly).
pub fn dispatch(
    plan: &Plan,
    run: &RunDir,
    journal: journal::Journal,
    earlier: &Earlier,
    options: &ConnectOptions,
) -> Result<Ending> {
    let connectors: Vec<Arc<dyn Connector>> = plan.sweep.nodes.iter().map(|n| connector_for(n, options)).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let interrupt = tx.clone();
    // A process has one handler: only its first run can set it, and llem starts one.
    let _ = ctrlc::set_handler(move || {
        let _ = interrupt.send(connect::Incoming::Interrupt);
    });
    let ending = dispatch_with(plan, run, journal, earlier, &connectors, tx, &rx);
    for c in &connectors {
        c.close();
    }
    let _ = std::fs::remove_dir_all(&options.control_dir);
    ending
}

/// [`dispatch`] over given connectors and channel: whoever holds another sender of it
/// can interrupt the run (the tests drive it with fake connectors this way).
pub fn dispatch_with(
    plan: &Plan,
    run: &RunDir,
    journal: journal::Journal,
    earlier: &Earlier,
    connectors: &[Arc<dyn Connector>],
    tx: std::sync::mpsc::Sender<connect::Incoming>,
    rx: &std::sync::mpsc::Receiver<connect::Incoming>,
) -> Result<Ending> {
    dispatcher::Dispatcher::new(plan, run, journal, earlier, connectors, tx)?.run(rx)
}

/// Creates a directory the run writes into.
fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))
}
