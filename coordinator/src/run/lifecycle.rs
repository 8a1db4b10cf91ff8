//! The life of agent sessions, as the dispatcher sees it: opening one per slot (in a
//! thread), a session's stream ending, reconnecting a node, losing it, and the waits that
//! bound each of these (an outbox being re-sent, a question being answered, a node that
//! keeps dropping without getting anything done).

use anyhow::Result;

use super::connect::{ConnectError, Incoming, OpenRequest, Session};
use super::dispatcher::{Dispatcher, SlotSession};
use super::journal::Record;
use crate::scheduler::Event;

/// The longest a node's agents may take to re-send their outboxes, after a session opens
/// or drops, before work starts without them (one that never does must not stall the
/// whole cluster).
pub const OUTBOX_WAIT_S: f64 = 30.0;

/// The longest an agent with a question (probe, prepare) outstanding may stay silent
/// before its node is given up (a real agent answers in well under a second; one that
/// never does must not stall the run).
pub const ANSWER_WAIT_S: f64 = 120.0;

/// Reconnects of a node in a row with no answer, result or failure from it in between
/// (an agent that crashes at start, or on every probe) before the node is given up.
pub const STALLED_RECONNECTS: u32 = 3;

impl Dispatcher<'_> {
    /// Starts opening a session for `slot` in a thread; it reports `Opened`.
    pub(super) fn open(&mut self, slot: usize) {
        let node = self.node_of(slot);
        if self.state.is_lost(node) || self.interrupted || !matches!(self.sessions[slot], SlotSession::Closed) {
            return;
        }
        self.generations += 1;
        let generation = self.generations;
        self.sessions[slot] = SlotSession::Opening { generation, queued: Vec::new(), ended: None };
        // Since the first of open, drop, reopen: a node's wait is bounded as a whole.
        let now = self.now();
        self.awaiting_outbox.entry(slot).or_insert(now);
        let gpu = match self.state.slots[slot].kind {
            crate::scheduler::SlotKind::Gpu(g) => Some(g),
            crate::scheduler::SlotKind::Cpu => None,
        };
        let request = OpenRequest {
            slot,
            gpu,
            generation,
            hello: llem_common::protocol::Hello::new("coordinator")
                .for_run(self.run.id.clone())
                .with_heartbeat(self.heartbeat_s),
            log: self.run.agent_log(&self.slot_names[slot]),
            events: self.tx.clone(),
        };
        let connector = std::sync::Arc::clone(&self.connectors[node as usize]);
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

    /// A thread finished opening a session for `slot`.
    pub(super) fn opened(
        &mut self,
        slot: usize,
        generation: u64,
        outcome: Result<Box<dyn Session>, ConnectError>,
        now: f64,
    ) -> Result<Option<Event>> {
        let SlotSession::Opening { generation: g, .. } = &self.sessions[slot] else {
            if let Ok(session) = outcome {
                session.kill();
            }
            return Ok(None);
        };
        if *g != generation {
            return Ok(None);
        }
        let SlotSession::Opening { queued, ended, .. } =
            std::mem::replace(&mut self.sessions[slot], SlotSession::Closed)
        else {
            return Ok(None);
        };
        let mut session = match outcome {
            Ok(session) if !self.interrupted => session,
            Ok(session) => {
                session.kill();
                return Ok(None);
            }
            Err(e) => return self.open_failed(slot, &e),
        };
        if let Some(why) = ended {
            // Its stream ended before we knew it was open: it is gone.
            session.kill();
            return self.session_ended(slot, &why, now);
        }
        for message in &queued {
            if let Err(e) = session.send(message) {
                tracing::warn!("cannot send to {}: {e:#}", self.slot_names[slot]);
            }
        }
        self.sessions[slot] = SlotSession::Open { session, generation };
        Ok(Some(Event::SlotUp { slot: slot as u32, now }))
    }

    /// A session's stream ended.
    pub(super) fn gone(&mut self, slot: usize, generation: u64, why: &str, now: f64) -> Result<Option<Event>> {
        match &mut self.sessions[slot] {
            SlotSession::Open { generation: g, .. } if *g == generation => {
                self.sessions[slot] = SlotSession::Closed;
                self.session_ended(slot, why, now)
            }
            // Before its open was reported: remembered until it is.
            SlotSession::Opening { generation: g, ended, .. } if *g == generation => {
                *ended = Some(why.to_owned());
                Ok(None)
            }
            // A report about a session that was already replaced changes nothing.
            _ => Ok(None),
        }
    }

    /// A slot lost its session: its attempt is lost, and its node is tried again. Until
    /// the node's agents have re-sent their outboxes nothing starts: a result that
    /// finished while the connection was down is on its way, and must not be run again.
    fn session_ended(&mut self, slot: usize, why: &str, now: f64) -> Result<Option<Event>> {
        self.inbox.forget_slot(slot);
        // Its questions are asked again on another session.
        self.questions.remove(&slot);
        let node = self.node_of(slot);
        if self.interrupted || self.state.is_lost(node) {
            self.awaiting_outbox.remove(&slot);
            self.journal_lost_attempt(slot, why)?;
            return Ok(Some(Event::SlotDown { slot: slot as u32, now }));
        }
        if !self.reconnecting.contains(&node) {
            if self.stalled(node) {
                // The scheduler hears of the slot with its node.
                return self.give_up_stalled(node, why);
            }
            let name = self.node_name(node);
            self.progress.line(&format!("connection to node {name} lost ({why}): reconnecting"));
        }
        self.awaiting_outbox.entry(slot).or_insert(now);
        self.journal_lost_attempt(slot, why)?;
        self.reconnect(node);
        Ok(Some(Event::SlotDown { slot: slot as u32, now }))
    }

    /// Counts a reconnect of `node`: whether it has dropped too often in a row without
    /// getting anything done.
    fn stalled(&mut self, node: u16) -> bool {
        let n = node as usize;
        if std::mem::take(&mut self.progressed[n]) {
            self.stalls[n] = 0;
        }
        self.stalls[n] += 1;
        self.stalls[n] > STALLED_RECONNECTS
    }

    fn give_up_stalled(&mut self, node: u16, why: &str) -> Result<Option<Event>> {
        let logs = self.run.path.join("agents");
        let why = format!(
            "its sessions ended {STALLED_RECONNECTS} times in a row before it answered, finished or failed anything (last: {why}; see {})",
            logs.display()
        );
        self.node_lost(node, &why)
    }

    /// Tries a node again in a thread (once at a time); it reports back.
    fn reconnect(&mut self, node: u16) {
        if self.interrupted || self.state.is_lost(node) || !self.reconnecting.insert(node) {
            return;
        }
        let n = node as usize;
        let connector = std::sync::Arc::clone(&self.connectors[n]);
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(match connector.reconnect() {
                Ok(()) => Incoming::NodeBack { node },
                Err(error) => Incoming::NodeUnreachable { node, error },
            });
        });
    }

    /// The node answers again: its sessions open again; each re-sends what finished while
    /// it was away before anything new starts.
    pub(super) fn node_back(&mut self, node: u16) {
        self.reconnecting.remove(&node);
        self.progress.line(&format!("node {} is back", self.node_name(node)));
        for slot in 0..self.sessions.len() {
            if self.node_of(slot) == node {
                self.open(slot);
            }
        }
    }

    /// A session could not be opened: a refusal loses the node, anything else is tried
    /// again with backoff.
    fn open_failed(&mut self, slot: usize, error: &ConnectError) -> Result<Option<Event>> {
        let node = self.node_of(slot);
        if let ConnectError::Ended(why) = error {
            return self.resources_ended(why);
        }
        if error.is_final() {
            return self.node_lost(node, &error.to_string());
        }
        if !self.reconnecting.contains(&node) {
            if self.stalled(node) {
                return self.give_up_stalled(node, &error.to_string());
            }
            self.progress.line(&format!("node {} unreachable ({error}): trying again", self.node_name(node)));
        }
        self.reconnect(node);
        Ok(None)
    }

    /// A node is lost for the rest of the run: its sessions end, and its jobs go to
    /// equivalent nodes or fail.
    pub(super) fn node_lost(&mut self, node: u16, why: &str) -> Result<Option<Event>> {
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
                self.questions.remove(&slot);
                self.inbox.forget_slot(slot);
            }
        }
        self.progress.line(&format!("node {} lost: {why}", self.node_name(node)));
        Ok(Some(Event::NodeLost { node, now: self.now() }))
    }

    /// What the run ran on is gone for good (its Slurm allocation ended): every running
    /// attempt is lost, nothing more starts, and the run ends saying why. No job is failed
    /// for it: `llem resume` runs what is left on new resources.
    pub(super) fn resources_ended(&mut self, why: &str) -> Result<Option<Event>> {
        if self.stopped.is_some() {
            return Ok(None);
        }
        self.progress.line(&format!("the run stops: {why}"));
        self.record(&Record::Stopped { why: why.to_owned(), at: super::dispatcher::at() })?;
        self.stopped = Some(why.to_owned());
        // Journaled as lost (and retryable) before the scheduler cancels what is left.
        for slot in 0..self.sessions.len() {
            self.journal_lost_attempt(slot, why)?;
        }
        self.interrupted = true;
        self.feed(Event::Cancel)?;
        let now = self.now();
        for slot in 0..self.sessions.len() {
            if let SlotSession::Open { session, .. } = std::mem::replace(&mut self.sessions[slot], SlotSession::Closed)
            {
                session.kill();
            }
            self.awaiting_outbox.remove(&slot);
            self.questions.remove(&slot);
            self.inbox.forget_slot(slot);
            self.feed(Event::SlotDown { slot: slot as u32, now })?;
        }
        Ok(Some(Event::Tick { now }))
    }

    /// The agent on `slot` said `outbox_resent`: it is up to date.
    pub(super) fn outbox_resent(&mut self, slot: usize) {
        self.awaiting_outbox.remove(&slot);
    }

    /// The node of `slot` answered, finished or failed something: it is not stalled.
    pub(super) fn progressed(&mut self, slot: usize) {
        let node = self.node_of(slot) as usize;
        self.progressed[node] = true;
        self.stalls[node] = 0;
    }

    /// A question went to a slot's agent.
    pub(super) fn asked(&mut self, slot: usize) {
        let now = self.now();
        let (open, since) = self.questions.entry(slot).or_insert((0, now));
        if *open == 0 {
            *since = now;
        }
        *open += 1;
    }

    /// A slot's agent answered a question.
    pub(super) fn answered(&mut self, slot: usize) {
        if let Some((open, _)) = self.questions.get_mut(&slot) {
            *open = open.saturating_sub(1);
        }
        self.progressed(slot);
    }

    /// Anything from a slot's agent shows it alive (a large outbox re-sent before it
    /// reads the question takes a while).
    pub(super) fn heard_from(&mut self, slot: usize, now: f64) {
        if let Some((_, since)) = self.questions.get_mut(&slot) {
            *since = now;
        }
    }

    /// Waits that ran out: outboxes no longer waited for, nodes whose agent stayed silent
    /// with a question (lost: their events are returned).
    pub(super) fn expired_waits(&mut self) -> Result<Vec<Event>> {
        let now = self.now();
        let slow: Vec<usize> =
            self.awaiting_outbox.iter().filter(|(_, &since)| now - since >= OUTBOX_WAIT_S).map(|(&s, _)| s).collect();
        for slot in slow {
            let text = format!(
                "the agent on {} has not re-sent its outbox after {OUTBOX_WAIT_S} s: not waiting for it",
                self.slot_names[slot]
            );
            self.progress.line(&text);
            self.awaiting_outbox.remove(&slot);
        }
        let silent: Vec<usize> = self
            .questions
            .iter()
            .filter(|(_, &(open, since))| open > 0 && now - since >= ANSWER_WAIT_S)
            .map(|(&s, _)| s)
            .collect();
        let mut lost = Vec::new();
        for slot in silent {
            let why = format!("its agent on {} did not answer within {ANSWER_WAIT_S} s", self.slot_names[slot]);
            lost.extend(self.node_lost(self.node_of(slot), &why)?);
        }
        Ok(lost)
    }

    /// When the first wait runs out.
    pub(super) fn next_deadline(&self) -> Option<f64> {
        let outboxes = self.awaiting_outbox.values().map(|since| since + OUTBOX_WAIT_S);
        let answers = self.questions.values().filter(|(open, _)| *open > 0).map(|(_, since)| since + ANSWER_WAIT_S);
        outboxes.chain(answers).reduce(f64::min)
    }
}
