use proptest::prelude::*;

use super::*;

fn cpu_job(cycle: u32, after: Vec<u32>) -> JobInput {
    JobInput { need: Need::Cpu, nodes: vec![0], cycle, after, model: None }
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

/// Answers every probe and preparation in `effects` (preparations with `ok`), feeding
/// the answers back; returns every other effect that results.
fn answer(s: &mut State, effects: Vec<Effect>, now: f64, ok: bool) -> Vec<Effect> {
    let mut out = Vec::new();
    let mut queue = effects;
    while !queue.is_empty() {
        let mut next = Vec::new();
        for e in queue {
            match e {
                Effect::Probe { node, .. } => next.extend(on_event(s, Event::Probed { node, now })),
                Effect::Prepare { node, model, .. } => {
                    next.extend(on_event(s, Event::Prepared { node, model, ok, now }))
                }
                other => out.push(other),
            }
        }
        queue = next;
    }
    out
}

/// Every slot's session comes up and every node answers: the effects that follow.
fn connect_all(s: &mut State, now: f64) -> Vec<Effect> {
    let mut effects = Vec::new();
    for slot in 0..s.slots.len() {
        effects.extend(on_event(s, Event::SlotUp { slot: slot as u32, now }));
    }
    answer(s, effects, now, true)
}

fn fail(job: u32, attempt: u32, kind: FailureKind, now: f64) -> Event {
    Event::Failed { job, attempt, kind, now }
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
    assert!(dispatched(&on_event(&mut s, Event::Tick { now: 0.0 })).is_empty(), "no session yet");
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 1.0 })), vec![]);
    assert_eq!(dispatched(&on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 2.0 })), vec![(1, 1)]);
    let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 3.0 });
    assert_eq!(dispatched(&e), vec![(2, 1)]);
    let e = on_event(&mut s, Event::Succeeded { job: 2, attempt: 1, now: 4.0 });
    assert!(e.contains(&Effect::AllDone));
}

#[test]
fn a_node_is_probed_once_then_its_model_prepared_before_any_job() {
    let job = |model| JobInput { need: Need::Cpu, nodes: vec![0], cycle: 1, after: vec![], model };
    let slots = vec![Slot::new(0, SlotKind::Cpu), Slot::new(0, SlotKind::Gpu(0))];
    let mut s = State::new(vec![job(Some(0)), job(Some(0)), job(None)], slots, 0, 0.0, 0.0);
    let e = on_event(&mut s, Event::SlotUp { slot: 0, now: 0.0 });
    assert_eq!(e, vec![Effect::Probe { node: 0, slot: 0 }], "the probe comes first, and alone");
    assert!(on_event(&mut s, Event::SlotUp { slot: 1, now: 0.0 }).is_empty(), "asked once per node");
    let e = on_event(&mut s, Event::Probed { node: 0, now: 1.0 });
    // The model-less job starts at once; the others wait for their model.
    assert_eq!(
        e,
        vec![Effect::Prepare { node: 0, model: 0, slot: 0 }, Effect::Dispatch { job: 2, attempt: 1, slot: 0 }]
    );
    let e = on_event(&mut s, Event::Succeeded { job: 2, attempt: 1, now: 2.0 });
    assert!(dispatched(&e).is_empty(), "model not ready yet: {e:?}");
    let e = on_event(&mut s, Event::Prepared { node: 0, model: 0, ok: true, now: 3.0 });
    assert_eq!(dispatched(&e), vec![(0, 1)]);
}

#[test]
fn a_model_missing_everywhere_fails_its_jobs_and_moves_where_it_exists() {
    let job = |nodes| JobInput { need: Need::Cpu, nodes, cycle: 1, after: vec![], model: Some(0) };
    let slots = vec![Slot::new(0, SlotKind::Cpu), Slot::new(1, SlotKind::Cpu)];
    let mut s = State::new(vec![job(vec![0]), job(vec![0, 1])], slots, 0, 0.0, 0.0);
    let mut e = on_event(&mut s, Event::SlotUp { slot: 0, now: 0.0 });
    e.extend(on_event(&mut s, Event::Probed { node: 0, now: 0.0 }));
    assert!(e.contains(&Effect::Prepare { node: 0, model: 0, slot: 0 }));
    let e = on_event(&mut s, Event::Prepared { node: 0, model: 0, ok: false, now: 1.0 });
    assert_eq!(e, vec![Effect::Unservable { job: 0, why: Unservable::ModelUnavailable }]);
    assert_eq!(s.states[0], JobState::Failed { attempt: 0, kind: FailureKind::BadJob });
    // Job 1 may also run on node 1, where the model is there.
    let e = on_event(&mut s, Event::SlotUp { slot: 1, now: 2.0 });
    let e = answer(&mut s, e, 2.0, true);
    assert_eq!(dispatched(&e), vec![(1, 1)]);
    assert_eq!(s.states[1], JobState::Running { attempt: 1, slot: 1 });
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
    connect_all(&mut s, 0.0);
    let e = on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 10.0 });
    assert_eq!(e, vec![Effect::WakeAt { at: 15.0 }]);
    assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 15.0 })), vec![(1, 1)]);
    let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 20.0 });
    assert_eq!(e, vec![Effect::WakeAt { at: 55.0 }], "gap plus cycle gap");
}

#[test]
fn retries_get_new_attempts_then_fail() {
    let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 2, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    let engine = |attempt| fail(0, attempt, FailureKind::EngineError, 1.0);
    assert_eq!(dispatched(&on_event(&mut s, engine(1))), vec![(0, 2)]);
    assert_eq!(dispatched(&on_event(&mut s, engine(2))), vec![(0, 3)]);
    let e = on_event(&mut s, engine(3));
    assert_eq!(s.states[0], JobState::Failed { attempt: 3, kind: FailureKind::EngineError });
    assert!(e.contains(&Effect::AllDone));
    // A stale report of an old attempt changes nothing.
    assert!(dispatched(&on_event(&mut s, engine(1))).is_empty());
}

#[test]
fn the_kind_decides_the_retry_not_the_words() {
    let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 3, 0.0, 0.0);
    for kind in [FailureKind::EngineError, FailureKind::Timeout, FailureKind::LostConnection, FailureKind::Busy] {
        assert_eq!(s.after_failure(0, kind), AfterFailure::Retry, "{kind:?}");
    }
    assert_eq!(s.after_failure(0, FailureKind::OutOfMemory), AfterFailure::Final);
    assert_eq!(s.after_failure(0, FailureKind::BadJob), AfterFailure::Final);
    assert_eq!(s.after_failure(0, FailureKind::Cancelled), AfterFailure::Cancelled);
    // Three failures in earlier runs: the fourth is final.
    s.set_failures(0, 3);
    assert_eq!(s.after_failure(0, FailureKind::EngineError), AfterFailure::Final, "retries used up");
}

#[test]
fn a_cancellation_uses_up_no_retry() {
    let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    // A redundant attempt cancelled (say) is no failure: the job still has its one retry.
    let e = on_event(&mut s, fail(0, 1, FailureKind::Cancelled, 1.0));
    assert_eq!(s.states[0], JobState::Cancelled);
    assert!(e.contains(&Effect::AllDone));
    let mut s = State::new(vec![cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
    s.attempts[0] = 1; // an earlier run's attempt 1 was interrupted
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 2)]);
    assert_eq!(dispatched(&on_event(&mut s, fail(0, 2, FailureKind::EngineError, 1.0))), vec![(0, 3)], "its retry");
}

#[test]
fn a_slot_whose_attempt_became_redundant_waits_for_it_to_stop() {
    // Job 0's attempt 2 runs when its attempt 1 arrives from an outbox: 2 is cancelled,
    // and its slot takes nothing new until 2 has reported.
    let mut s =
        State::new(vec![cpu_job(1, vec![]), cpu_job(1, vec![])], vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
    s.attempts[0] = 1;
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 2)]);
    s.mark_done(0, 1);
    assert!(
        dispatched(&on_event(&mut s, Event::Tick { now: 1.0 })).is_empty(),
        "the agent is still stopping attempt 2"
    );
    let e = on_event(&mut s, fail(0, 2, FailureKind::Cancelled, 2.0));
    assert_eq!(dispatched(&e), vec![(1, 1)]);
    assert_eq!(s.states[0], JobState::Succeeded { attempt: 1 }, "the late report changes nothing else");
}

#[test]
fn out_of_memory_skips_the_larger_values() {
    // batch 1 → 2 → 4 (monotone chain)
    let jobs = vec![cpu_job(1, vec![]), cpu_job(1, vec![0]), cpu_job(1, vec![1])];
    let mut s = State::new(jobs, vec![Slot::new(0, SlotKind::Cpu)], 3, 0.0, 0.0);
    connect_all(&mut s, 0.0);
    on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 });
    let e = on_event(&mut s, fail(1, 1, FailureKind::OutOfMemory, 2.0));
    assert!(e.contains(&Effect::Skip { job: 2, because: 1 }), "{e:?}");
    assert!(e.contains(&Effect::AllDone));
    assert_eq!(
        s.states[1],
        JobState::Failed { attempt: 1, kind: FailureKind::OutOfMemory },
        "no retry of an out-of-memory failure"
    );
}

#[test]
fn an_engine_error_that_mentions_memory_skips_nothing() {
    // Monotone skipping follows the kind; an engine error is retried and skips nothing.
    let jobs = vec![cpu_job(1, vec![]), cpu_job(1, vec![0])];
    let mut s = State::new(jobs, vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
    connect_all(&mut s, 0.0);
    let e = on_event(&mut s, fail(0, 1, FailureKind::EngineError, 1.0));
    assert_eq!(dispatched(&e), vec![(0, 2)]);
    let e = on_event(&mut s, fail(0, 2, FailureKind::EngineError, 2.0));
    assert_eq!(dispatched(&e), vec![(1, 1)], "the larger value still runs");
}

#[test]
fn cancel_stops_everything() {
    let slots = vec![Slot::new(0, SlotKind::Gpu(0)), Slot::new(0, SlotKind::Gpu(1))];
    let jobs = (0..4).map(|_| JobInput { need: Need::AnyGpu, nodes: vec![0], cycle: 1, after: vec![], model: None });
    let mut s = State::new(jobs.collect(), slots, 1, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)).len(), 2);
    let e = on_event(&mut s, Event::Cancel);
    assert_eq!(e.iter().filter(|e| matches!(e, Effect::CancelAttempt { .. })).count(), 2);
    assert!(dispatched(&on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 })).is_empty());
    // An attempt that fails while the run is cancelled counts as cancelled: resume runs it.
    let e = on_event(&mut s, fail(1, 1, FailureKind::LostConnection, 1.0));
    assert!(dispatched(&e).is_empty());
    assert_eq!(s.states[1], JobState::Cancelled);
}

#[test]
fn a_lost_node_moves_its_work() {
    let slots = vec![Slot::new(0, SlotKind::Gpu(0)), Slot::new(1, SlotKind::Gpu(0))];
    let jobs = vec![JobInput { need: Need::Gpu(0), nodes: vec![0, 1], cycle: 1, after: vec![], model: None }; 2];
    let mut s = State::new(jobs, slots, 1, 0.0, 0.0);
    connect_all(&mut s, 0.0);
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
    assert!(dispatched(&connect_all(&mut s, 0.0)).is_empty());
    s.hold(false);
    assert_eq!(dispatched(&on_event(&mut s, Event::Tick { now: 1.0 })), vec![(0, 1)]);
}

#[test]
fn a_dropped_slot_waits_for_its_session_then_retries() {
    let jobs = vec![cpu_job(1, vec![]), cpu_job(1, vec![])];
    let mut s = State::new(jobs, vec![Slot::new(0, SlotKind::Cpu)], 1, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    // The session drops: nothing runs, and nothing fails while the node may come back.
    let e = on_event(&mut s, Event::SlotDown { slot: 0, now: 1.0 });
    assert!(dispatched(&e).is_empty() && !e.contains(&Effect::AllDone));
    assert!(s.states.iter().all(|st| *st == JobState::Pending));
    assert!(dispatched(&on_event(&mut s, Event::Tick { now: 2.0 })).is_empty());
    // Back: the lost attempt runs again with a new number (the node was probed already).
    assert_eq!(dispatched(&on_event(&mut s, Event::SlotUp { slot: 0, now: 3.0 })), vec![(0, 2)]);
    // Down again, then lost for good: the jobs cannot run anywhere and fail.
    on_event(&mut s, Event::SlotDown { slot: 0, now: 4.0 });
    let e = on_event(&mut s, Event::NodeLost { node: 0, now: 5.0 });
    assert!(e.contains(&Effect::AllDone));
    assert!(e.contains(&Effect::Unservable { job: 1, why: Unservable::NoLiveNode }), "{e:?}");
    assert_eq!(s.states[0], JobState::Failed { attempt: 2, kind: FailureKind::LostConnection });
}

#[test]
fn a_probe_lost_with_its_session_is_asked_again() {
    let slots = vec![Slot::new(0, SlotKind::Cpu), Slot::new(0, SlotKind::Gpu(0))];
    let mut s = State::new(vec![cpu_job(1, vec![])], slots, 0, 0.0, 0.0);
    assert_eq!(on_event(&mut s, Event::SlotUp { slot: 0, now: 0.0 }), vec![Effect::Probe { node: 0, slot: 0 }]);
    on_event(&mut s, Event::SlotUp { slot: 1, now: 0.0 });
    let e = on_event(&mut s, Event::SlotDown { slot: 0, now: 1.0 });
    assert_eq!(e, vec![Effect::Probe { node: 0, slot: 1 }]);
}

/// A random workload: jobs with random prerequisites (only on earlier jobs, so the graph
/// is acyclic), random needs and models, random outcomes.
type Workload = (Vec<JobInput>, Vec<(u16, SlotKind)>, u32, Vec<Outcome>);

/// One step's random outcome: (succeeded, kind index, connection event: 13 drops the
/// slot, 14 loses the node, 15 brings a down slot back; whether a preparation succeeds).
type Outcome = (bool, u8, u8, bool);

const KINDS: [FailureKind; 6] = [
    FailureKind::EngineError,
    FailureKind::OutOfMemory,
    FailureKind::Timeout,
    FailureKind::LostConnection,
    FailureKind::BadJob,
    FailureKind::Busy,
];

fn workload() -> impl Strategy<Value = Workload> {
    let slots =
        proptest::collection::vec((0u16..3, prop_oneof![Just(SlotKind::Cpu), (0u32..2).prop_map(SlotKind::Gpu)]), 1..5);
    let jobs = proptest::collection::vec(
        (
            prop_oneof![Just(Need::Cpu), Just(Need::AnyGpu), (0u32..2).prop_map(Need::Gpu), Just(Need::Gpus(2))],
            proptest::collection::vec(0u16..3, 1..3),
            1u32..4,
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            proptest::option::of(0u32..2),
        ),
        1..25,
    );
    let outcomes = proptest::collection::vec((any::<bool>(), 0u8..6, 0u8..16, prop::bool::weighted(0.8)), 200);
    (jobs, slots, 0u32..3, outcomes).prop_map(|(jobs, slots, retries, outcomes)| {
        let jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(i, (need, nodes, cycle, after, model))| JobInput {
                need,
                nodes,
                cycle,
                after: if i == 0 { vec![] } else { after.iter().map(|x| x.index(i) as u32).collect() },
                model,
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
        let mut effects = Vec::new();
        for slot in 0..s.slots.len() {
            effects.extend(on_event(&mut s, Event::SlotUp { slot: slot as u32, now }));
        }
        let mut outcome = outcomes.into_iter().cycle();
        let mut dispatches: Vec<Vec<u32>> = vec![Vec::new(); n];
        // Questions asked and not yet answered.
        let mut questions: Vec<Effect> = Vec::new();
        let mut probed = [false; 3];
        let mut ready: std::collections::HashSet<(u16, u32)> = Default::default();
        for _ in 0..3000 {
            // Questions whose slot went away were forgotten by the scheduler too (it asks
            // them again elsewhere, below).
            questions.retain(|q| match q {
                Effect::Probe { slot, .. } | Effect::Prepare { slot, .. } => {
                    let sl = &s.slots[*slot as usize];
                    !sl.down && !s.lost_nodes.contains(&sl.node)
                }
                _ => false,
            });
            for e in &effects {
                match *e {
                    Effect::Dispatch { job, attempt, slot } => {
                        // prerequisites ended (and none for lack of memory) before the start
                        for &p in &jobs[job as usize].after {
                            let st = s.states[p as usize];
                            let blocked = matches!(st, JobState::Failed { kind: FailureKind::OutOfMemory, .. } | JobState::Skipped { .. });
                            prop_assert!(st.is_terminal() && !blocked, "prerequisite {} was {:?}", p, st);
                        }
                        // the slot fits, is eligible, up, probed, and has the model ready
                        let sl = &s.slots[slot as usize];
                        prop_assert!(sl.fits(jobs[job as usize].need) && jobs[job as usize].nodes.contains(&sl.node));
                        prop_assert!(!sl.down && !s.lost_nodes.contains(&sl.node));
                        prop_assert!(probed[sl.node as usize], "dispatched to an unprobed node");
                        if let Some(m) = jobs[job as usize].model {
                            prop_assert!(ready.contains(&(sl.node, m)), "dispatched before its model was ready");
                        }
                        dispatches[job as usize].push(attempt);
                    }
                    Effect::Probe { node, .. } => {
                        prop_assert!(!questions.iter().any(|q| matches!(q, Effect::Probe { node: n, .. } if *n == node)), "probed twice at once");
                        questions.push(*e);
                    }
                    Effect::Prepare { .. } => questions.push(*e),
                    _ => {}
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
            // a running job holds exactly the slots it needs, all on one node, each fitting
            for (job, _) in s.running() {
                let held = s.held_slots(job);
                let need = jobs[job as usize].need;
                prop_assert_eq!(held.len(), need.slots(), "job {} holds {:?}", job, held);
                let node = s.slots[held[0] as usize].node;
                prop_assert!(held.iter().all(|&h| s.slots[h as usize].node == node && s.slots[h as usize].fits(need)));
            }
            let running: Vec<(u32, u32)> = s.running().collect();
            let (ok, kind, connection, prepared) = outcome.next().unwrap_or((true, 0, 0, true));
            now += 1.0;
            let down_slot = s.slots.iter().position(|sl| sl.down && !s.lost_nodes.contains(&sl.node));
            if let (Some(q), true) = (questions.first().copied(), connection % 3 == 0 || running.is_empty()) {
                questions.remove(0);
                effects = match q {
                    Effect::Probe { node, .. } => {
                        probed[node as usize] = true;
                        on_event(&mut s, Event::Probed { node, now })
                    }
                    Effect::Prepare { node, model, .. } => {
                        if prepared {
                            ready.insert((node, model));
                        }
                        on_event(&mut s, Event::Prepared { node, model, ok: prepared, now })
                    }
                    _ => unreachable!(),
                };
                continue;
            }
            if running.is_empty() {
                // Only sessions coming back can move anything now.
                let Some(slot) = down_slot else { break };
                effects = if connection % 2 == 0 {
                    on_event(&mut s, Event::SlotUp { slot: slot as u32, now })
                } else {
                    let node = s.slots[slot].node;
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
            } else if let (15, Some(down)) = (connection, down_slot) {
                on_event(&mut s, Event::SlotUp { slot: down as u32, now })
            } else if ok {
                on_event(&mut s, Event::Succeeded { job, attempt, now })
            } else {
                on_event(&mut s, Event::Failed { job, attempt, kind: KINDS[kind as usize], now })
            };
        }
        // Attempts count 1, 2, 3 … and never exceed 1 + retries.
        for attempts in &dispatches {
            prop_assert!(attempts.iter().enumerate().all(|(i, &a)| a == i as u32 + 1));
            prop_assert!(attempts.len() as u32 <= retries + 1);
        }
        // Nothing left running or to answer means every job ended: none is stuck.
        for (j, st) in s.states.iter().enumerate() {
            prop_assert!(st.is_terminal(), "job {j} stuck in {st:?}");
        }
    }
}

#[test]
fn a_job_of_two_gpus_takes_two_slots_of_one_node_at_once() {
    let gpu = |g| Slot::new(0, SlotKind::Gpu(g));
    let job = |need| JobInput { need, nodes: vec![0], cycle: 1, after: vec![], model: None };
    let mut s = State::new(vec![job(Need::Gpus(2)), job(Need::AnyGpu)], vec![gpu(0), gpu(1)], 0, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)], "the single-GPU job waits: both GPUs are taken");
    assert_eq!(s.held_slots(0), vec![0, 1]);
    let e = on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 });
    assert_eq!(dispatched(&e), vec![(1, 1)]);
    assert!(s.held_slots(0).is_empty());
}

#[test]
fn single_gpu_jobs_after_a_waiting_several_gpu_job_cannot_starve_it() {
    // GPU 0 is busy with job 0; job 1 needs both GPUs. Jobs 2 and 3, later in order, would
    // take GPU 1 one after the other forever; the reservation keeps it for job 1.
    let gpu = |g| Slot::new(0, SlotKind::Gpu(g));
    let job = |need| JobInput { need, nodes: vec![0], cycle: 1, after: vec![], model: None };
    let jobs = vec![job(Need::Gpu(0)), job(Need::Gpus(2)), job(Need::AnyGpu), job(Need::AnyGpu)];
    let mut s = State::new(jobs, vec![gpu(0), gpu(1)], 0, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)], "GPU 1 is kept for job 1");
    let e = on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 });
    assert_eq!(dispatched(&e), vec![(1, 1)]);
    let e = on_event(&mut s, Event::Succeeded { job: 1, attempt: 1, now: 2.0 });
    assert_eq!(dispatched(&e), vec![(2, 1), (3, 1)]);
}

#[test]
fn a_several_gpu_job_no_node_can_hold_fails() {
    let job = JobInput { need: Need::Gpus(4), nodes: vec![0], cycle: 1, after: vec![], model: None };
    let mut s =
        State::new(vec![job], vec![Slot::new(0, SlotKind::Gpu(0)), Slot::new(0, SlotKind::Gpu(1))], 0, 0.0, 0.0);
    let e = connect_all(&mut s, 0.0);
    assert!(e.contains(&Effect::Unservable { job: 0, why: Unservable::NoLiveNode }), "{e:?}");
}

#[test]
fn a_finished_several_gpu_job_whose_session_drops_frees_all_its_gpus() {
    // Job 0 (two GPUs) runs; an earlier attempt's result arrives, so its slot drains; then
    // that session drops. Both GPUs are free again: job 1, pinned to GPU 1, runs.
    let gpu = |g| Slot::new(0, SlotKind::Gpu(g));
    let job = |need| JobInput { need, nodes: vec![0], cycle: 1, after: vec![], model: None };
    let mut s = State::new(vec![job(Need::Gpus(2)), job(Need::Gpu(1))], vec![gpu(0), gpu(1)], 0, 0.0, 0.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    s.mark_done(0, 1);
    let e = on_event(&mut s, Event::SlotDown { slot: 0, now: 1.0 });
    assert_eq!(dispatched(&e), vec![(1, 1)], "GPU 1 was left busy with a finished job");
}

#[test]
fn a_reservation_covers_gpus_still_in_their_cycle_gap() {
    // Both GPUs are free but GPU 1 is in a cycle gap for the two-GPU job (cycle 2) and not
    // for job 2 (cycle 1). The reservation keeps GPU 1 for job 1 anyway.
    let gpu = |g| Slot::new(0, SlotKind::Gpu(g));
    let job = |need, cycle| JobInput { need, nodes: vec![0], cycle, after: vec![], model: None };
    let jobs = vec![job(Need::Gpu(1), 1), job(Need::Gpus(2), 2), job(Need::Gpu(1), 1)];
    let mut s = State::new(jobs, vec![gpu(0), gpu(1)], 0, 0.0, 10.0);
    assert_eq!(dispatched(&connect_all(&mut s, 0.0)), vec![(0, 1)]);
    let e = on_event(&mut s, Event::Succeeded { job: 0, attempt: 1, now: 1.0 });
    assert!(dispatched(&e).is_empty(), "job 2 must not take GPU 1 from the waiting job 1: {e:?}");
    let e = on_event(&mut s, Event::Tick { now: 11.0 });
    assert_eq!(dispatched(&e), vec![(1, 1)]);
}
