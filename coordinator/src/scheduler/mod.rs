//! The scheduler: a pure state machine. Events in (a session is up, a node was probed, a
//! model prepared, an attempt finished or failed, time passed, cancel), effects out
//! (probe a node, prepare a model, dispatch an attempt, cancel one, skip or fail a job,
//! wake me at t). No I/O and no clock: time arrives inside events, so every rule is
//! tested by feeding events (property tests in `tests.rs`).
//!
//! Rules:
//! * a slot takes work only while its agent session is up (`SlotUp` … `SlotDown`);
//! * a node is probed (once, on any of its up slots) before anything else runs there,
//!   then each model its pending jobs need is prepared there (once); a job runs on a node
//!   only once its model is ready there, and a model that is unavailable on every node a
//!   job may use fails the job (`Unservable`);
//! * one attempt per device slot at a time; a job runs only on a slot of an eligible node
//!   with the device it asks for; a job of `n` GPUs takes `n` free GPU slots of one node
//!   at once, all or none (it never holds some while waiting for others); while it waits
//!   it reserves the free GPU slots of its best node, so the jobs after it cannot starve
//!   it by taking each slot as it frees;
//! * a job starts only after its prerequisites (monotone edges) ended; if one failed for
//!   lack of memory (or was skipped for it), the job is skipped rather than run;
//! * a job no live slot can serve fails at once (a sweep always finishes);
//! * jobs start in execution order where they can (a blocked job does not block others);
//! * `gap_s` idle seconds between attempts on a slot, `cycle_gap_s` when the cycle changes;
//! * **the one retry rule** ([`State::after_failure`]): a failure is retried, with a new
//!   attempt number, when its [`FailureKind`] may pass on retry and fewer than `retries`
//!   retries were used, unless the run is being cancelled;
//! * after `Cancel`, nothing new starts and every running attempt is cancelled;
//! * a slot whose session dropped (`SlotDown`) loses its running attempt (retried) and
//!   takes nothing new until it is up again; its jobs still wait for it. A node that
//!   stays unreachable is `NodeLost`: its jobs go to equivalent nodes or fail.

use llem_common::failure::FailureKind;

mod placing;
#[cfg(test)]
mod tests;

/// What a job needs from a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Cpu,
    AnyGpu,
    Gpu(u32),
    /// Several GPUs of one node at once (tensor parallelism): any `n` of them.
    Gpus(u32),
}

impl Need {
    /// How many slots the job holds while it runs.
    pub fn slots(self) -> usize {
        match self {
            Need::Gpus(n) => n as usize,
            _ => 1,
        }
    }
}

/// A device that runs one attempt at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Cpu,
    Gpu(u32),
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub node: u16,
    pub kind: SlotKind,
    busy: Option<u32>,
    /// Busy with an attempt that is no longer needed (its job finished by an earlier
    /// attempt, delivered late): the slot stays busy until that attempt reports, or the
    /// agent would be sent a new job while it is still stopping the old one.
    draining: Option<(u32, u32)>,
    /// No agent session (not yet connected, or dropped and reconnecting).
    down: bool,
    ready_at: f64,
    last_cycle: Option<u32>,
}

impl Slot {
    /// A slot whose session is not up yet (`SlotUp` brings it up).
    pub fn new(node: u16, kind: SlotKind) -> Self {
        Slot { node, kind, busy: None, draining: None, down: true, ready_at: 0.0, last_cycle: None }
    }

    fn fits(&self, need: Need) -> bool {
        matches!((need, self.kind), (Need::Cpu, SlotKind::Cpu) | (Need::AnyGpu | Need::Gpus(_), SlotKind::Gpu(_)))
            || matches!((need, self.kind), (Need::Gpu(a), SlotKind::Gpu(b)) if a == b)
    }
}

/// A job as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct JobInput {
    pub need: Need,
    pub nodes: Vec<u16>,
    pub cycle: u32,
    /// Jobs that must succeed first (indices).
    pub after: Vec<u32>,
    /// The model that must be prepared on a node before the job runs there (`None`: the
    /// engine reads no model files, e.g. `synthetic`).
    pub model: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running {
        attempt: u32,
        slot: u32,
    },
    Succeeded {
        attempt: u32,
    },
    Failed {
        attempt: u32,
        kind: FailureKind,
    },
    /// Not run because a prerequisite failed for lack of memory.
    Skipped {
        because: u32,
    },
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running { .. })
    }
}

/// Where a node's probe, or one model's preparation on a node, stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Unknown,
    /// Asked on this slot; an answer is due.
    Asked {
        slot: u32,
    },
    Ready,
    Unavailable,
}

/// What becomes of a failed attempt ([`State::after_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The job runs again, as the next attempt.
    Retry,
    /// The job has failed for good (resume keeps it unless `--retry-failed`).
    Final,
    /// Stopped by a cancellation: not a failure of the job; resume runs it again.
    Cancelled,
}

/// Why a pending job can run nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unservable {
    /// Every node it may use was lost (or has no slot for its device).
    NoLiveNode,
    /// Its model is unavailable on every live node it may use.
    ModelUnavailable,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Evaluate what can start now.
    Tick {
        now: f64,
    },
    /// A slot's agent session is up: it can take work.
    SlotUp {
        slot: u32,
        now: f64,
    },
    /// A slot's agent session dropped: its running attempt is lost (retried), and the slot
    /// takes nothing until it is up again.
    SlotDown {
        slot: u32,
        now: f64,
    },
    /// The node stays unreachable: its running attempts are lost (retried elsewhere), and
    /// it takes nothing for the rest of the run.
    NodeLost {
        node: u16,
        now: f64,
    },
    /// The node's probe report arrived.
    Probed {
        node: u16,
        now: f64,
    },
    /// A model was checked on a node: `ok` when present and readable.
    Prepared {
        node: u16,
        model: u32,
        ok: bool,
        now: f64,
    },
    Succeeded {
        job: u32,
        attempt: u32,
        now: f64,
    },
    Failed {
        job: u32,
        attempt: u32,
        kind: FailureKind,
        now: f64,
    },
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Ask the node's agent (on this slot's session) to describe the node.
    Probe {
        node: u16,
        slot: u32,
    },
    /// Ask the node's agent (on this slot's session) to check a model.
    Prepare {
        node: u16,
        model: u32,
        slot: u32,
    },
    Dispatch {
        job: u32,
        attempt: u32,
        slot: u32,
    },
    CancelAttempt {
        job: u32,
        attempt: u32,
    },
    Skip {
        job: u32,
        because: u32,
    },
    /// A pending job can run nowhere: it is failed.
    Unservable {
        job: u32,
        why: Unservable,
    },
    /// Nothing can start before `at` (a gap is running): send a Tick then.
    WakeAt {
        at: f64,
    },
    /// Every job has reached a terminal state.
    AllDone,
}

#[derive(Debug, Clone)]
pub struct State {
    jobs: Vec<JobInput>,
    pub states: Vec<JobState>,
    /// Attempts started per job (attempt numbers count from 1).
    pub attempts: Vec<u32>,
    /// Failures per job that count against `retries` (cancellations do not).
    failures: Vec<u32>,
    pub slots: Vec<Slot>,
    lost_nodes: Vec<u16>,
    /// Per node: its probe.
    probes: Vec<Readiness>,
    /// Per node: each model's preparation there, by model index.
    models: Vec<Vec<Readiness>>,
    retries: u32,
    gap_s: f64,
    cycle_gap_s: f64,
    cancelled: bool,
    /// Which jobs some live slot can serve must be worked out again (at the start, when a
    /// node is lost, when a model turns out unavailable).
    servability_changed: bool,
    /// Whether a probe or a preparation may be due (a session came or went, an answer
    /// arrived): otherwise working it out would scan every job on every event.
    questions_due: bool,
    /// Start nothing (results may still be on their way from outboxes).
    held: bool,
    announced_done: bool,
    /// Every job before this index has ended (an ended job never runs again): the scans
    /// for what to start, and whether all is done, begin here. Scanning from the first
    /// job on every event made a run's cost grow with the square of its jobs.
    first_open: usize,
    /// Per slot: the last job (in execution order) that could ever run on it, if any. A
    /// free slot no job from [`State::first_open`] on could use (a node's CPU slot in a
    /// sweep of GPU jobs) is not counted as idle, or the scan for work would go over every
    /// job on every event.
    last_job_for_slot: Vec<Option<usize>>,
    /// A job failed or was skipped since the last look for jobs its failure skips:
    /// otherwise that look would scan every job on every event.
    skips_due: bool,
}

impl State {
    /// `jobs` in execution order; prerequisites must come from the plan's acyclic graph.
    /// Every slot starts down: `SlotUp` brings each up once its session is.
    pub fn new(jobs: Vec<JobInput>, slots: Vec<Slot>, retries: u32, gap_s: f64, cycle_gap_s: f64) -> Self {
        let n = jobs.len();
        let nodes = slots
            .iter()
            .map(|s| s.node as usize + 1)
            .chain(jobs.iter().flat_map(|j| j.nodes.iter().map(|&n| n as usize + 1)))
            .max()
            .unwrap_or(0);
        let n_models = jobs.iter().filter_map(|j| j.model).map(|m| m as usize + 1).max().unwrap_or(0);
        let last_job_for_slot = slots
            .iter()
            .map(|slot| jobs.iter().rposition(|j| slot.fits(j.need) && j.nodes.contains(&slot.node)))
            .collect();
        State {
            jobs,
            states: vec![JobState::Pending; n],
            attempts: vec![0; n],
            failures: vec![0; n],
            slots,
            lost_nodes: Vec::new(),
            probes: vec![Readiness::Unknown; nodes],
            models: vec![vec![Readiness::Unknown; n_models]; nodes],
            retries,
            gap_s,
            cycle_gap_s,
            cancelled: false,
            servability_changed: true,
            questions_due: true,
            held: false,
            announced_done: false,
            first_open: 0,
            last_job_for_slot,
            skips_due: true,
        }
    }

    /// Moves [`State::first_open`] past the jobs that have ended.
    fn advance_first_open(&mut self) -> usize {
        while self.states.get(self.first_open).is_some_and(|s| s.is_terminal()) {
            self.first_open += 1;
        }
        self.first_open
    }

    /// Marks a job finished by an earlier attempt (resume, or an outbox delivery): it is
    /// never run again, and a slot it occupies is freed.
    pub fn mark_done(&mut self, job: u32, attempt: u32) {
        if let JobState::Running { slot, attempt: running } = self.states[job as usize] {
            // The newer attempt still runs until it reports (it is being cancelled).
            self.slots[slot as usize].draining = Some((job, running));
        }
        self.states[job as usize] = JobState::Succeeded { attempt };
        self.attempts[job as usize] = self.attempts[job as usize].max(attempt);
    }

    /// Failures a job had in earlier runs (resume): they count against `retries`.
    pub fn set_failures(&mut self, job: u32, failures: u32) {
        self.failures[job as usize] = failures;
    }

    /// Marks jobs that failed for good in an earlier run (resume without --retry-failed).
    pub fn mark_failed(&mut self, job: u32, attempt: u32, kind: FailureKind) {
        self.states[job as usize] = JobState::Failed { attempt, kind };
        self.skips_due = true;
        self.attempts[job as usize] = self.attempts[job as usize].max(attempt);
    }

    /// While held, no job starts (probes and preparations still do): the dispatcher holds
    /// the scheduler until every agent has re-sent its outbox, so a job whose result is
    /// arriving does not run again.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Whether the node was lost for the rest of the run.
    pub fn is_lost(&self, node: u16) -> bool {
        self.lost_nodes.contains(&node)
    }

    /// Whether a pending or running job that reads model files (candle) wants a GPU of
    /// this node: those are the jobs an agent without CUDA cannot run.
    pub fn gpu_jobs_read_models(&self, node: u16) -> bool {
        self.jobs
            .iter()
            .zip(&self.states)
            .any(|(j, s)| j.model.is_some() && j.need != Need::Cpu && j.nodes.contains(&node) && !s.is_terminal())
    }

    /// Whether the run is being cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// **The retry rule**, the one place it is written: what becomes of a job whose
    /// running attempt failed for `kind`. A failure that may pass on retry is retried while
    /// the job has had no more than `retries` failures (this one included); during a
    /// cancellation it counts as cancelled (resume runs it again); a cancellation is never
    /// a failure of the job, and uses up no retry.
    pub fn after_failure(&self, job: u32, kind: FailureKind) -> AfterFailure {
        let failures = self.failures[job as usize] + 1;
        match (kind, kind.may_pass_on_retry()) {
            (FailureKind::Cancelled, _) | (_, true) if self.cancelled => AfterFailure::Cancelled,
            (FailureKind::Cancelled, _) => AfterFailure::Cancelled,
            (_, true) if failures <= self.retries => AfterFailure::Retry,
            _ => AfterFailure::Final,
        }
    }

    pub fn running(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.states.iter().enumerate().filter_map(|(j, s)| match s {
            JobState::Running { attempt, .. } => Some((j as u32, *attempt)),
            _ => None,
        })
    }

    /// Frees the slot an attempt ran on; true when it was the job's running attempt (a
    /// redundant one that ends frees its slot, and changes nothing else).
    fn free_slot(&mut self, job: usize, attempt: u32, now: f64) -> bool {
        let (slot, running) = match self.states[job] {
            JobState::Running { attempt: a, slot } if a == attempt => (Some(slot as usize), true),
            _ => (self.slots.iter().position(|s| s.draining == Some((job as u32, attempt))), false),
        };
        if let Some(slot) = slot {
            let s = &mut self.slots[slot];
            s.busy = None;
            s.draining = None;
            s.ready_at = now + self.gap_s;
            // The other GPUs of a several-GPU job are freed with it.
            let node = self.slots[slot].node;
            for other in self.slots.iter_mut().filter(|o| o.node == node && o.busy == Some(job as u32)) {
                other.busy = None;
                other.ready_at = now + self.gap_s;
            }
        }
        running
    }

    /// The slots a running job holds: its own first, then the other GPUs it was given.
    pub fn held_slots(&self, job: u32) -> Vec<u32> {
        let JobState::Running { slot, .. } = self.states[job as usize] else { return Vec::new() };
        let node = self.slots[slot as usize].node;
        let mut held = vec![slot];
        held.extend(
            (0..self.slots.len() as u32).filter(|&i| {
                i != slot && self.slots[i as usize].node == node && self.slots[i as usize].busy == Some(job)
            }),
        );
        held
    }

    fn fail_attempt(&mut self, job: usize, attempt: u32, kind: FailureKind) {
        let after = self.after_failure(job as u32, kind);
        if after != AfterFailure::Cancelled {
            self.failures[job] += 1;
        }
        self.states[job] = match after {
            AfterFailure::Retry => JobState::Pending,
            AfterFailure::Final => JobState::Failed { attempt, kind },
            AfterFailure::Cancelled => JobState::Cancelled,
        };
        self.skips_due |= after == AfterFailure::Final;
    }

    fn live(&self, slot: &Slot) -> bool {
        !slot.down && !self.lost_nodes.contains(&slot.node)
    }

    /// The attempt running on a slot is lost with its session.
    fn lose_attempt_on(&mut self, slot: usize, now: f64) {
        if let Some((job, _)) = self.slots[slot].draining.take() {
            // The finished job's other GPUs (a several-GPU job) are free with it.
            let node = self.slots[slot].node;
            for s in self.slots.iter_mut().filter(|s| s.node == node && s.busy == Some(job)) {
                s.busy = None;
            }
            return;
        }
        if let Some(j) = self.slots[slot].busy {
            // Only the session the job runs on carries it; another GPU it holds losing its
            // session changes nothing for it.
            if let JobState::Running { attempt, slot: primary } = self.states[j as usize] {
                if primary as usize == slot {
                    self.free_slot(j as usize, attempt, now);
                    self.fail_attempt(j as usize, attempt, FailureKind::LostConnection);
                }
            }
        }
    }

    /// Questions asked on a slot whose session ended are asked again elsewhere.
    fn forget_questions_on(&mut self, slot: u32) {
        let asked = |r: &Readiness| matches!(r, Readiness::Asked { slot: s } if *s == slot);
        for r in self.probes.iter_mut().chain(self.models.iter_mut().flatten()) {
            if asked(r) {
                *r = Readiness::Unknown;
            }
        }
    }

    /// Probes, then preparations, on nodes with an up slot.
    fn ask(&mut self, effects: &mut Vec<Effect>) {
        if !std::mem::take(&mut self.questions_due) {
            return;
        }
        for node in 0..self.probes.len() {
            let Some(slot) = self.slots.iter().position(|s| s.node as usize == node && self.live(s)) else { continue };
            match self.probes[node] {
                Readiness::Unknown => {
                    self.probes[node] = Readiness::Asked { slot: slot as u32 };
                    effects.push(Effect::Probe { node: node as u16, slot: slot as u32 });
                    continue;
                }
                Readiness::Ready => {}
                _ => continue,
            }
            let mut needed: Vec<u32> = Vec::new();
            for (j, job) in self.jobs.iter().enumerate() {
                // Running jobs too: one that fails runs again, perhaps here.
                let live = matches!(self.states[j], JobState::Pending | JobState::Running { .. });
                if let (Some(m), true) = (job.model, live) {
                    if job.nodes.contains(&(node as u16)) && !needed.contains(&m) {
                        needed.push(m);
                    }
                }
            }
            for m in needed {
                if self.models[node][m as usize] == Readiness::Unknown {
                    self.models[node][m as usize] = Readiness::Asked { slot: slot as u32 };
                    effects.push(Effect::Prepare { node: node as u16, model: m, slot: slot as u32 });
                }
            }
        }
    }
}

/// Feeds one event; returns what to do.
pub fn on_event(state: &mut State, event: Event) -> Vec<Effect> {
    let mut effects = Vec::new();
    let now = match event {
        Event::Tick { now } => now,
        Event::SlotUp { slot, now } => {
            state.slots[slot as usize].down = false;
            state.questions_due = true;
            now
        }
        Event::SlotDown { slot, now } => {
            state.slots[slot as usize].down = true;
            state.questions_due = true;
            state.lose_attempt_on(slot as usize, now);
            state.forget_questions_on(slot);
            now
        }
        Event::NodeLost { node, now } => {
            state.lost_nodes.push(node);
            state.servability_changed = true;
            state.questions_due = true;
            for slot in 0..state.slots.len() {
                if state.slots[slot].node == node {
                    state.lose_attempt_on(slot, now);
                    state.forget_questions_on(slot as u32);
                }
            }
            now
        }
        Event::Probed { node, now } => {
            if let Some(p) = state.probes.get_mut(node as usize) {
                *p = Readiness::Ready;
            }
            state.questions_due = true;
            now
        }
        Event::Prepared { node, model, ok, now } => {
            if let Some(m) = state.models.get_mut(node as usize).and_then(|m| m.get_mut(model as usize)) {
                *m = if ok { Readiness::Ready } else { Readiness::Unavailable };
            }
            state.servability_changed |= !ok;
            state.questions_due = true;
            now
        }
        Event::Succeeded { job, attempt, now } => {
            if state.free_slot(job as usize, attempt, now) {
                state.states[job as usize] = JobState::Succeeded { attempt };
            }
            now
        }
        Event::Failed { job, attempt, kind, now } => {
            if state.free_slot(job as usize, attempt, now) {
                state.fail_attempt(job as usize, attempt, kind);
            }
            now
        }
        Event::Cancel => {
            state.cancelled = true;
            let running: Vec<(u32, u32)> = state.running().collect();
            for (job, attempt) in running {
                effects.push(Effect::CancelAttempt { job, attempt });
            }
            for s in &mut state.states {
                if *s == JobState::Pending {
                    *s = JobState::Cancelled;
                }
            }
            f64::NEG_INFINITY
        }
    };
    if now.is_finite() {
        state.schedule(now, &mut effects);
    }
    state.fail_unservable(now, &mut effects);
    if !state.announced_done && state.advance_first_open() == state.states.len() {
        state.announced_done = true;
        effects.push(Effect::AllDone);
    }
    effects
}
