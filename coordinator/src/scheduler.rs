//! The scheduler: a pure state machine. Events in (a node is ready, an attempt finished
//! or failed, time passed, cancel), effects out (dispatch an attempt, cancel one, skip a
//! job, wake me at t). No I/O and no clock: time arrives inside events, so every rule is
//! tested by feeding events (property tests below).
//!
//! Rules:
//! * one attempt per device slot at a time; a job runs only on a slot of an eligible node
//!   with the device it asks for;
//! * a job starts only after its prerequisites (monotone edges) ended; if one failed for
//!   lack of memory (or was skipped for it), the job is skipped rather than run;
//! * a job no live slot can serve fails at once (a sweep always finishes);
//! * jobs start in execution order where they can (a blocked job does not block others);
//! * `gap_s` idle seconds between attempts on a slot, `cycle_gap_s` when the cycle changes;
//! * a retryable failure is retried up to `retries` times, each time with a new attempt
//!   number (results of two attempts never mix);
//! * after `Cancel`, nothing new starts and every running attempt is cancelled;
//! * a slot whose connection dropped (`SlotDown`) loses its running attempt (retried) and
//!   takes nothing new until its node is back (`NodeUp`); its jobs still wait for it. A
//!   node that stays unreachable is `NodeLost`: its jobs go to equivalent nodes or fail.

/// What a job needs from a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Cpu,
    AnyGpu,
    Gpu(u32),
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
    /// The connection dropped; the dispatcher is reconnecting.
    down: bool,
    ready_at: f64,
    last_cycle: Option<u32>,
}

impl Slot {
    pub fn new(node: u16, kind: SlotKind) -> Self {
        Slot { node, kind, busy: None, down: false, ready_at: 0.0, last_cycle: None }
    }

    fn fits(&self, need: Need) -> bool {
        matches!((need, self.kind), (Need::Cpu, SlotKind::Cpu) | (Need::AnyGpu, SlotKind::Gpu(_)))
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
        out_of_memory: bool,
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Evaluate what can start now.
    Tick {
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
        retryable: bool,
        out_of_memory: bool,
        now: f64,
    },
    /// A slot's agent session dropped: its running attempt is lost (retried), and the slot
    /// takes nothing until `NodeUp`.
    SlotDown {
        slot: u32,
        now: f64,
    },
    /// The node answers again: its down slots take work.
    NodeUp {
        node: u16,
        now: f64,
    },
    /// The node stays unreachable: its running attempts are lost (retried elsewhere), and
    /// it takes nothing for the rest of the run.
    NodeLost {
        node: u16,
        now: f64,
    },
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
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
    pub slots: Vec<Slot>,
    lost_nodes: Vec<u16>,
    retries: u32,
    gap_s: f64,
    cycle_gap_s: f64,
    cancelled: bool,
    /// Which jobs some live slot can serve must be worked out again (at the start, and
    /// when a node is lost).
    servability_changed: bool,
    /// Start nothing (results may still be on their way from outboxes).
    held: bool,
    announced_done: bool,
}

impl State {
    /// `jobs` in execution order; prerequisites must come from the plan's acyclic graph.
    pub fn new(jobs: Vec<JobInput>, slots: Vec<Slot>, retries: u32, gap_s: f64, cycle_gap_s: f64) -> Self {
        let n = jobs.len();
        State {
            jobs,
            states: vec![JobState::Pending; n],
            attempts: vec![0; n],
            slots,
            lost_nodes: Vec::new(),
            retries,
            gap_s,
            cycle_gap_s,
            cancelled: false,
            servability_changed: true,
            held: false,
            announced_done: false,
        }
    }

    /// Marks a job finished by an earlier attempt (resume, or an outbox delivery): it is
    /// never run again, and a slot it occupies is freed.
    pub fn mark_done(&mut self, job: u32, attempt: u32) {
        if let JobState::Running { slot, .. } = self.states[job as usize] {
            self.slots[slot as usize].busy = None;
        }
        self.states[job as usize] = JobState::Succeeded { attempt };
        self.attempts[job as usize] = self.attempts[job as usize].max(attempt);
    }

    /// Marks jobs that failed in an earlier run and are not to be retried.
    pub fn mark_failed(&mut self, job: u32, attempt: u32) {
        self.states[job as usize] = JobState::Failed { attempt, out_of_memory: false };
        self.attempts[job as usize] = self.attempts[job as usize].max(attempt);
    }

    /// While held, nothing starts: the dispatcher holds the scheduler until every agent
    /// has re-sent its outbox, so a job whose result is arriving does not run again.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Whether the node was lost for the rest of the run.
    pub fn is_lost(&self, node: u16) -> bool {
        self.lost_nodes.contains(&node)
    }

    pub fn running(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.states.iter().enumerate().filter_map(|(j, s)| match s {
            JobState::Running { attempt, .. } => Some((j as u32, *attempt)),
            _ => None,
        })
    }

    fn free_slot(&mut self, job: usize, attempt: u32, now: f64) -> bool {
        if let JobState::Running { attempt: a, slot } = self.states[job] {
            if a == attempt {
                let s = &mut self.slots[slot as usize];
                s.busy = None;
                s.ready_at = now + self.gap_s;
                return true;
            }
        }
        false
    }

    fn schedule(&mut self, now: f64, effects: &mut Vec<Effect>) {
        // Skips first: they can unblock nothing, but they end jobs.
        loop {
            let mut changed = false;
            for j in 0..self.jobs.len() {
                if self.states[j] != JobState::Pending {
                    continue;
                }
                let oom = self.jobs[j].after.iter().copied().find(|&p| {
                    matches!(
                        self.states[p as usize],
                        JobState::Failed { out_of_memory: true, .. } | JobState::Skipped { .. }
                    )
                });
                if let Some(p) = oom {
                    self.states[j] = JobState::Skipped { because: p };
                    effects.push(Effect::Skip { job: j as u32, because: p });
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        if self.cancelled || self.held {
            return;
        }
        // Idle slots (gaps included): when there are none, nothing can start, and the scan
        // over every job is skipped (it would cost O(jobs × slots) per event).
        let mut idle =
            self.slots.iter().filter(|s| s.busy.is_none() && !s.down && !self.lost_nodes.contains(&s.node)).count();
        let mut earliest_wake: Option<f64> = None;
        for j in 0..self.jobs.len() {
            if idle == 0 {
                break;
            }
            if self.states[j] != JobState::Pending {
                continue;
            }
            let job = &self.jobs[j];
            let ready = job.after.iter().all(|&p| self.states[p as usize].is_terminal());
            if !ready {
                continue;
            }
            let mut chosen = None;
            for (i, slot) in self.slots.iter().enumerate() {
                if slot.busy.is_some()
                    || slot.down
                    || !slot.fits(job.need)
                    || !job.nodes.contains(&slot.node)
                    || self.lost_nodes.contains(&slot.node)
                {
                    continue;
                }
                let gap = if slot.last_cycle.is_some_and(|c| c != job.cycle) { self.cycle_gap_s } else { 0.0 };
                let at = slot.ready_at + gap;
                if at <= now {
                    chosen = Some(i);
                    break;
                }
                earliest_wake = Some(earliest_wake.map_or(at, |w: f64| w.min(at)));
            }
            if let Some(i) = chosen {
                self.attempts[j] += 1;
                let attempt = self.attempts[j];
                let slot = &mut self.slots[i];
                slot.busy = Some(j as u32);
                slot.last_cycle = Some(job.cycle);
                idle -= 1;
                self.states[j] = JobState::Running { attempt, slot: i as u32 };
                effects.push(Effect::Dispatch { job: j as u32, attempt, slot: i as u32 });
            }
        }
        if let Some(at) = earliest_wake {
            effects.push(Effect::WakeAt { at });
        }
    }

    fn retry_or_fail(&mut self, job: usize, attempt: u32, retryable: bool, out_of_memory: bool) {
        // attempts = 1 + retries at most.
        if retryable && !out_of_memory && attempt <= self.retries {
            self.states[job] = JobState::Pending;
        } else {
            self.states[job] = JobState::Failed { attempt, out_of_memory };
        }
    }
}

/// Feeds one event; returns what to do.
pub fn on_event(state: &mut State, event: Event) -> Vec<Effect> {
    let mut effects = Vec::new();
    let now = match event {
        Event::Tick { now } => now,
        Event::Succeeded { job, attempt, now } => {
            if state.free_slot(job as usize, attempt, now) {
                state.states[job as usize] = JobState::Succeeded { attempt };
            }
            now
        }
        Event::Failed { job, attempt, retryable, out_of_memory, now } => {
            if state.free_slot(job as usize, attempt, now) {
                state.retry_or_fail(job as usize, attempt, retryable, out_of_memory);
            }
            now
        }
        Event::SlotDown { slot, now } => {
            state.slots[slot as usize].down = true;
            if let Some(j) = state.slots[slot as usize].busy {
                if let JobState::Running { attempt, .. } = state.states[j as usize] {
                    state.free_slot(j as usize, attempt, now);
                    state.retry_or_fail(j as usize, attempt, true, false);
                }
            }
            now
        }
        Event::NodeUp { node, now } => {
            for slot in state.slots.iter_mut().filter(|s| s.node == node) {
                slot.down = false;
            }
            now
        }
        Event::NodeLost { node, now } => {
            state.lost_nodes.push(node);
            state.servability_changed = true;
            let lost: Vec<(usize, u32)> = state
                .states
                .iter()
                .enumerate()
                .filter_map(|(j, s)| match s {
                    JobState::Running { attempt, slot } if state.slots[*slot as usize].node == node => {
                        Some((j, *attempt))
                    }
                    _ => None,
                })
                .collect();
            for (j, attempt) in lost {
                state.free_slot(j, attempt, now);
                state.retry_or_fail(j, attempt, true, false);
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
    // Pending jobs no live slot can serve end as failed, so the sweep can finish.
    if !state.cancelled && state.servability_changed {
        state.servability_changed = false;
        let mut ended = false;
        for j in 0..state.jobs.len() {
            let job = &state.jobs[j];
            let servable = state
                .slots
                .iter()
                .any(|sl| sl.fits(job.need) && job.nodes.contains(&sl.node) && !state.lost_nodes.contains(&sl.node));
            if state.states[j] == JobState::Pending && !servable {
                state.states[j] = JobState::Failed { attempt: state.attempts[j], out_of_memory: false };
                ended = true;
            }
        }
        if ended && now.is_finite() {
            state.schedule(now, &mut effects);
        }
    }
    if !state.announced_done && state.states.iter().all(|s| s.is_terminal()) {
        state.announced_done = true;
        effects.push(Effect::AllDone);
    }
    effects
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cpu_job(cycle: u32, after: Vec<u32>) -> JobInput {
        JobInput { need: Need::Cpu, nodes: vec![0], cycle, after }
    }

    fn dispatched(effects: &[Effect]) -> Vec<(u32, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch { job, attempt, .. } => Some((*job, *attempt)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_job_per_slot_in_order() {
        let mut s = State::new(
            vec![cpu_job(1, vec![]), cpu_job(1, vec![]), cpu_job(2, vec![])],
            vec![Slot::new(0, SlotKind::Cpu)],
            0,
            0.0,
            0.0,
        );
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })), vec![(0, 1)]);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 1.0 })), vec![]);
        assert_eq!(dispatched(&on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 2.0 })), vec![(1, 1)]);
        let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 3.0 });
        assert_eq!(dispatched(&e), vec![(2, 1)]);
        let e = on_event(&mut s, Event::Succeeded { job: 2, attempt: 1, now: 4.0 });
        assert!(e.contains(&Effect::AllDone));
    }

    #[test]
    fn gaps_wait_and_wake() {
        let mut s = State::new(
            vec![cpu_job(1, vec![]), cpu_job(1, vec![]), cpu_job(2, vec![])],
            vec![Slot::new(0, SlotKind::Cpu)],
            0,
            5.0,
            30.0,
        );
        on_event(&mut s, Event::Tick { now: 0.0 });
        let e = on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 10.0 });
        assert_eq!(e, vec![Effect::WakeAt { at: 15.0 }]);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 15.0 })), vec![(1, 1)]);
        let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 20.0 });
        assert_eq!(e, vec![Effect::WakeAt { at: 55.0 }], "gap plus cycle gap");
    }

    #[test]
    fn retries_get_new_attempts_then_fail() {
        let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 2, 0.0, 0.0);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })), vec![(0, 1)]);
        let fail = |attempt| Event::Failed { job: 0, attempt, retryable: true, out_of_memory: false, now: 1.0 };
        assert_eq!(dispatched(&on_event(&mut s, fail(1))), vec![(0, 2)]);
        assert_eq!(dispatched(&on_event(&mut s, fail(2))), vec![(0, 3)]);
        let e = on_event(&mut s, fail(3));
        assert_eq!(s.states[0], JobState::Failed { attempt: 3, out_of_memory: false });
        assert!(e.contains(&Effect::AllDone));
        // A stale report of an old attempt changes nothing.
        assert!(dispatched(&on_event(&mut s, fail(1))).is_empty());
    }

    #[test]
    fn out_of_memory_skips_the_larger_values() {
        // batch 1 → 2 → 4 (monotone chain)
        let jobs = vec![cpu_job(1, vec![]), cpu_job(1, vec![0]), cpu_job(1, vec![1])];
        let mut s = State::new(jobs, vec![Slot::new(0, SlotKind::Cpu)], 3, 0.0, 0.0);
        on_event(&mut s, Event::Tick { now: 0.0 });
        on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 });
        let e = on_event(&mut s, Event::Failed { job: 1, attempt: 1, retryable: true, out_of_memory: true, now: 2.0 });
        assert!(e.contains(&Effect::Skip { job: 2, because: 1 }), "{e:?}");
        assert!(e.contains(&Effect::AllDone));
        assert_eq!(
            s.states[1],
            JobState::Failed { attempt: 1, out_of_memory: true },
            "no retry of an out-of-memory failure"
        );
    }

    #[test]
    fn cancel_stops_everything() {
        let slots = vec![Slot::new(0, SlotKind::Gpu(0)), Slot::new(0, SlotKind::Gpu(1))];
        let jobs = (0..4).map(|_| JobInput { need: Need::AnyGpu, nodes: vec![0], cycle: 1, after: vec![] }).collect();
        let mut s = State::new(jobs, slots, 0, 0.0, 0.0);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })).len(), 2);
        let e = on_event(&mut s, Event::Cancel);
        assert_eq!(e.iter().filter(|e| matches!(e, Effect::CancelAttempt { .. })).count(), 2);
        assert!(dispatched(&on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 })).is_empty());
    }

    #[test]
    fn a_lost_node_moves_its_work() {
        let slots = vec![Slot::new(0, SlotKind::Gpu(0)), Slot::new(1, SlotKind::Gpu(0))];
        let jobs = vec![JobInput { need: Need::Gpu(0), nodes: vec![0, 1], cycle: 1, after: vec![] }; 2];
        let mut s = State::new(jobs, slots, 1, 0.0, 0.0);
        on_event(&mut s, Event::Tick { now: 0.0 });
        let e = on_event(&mut s, Event::NodeLost { node: 0, now: 1.0 });
        // Job 0 was on node 0: it waits for node 1, which is busy with job 1.
        assert!(dispatched(&e).is_empty());
        let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 2.0 });
        assert_eq!(dispatched(&e), vec![(0, 2)]);
        assert_eq!(s.slots[1].busy, Some(0));
    }

    #[test]
    fn nothing_starts_while_held() {
        let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 0, 0.0, 0.0);
        s.hold(true);
        assert!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })).is_empty());
        s.hold(false);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 1.0 })), vec![(0, 1)]);
    }

    #[test]
    fn a_dropped_slot_waits_for_its_node_then_retries() {
        let jobs = vec![cpu_job(1, vec![]), cpu_job(1, vec![])];
        let mut s = State::new(jobs, vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
        assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })), vec![(0, 1)]);
        // The session drops: nothing runs, and nothing fails while the node may come back.
        let e = on_event(&mut s, Event::SlotDown { slot: 0, now: 1.0 });
        assert!(dispatched(&e).is_empty() && !e.contains(&Effect::AllDone));
        assert!(s.states.iter().all(|st| *st == JobState::Pending));
        assert!(dispatched(&on_event(&mut s, Event::Tick { now: 2.0 })).is_empty());
        // Back: the lost attempt runs again with a new number.
        assert_eq!(dispatched(&on_event(&mut s, Event::NodeUp { node: 0, now: 3.0 })), vec![(0, 2)]);
        // Down again, then lost for good: the jobs cannot run anywhere and fail.
        on_event(&mut s, Event::SlotDown { slot: 0, now: 4.0 });
        let e = on_event(&mut s, Event::NodeLost { node: 0, now: 5.0 });
        assert!(e.contains(&Effect::AllDone));
        assert_eq!(s.states[0], JobState::Failed { attempt: 2, out_of_memory: false });
    }

    /// A random workload: jobs with random prerequisites (only on earlier jobs, so the
    /// graph is acyclic), random needs, random outcomes.
    /// Outcomes: (succeeded, retryable, out of memory, connection event: 13 drops the
    /// slot, 14 loses the node, 15 brings a down node back).
    type Workload = (Vec<JobInput>, Vec<(u16, SlotKind)>, u32, Vec<(bool, bool, bool, u8)>);

    fn workload() -> impl Strategy<Value = Workload> {
        let slots = proptest::collection::vec(
            (0u16..3, prop_oneof![Just(SlotKind::Cpu), (0u32..2).prop_map(SlotKind::Gpu)]),
            1..5,
        );
        let jobs = proptest::collection::vec(
            (
                prop_oneof![Just(Need::Cpu), Just(Need::AnyGpu), (0u32..2).prop_map(Need::Gpu)],
                proptest::collection::vec(0u16..3, 1..3),
                1u32..4,
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            ),
            1..25,
        );
        let outcomes = proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 0u8..16), 200);
        (jobs, slots, 0u32..3, outcomes).prop_map(|(jobs, slots, retries, outcomes)| {
            let jobs = jobs
                .into_iter()
                .enumerate()
                .map(|(i, (need, nodes, cycle, after))| JobInput {
                    need,
                    nodes,
                    cycle,
                    after: if i == 0 { vec![] } else { after.iter().map(|x| x.index(i) as u32).collect() },
                })
                .collect();
            (jobs, slots, retries, outcomes)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn invariants_hold_under_any_outcomes((jobs, slots, retries, outcomes) in workload()) {
            let n = jobs.len();
            let slot_list: Vec<Slot> = slots.iter().map(|&(node, kind)| Slot::new(node, kind)).collect();
            let mut s = State::new(jobs.clone(), slot_list, retries, 0.0, 0.0);
            let mut now = 0.0;
            let mut effects = on_event(&mut s, Event::Tick { now });
            let mut outcome = outcomes.into_iter().cycle();
            let mut dispatches: Vec<Vec<u32>> = vec![Vec::new(); n];
            for _ in 0..2000 {
                for e in &effects {
                    if let Effect::Dispatch { job, attempt, slot } = *e {
                        // prerequisites ended (and none for lack of memory) before the start
                        for &p in &jobs[job as usize].after {
                            let st = s.states[p as usize];
                            let blocked = matches!(st, JobState::Failed { out_of_memory: true, .. } | JobState::Skipped { .. });
                            prop_assert!(st.is_terminal() && !blocked, "prerequisite {} was {:?}", p, st);
                        }
                        // the slot fits and is eligible
                        let sl = &s.slots[slot as usize];
                        prop_assert!(sl.fits(jobs[job as usize].need) && jobs[job as usize].nodes.contains(&sl.node));
                        dispatches[job as usize].push(attempt);
                    }
                }
                // one attempt per slot
                let mut on_slot = vec![0; s.slots.len()];
                for st in &s.states {
                    if let JobState::Running { slot, .. } = st {
                        on_slot[*slot as usize] += 1;
                    }
                }
                prop_assert!(on_slot.iter().all(|&c| c <= 1));
                // a down or lost slot runs nothing new
                for e in &effects {
                    if let Effect::Dispatch { slot, .. } = *e {
                        let sl = &s.slots[slot as usize];
                        prop_assert!(!sl.down && !s.lost_nodes.contains(&sl.node));
                    }
                }
                let running: Vec<(u32, u32)> = s.running().collect();
                let (ok, retryable, oom, connection) = outcome.next().unwrap_or((true, false, false, 0));
                now += 1.0;
                let down_node = s.slots.iter().find(|sl| sl.down && !s.lost_nodes.contains(&sl.node)).map(|sl| sl.node);
                if running.is_empty() {
                    // Only reconnects can move anything now.
                    let Some(node) = down_node else { break };
                    effects = if connection % 2 == 0 {
                        on_event(&mut s, Event::NodeUp { node, now })
                    } else {
                        on_event(&mut s, Event::NodeLost { node, now })
                    };
                    continue;
                }
                let (job, attempt) = running[0];
                let JobState::Running { slot, .. } = s.states[job as usize] else { unreachable!() };
                effects = if connection == 13 {
                    on_event(&mut s, Event::SlotDown { slot, now })
                } else if connection == 14 {
                    let node = s.slots[slot as usize].node;
                    on_event(&mut s, Event::NodeLost { node, now })
                } else if let (15, Some(node)) = (connection, down_node) {
                    on_event(&mut s, Event::NodeUp { node, now })
                } else if ok {
                    on_event(&mut s, Event::Succeeded { job, attempt, now })
                } else {
                    on_event(&mut s, Event::Failed { job, attempt, retryable, out_of_memory: oom && !retryable, now })
                };
            }
            // Attempts count 1, 2, 3 … and never exceed 1 + retries.
            for attempts in &dispatches {
                prop_assert!(attempts.iter().enumerate().all(|(i, &a)| a == i as u32 + 1));
                prop_assert!(attempts.len() as u32 <= retries + 1);
            }
            // Nothing left running means every job ended: none is stuck.
            for (j, st) in s.states.iter().enumerate() {
                prop_assert!(st.is_terminal(), "job {j} stuck in {st:?}");
            }
        }
    }
}
