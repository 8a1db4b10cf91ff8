//! `llem run` and `llem resume`: the dispatcher. It owns the pure scheduler, feeds it
//! what agents report, carries out its effects, and journals every step before acting on
//! it, so a run killed at any moment resumes without losing or repeating a finished job.
//!
//! Run directory (docs/results.md):
//! ```text
//! runs/<sweep>-<utc>/
//!   sweep.yaml  plan.json  journal.jsonl  agents/<slot>.log
//!   jobs/<job-id>/attempt-<n>/{result.json, timeseries.parquet, …}
//!   results.parquet  report/{index.html, summary.md, summary.csv, *.svg}
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use llem_common::protocol::{is_safe_artifact_name, AttemptId, FromAgent, ToAgent};
use llem_common::result::JobResult;
use llem_common::spec::Device;
use sha2::{Digest, Sha256};

use crate::expand::point_spec;
use crate::plan::{Dep, Plan, Task};
use crate::scheduler::{self, Effect, Event, JobInput, JobState, Need, Slot, SlotKind};

pub mod journal;
pub mod report;
pub mod results;
pub mod ssh;
pub mod transport;

use journal::{Journal, Record};
use transport::{Incoming, LocalAgent};

fn now_text() -> String {
    llem_common::util::now_rfc3339()
}

pub use llem_common::util::write_atomic;

/// The run directory's file of an attempt.
pub fn attempt_dir(run_dir: &Path, job: &str, attempt: u32) -> PathBuf {
    run_dir.join("jobs").join(job).join(format!("attempt-{attempt}"))
}

/// The longest a new agent may take to re-send its outbox before work starts without it
/// (an agent that never says `outbox_resent` must not stall the whole cluster).
const OUTBOX_WAIT_S: f64 = 30.0;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    AllSucceeded,
    SomeFailed,
    Interrupted,
}

/// A run being dispatched.
struct Dispatcher<'p> {
    plan: &'p Plan,
    run_dir: PathBuf,
    journal: Journal,
    state: scheduler::State,
    ids: Vec<String>,
    index: HashMap<String, u32>,
    agents: Vec<Option<LocalAgent>>,
    slot_names: Vec<String>,
    tx: mpsc::Sender<Incoming>,
    interrupted: bool,
    progress: Progress,
    /// Per node: how to reach it over SSH (None: local).
    targets: Vec<Option<ssh::SshTarget>>,
    /// Per node: the deployed agent's remote path.
    deployed: HashMap<u16, String>,
    /// Agents started so far (each gets the next number).
    generations: u64,
    /// Nodes whose connection dropped and that a thread is trying to reach again.
    reconnecting: HashSet<u16>,
    /// Slots whose new agent has not yet re-sent its outbox, with the time it started:
    /// nothing starts until it has, or for at most [`OUTBOX_WAIT_S`].
    awaiting_outbox: HashMap<usize, f64>,
    /// Seconds since the run started.
    clock: Instant,
}

/// Options of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Accept host keys not yet in known_hosts (a changed key is still refused).
    pub accept_new_host_keys: bool,
}

/// Progress on stderr: an indicatif bar on a terminal, plain lines otherwise.
struct Progress {
    multi: Option<indicatif::MultiProgress>,
    bar: Option<indicatif::ProgressBar>,
    /// A line per device slot (terminal only): job, phase, live watts.
    slot_lines: Vec<Option<indicatif::ProgressBar>>,
    slot_state: Vec<(String, String, Option<f64>)>,
    total: usize,
    done: usize,
    failed: usize,
}

impl Progress {
    fn new(total: usize, already: usize, slots: &[String]) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = tty.then(indicatif::MultiProgress::new);
        let bar = multi.as_ref().map(|m| {
            let bar = m.add(indicatif::ProgressBar::new(total as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} jobs ({msg}) eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(already as u64);
            bar
        });
        let slot_lines = slots
            .iter()
            .map(|name| {
                multi.as_ref().map(|m| {
                    let line = m.add(indicatif::ProgressBar::new_spinner());
                    line.set_message(format!("{name}: idle"));
                    line
                })
            })
            .collect();
        let slot_state = slots.iter().map(|n| (n.clone(), String::new(), None)).collect();
        Progress { multi, bar, slot_lines, slot_state, total, done: already, failed: 0 }
    }

    /// Updates a slot's line: its job, phase and live power.
    fn slot(&mut self, slot: usize, job: Option<&str>, phase: Option<&str>, watts: Option<Option<f64>>) {
        let Some(state) = self.slot_state.get_mut(slot) else { return };
        if let Some(job) = job {
            state.1 = job.to_owned();
            state.2 = None;
        }
        if let Some(w) = watts {
            state.2 = w;
        }
        let text = format!(
            "{}: {} {}{}",
            state.0,
            state.1,
            phase.unwrap_or(""),
            state.2.map_or_else(String::new, |w| format!(" · {w:.1} W"))
        );
        if let Some(Some(line)) = self.slot_lines.get(slot) {
            line.set_message(text);
            line.tick();
        }
    }

    fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn started(&self, job: &str, attempt: u32, slot: &str) {
        let text = format!("[{}/{}] {job} attempt {attempt} on {slot}", self.done, self.total);
        match &self.bar {
            Some(bar) => bar.set_message(format!("{} failed, running {job} on {slot}", self.failed)),
            None => self.line(&text),
        }
    }

    fn ended(&mut self, job: &str, what: &str, failed: bool) {
        self.done += 1;
        self.failed += usize::from(failed);
        self.line(&format!("[{}/{}] {job} {what}", self.done, self.total));
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }
}

/// The scheduler's view of a plan: needs, eligible nodes, cycles and monotone edges.
fn scheduler_jobs(plan: &Plan) -> Vec<JobInput> {
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
                Device::Cuda(None) => Need::AnyGpu,
                Device::Cuda(Some(i)) => Need::Gpu(i),
            };
            JobInput {
                need,
                nodes: exp.placements[point.placement as usize].clone(),
                cycle: job.cycle,
                after: std::mem::take(&mut after[j]),
            }
        })
        .collect()
}

/// Device slots of every node: its CPU, and its GPUs (`gpus: N` when given, else each GPU
/// a job placed there names; `cuda` uses GPU 0).
fn node_slots(plan: &Plan, jobs: &[JobInput]) -> (Vec<Slot>, Vec<String>) {
    let mut slots = Vec::new();
    let mut names = Vec::new();
    for (n, node) in plan.sweep.nodes.iter().enumerate() {
        let n = n as u16;
        let mut gpus: Vec<u32> = match node.gpus {
            Some(count) => (0..count).collect(),
            None => jobs
                .iter()
                .filter(|j| j.nodes.contains(&n))
                .filter_map(|j| match j.need {
                    Need::Gpu(i) => Some(i),
                    Need::AnyGpu => Some(0),
                    Need::Cpu => None,
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

impl Dispatcher<'_> {
    /// Feeds the scheduler one event (held while outboxes are still arriving) and carries
    /// out its effects: returns when to wake up, and whether every job has ended.
    fn step(&mut self, event: Event) -> Result<(Option<f64>, bool)> {
        let now = self.clock.elapsed().as_secs_f64();
        let slow: Vec<usize> =
            self.awaiting_outbox.iter().filter(|(_, &since)| now - since >= OUTBOX_WAIT_S).map(|(&s, _)| s).collect();
        for slot in slow {
            tracing::warn!(
                "the agent on {} has not re-sent its outbox after {OUTBOX_WAIT_S} s: not waiting for it",
                self.slot_names[slot]
            );
            self.awaiting_outbox.remove(&slot);
        }
        self.state.hold(!self.awaiting_outbox.is_empty());
        let effects = scheduler::on_event(&mut self.state, event);
        let (wake, done) = self.apply(effects)?;
        // While held, wake up when the longest wait runs out.
        let give_up = self.awaiting_outbox.values().map(|since| since + OUTBOX_WAIT_S).reduce(f64::min);
        let wake = match (wake, give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((wake, done))
    }

    fn record(&mut self, record: &Record) -> Result<()> {
        self.journal.append(record).context("append to the journal")
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Result<(Option<f64>, bool)> {
        let mut wake = None;
        let mut done = false;
        for effect in effects {
            match effect {
                Effect::Dispatch { job, attempt, slot } => {
                    let id = self.ids[job as usize].clone();
                    // Journal first: a crash after this line is a dispatched attempt with no
                    // outcome, which resume runs again with a new attempt number.
                    self.record(&Record::Dispatched {
                        job: id.clone(),
                        attempt,
                        node: self.slot_names[slot as usize].clone(),
                        at: now_text(),
                    })?;
                    self.progress.started(&id, attempt, &self.slot_names[slot as usize]);
                    self.progress.slot(slot as usize, Some(&id), Some("starting"), None);
                    let exp = &self.plan.expansion;
                    let spec = point_spec(&self.plan.sweep, exp, &exp.points[exp.jobs[job as usize].point as usize]);
                    let run = ToAgent::Run { id: AttemptId { job_id: id, attempt }, spec: Box::new(spec) };
                    // An agent that cannot take the job (its node just went away) is
                    // handled as gone: the attempt is retried where the scheduler can.
                    match self.agent(slot as usize) {
                        // A broken pipe: the agent's reader thread reports it gone.
                        Ok(agent) => {
                            if let Err(e) = agent.send(&run) {
                                tracing::warn!("failed to send a job to {}: {e:#}", self.slot_names[slot as usize]);
                            }
                        }
                        // No agent could be started: report it gone ourselves.
                        Err(e) => {
                            let _ = self.tx.send(Incoming::Gone {
                                slot: slot as usize,
                                generation: 0,
                                why: format!("{e:#}"),
                            });
                        }
                    }
                }
                Effect::CancelAttempt { job, attempt } => {
                    let id = AttemptId { job_id: self.ids[job as usize].clone(), attempt };
                    for agent in self.agents.iter_mut().flatten() {
                        let _ = agent.send(&ToAgent::Cancel { id: id.clone() });
                    }
                }
                Effect::Skip { job, because } => {
                    let (job, because) = (self.ids[job as usize].clone(), self.ids[because as usize].clone());
                    self.progress.ended(&job, &format!("skipped: {because} ran out of memory"), true);
                    self.record(&Record::Skipped { job, because, at: now_text() })?;
                }
                Effect::WakeAt { at } => wake = Some(at),
                Effect::AllDone => done = true,
            }
        }
        Ok((wake, done))
    }

    /// Acknowledges a stored attempt. If the agent is gone the ack is lost, which is
    /// harmless: its outbox delivers the attempt again, and a stored one is not counted
    /// twice.
    fn ack(&mut self, slot: usize, id: AttemptId) {
        if let Some(agent) = self.agents[slot].as_mut() {
            if let Err(e) = agent.send(&ToAgent::Ack { id }) {
                tracing::warn!("failed to acknowledge on {}: {e:#}", self.slot_names[slot]);
            }
        }
    }

    fn agent(&mut self, slot: usize) -> Result<&mut LocalAgent> {
        if self.agents[slot].is_none() {
            let log =
                self.run_dir.join("agents").join(format!("{}.log", self.slot_names[slot].replace([':', '/'], "-")));
            let node = self.state.slots[slot].node;
            self.generations += 1;
            let generation = self.generations;
            let agent = match self.targets[node as usize].clone() {
                None => LocalAgent::spawn(slot, generation, self.hello(), &log, None, self.tx.clone())?,
                Some(target) => {
                    let remote = match self.deployed.get(&node) {
                        Some(p) => p.clone(),
                        None => {
                            let p = target.deploy(&transport::agent_binary())?;
                            self.deployed.insert(node, p.clone());
                            p
                        }
                    };
                    let hello = self.hello();
                    LocalAgent::spawn_with(
                        slot,
                        generation,
                        hello,
                        target.agent_command(&remote),
                        &log,
                        self.tx.clone(),
                    )?
                }
            };
            self.agents[slot] = Some(agent);
            self.awaiting_outbox.insert(slot, self.clock.elapsed().as_secs_f64());
        }
        self.agents[slot].as_mut().context("agent")
    }

    /// Journals the failure of every running attempt on the slots `on` picks; it is
    /// retried while retries are left.
    fn fail_running(&mut self, on: impl Fn(usize) -> bool, error: &str) -> Result<()> {
        let running: Vec<(u32, u32)> = self.state.running().collect();
        for (job, attempt) in running {
            if let JobState::Running { slot, .. } = self.state.states[job as usize] {
                if on(slot as usize) {
                    let retry = attempt <= self.plan.sweep.execution.retries;
                    let id = self.ids[job as usize].clone();
                    let record = Record::Failed {
                        job: id.clone(),
                        attempt,
                        error: error.to_owned(),
                        retryable: retry,
                        at: now_text(),
                    };
                    self.record(&record)?;
                    if !retry {
                        self.progress.ended(&id, &format!("failed: {error}"), true);
                    }
                }
            }
        }
        Ok(())
    }

    /// A node is lost for the rest of the run: its sessions are ended and its running
    /// attempts journaled as failed (the scheduler retries them on equivalent nodes).
    fn node_lost(&mut self, node: u16, why: &str) -> Result<()> {
        let name = self.plan.sweep.nodes[node as usize].name.clone();
        let slots: Vec<usize> = (0..self.state.slots.len()).filter(|&s| self.state.slots[s].node == node).collect();
        for &slot in &slots {
            if let Some(agent) = self.agents[slot].take() {
                agent.kill();
            }
            self.awaiting_outbox.remove(&slot);
        }
        self.fail_running(|s| slots.contains(&s), &format!("node {name} lost: {why}"))?;
        self.progress.line(&format!("node {name} lost: {why}"));
        Ok(())
    }

    /// Tries to reach a node again in a thread; it reports `NodeBack` or `NodeUnreachable`.
    fn spawn_reconnect(&self, node: u16) {
        let Some(target) = self.targets[node as usize].clone() else { return };
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let message = match target.reconnect() {
                Ok(()) => Incoming::NodeBack { node },
                Err(why) => Incoming::NodeUnreachable { node, why },
            };
            let _ = tx.send(message);
        });
    }

    /// Our hello to a new agent: it names the run, whose outbox the agent re-sends.
    fn hello(&self) -> llem_common::protocol::Hello {
        let run = self.run_dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        llem_common::protocol::Hello::new("coordinator").for_run(run)
    }

    /// Stores an artifact after checking its name and checksum.
    fn store_artifact(&self, id: &AttemptId, name: &str, sha256: &str, base64: &str) -> Result<()> {
        if !is_safe_artifact_name(name) || !self.index.contains_key(&id.job_id) {
            bail!("refused artifact {name:?} of {}: not a plain file name of a planned job", id.job_id);
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(base64).context("decode an artifact")?;
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if actual != sha256 {
            bail!("artifact {name} of {} is corrupt: sha256 {actual}, expected {sha256}", id.job_id);
        }
        let dir = attempt_dir(&self.run_dir, &id.job_id, id.attempt);
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(name), &bytes)?;
        Ok(())
    }

    /// Handles one message; returns the scheduler event it means, if any.
    fn incoming(&mut self, message: Incoming, now: f64) -> Result<Option<Event>> {
        match message {
            Incoming::Interrupt => {
                if self.interrupted {
                    // Second Ctrl-C: leave at once; the journal is already consistent.
                    std::process::exit(i32::from(crate::exit::INTERRUPTED));
                }
                self.interrupted = true;
                eprintln!("interrupted: cancelling running jobs (Ctrl-C again to quit at once)");
                self.record(&Record::Interrupted { at: now_text() })?;
                Ok(Some(Event::Cancel))
            }
            Incoming::Gone { slot, generation, why } => {
                // A report about an agent that was already replaced changes nothing.
                if self.agents[slot].as_ref().is_some_and(|a| a.generation != generation) {
                    return Ok(None);
                }
                self.agents[slot] = None;
                self.awaiting_outbox.remove(&slot);
                let node = self.state.slots[slot].node;
                if self.targets[node as usize].is_some() && !self.interrupted {
                    // A remote session dropped: its attempt is lost (retried where the
                    // scheduler can), and the node is tried again with backoff.
                    self.fail_running(|s| s == slot, &format!("connection to {} lost: {why}", self.slot_names[slot]))?;
                    if self.state.is_lost(node) {
                        return Ok(None);
                    }
                    if self.reconnecting.insert(node) {
                        let name = &self.plan.sweep.nodes[node as usize].name;
                        self.progress.line(&format!("connection to node {name} lost ({why}): reconnecting"));
                        self.spawn_reconnect(node);
                    }
                    return Ok(Some(Event::SlotDown { slot: slot as u32, now }));
                }
                let running: Vec<(u32, u32)> = self.state.running().collect();
                for (job, attempt) in running {
                    if let JobState::Running { slot: s, .. } = self.state.states[job as usize] {
                        if s as usize == slot {
                            let error = format!("agent on {} stopped: {why}", self.slot_names[slot]);
                            self.record(&Record::Failed {
                                job: self.ids[job as usize].clone(),
                                attempt,
                                error,
                                retryable: true,
                                at: now_text(),
                            })?;
                            return Ok(Some(Event::Failed {
                                job,
                                attempt,
                                retryable: !self.interrupted,
                                out_of_memory: false,
                                now,
                            }));
                        }
                    }
                }
                Ok(None)
            }
            Incoming::NodeBack { node } => {
                self.reconnecting.remove(&node);
                // The node may have been reinstalled meanwhile: check the agent again.
                self.deployed.remove(&node);
                self.progress.line(&format!("node {} is back", self.plan.sweep.nodes[node as usize].name));
                // Start its agents now: they re-send what finished while it was away,
                // before anything new is started.
                for slot in 0..self.state.slots.len() {
                    if self.state.slots[slot].node == node && self.agents[slot].is_none() {
                        if let Err(e) = self.agent(slot) {
                            let why = format!("{e:#}");
                            let _ = self.tx.send(Incoming::Gone { slot, generation: 0, why });
                        }
                    }
                }
                Ok(Some(Event::NodeUp { node, now }))
            }
            Incoming::NodeUnreachable { node, why } => {
                self.reconnecting.remove(&node);
                self.node_lost(node, &why)?;
                Ok(Some(Event::NodeLost { node, now }))
            }
            Incoming::Agent { slot, message } => match message {
                FromAgent::Hello(h) => {
                    llem_common::protocol::Hello::new("coordinator").check(&h)?;
                    Ok(None)
                }
                FromAgent::Phase { id, phase } => {
                    tracing::debug!("{} attempt {}: {phase:?}", id.job_id, id.attempt);
                    let name = format!("{phase:?}").to_lowercase();
                    self.progress.slot(slot, None, Some(&name), None);
                    Ok(None)
                }
                FromAgent::Sample { power_w, .. } => {
                    self.progress.slot(slot, None, None, Some(power_w));
                    Ok(None)
                }
                FromAgent::Log { message, .. } => {
                    tracing::info!("agent {}: {message}", self.slot_names[slot]);
                    Ok(None)
                }
                FromAgent::Artifact { id, name, sha256, base64 } => {
                    if let Err(e) = self.store_artifact(&id, &name, &sha256, &base64) {
                        tracing::error!("{e:#}");
                    }
                    Ok(None)
                }
                FromAgent::Finished { id, result } => self.finished(slot, id, *result, now),
                FromAgent::OutboxResent { count } => {
                    if count > 0 {
                        self.progress
                            .line(&format!("collected {count} finished attempt(s) from {}", self.slot_names[slot]));
                    }
                    self.awaiting_outbox.remove(&slot);
                    Ok(Some(Event::Tick { now }))
                }
                FromAgent::Failed { id, error, retryable } => {
                    let Some(&job) = self.index.get(&id.job_id) else { return Ok(None) };
                    let cancelled = error == "cancelled";
                    let out_of_memory = error.contains("out of memory");
                    // In the journal, `retryable` means "will be retried": false marks the
                    // final failure that resume keeps (unless --retry-failed).
                    let retry =
                        retryable && !cancelled && !out_of_memory && id.attempt <= self.plan.sweep.execution.retries;
                    if cancelled {
                        self.record(&Record::Cancelled {
                            job: id.job_id.clone(),
                            attempt: id.attempt,
                            at: now_text(),
                        })?;
                    } else {
                        tracing::warn!("{} attempt {} failed: {error}", id.job_id, id.attempt);
                        let record = Record::Failed {
                            job: id.job_id.clone(),
                            attempt: id.attempt,
                            error: error.clone(),
                            retryable: retry,
                            at: now_text(),
                        };
                        self.record(&record)?;
                        if !retry {
                            self.progress.ended(&id.job_id, &format!("failed: {error}"), true);
                        }
                    }
                    Ok(Some(Event::Failed {
                        job,
                        attempt: id.attempt,
                        retryable: retryable && !cancelled,
                        out_of_memory,
                        now,
                    }))
                }
            },
        }
    }

    fn finished(&mut self, slot: usize, id: AttemptId, result: JobResult, now: f64) -> Result<Option<Event>> {
        let Some(&job) = self.index.get(&id.job_id) else {
            // Not part of this plan (an old outbox entry): acknowledge so it is dropped.
            self.ack(slot, id);
            return Ok(None);
        };
        if matches!(self.state.states[job as usize], JobState::Succeeded { .. }) {
            // Already stored (a resent outbox entry): never counted twice.
            self.ack(slot, id);
            return Ok(None);
        }
        let dir = attempt_dir(&self.run_dir, &id.job_id, id.attempt);
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("result.json"), &serde_json::to_vec_pretty(&result)?)?;
        // The journal line makes it count; only then may the agent forget it.
        self.record(&Record::Finished { job: id.job_id.clone(), attempt: id.attempt, at: now_text() })?;
        self.progress.ended(&id.job_id, &format!("finished: {}", describe_energy(&result)), false);
        let tps = result.throughput.output_tokens_per_s.map_or_else(String::new, |t| format!("last {t:.1} tok/s"));
        self.progress.slot(slot, Some(&tps), Some(""), None);
        self.ack(slot, id.clone());
        if matches!(self.state.states[job as usize], JobState::Running { attempt, .. } if attempt == id.attempt) {
            Ok(Some(Event::Succeeded { job, attempt: id.attempt, now }))
        } else {
            // Finished in an earlier, interrupted run and delivered from the outbox. If a
            // newer attempt already started, it is redundant: stop it.
            if let JobState::Running { attempt, .. } = self.state.states[job as usize] {
                let newer = AttemptId { job_id: id.job_id.clone(), attempt };
                for agent in self.agents.iter_mut().flatten() {
                    let _ = agent.send(&ToAgent::Cancel { id: newer.clone() });
                }
            }
            self.state.mark_done(job, id.attempt);
            Ok(Some(Event::Tick { now }))
        }
    }
}

fn describe_energy(r: &JobResult) -> String {
    let tokens = format!("{} tokens in {:.2} s", r.tokens.output, r.duration_s);
    match r.energy.total_j {
        Some(j) => format!("{tokens}, {j:.2} J"),
        None => format!("{tokens}, energy not measured"),
    }
}

/// Runs (or resumes) a plan in `run_dir`. `done`: jobs that ended in an earlier run and
/// are not run again (resume); `attempts`: the attempts already used per job.
pub fn dispatch(
    plan: &Plan,
    run_dir: &Path,
    journal: Journal,
    done: &[(String, journal::Outcome)],
    attempts: &HashMap<String, u32>,
    options: Options,
) -> Result<Ending> {
    let jobs = scheduler_jobs(plan);
    let (slots, slot_names) = node_slots(plan, &jobs);
    let control_dir = std::env::temp_dir().join(format!("llem-ssh-{}", std::process::id()));
    let targets: Vec<Option<ssh::SshTarget>> = plan
        .sweep
        .nodes
        .iter()
        .map(|n| ssh::SshTarget::for_node(n, &control_dir, options.accept_new_host_keys))
        .collect();
    let e = &plan.sweep.execution;
    let mut state = scheduler::State::new(jobs, slots.clone(), e.retries, e.gap_s, e.cycle_gap_s);
    let ids: Vec<String> = plan.expansion.jobs.iter().map(|j| plan.expansion.job_id(j)).collect();
    let index: HashMap<String, u32> = ids.iter().enumerate().map(|(i, id)| (id.clone(), i as u32)).collect();
    for (job, outcome) in done {
        if let Some(&j) = index.get(job) {
            match outcome {
                journal::Outcome::Finished { attempt } => state.mark_done(j, *attempt),
                journal::Outcome::Failed { attempt } => state.mark_failed(j, *attempt),
                journal::Outcome::Skipped => state.mark_failed(j, 0),
            }
        }
    }
    for (job, &a) in attempts {
        if let Some(&j) = index.get(job) {
            state.attempts[j as usize] = state.attempts[j as usize].max(a);
        }
    }
    std::fs::create_dir_all(run_dir.join("agents"))?;
    let (tx, rx) = mpsc::channel();
    let ctrlc_tx = tx.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = ctrlc_tx.send(Incoming::Interrupt);
    });
    let slot_names_for_progress: Vec<String> = slot_names.clone();
    let mut d = Dispatcher {
        plan,
        run_dir: run_dir.to_owned(),
        journal,
        state,
        ids,
        index,
        agents: slots.iter().map(|_| None).collect(),
        slot_names,
        tx,
        interrupted: false,
        progress: Progress::new(plan.expansion.jobs.len(), done.len(), &slot_names_for_progress),
        targets,
        deployed: HashMap::new(),
        generations: 0,
        reconnecting: HashSet::new(),
        awaiting_outbox: HashMap::new(),
        clock: Instant::now(),
    };
    // Start every slot's agent now: each delivers its outbox after hello. A node whose
    // host key is refused is lost for this run (its jobs go to equivalent nodes); one
    // that cannot be reached is tried again with backoff first.
    let mut all_done = false;
    for slot in 0..slots.len() {
        let node = d.state.slots[slot].node;
        let event = if d.state.is_lost(node) {
            continue;
        } else if d.reconnecting.contains(&node) {
            Event::SlotDown { slot: slot as u32, now: 0.0 }
        } else {
            let Err(e) = d.agent(slot) else { continue };
            if d.targets[node as usize].is_none() {
                return Err(e);
            }
            let name = &plan.sweep.nodes[node as usize].name;
            if matches!(e.downcast_ref::<ssh::ConnectError>(), Some(ssh::ConnectError::HostKey(_))) {
                d.progress.line(&format!("node {name} unavailable: {e:#}"));
                Event::NodeLost { node, now: 0.0 }
            } else {
                d.progress.line(&format!("node {name} unreachable ({e:#}): trying again"));
                d.reconnecting.insert(node);
                d.spawn_reconnect(node);
                Event::SlotDown { slot: slot as u32, now: 0.0 }
            }
        };
        all_done |= d.step(event)?.1;
    }
    let start = d.clock;
    // Only messages that change something (and wake-ups) reach the scheduler: phases,
    // samples and logs are most of the traffic and change nothing there.
    let mut event = Some(Event::Tick { now: 0.0 });
    let mut wake = None;
    loop {
        if let Some(e) = event.take() {
            let (w, done) = d.step(e)?;
            wake = w;
            if done || all_done || (d.interrupted && d.state.running().next().is_none()) {
                break;
            }
        }
        let now = start.elapsed().as_secs_f64();
        let message = match wake {
            Some(at) if at > now => match rx.recv_timeout(Duration::from_secs_f64(at - now)) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("all agents are gone"),
            },
            Some(_) => None,
            None => Some(rx.recv().context("all agents are gone")?),
        };
        let now = start.elapsed().as_secs_f64();
        let due = wake.is_some_and(|at| at <= now);
        event = match message {
            None => Some(Event::Tick { now }),
            Some(m) => d.incoming(m, now)?.or_else(|| due.then_some(Event::Tick { now })),
        };
    }
    for agent in d.agents.into_iter().flatten() {
        agent.shutdown();
    }
    for target in d.targets.iter().flatten() {
        target.close();
    }
    if let Some(bar) = &d.progress.bar {
        bar.finish_and_clear();
    }
    for line in d.progress.slot_lines.iter().flatten() {
        line.finish_and_clear();
    }
    if d.interrupted {
        return Ok(Ending::Interrupted);
    }
    let ok = d.state.states.iter().all(|s| matches!(s, JobState::Succeeded { .. }));
    Ok(if ok { Ending::AllSucceeded } else { Ending::SomeFailed })
}

/// Everything needed to start a run directory.
pub fn create_run_dir(plan: &Plan, root: &Path) -> Result<(PathBuf, Journal)> {
    let stamp: String = now_text().chars().filter(|c| c.is_ascii_digit()).take(14).collect();
    let mut run_dir = root.join(format!("{}-{}", plan.sweep.name, stamp));
    let mut n = 1;
    while run_dir.exists() {
        n += 1;
        run_dir = root.join(format!("{}-{stamp}-{n}", plan.sweep.name));
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let text = std::fs::read(&plan.sweep.path).with_context(|| format!("read {}", plan.sweep.path.display()))?;
    write_atomic(&run_dir.join("sweep.yaml"), &text)?;
    let jobs: Vec<serde_json::Value> = plan
        .expansion
        .jobs
        .iter()
        .map(|j| {
            let p = &plan.expansion.points[j.point as usize];
            serde_json::json!({"id": plan.expansion.job_id(j), "cycle": j.cycle, "spec": point_spec(&plan.sweep, &plan.expansion, p)})
        })
        .collect();
    let plan_json = serde_json::json!({
        "sweep": {"name": plan.sweep.name, "file": plan.sweep.path, "source_hash": plan.sweep.source_hash},
        "counts": plan.expansion.counts,
        "jobs": jobs,
        "graph": {"tasks": plan.graph.node_count(), "edges": plan.graph.edge_count(),
                  "jobs": plan.graph.node_weights().filter(|t| matches!(t, Task::Job { .. })).count()},
    });
    write_atomic(&run_dir.join("plan.json"), &serde_json::to_vec_pretty(&plan_json)?)?;
    let header = journal::Header {
        llem_journal: journal::JOURNAL_VERSION,
        sweep: plan.sweep.name.clone(),
        sweep_file: plan.sweep.path.display().to_string(),
        source_hash: plan.sweep.source_hash.clone(),
        created_at: now_text(),
    };
    let journal = Journal::create(&run_dir.join("journal.jsonl"), &header)?;
    Ok((run_dir, journal))
}
