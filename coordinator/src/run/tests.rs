//! The dispatcher over fake connectors (`fake.rs`): every path a transport can take it
//! down — a dropped session, a connect that never ends, an outbox from an earlier run, a
//! delivery cut short, a model that is not there — with no process, socket or sleep.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use llem_common::protocol::AttemptId;

use super::fake::{artifact_of, FakeConnector, Script};
use super::{dispatch_with, Connector, Earlier, Ending, RunDir};
use crate::expand::point_spec;
use crate::plan::Plan;

/// How long a test waits for the dispatcher before calling it stuck.
const STUCK: Duration = Duration::from_secs(60);

const JOBS: &str = "name: fake\nmodel: synthetic\nengine: synthetic\nsweep: {n_prompts: [1, 2, 3]}\nexecution: {cycles: 2, retries: 1}\nnodes:\n  - {name: a, host: a}\n  - {name: b, host: b}\n";

fn plan_in(dir: &Path, yaml: &str) -> Plan {
    std::fs::write(dir.join("sweep.yaml"), yaml).expect("sweep");
    Plan::build(crate::sweep::load(&dir.join("sweep.yaml")).expect("loads")).expect("plans")
}

/// A finished dispatch: how it ended, its run directory and the journal's records.
struct Done {
    ending: Ending,
    run: RunDir,
    records: Vec<serde_json::Value>,
}

impl Done {
    fn events(&self, event: &str) -> Vec<&serde_json::Value> {
        self.records.iter().filter(|r| r["event"] == event).collect()
    }
}

/// Runs `plan` over `connectors` in a thread (a stuck dispatcher fails the test instead
/// of hanging it); `during` gets a sender of the dispatcher's channel while it runs.
fn dispatch(
    dir: &Path,
    plan: Plan,
    earlier: Earlier,
    connectors: Vec<Arc<dyn Connector>>,
    during: impl FnOnce(&std::sync::mpsc::Sender<super::connect::Incoming>),
) -> Done {
    let (run, journal) = RunDir::create(&plan, &dir.join("runs")).expect("run dir");
    let (tx, rx) = channel();
    let (done_tx, done_rx) = channel();
    let (runner_tx, runner_run) = (tx.clone(), run.clone());
    std::thread::spawn(move || {
        let ending = dispatch_with(&plan, &runner_run, journal, &earlier, &connectors, runner_tx, &rx);
        let _ = done_tx.send(ending.map_err(|e| format!("{e:#}")));
    });
    during(&tx);
    let ending = done_rx.recv_timeout(STUCK).expect("the dispatcher got stuck").expect("dispatch");
    let text = std::fs::read_to_string(run.journal_path()).expect("journal");
    let records = text.lines().skip(1).map(|l| serde_json::from_str(l).expect("record")).collect();
    Done { ending, run, records }
}

fn fake(script: Script) -> (Arc<FakeConnector>, Arc<dyn Connector>) {
    let c = FakeConnector::new(script);
    let dynamic: Arc<dyn Connector> = Arc::clone(&c) as Arc<dyn Connector>;
    (c, dynamic)
}

/// Each attempt's stored file is the one its agent sent.
fn assert_stored_intact(done: &Done) {
    for r in done.events("finished") {
        let id = AttemptId {
            job_id: r["job"].as_str().expect("job").into(),
            attempt: r["attempt"].as_u64().expect("n") as u32,
        };
        let dir = done.run.attempt_dir(&id.job_id, id.attempt);
        assert_eq!(std::fs::read(dir.join("timeseries.parquet")).expect("stored"), artifact_of(&id), "{id:?}");
        assert!(dir.join("result.json").exists());
        assert!(!dir.join(".incoming").exists(), "partial files left in {}", dir.display());
    }
}

fn assert_each_job_finished_once(done: &Done, jobs: usize) {
    let mut ids: Vec<&str> = done.events("finished").iter().filter_map(|r| r["job"].as_str()).collect();
    assert_eq!(ids.len(), jobs, "{:#?}", done.records);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), jobs, "a job finished twice");
}

#[test]
fn every_job_finishes_once_with_its_files_and_each_node_is_probed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, a_dyn) = fake(Script::default());
    let (b, b_dyn) = fake(Script::default());
    let done = dispatch(dir.path(), plan_in(dir.path(), JOBS), Earlier::default(), vec![a_dyn, b_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    assert_each_job_finished_once(&done, 6);
    assert_stored_intact(&done);
    assert_eq!((a.script.probes.load(Ordering::SeqCst), b.script.probes.load(Ordering::SeqCst)), (1, 1));
    for node in ["a", "b"] {
        assert!(done.run.path.join("probe").join(format!("{node}.json")).exists(), "probe/{node}.json");
    }
    assert!(a.script.outbox.lock().expect("lock").is_empty(), "every delivery was acknowledged");
    assert!(done.events("failed").is_empty());
}

#[test]
fn a_dropped_session_loses_only_its_attempt_which_runs_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, a_dyn) = fake(Script { drop_on_run: 1.into(), ..Script::default() });
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let done = dispatch(dir.path(), plan_in(dir.path(), &one_node), Earlier::default(), vec![a_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    let failed = done.events("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0]["kind"].as_str(), failed[0]["retryable"].as_bool()), (Some("lost_connection"), Some(true)));
    let job = failed[0]["job"].as_str().expect("job");
    assert!(done.events("finished").iter().any(|r| r["job"] == job && r["attempt"] == 2), "attempt 2 finished it");
    assert_each_job_finished_once(&done, 6);
    assert_eq!(a.script.opens.load(Ordering::SeqCst), 2, "the session was opened again");
}

#[test]
fn a_connect_that_never_ends_does_not_hold_up_ctrl_c() {
    let dir = tempfile::tempdir().expect("tmp");
    let (slow, gate) = Script::default().gated();
    let (opening, opened) = channel();
    *slow.opening.lock().expect("lock") = Some(opening);
    let (_, a_dyn) = fake(slow);
    let (b_runs_tx, b_runs) = channel();
    let script_b = Script { hold_runs: true, ..Script::default() };
    *script_b.runs.lock().expect("lock") = Some(b_runs_tx);
    let (_, b_dyn) = fake(script_b);
    let done = dispatch(dir.path(), plan_in(dir.path(), JOBS), Earlier::default(), vec![a_dyn, b_dyn], |tx| {
        opened.recv_timeout(STUCK).expect("the slow node's open began");
        tx.send(super::connect::Incoming::Interrupt).expect("interrupt");
    });
    assert!(b_runs.try_recv().is_err(), "nothing ran while node a's outbox could still hold a result");
    assert_eq!(done.ending, Ending::Interrupted);
    assert_eq!(done.events("interrupted").len(), 1);
    assert!(done.events("finished").is_empty());
    drop(gate);
}

#[test]
fn an_agent_that_crashes_on_every_probe_loses_its_node_instead_of_looping() {
    let dir = tempfile::tempdir().expect("tmp");
    let (crashing, a_dyn) = fake(Script { crash_on_probe: true, ..Script::default() });
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let done = dispatch(dir.path(), plan_in(dir.path(), &one_node), Earlier::default(), vec![a_dyn], |_| {});
    assert_eq!(done.ending, Ending::SomeFailed);
    let opens = crashing.script.opens.load(Ordering::SeqCst);
    assert_eq!(opens, 1 + super::lifecycle::STALLED_RECONNECTS, "opened, then reconnected until given up");
    let failed = done.events("failed");
    assert_eq!(failed.len(), 6, "every job fails: no node is left");
    assert!(failed.iter().all(|f| f["retryable"] == false));
}

#[test]
fn an_interrupt_cancels_the_running_attempt() {
    let dir = tempfile::tempdir().expect("tmp");
    let (runs_tx, runs) = channel();
    let script = Script { hold_runs: true, ..Script::default() };
    *script.runs.lock().expect("lock") = Some(runs_tx);
    let (_, a_dyn) = fake(script);
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let done = dispatch(dir.path(), plan_in(dir.path(), &one_node), Earlier::default(), vec![a_dyn], |tx| {
        runs.recv_timeout(STUCK).expect("a job started");
        tx.send(super::connect::Incoming::Interrupt).expect("interrupt");
    });
    assert_eq!(done.ending, Ending::Interrupted);
    assert_eq!(done.events("cancelled").len(), 1, "{:#?}", done.records);
    assert!(done.events("failed").is_empty(), "a cancellation is not a failure");
}

#[test]
fn an_outbox_from_an_earlier_run_is_collected_not_run_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let plan = plan_in(dir.path(), &one_node);
    // Job 0 finished on the node while the coordinator was away (its attempt 1).
    let exp = &plan.expansion;
    let spec = point_spec(&plan.sweep, exp, &exp.points[exp.jobs[0].point as usize]);
    let early = AttemptId { job_id: exp.job_id(&exp.jobs[0]), attempt: 1 };
    let script = Script::default();
    script.outbox.lock().expect("lock").insert(early.clone(), spec);
    let (a, a_dyn) = fake(script);
    let attempts = [(early.job_id.clone(), 1)].into_iter().collect();
    let earlier = Earlier { attempts, ..Earlier::default() };
    let done = dispatch(dir.path(), plan, earlier, vec![a_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    let dispatched_early = done.events("dispatched").iter().filter(|r| r["job"] == early.job_id.as_str()).count();
    assert_eq!(dispatched_early, 0, "the collected job ran again");
    assert!(done.events("finished").iter().any(|r| r["job"] == early.job_id.as_str() && r["attempt"] == 1));
    assert_each_job_finished_once(&done, 6);
    assert_stored_intact(&done);
    assert!(a.script.outbox.lock().expect("lock").is_empty());
}

#[test]
fn a_delivery_cut_short_is_asked_for_again_and_arrives_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, a_dyn) = fake(Script { cut_deliveries: 1.into(), ..Script::default() });
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let done = dispatch(dir.path(), plan_in(dir.path(), &one_node), Earlier::default(), vec![a_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    assert!(done.events("failed").is_empty(), "{:#?}", done.records);
    assert_eq!(done.events("dispatched").len(), 6, "nothing ran twice");
    assert_each_job_finished_once(&done, 6);
    assert_stored_intact(&done);
}

#[test]
fn a_delivery_that_never_arrives_whole_is_retried_as_a_new_attempt() {
    let dir = tempfile::tempdir().expect("tmp");
    let cuts = 1 + super::agent_messages::MAX_RESENDS;
    let (_, a_dyn) = fake(Script { cut_deliveries: cuts.into(), ..Script::default() });
    let one_node = JOBS.replace("  - {name: b, host: b}\n", "");
    let done = dispatch(dir.path(), plan_in(dir.path(), &one_node), Earlier::default(), vec![a_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    let failed = done.events("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["kind"], "lost_connection");
    assert!(failed[0]["error"].as_str().unwrap_or("").contains("did not arrive intact"), "{failed:?}");
    assert_each_job_finished_once(&done, 6);
    assert_stored_intact(&done);
}

const CANDLE: &str = "name: models\nmodel: models/m.gguf\nsweep: {n_prompts: [1, 2]}\nexecution: {cycles: 1, retries: 1}\nnodes:\n  - {name: a, host: a}\n  - {name: b, host: b}\n";

#[test]
fn jobs_run_only_where_their_model_is_there() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, a_dyn) = fake(Script { missing_models: vec!["models/m.gguf".into()], ..Script::default() });
    let (_, b_dyn) = fake(Script::default());
    let done = dispatch(dir.path(), plan_in(dir.path(), CANDLE), Earlier::default(), vec![a_dyn, b_dyn], |_| {});
    assert_eq!(done.ending, Ending::AllSucceeded);
    assert!(done.events("dispatched").iter().all(|r| r["node"] == "b/cpu"), "{:#?}", done.records);
    let found: serde_json::Value =
        serde_json::from_slice(&std::fs::read(done.run.path.join("prepare").join("a.json")).expect("prepare/a.json"))
            .expect("json");
    assert_eq!(found["models/m.gguf"]["status"], "unavailable");
    let found: serde_json::Value =
        serde_json::from_slice(&std::fs::read(done.run.path.join("prepare").join("b.json")).expect("prepare/b.json"))
            .expect("json");
    assert_eq!(found["models/m.gguf"]["status"], "ready");
}

#[test]
fn a_model_missing_everywhere_fails_its_jobs_saying_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = || Script { missing_models: vec!["models/m.gguf".into()], ..Script::default() };
    let (_, a_dyn) = fake(missing());
    let (_, b_dyn) = fake(missing());
    let done = dispatch(dir.path(), plan_in(dir.path(), CANDLE), Earlier::default(), vec![a_dyn, b_dyn], |_| {});
    assert_eq!(done.ending, Ending::SomeFailed);
    assert!(done.events("dispatched").is_empty());
    let failed = done.events("failed");
    assert_eq!(failed.len(), 2);
    for f in failed {
        assert_eq!((f["kind"].as_str(), f["retryable"].as_bool()), (Some("bad_job"), Some(false)));
        let error = f["error"].as_str().unwrap_or("");
        assert!(error.contains("models/m.gguf") && error.contains("No such file"), "{error}");
    }
}

/// A session that only records what the dispatcher sends.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<llem_common::protocol::ToAgent>>>);

impl super::connect::Session for Recorder {
    fn send(&mut self, message: &llem_common::protocol::ToAgent) -> anyhow::Result<()> {
        self.0.lock().expect("lock").push(message.clone());
        Ok(())
    }
    fn kill(self: Box<Self>) {}
    fn shutdown(self: Box<Self>) {}
}

impl Recorder {
    fn runs(&self) -> Vec<String> {
        let sent = self.0.lock().expect("lock");
        sent.iter()
            .filter_map(|m| match m {
                llem_common::protocol::ToAgent::Run { id, .. } => Some(id.job_id.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn nothing_starts_while_another_agent_is_still_sending_its_outbox() {
    use super::connect::Incoming;
    use super::dispatcher::{Dispatcher, SlotSession};
    use llem_common::protocol::FromAgent;

    let dir = tempfile::tempdir().expect("tmp");
    let plan = plan_in(dir.path(), JOBS);
    let (run, journal) = RunDir::create(&plan, &dir.path().join("runs")).expect("run dir");
    let (tx, _rx) = channel();
    let connectors: Vec<Arc<dyn Connector>> = vec![fake(Script::default()).1, fake(Script::default()).1];
    let mut d = Dispatcher::new(&plan, &run, journal, &Earlier::default(), &connectors, tx).expect("dispatcher");
    let (a, b) = (Recorder::default(), Recorder::default());
    // Both sessions are opening, as the loop starts them: both outboxes are awaited.
    for slot in [0, 1] {
        d.sessions[slot] = SlotSession::Opening { generation: 1, queued: Vec::new(), ended: None };
        d.awaiting_outbox.insert(slot, d.now());
    }
    let feed = |d: &mut Dispatcher<'_>, message: Incoming| {
        if let Some(event) = d.incoming(message, d.now()).expect("handled") {
            d.step(event).expect("step");
        }
    };
    let agent = |slot, message| Incoming::Agent { slot, message };
    let probed = || FromAgent::Probed {
        report: Box::new(llem_common::probe::ProbeReport {
            node: Default::default(),
            energy_sources: vec![],
            cuda: Default::default(),
            sampler_cost: Vec::new(),
        }),
    };
    // Node b is up, probed, and has nothing to re-send …
    feed(&mut d, Incoming::Opened { slot: 1, generation: 1, outcome: Ok(Box::new(b.clone())) });
    feed(&mut d, agent(1, probed()));
    feed(&mut d, agent(1, FromAgent::OutboxResent { count: 0 }));
    assert!(b.runs().is_empty(), "a job started while node a's outbox could still hold its result");
    // … node a re-sends job 0's attempt 1, which finished while nobody listened.
    let exp = &plan.expansion;
    let early = AttemptId { job_id: exp.job_id(&exp.jobs[0]), attempt: 1 };
    let spec = point_spec(&plan.sweep, exp, &exp.points[exp.jobs[0].point as usize]);
    feed(&mut d, Incoming::Opened { slot: 0, generation: 1, outcome: Ok(Box::new(a.clone())) });
    feed(&mut d, agent(0, probed()));
    let bytes = artifact_of(&early);
    let base64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
    feed(&mut d, agent(0, FromAgent::ArtifactChunk { id: early.clone(), name: "f.bin".into(), offset: 0, base64 }));
    let sha256 = <sha2::Sha256 as sha2::Digest>::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let artifacts = vec![llem_common::protocol::ArtifactEntry { name: "f.bin".into(), bytes: 100, sha256 }];
    let result = Box::new(super::fake::result_of(&early, &spec));
    feed(&mut d, agent(0, FromAgent::Finished { id: early.clone(), result, artifacts }));
    assert!(b.runs().is_empty() && a.runs().is_empty());
    feed(&mut d, agent(0, FromAgent::OutboxResent { count: 1 }));
    // Now work starts, on both nodes, and never the collected job.
    let started: Vec<String> = a.runs().into_iter().chain(b.runs()).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(!started.contains(&early.job_id), "{started:?}");
}

/// A dispatcher over two nodes whose sessions the test opens and feeds by hand.
struct Driven {
    _dir: tempfile::TempDir,
    plan: &'static Plan,
    run: &'static RunDir,
}

impl Driven {
    fn new() -> Driven {
        let dir = tempfile::tempdir().expect("tmp");
        let plan: &'static Plan = Box::leak(Box::new(plan_in(dir.path(), JOBS)));
        let (run, _) = RunDir::create(plan, &dir.path().join("runs")).expect("run dir");
        Driven { plan, run: Box::leak(Box::new(run)), _dir: dir }
    }

    fn dispatcher(&self) -> super::dispatcher::Dispatcher<'static> {
        let journal = super::journal::Journal::append_to(&self.run.journal_path()).expect("journal");
        let (tx, rx) = channel();
        std::mem::forget(rx);
        let connectors: Vec<Arc<dyn Connector>> = vec![fake(Script::default()).1, fake(Script::default()).1];
        super::dispatcher::Dispatcher::new(self.plan, self.run, journal, &Earlier::default(), &connectors, tx)
            .expect("dispatcher")
    }
}

fn feed(d: &mut super::dispatcher::Dispatcher<'_>, message: super::connect::Incoming) {
    if let Some(event) = d.incoming(message, d.now()).expect("handled") {
        d.step(event).expect("step");
    }
}

fn open_and_probe(d: &mut super::dispatcher::Dispatcher<'_>, slot: usize, generation: u64, session: &Recorder) {
    use super::connect::Incoming;
    use llem_common::protocol::FromAgent;
    d.sessions[slot] = super::dispatcher::SlotSession::Opening { generation, queued: Vec::new(), ended: None };
    let now = d.now();
    d.awaiting_outbox.entry(slot).or_insert(now);
    feed(d, Incoming::Opened { slot, generation, outcome: Ok(Box::new(session.clone())) });
    let report = llem_common::probe::ProbeReport {
        node: Default::default(),
        energy_sources: vec![],
        cuda: Default::default(),
        sampler_cost: Vec::new(),
    };
    feed(d, Incoming::Agent { slot, message: FromAgent::Probed { report: Box::new(report) } });
}

#[test]
fn after_a_connection_drops_nothing_starts_elsewhere_until_the_node_has_resent_its_outbox() {
    use super::connect::Incoming;
    use llem_common::protocol::FromAgent;
    let driven = Driven::new();
    let mut d = driven.dispatcher();
    let (a, b) = (Recorder::default(), Recorder::default());
    open_and_probe(&mut d, 0, 1, &a);
    feed(&mut d, Incoming::Agent { slot: 0, message: FromAgent::OutboxResent { count: 0 } });
    let started = a.runs();
    assert_eq!(started.len(), 1, "node a runs a job");
    // Node a's connection drops mid-job; node b comes up idle.
    feed(&mut d, Incoming::Gone { slot: 0, generation: 1, why: "link down".into() });
    open_and_probe(&mut d, 1, 2, &b);
    feed(&mut d, Incoming::Agent { slot: 1, message: FromAgent::OutboxResent { count: 0 } });
    assert!(b.runs().is_empty(), "the lost job may have finished on node a: nothing starts until a says so");
    // Node a is back and hands over the job that finished while it was cut off.
    let (a2, job) = (Recorder::default(), AttemptId { job_id: started[0].clone(), attempt: 1 });
    open_and_probe(&mut d, 0, 3, &a2);
    let exp = &driven.plan.expansion;
    let index = exp.jobs.iter().position(|j| exp.job_id(j) == job.job_id).expect("job");
    let spec = point_spec(&driven.plan.sweep, exp, &exp.points[exp.jobs[index].point as usize]);
    let result = Box::new(super::fake::result_of(&job, &spec));
    feed(
        &mut d,
        Incoming::Agent { slot: 0, message: FromAgent::Finished { id: job.clone(), result, artifacts: vec![] } },
    );
    feed(&mut d, Incoming::Agent { slot: 0, message: FromAgent::OutboxResent { count: 1 } });
    let now_started: Vec<String> = a2.runs().into_iter().chain(b.runs()).collect();
    assert_eq!(now_started.len(), 2, "{now_started:?}");
    assert!(!now_started.contains(&job.job_id), "the collected job ran again: {now_started:?}");
}

#[test]
fn what_an_agent_sends_before_its_session_is_reported_open_is_not_lost() {
    use super::connect::Incoming;
    use llem_common::protocol::{FromAgent, ToAgent};
    let driven = Driven::new();
    let mut d = driven.dispatcher();
    // The agent re-sends an attempt from its outbox before `Opened` reaches the loop: the
    // acknowledgement waits for the session, then goes out.
    d.sessions[0] = super::dispatcher::SlotSession::Opening { generation: 1, queued: Vec::new(), ended: None };
    let exp = &driven.plan.expansion;
    let early = AttemptId { job_id: exp.job_id(&exp.jobs[0]), attempt: 1 };
    let spec = point_spec(&driven.plan.sweep, exp, &exp.points[exp.jobs[0].point as usize]);
    let result = Box::new(super::fake::result_of(&early, &spec));
    feed(
        &mut d,
        Incoming::Agent { slot: 0, message: FromAgent::Finished { id: early.clone(), result, artifacts: vec![] } },
    );
    let a = Recorder::default();
    feed(&mut d, Incoming::Opened { slot: 0, generation: 1, outcome: Ok(Box::new(a.clone())) });
    let sent = a.0.lock().expect("lock").clone();
    assert!(sent.contains(&ToAgent::Ack { id: early }), "{sent:?}");
    // A session whose stream ended before it was reported open counts as gone.
    d.sessions[1] = super::dispatcher::SlotSession::Opening { generation: 2, queued: Vec::new(), ended: None };
    feed(&mut d, Incoming::Gone { slot: 1, generation: 2, why: "exited".into() });
    feed(&mut d, Incoming::Opened { slot: 1, generation: 2, outcome: Ok(Box::new(Recorder::default())) });
    assert!(!matches!(d.sessions[1], super::dispatcher::SlotSession::Open { .. }), "a dead session is not used");
}

#[test]
fn resources_that_end_stop_the_run_and_fail_no_job() {
    let dir = tempfile::tempdir().expect("tmp");
    let why = "Slurm allocation 7 has ended: it reached its time limit (00:01:00)".to_owned();
    let script = || Script { drop_on_run: 1.into(), ended: Some(why.clone()), ..Script::default() };
    let (_, a) = fake(script());
    let (_, b) = fake(script());
    let done = dispatch(dir.path(), plan_in(dir.path(), JOBS), Earlier::default(), vec![a, b], |_| {});
    assert_eq!(done.ending, Ending::Stopped(why.clone()));
    let stopped = done.events("stopped");
    assert_eq!(stopped.len(), 1, "{:#?}", done.records);
    assert_eq!(stopped[0]["why"], why.as_str());
    assert!(done.events("finished").is_empty());
    let failed = done.events("failed");
    assert!(!failed.is_empty() && failed.iter().all(|r| r["retryable"] == true), "{:#?}", done.records);
    // Every dispatched attempt has its outcome: resume runs each job again, none twice.
    assert_eq!(done.events("dispatched").len(), failed.len(), "{:#?}", done.records);
}
