//! The dispatcher: one loop owns the pure scheduler and waits on one channel for what
//! sessions, connection threads and Ctrl-C report. Opening a session (an SSH handshake,
//! an upload of the agent) and waiting to reconnect happen in threads that report back,
//! so the loop never blocks on a node: Ctrl-C is handled at once, whatever a node does.
//!
//! Every step is journaled before it is acted on: a dispatched attempt before its `run`
//! is sent, a stored result before it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use llem_common::failure::FailureKind;
use llem_common::protocol::{AttemptId, ToAgent};
use llem_common::util::now_rfc3339;

use super::artifacts::Inbox;
use super::connect::{ConnectError, Connector, Incoming, OpenRequest, Session};
use super::journal::{Journal, Outcome, Record};
use super::progress::Progress;
use super::{node_slots, scheduler_jobs, Earlier, Ending, RunDir};
use crate::expand::point_spec;
use crate::plan::Plan;
use crate::scheduler::{self, AfterFailure, Effect, Event, JobState, Unservable};

/// The longest a new agent may take to re-send its outbox before work starts without it
/// (an agent that never says `outbox_resent` must not stall the whole cluster).
pub const OUTBOX_WAIT_S: f64 = 30.0;

/// The longest a node's agent may take to answer a probe or a preparation before the
/// node is given up (a real agent answers in well under a second; one that never does
/// must not stall the run).
pub const ANSWER_WAIT_S: f64 = 120.0;

/// Sessions of a slot that may end in a row before their agent said `outbox_resent`
/// (it crashes at start) before its node is given up.
const EARLY_EXITS: u32 = 3;

/// What a slot's session is doing.
#[derive(Debug)]
pub(super) enum SlotSession {
    /// None, and none being opened.
    Closed,
    /// A thread is opening one.
    Opening {
        generation: u64,
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
    connectors: Vec<Arc<dyn Connector>>,
    tx: Sender<Incoming>,
    pub(super) interrupted: bool,
    pub(super) progress: Progress,
    generations: u64,
    reconnecting: HashSet<u16>,
    /// Slots whose new agent has not yet re-sent its outbox, with the time its session
    /// started opening: no job starts until it has, or for at most [`OUTBOX_WAIT_S`].
    pub(super) awaiting_outbox: HashMap<usize, f64>,
    /// Per slot: sessions that ended in a row before `outbox_resent`.
    early_exits: Vec<u32>,
    pub(super) inbox: Inbox,
    /// Deliveries asked for again, per attempt.
    pub(super) resends: HashMap<AttemptId, u32>,
    /// Per node: what its agent found of each model (stored as prepare/<node>.json).
    pub(super) prepared: HashMap<u16, serde_json::Map<String, serde_json::Value>>,
    /// Per node: questions (probe, prepare) not yet answered, and since when.
    pub(super) questions: HashMap<u16, (u32, f64)>,
    clock: Instant,
}

fn at() -> String {
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
        super::ensure_dir(&run.path.join("agents"))?;
        let n = slot_names.len();
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
            early_exits: vec![0; n],
            inbox: Inbox::default(),
            resends: HashMap::new(),
            prepared: HashMap::new(),
            questions: HashMap::new(),
            clock: Instant::now(),
        })
    }

    pub(super) fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
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
        for slot in 0..self.sessions.len() {
            self.open(slot);
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
            // Every sender is a clone this loop holds too: the channel cannot close.
            let message = match wake {
                Some(at) if at > now => rx.recv_timeout(Duration::from_secs_f64(at - now)).ok(),
                Some(_) => None,
                None => rx.recv().ok(),
            };
            let now = self.now();
            let due = wake.is_some_and(|at| at <= now);
            event = match message {
                None => Some(Event::Tick { now }),
                Some(m) => self.incoming(m, now)?.or_else(|| due.then_some(Event::Tick { now })),
            };
        }
        self.finish();
        if self.interrupted {
            return Ok(Ending::Interrupted);
        }
        let ok = self.state.states.iter().all(|s| matches!(s, JobState::Succeeded { .. }));
        Ok(if ok { Ending::AllSucceeded } else { Ending::SomeFailed })
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

    /// Feeds the scheduler one event (held while outboxes are still arriving) and carries
    /// out its effects: returns when to wake up, and whether every job has ended.
    pub(super) fn step(&mut self, event: Event) -> Result<(Option<f64>, bool)> {
        let now = self.now();
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
        let mut effects = scheduler::on_event(&mut self.state, event);
        let silent: Vec<u16> = self
            .questions
            .iter()
            .filter(|(_, &(open, since))| open > 0 && now - since >= ANSWER_WAIT_S)
            .map(|(&n, _)| n)
            .collect();
        for node in silent {
            let why = format!("its agent did not answer within {ANSWER_WAIT_S} s");
            if let Some(lost) = self.node_lost(node, &why)? {
                effects.extend(scheduler::on_event(&mut self.state, lost));
            }
        }
        let (wake, done) = self.apply(effects)?;
        // While held, or waiting for answers, wake up when the first wait runs out.
        let outboxes = self.awaiting_outbox.values().map(|since| since + OUTBOX_WAIT_S);
        let answers = self.questions.values().filter(|(open, _)| *open > 0).map(|(_, since)| since + ANSWER_WAIT_S);
        let give_up = outboxes.chain(answers).reduce(f64::min);
        let wake = match (wake, give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((wake, done))
    }

    /// Sends a message to a slot's agent; a session that cannot take it is reported gone
    /// by its reader.
    pub(super) fn send(&mut self, slot: usize, message: &ToAgent) {
        if let SlotSession::Open { session, .. } = &mut self.sessions[slot] {
            if let Err(e) = session.send(message) {
                tracing::warn!("cannot send to {}: {e:#}", self.slot_names[slot]);
            }
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Result<(Option<f64>, bool)> {
        let mut wake = None;
        let mut done = false;
        for effect in effects {
            match effect {
                Effect::Probe { node, slot } => {
                    self.asked(node);
                    self.send(slot as usize, &ToAgent::Probe);
                }
                Effect::Prepare { node, model, slot } => {
                    self.asked(node);
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
                    self.send(slot, &ToAgent::Run { id: AttemptId { job_id: id, attempt }, spec: Box::new(spec) });
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

    /// A question went to a node's agent.
    fn asked(&mut self, node: u16) {
        let now = self.now();
        let (open, since) = self.questions.entry(node).or_insert((0, now));
        if *open == 0 {
            *since = now;
        }
        *open += 1;
    }

    /// A node's agent answered a question (the clock for the others starts again).
    pub(super) fn answered(&mut self, node: u16) {
        let now = self.now();
        if let Some((open, since)) = self.questions.get_mut(&node) {
            *open = open.saturating_sub(1);
            *since = now;
        }
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
                (
                    FailureKind::BadJob,
                    format!("model {model} is not readable on any node it may use ({})", reasons.join("; ")),
                )
            }
        };
        let attempt = self.state.attempts[job as usize];
        self.progress.ended(&id, &format!("failed: {error}"), true);
        self.record(&Record::Failed { job: id, attempt, kind, error, retryable: false, at: at() })
    }

    /// Journals the failure of an attempt as the retry rule decides it, and returns the
    /// scheduler's event for it. Cancellations are journaled as such (resume runs them).
    pub(super) fn attempt_failed(&mut self, job: u32, attempt: u32, kind: FailureKind, error: &str) -> Result<Event> {
        let id = self.ids[job as usize].clone();
        match self.state.after_failure(kind, attempt) {
            AfterFailure::Cancelled => self.record(&Record::Cancelled { job: id, attempt, at: at() })?,
            after => {
                let retry = after == AfterFailure::Retry;
                tracing::warn!("{id} attempt {attempt} failed ({kind}): {error}");
                let record = Record::Failed {
                    job: id.clone(),
                    attempt,
                    kind,
                    error: error.to_owned(),
                    retryable: retry,
                    at: at(),
                };
                self.record(&record)?;
                if !retry {
                    self.progress.ended(&id, &format!("failed: {error}"), true);
                }
            }
        }
        Ok(Event::Failed { job, attempt, kind, now: self.now() })
    }

    /// The attempt running on a slot whose session ended is lost: journaled before the
    /// scheduler hears of it.
    fn journal_lost_attempt(&mut self, slot: usize, why: &str) -> Result<()> {
        let running: Vec<(u32, u32)> = self.state.running().collect();
        for (job, attempt) in running {
            if matches!(self.state.states[job as usize], JobState::Running { slot: s, .. } if s as usize == slot) {
                let id = self.ids[job as usize].clone();
                let error = format!("connection to {} lost: {why}", self.slot_names[slot]);
                match self.state.after_failure(FailureKind::LostConnection, attempt) {
                    AfterFailure::Cancelled => self.record(&Record::Cancelled { job: id, attempt, at: at() })?,
                    after => {
                        let retry = after == AfterFailure::Retry;
                        let kind = FailureKind::LostConnection;
                        if !retry {
                            self.progress.ended(&id, &format!("failed: {error}"), true);
                        }
                        self.record(&Record::Failed { job: id, attempt, kind, error, retryable: retry, at: at() })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts opening a session for `slot` in a thread; it reports `Opened`.
    fn open(&mut self, slot: usize) {
        let node = self.node_of(slot);
        if self.state.is_lost(node) || self.interrupted || !matches!(self.sessions[slot], SlotSession::Closed) {
            return;
        }
        self.generations += 1;
        let generation = self.generations;
        self.sessions[slot] = SlotSession::Opening { generation };
        self.awaiting_outbox.insert(slot, self.now());
        let request = OpenRequest {
            slot,
            generation,
            hello: llem_common::protocol::Hello::new("coordinator").for_run(self.run.name()),
            log: self.run.agent_log(&self.slot_names[slot]),
            events: self.tx.clone(),
        };
        let connector = Arc::clone(&self.connectors[node as usize]);
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let outcome = connector.open(request);
            if let Err(std::sync::mpsc::SendError(Incoming::Opened { outcome: Ok(session), .. })) =
                tx.send(Incoming::Opened { slot, generation, outcome })
            {
                // The run is over: nobody will use it.
                session.kill();
            }
        });
    }

    /// Tries a node again in a thread (once at a time); it reports back.
    fn reconnect(&mut self, node: u16) {
        if self.interrupted || self.state.is_lost(node) || !self.reconnecting.insert(node) {
            return;
        }
        let connector = Arc::clone(&self.connectors[node as usize]);
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(match connector.reconnect() {
                Ok(()) => Incoming::NodeBack { node },
                Err(error) => Incoming::NodeUnreachable { node, error },
            });
        });
    }

    /// A node is lost for the rest of the run: its sessions end, and its jobs go to
    /// equivalent nodes or fail.
    fn node_lost(&mut self, node: u16, why: &str) -> Result<Option<Event>> {
        if self.state.is_lost(node) {
            return Ok(None);
        }
        for slot in 0..self.sessions.len() {
            if self.node_of(slot) == node {
                self.journal_lost_attempt(slot, why)?;
                if let SlotSession::Open { session, .. } =
                    std::mem::replace(&mut self.sessions[slot], SlotSession::Closed)
                {
                    session.kill();
                }
                self.awaiting_outbox.remove(&slot);
                self.inbox.forget_slot(slot);
            }
        }
        self.questions.remove(&node);
        self.progress.line(&format!("node {} lost: {why}", self.node_name(node)));
        Ok(Some(Event::NodeLost { node, now: self.now() }))
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
            Incoming::Opened { slot, generation, outcome } => {
                let current = matches!(self.sessions[slot], SlotSession::Opening { generation: g } if g == generation);
                match outcome {
                    Ok(session) if current && !self.interrupted => {
                        self.sessions[slot] = SlotSession::Open { session, generation };
                        Ok(Some(Event::SlotUp { slot: slot as u32, now }))
                    }
                    Ok(session) => {
                        session.kill();
                        Ok(None)
                    }
                    Err(_) if !current => Ok(None),
                    Err(e) => self.open_failed(slot, &e),
                }
            }
            Incoming::Gone { slot, generation, why } => {
                // A report about a session that was already replaced changes nothing.
                if !matches!(self.sessions[slot], SlotSession::Open { generation: g, .. } if g == generation) {
                    return Ok(None);
                }
                self.sessions[slot] = SlotSession::Closed;
                self.inbox.forget_slot(slot);
                let node = self.node_of(slot);
                // Its questions are asked again on the next session.
                self.questions.remove(&node);
                if self.awaiting_outbox.remove(&slot).is_some() {
                    self.early_exits[slot] += 1;
                    if self.early_exits[slot] >= EARLY_EXITS {
                        let log = self.run.agent_log(&self.slot_names[slot]);
                        let why =
                            format!("its agent ended {EARLY_EXITS} times at start ({why}; see {})", log.display());
                        return self.node_lost(node, &why);
                    }
                }
                self.journal_lost_attempt(slot, &why)?;
                if !self.interrupted {
                    if !self.reconnecting.contains(&node) {
                        let name = self.node_name(node);
                        self.progress.line(&format!("connection to node {name} lost ({why}): reconnecting"));
                    }
                    self.reconnect(node);
                }
                Ok(Some(Event::SlotDown { slot: slot as u32, now }))
            }
            Incoming::NodeBack { node } => {
                self.reconnecting.remove(&node);
                self.progress.line(&format!("node {} is back", self.node_name(node)));
                // Its sessions open again; each re-sends what finished while it was away
                // before anything new starts.
                for slot in 0..self.sessions.len() {
                    if self.node_of(slot) == node {
                        self.open(slot);
                    }
                }
                Ok(None)
            }
            Incoming::NodeUnreachable { node, error } => {
                self.reconnecting.remove(&node);
                self.node_lost(node, &error.to_string())
            }
            Incoming::Agent { slot, message } => self.agent_message(slot, message, now),
        }
    }

    /// A session could not be opened: a refusal loses the node, anything else is tried
    /// again with backoff.
    fn open_failed(&mut self, slot: usize, error: &ConnectError) -> Result<Option<Event>> {
        self.sessions[slot] = SlotSession::Closed;
        self.awaiting_outbox.remove(&slot);
        let node = self.node_of(slot);
        if error.is_final() {
            return self.node_lost(node, &error.to_string());
        }
        if !self.reconnecting.contains(&node) {
            self.progress.line(&format!("node {} unreachable ({error}): trying again", self.node_name(node)));
        }
        self.reconnect(node);
        Ok(None)
    }

    /// The session a slot's agent said `outbox_resent` on: it is up to date.
    pub(super) fn outbox_resent(&mut self, slot: usize) {
        self.awaiting_outbox.remove(&slot);
        self.early_exits[slot] = 0;
    }

    /// The agent on `slot` speaks another protocol: nothing can be done with it.
    pub(super) fn refuse_node(&mut self, slot: usize, why: &str) -> Result<Option<Event>> {
        let node = self.node_of(slot);
        self.node_lost(node, why)
    }
}
