//! The dispatcher: one loop owns the pure scheduler and waits on one channel for what
//! sessions, connection threads and Ctrl-C report. Opening a session (an SSH handshake,
//! an upload of the agent) and waiting to reconnect happen in threads that report back
//! (`lifecycle.rs`), so the loop never blocks on a node: Ctrl-C is handled at once,
//! whatever a node does.
//!
//! Every step is journaled before it is acted on: a dispatched attempt before its `run`
//! is sent, a stored result before it is acknowledged, a lost attempt before the
//! scheduler hears of it.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use llem_common::failure::FailureKind;
use llem_common::protocol::{AttemptId, ToAgent};
use llem_common::util::now_rfc3339;

use super::artifacts::Inbox;
use super::connect::{Connector, Incoming, Session};
use super::journal::{Journal, Outcome, Record};
use super::progress::Progress;
use super::{node_slots, scheduler_jobs, Earlier, Ending, RunDir};
use crate::expand::point_spec;
use crate::plan::Plan;
use crate::scheduler::{self, AfterFailure, Effect, Event, JobState, Unservable};

/// What a slot's session is doing.
#[derive(Debug)]
pub(super) enum SlotSession {
    /// None, and none being opened.
    Closed,
    /// A thread is opening one. Messages for it wait in `queued` (an agent may deliver
    /// its outbox before the open is reported, and its `ack`s must not be lost); `ended`
    /// is set when its stream ended before that.
    Opening {
        generation: u64,
        queued: Vec<ToAgent>,
        ended: Option<String>,
    },
    Open {
        session: Box<dyn Session>,
        generation: u64,
    },
}

pub(super) struct Dispatcher<'p> {
    pub(super) plan: &'p Plan,
    pub(super) run: &'p RunDir,
    journal: Journal,
    pub(super) state: scheduler::State,
    pub(super) ids: Vec<String>,
    pub(super) index: HashMap<String, u32>,
    pub(super) sessions: Vec<SlotSession>,
    pub(super) slot_names: Vec<String>,
    pub(super) connectors: Vec<Arc<dyn Connector>>,
    pub(super) tx: Sender<Incoming>,
    pub(super) interrupted: bool,
    pub(super) progress: Progress,
    pub(super) generations: u64,
    pub(super) reconnecting: HashSet<u16>,
    /// Slots whose agent has not re-sent its outbox since it was opened (or since its
    /// session dropped), with the time that began: no job starts until each has, or for
    /// at most [`super::lifecycle::OUTBOX_WAIT_S`].
    pub(super) awaiting_outbox: HashMap<usize, f64>,
    /// Per node: reconnects in a row with no answer, result or failure from it between.
    pub(super) stalls: Vec<u32>,
    /// Per node: whether it answered, finished or failed something since its last reconnect.
    pub(super) progressed: Vec<bool>,
    pub(super) inbox: Inbox,
    /// Deliveries asked for again, per attempt.
    pub(super) resends: HashMap<AttemptId, u32>,
    /// Per node: what its agent found of each model (stored as prepare/<node>.json).
    pub(super) prepared: HashMap<u16, serde_json::Map<String, serde_json::Value>>,
    /// Per slot: questions (probe, prepare) not yet answered, and when its agent last
    /// sent anything.
    pub(super) questions: HashMap<usize, (u32, f64)>,
    /// Every open session hears from this loop at least this often ([`ToAgent::Heartbeat`]):
    /// an agent that hears nothing for much longer stops, so a coordinator killed with
    /// SIGKILL leaves no agent running (a Slurm step's input stays open when its `srun`
    /// dies with its process group).
    pub(super) heartbeat_s: f64,
    next_heartbeat: f64,
    /// Set when what the run ran on is gone (why): it ends as [`Ending::Stopped`].
    pub(super) stopped: Option<String>,
    clock: Instant,
}

/// The heartbeat's interval: `$LLEM_HEARTBEAT_S`, else 5 s (an agent gives up after six).
pub fn heartbeat_interval() -> f64 {
    std::env::var("LLEM_HEARTBEAT_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(5.0)
}

pub(super) fn at() -> String {
    now_rfc3339()
}

impl<'p> Dispatcher<'p> {
    pub(super) fn new(
        plan: &'p Plan,
        run: &'p RunDir,
        journal: Journal,
        earlier: &Earlier,
        connectors: &[Arc<dyn Connector>],
        tx: Sender<Incoming>,
    ) -> Result<Self> {
        let jobs = scheduler_jobs(plan);
        let (slots, slot_names) = node_slots(plan, &jobs);
        let e = &plan.sweep.execution;
        let mut state = scheduler::State::new(jobs, slots, e.retries, e.gap_s, e.cycle_gap_s);
        let ids: Vec<String> = plan.expansion.jobs.iter().map(|j| plan.expansion.job_id(j)).collect();
        let index: HashMap<String, u32> = ids.iter().enumerate().map(|(i, id)| (id.clone(), i as u32)).collect();
        for (job, outcome) in &earlier.done {
            if let Some(&j) = index.get(job) {
                match outcome {
                    Outcome::Finished { attempt } => state.mark_done(j, *attempt),
                    Outcome::Failed { attempt, kind } => state.mark_failed(j, *attempt, *kind),
                    Outcome::Skipped => state.mark_failed(j, 0, FailureKind::OutOfMemory),
                }
            }
        }
        for (job, &a) in &earlier.attempts {
            if let Some(&j) = index.get(job) {
                state.attempts[j as usize] = state.attempts[j as usize].max(a);
            }
        }
        for (job, &n) in &earlier.failures {
            if let Some(&j) = index.get(job) {
                state.set_failures(j, n);
            }
        }
        super::ensure_dir(&run.path.join("agents"))?;
        let (n, nodes) = (slot_names.len(), plan.sweep.nodes.len());
        Ok(Dispatcher {
            plan,
            run,
            journal,
            state,
            ids,
            index,
            sessions: (0..n).map(|_| SlotSession::Closed).collect(),
            progress: Progress::new(plan.expansion.jobs.len(), earlier.done.len(), &slot_names),
            slot_names,
            connectors: connectors.to_vec(),
            tx,
            interrupted: false,
            generations: 0,
            reconnecting: HashSet::new(),
            awaiting_outbox: HashMap::new(),
            stalls: vec![0; nodes],
            progressed: vec![false; nodes],
            inbox: Inbox::default(),
            resends: HashMap::new(),
            prepared: HashMap::new(),
            questions: HashMap::new(),
            heartbeat_s: heartbeat_interval(),
            next_heartbeat: 0.0,
            stopped: None,
            clock: Instant::now(),
        })
    }

    pub(super) fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// The GPUs a dispatched job holds, as the agent should use them.
    fn gpus_of(&self, job: u32) -> Vec<u32> {
        self.state
            .held_slots(job)
            .iter()
            .filter_map(|&s| match self.state.slots[s as usize].kind {
                scheduler::SlotKind::Gpu(g) => Some(g),
                scheduler::SlotKind::Cpu => None,
            })
            .collect()
    }

    pub(super) fn node_of(&self, slot: usize) -> u16 {
        self.state.slots[slot].node
    }

    pub(super) fn node_name(&self, node: u16) -> &str {
        &self.plan.sweep.nodes[node as usize].name
    }

    pub(super) fn record(&mut self, record: &Record) -> Result<()> {
        self.journal.append(record).context("cannot append to the journal")
    }

    /// Runs until every job has ended, or until an interrupt's cancellations are in.
    pub(super) fn run(mut self, rx: &Receiver<Incoming>) -> Result<Ending> {
        let mut all_done = false;
        // Nothing left to run (a resume of a finished run): no session is needed, and a
        // Slurm run asks for no allocation.
        if self.state.states.iter().any(|s| !s.is_terminal()) {
            for slot in 0..self.sessions.len() {
                self.open(slot);
            }
        }
        let mut event = Some(Event::Tick { now: 0.0 });
        let mut wake = None;
        loop {
            if let Some(e) = event.take() {
                let (w, done) = self.step(e)?;
                wake = w;
                all_done |= done;
                if all_done || (self.interrupted && self.state.running().next().is_none()) {
                    break;
                }
            }
            let now = self.now();
            if now >= self.next_heartbeat {
                self.heartbeat();
                self.next_heartbeat = now + self.heartbeat_s;
            }
            let until = wake.map_or(self.next_heartbeat, |w| w.min(self.next_heartbeat));
            // Every sender is a clone this loop holds too: the channel cannot close.
            let message = if until > now { rx.recv_timeout(Duration::from_secs_f64(until - now)).ok() } else { None };
            let now = self.now();
            let due = wake.is_some_and(|at| at <= now);
            event = match message {
                None => due.then_some(Event::Tick { now }),
                Some(m) => self.incoming(m, now)?.or_else(|| due.then_some(Event::Tick { now })),
            };
        }
        self.finish();
        if let Some(why) = self.stopped.take() {
            return Ok(Ending::Stopped(why));
        }
        if self.interrupted {
            return Ok(Ending::Interrupted);
        }
        let ok = self.state.states.iter().all(|s| matches!(s, JobState::Succeeded { .. }));
        Ok(if ok { Ending::AllSucceeded } else { Ending::SomeFailed })
    }

    /// Tells every open session's agent that this coordinator is alive.
    fn heartbeat(&mut self) {
        for slot in 0..self.sessions.len() {
            if matches!(self.sessions[slot], SlotSession::Open { .. }) {
                self.send(slot, &ToAgent::Heartbeat);
            }
        }
    }

    fn finish(&mut self) {
        for slot in 0..self.sessions.len() {
            if let SlotSession::Open { session, .. } = std::mem::replace(&mut self.sessions[slot], SlotSession::Closed)
            {
                session.shutdown();
            }
        }
        self.progress.finish();
    }

    /// Carries out what the waits decide (nodes that stopped answering, outboxes not
    /// waited for any longer), then feeds the scheduler `event` and carries out its
    /// effects: returns when to wake up, and whether every job has ended.
    pub(super) fn step(&mut self, event: Event) -> Result<(Option<f64>, bool)> {
        let mut done = false;
        // First: a dispatch to a node found silent must not be journaled after its loss.
        for lost in self.expired_waits()? {
            done |= self.feed(lost)?.1;
        }
        let (wake, finished) = self.feed(event)?;
        let give_up = self.next_deadline();
        let wake = match (wake, give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((wake, done || finished))
    }

    /// One event through the scheduler (held while outboxes are still arriving).
    pub(super) fn feed(&mut self, event: Event) -> Result<(Option<f64>, bool)> {
        self.state.hold(!self.awaiting_outbox.is_empty());
        let effects = scheduler::on_event(&mut self.state, event);
        self.apply(effects)
    }

    /// Sends a message to a slot's agent (queued while its session opens); a session
    /// that cannot take it is reported gone by its reader.
    pub(super) fn send(&mut self, slot: usize, message: &ToAgent) {
        match &mut self.sessions[slot] {
            SlotSession::Open { session, .. } => {
                if let Err(e) = session.send(message) {
                    tracing::warn!("cannot send to {}: {e:#}", self.slot_names[slot]);
                }
            }
            SlotSession::Opening { queued, .. } => queued.push(message.clone()),
            SlotSession::Closed => {}
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Result<(Option<f64>, bool)> {
        let mut wake = None;
        let mut done = false;
        for effect in effects {
            match effect {
                Effect::Probe { slot, .. } => {
                    self.asked(slot as usize);
                    self.send(slot as usize, &ToAgent::Probe);
                }
                Effect::Prepare { model, slot, .. } => {
                    self.asked(slot as usize);
                    let model = self.plan.expansion.models[model as usize].name.clone();
                    self.send(slot as usize, &ToAgent::Prepare { model });
                }
                Effect::Dispatch { job, attempt, slot } => {
                    let (id, slot) = (self.ids[job as usize].clone(), slot as usize);
                    // Journal first: a crash after this line is a dispatched attempt with no
                    // outcome, which resume runs again with a new attempt number.
                    let node = self.slot_names[slot].clone();
                    self.record(&Record::Dispatched { job: id.clone(), attempt, node, at: at() })?;
                    self.progress.started(&id, attempt, &self.slot_names[slot]);
                    self.progress.slot_job(slot, Some(&id));
                    let exp = &self.plan.expansion;
                    let spec = point_spec(&self.plan.sweep, exp, &exp.points[exp.jobs[job as usize].point as usize]);
                    let gpus = self.gpus_of(job);
                    let run = ToAgent::Run { id: AttemptId { job_id: id, attempt }, spec: Box::new(spec), gpus };
                    self.send(slot, &run);
                }
                Effect::CancelAttempt { job, attempt } => {
                    let id = AttemptId { job_id: self.ids[job as usize].clone(), attempt };
                    for slot in 0..self.sessions.len() {
                        self.send(slot, &ToAgent::Cancel { id: id.clone() });
                    }
                }
                Effect::Skip { job, because } => {
                    let (job, because) = (self.ids[job as usize].clone(), self.ids[because as usize].clone());
                    self.progress.ended(&job, &format!("skipped: {because} ran out of memory"), true);
                    self.record(&Record::Skipped { job, because, at: at() })?;
                }
                Effect::Unservable { job, why } => self.unservable(job, why)?,
                Effect::WakeAt { at } => wake = Some(at),
                Effect::AllDone => done = true,
            }
        }
        Ok((wake, done))
    }

    /// A job that can run nowhere is journaled as failed for good, saying why.
    fn unservable(&mut self, job: u32, why: Unservable) -> Result<()> {
        let id = self.ids[job as usize].clone();
        let (kind, error) = match why {
            Unservable::NoLiveNode => {
                (FailureKind::LostConnection, "no node that may run it is left (every one was lost)".to_owned())
            }
            Unservable::ModelUnavailable => {
                let point = &self.plan.expansion.points[self.plan.expansion.jobs[job as usize].point as usize];
                let model = &self.plan.expansion.models[point.model as usize].name;
                let mut reasons: Vec<String> = Vec::new();
                for (node, found) in &self.prepared {
                    if let Some(reason) = found.get(model).and_then(|s| s["reason"].as_str()) {
                        reasons.push(format!("{}: {reason}", self.node_name(*node)));
                    }
                }
                reasons.sort();
                let error = format!("model {model} is not readable on any node it may use ({})", reasons.join("; "));
                (FailureKind::BadJob, error)
            }
        };
        let attempt = self.state.attempts[job as usize];
        self.progress.ended(&id, &format!("failed: {error}"), true);
        self.record(&Record::Failed { job: id, attempt, kind, error, retryable: false, at: at() })
    }

    /// Journals the failure of a job's running attempt as the retry rule decides it.
    /// Cancellations are journaled as such (resume runs them).
    fn journal_failure(&mut self, job: u32, attempt: u32, kind: FailureKind, error: &str) -> Result<()> {
        let id = self.ids[job as usize].clone();
        match self.state.after_failure(job, kind) {
            AfterFailure::Cancelled => self.record(&Record::Cancelled { job: id, attempt, at: at() }),
            after => {
                let retry = after == AfterFailure::Retry;
                tracing::warn!("{id} attempt {attempt} failed ({kind}): {error}");
                if !retry {
                    self.progress.ended(&id, &format!("failed: {error}"), true);
                }
                let error = error.to_owned();
                self.record(&Record::Failed { job: id, attempt, kind, error, retryable: retry, at: at() })
            }
        }
    }

    /// Journals an attempt's failure; returns the scheduler's event for it.
    pub(super) fn attempt_failed(&mut self, job: u32, attempt: u32, kind: FailureKind, error: &str) -> Result<Event> {
        self.journal_failure(job, attempt, kind, error)?;
        Ok(Event::Failed { job, attempt, kind, now: self.now() })
    }

    /// The attempt running on a slot whose session ended is lost: journaled before the
    /// scheduler hears of it.
    pub(super) fn journal_lost_attempt(&mut self, slot: usize, why: &str) -> Result<()> {
        let running: Vec<(u32, u32)> = self.state.running().collect();
        for (job, attempt) in running {
            if matches!(self.state.states[job as usize], JobState::Running { slot: s, .. } if s as usize == slot) {
                let error = format!("connection to {} lost: {why}", self.slot_names[slot]);
                self.journal_failure(job, attempt, FailureKind::LostConnection, &error)?;
            }
        }
        Ok(())
    }

    /// Handles one report; returns the scheduler event it means, if any.
    pub(super) fn incoming(&mut self, message: Incoming, now: f64) -> Result<Option<Event>> {
        match message {
            Incoming::Interrupt => {
                if self.interrupted {
                    // Second Ctrl-C: leave at once; the journal is already consistent.
                    std::process::exit(i32::from(crate::exit::INTERRUPTED));
                }
                self.interrupted = true;
                self.progress.line("interrupted: cancelling running jobs (Ctrl-C again to quit at once)");
                self.record(&Record::Interrupted { at: at() })?;
                Ok(Some(Event::Cancel))
            }
            Incoming::Opened { slot, generation, outcome } => self.opened(slot, generation, outcome, now),
            Incoming::Gone { slot, generation, why } => self.gone(slot, generation, &why, now),
            Incoming::NodeBack { node } => {
                self.node_back(node);
                Ok(None)
            }
            Incoming::NodeUnreachable { node, error } => {
                self.reconnecting.remove(&node);
                match error {
                    super::connect::ConnectError::Ended(why) => self.resources_ended(&why),
                    error => self.node_lost(node, &error.to_string()),
                }
            }
            Incoming::Allocated { id, hosts } => {
                self.progress.line(&format!("Slurm allocation {id} granted on {}", hosts.join(", ")));
                self.record(&Record::Allocated { id, hosts, at: at() })?;
                Ok(None)
            }
            Incoming::Agent { slot, message } => {
                self.heard_from(slot, now);
                self.agent_message(slot, message, now)
            }
        }
    }
}
