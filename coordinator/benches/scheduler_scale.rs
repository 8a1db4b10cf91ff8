//! Benchmark: the pure scheduler's cost per job as a sweep grows (issue 14), without the
//! I/O of a real run. Feeds N jobs through `on_event` on a simulated clock (each attempt
//! takes 10 s and succeeds; `WakeAt` becomes a `Tick`) and prints the time per job (one
//! thread, no I/O) for
//! each N and shape, and the largest N over the smallest:
//!
//! * `cpu`: CPU jobs on one node with one CPU slot (what `run_scale` runs);
//! * `gpu`: one-GPU jobs on a node with 8 GPUs and its CPU slot, which no job uses;
//! * `gpu gap`: the same with `gap_s: 1`, so a freed GPU waits a second for its next job.
//!
//!   cargo bench -p llem --bench scheduler_scale
//!   (LLEM_BENCH_SIZES=5000,50000 is the default)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

mod common;

use llem::scheduler::{on_event, Effect, Event, JobInput, Need, Slot, SlotKind, State};

/// Simulated seconds per attempt.
const JOB_S: f64 = 10.0;

/// (time in µs, sequence number, kind, two arguments), earliest first: ties in time go
/// in the order they were queued.
type Queued = Reverse<(u64, u64, u8, u32, u32)>;

/// Runs every job to the end; returns the events fed and the CPU seconds taken.
fn simulate(jobs: Vec<JobInput>, slots: Vec<Slot>, gap_s: f64) -> (usize, f64) {
    let n_slots = slots.len();
    let mut state = State::new(jobs, slots, 0, gap_s, 0.0);
    let mut queue: BinaryHeap<Queued> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: f64, kind: u8, a: u32, b: u32| {
        seq += 1;
        queue.push(Reverse(((at * 1e6).round() as u64, seq, kind, a, b)));
    };
    for slot in 0..n_slots as u32 {
        push(&mut queue, 0.0, 0, slot, 0);
    }
    let started = Instant::now();
    let mut events = 0;
    while let Some(Reverse((micros, _, kind, a, b))) = queue.pop() {
        let now = micros as f64 / 1e6;
        let event = match kind {
            0 => Event::SlotUp { slot: a, now },
            1 => Event::Probed { node: a as u16, now },
            2 => Event::Succeeded { job: a, attempt: b, now },
            _ => Event::Tick { now },
        };
        events += 1;
        let mut done = false;
        for effect in on_event(&mut state, event) {
            match effect {
                Effect::Probe { node, .. } => push(&mut queue, now, 1, u32::from(node), 0),
                Effect::Dispatch { job, attempt, .. } => push(&mut queue, now + JOB_S, 2, job, attempt),
                Effect::WakeAt { at } => push(&mut queue, at, 3, 0, 0),
                Effect::AllDone => done = true,
                _ => {}
            }
        }
        if done {
            break;
        }
    }
    (events, started.elapsed().as_secs_f64())
}

fn jobs(n: usize, need: Need) -> Vec<JobInput> {
    (0..n).map(|_| JobInput { need, nodes: vec![0], cycle: 1, after: Vec::new(), model: None }).collect()
}

fn gpu_node() -> Vec<Slot> {
    std::iter::once(Slot::new(0, SlotKind::Cpu)).chain((0..8).map(|g| Slot::new(0, SlotKind::Gpu(g)))).collect()
}

fn main() {
    let sizes = common::bench_sizes();
    println!("{:>10} {:>8} {:>9} {:>10} {:>12}", "shape", "jobs", "events", "time s", "µs per job");
    for shape in ["cpu", "gpu", "gpu gap"] {
        let mut per_job = Vec::new();
        for &n in &sizes {
            let (events, cpu) = match shape {
                "cpu" => simulate(jobs(n, Need::Cpu), vec![Slot::new(0, SlotKind::Cpu)], 0.0),
                "gpu" => simulate(jobs(n, Need::AnyGpu), gpu_node(), 0.0),
                _ => simulate(jobs(n, Need::AnyGpu), gpu_node(), 1.0),
            };
            let us = cpu * 1e6 / n as f64;
            println!("{shape:>10} {n:>8} {events:>9} {cpu:>10.3} {us:>12.2}");
            per_job.push(us);
        }
        if let (Some(first), Some(last)) = (per_job.first(), per_job.last()) {
            println!("{shape:>10} largest ÷ smallest: {:.2}", last / first);
        }
    }
}
