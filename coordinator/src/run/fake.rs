//! A fake transport for the dispatcher's tests (as HyperQueue's tako tests its reactor
//! with a fake comm): each session is an in-process agent that speaks the protocol's
//! messages on the dispatcher's channel, following a script the test sets — slow or
//! failing connects, sessions that drop, an outbox left by an earlier run, deliveries cut
//! short, models missing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use llem_common::failure::FailureKind;
use llem_common::probe::{ModelStatus, ProbeReport, SourceStatus};
use llem_common::protocol::{ArtifactEntry, AttemptId, FromAgent, Hello, ToAgent};
use llem_common::result::JobResult;
use llem_common::spec::ExperimentSpec;
use sha2::{Digest, Sha256};

use super::connect::{ConnectError, Connector, Incoming, OpenRequest, Session};

/// What a fake node does.
#[derive(Debug, Default)]
pub struct Script {
    /// Opens wait until the test sends on (or drops) the gate's other end.
    pub gate: Mutex<Option<Receiver<()>>>,
    /// Told when an open begins.
    pub opening: Mutex<Option<Sender<()>>>,
    /// The next this many `run`s end the session instead (a dropped connection).
    pub drop_on_run: AtomicU32,
    /// Runs never finish on their own: they end when cancelled.
    pub hold_runs: bool,
    /// The next this many deliveries send only half of each file.
    pub cut_deliveries: AtomicU32,
    /// Finished attempts waiting for an ack (an earlier run's outbox, then this one's).
    pub outbox: Mutex<BTreeMap<AttemptId, ExperimentSpec>>,
    /// Models this node does not have.
    pub missing_models: Vec<String>,
    /// The agent dies when asked to probe (a driver that crashes it, say).
    pub crash_on_probe: bool,
    /// Told of every `run` as it arrives.
    pub runs: Mutex<Option<Sender<AttemptId>>>,
    /// How many sessions were opened.
    pub opens: AtomicU32,
    /// How many probes were answered.
    pub probes: AtomicU32,
    /// Reconnects say that the run's resources ended (a Slurm allocation's time limit).
    pub ended: Option<String>,
}

impl Script {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A gate for opens: they wait until the returned sender sends or is dropped.
    pub fn gated(self) -> (Self, Sender<()>) {
        let (tx, rx) = channel();
        *Self::lock(&self.gate) = Some(rx);
        (self, tx)
    }
}

#[derive(Debug)]
pub struct FakeConnector {
    pub script: Arc<Script>,
}

impl FakeConnector {
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(FakeConnector { script: Arc::new(script) })
    }
}

impl Connector for FakeConnector {
    fn deploy(&self) -> Result<String, ConnectError> {
        Ok("fake-agent".to_owned())
    }

    fn open(&self, request: OpenRequest) -> Result<Box<dyn Session>, ConnectError> {
        if let Some(tell) = Script::lock(&self.script.opening).as_ref() {
            let _ = tell.send(());
        }
        if let Some(gate) = Script::lock(&self.script.gate).as_ref() {
            let _ = gate.recv();
        }
        self.script.opens.fetch_add(1, Ordering::SeqCst);
        let (to_agent, inbox) = channel();
        let script = Arc::clone(&self.script);
        std::thread::spawn(move || FakeAgent { script, request }.serve(&inbox));
        Ok(Box::new(FakeSession { to_agent }))
    }

    fn reconnect(&self) -> Result<(), ConnectError> {
        match &self.script.ended {
            Some(why) => Err(ConnectError::Ended(why.clone())),
            None => Ok(()),
        }
    }

    fn round_trip(&self) -> Result<Duration, ConnectError> {
        Ok(Duration::ZERO)
    }

    fn close(&self) {}
}

#[derive(Debug)]
struct FakeSession {
    to_agent: Sender<ToAgent>,
}

impl Session for FakeSession {
    fn send(&mut self, message: &ToAgent) -> anyhow::Result<()> {
        self.to_agent.send(message.clone()).map_err(|_| anyhow::anyhow!("the fake agent is gone"))
    }
    fn kill(self: Box<Self>) {}
    fn shutdown(self: Box<Self>) {
        let _ = self.to_agent.send(ToAgent::Shutdown);
    }
}

/// A file of every attempt: 100 bytes derived from its id.
pub fn artifact_of(id: &AttemptId) -> Vec<u8> {
    let seed = Sha256::digest(format!("{}/{}", id.job_id, id.attempt));
    (0..100).map(|i| seed[i % 32] ^ i as u8).collect()
}

/// A result for an attempt (the checked-in v1 result, relabelled).
pub fn result_of(id: &AttemptId, spec: &ExperimentSpec) -> JobResult {
    let mut r =
        JobResult::from_json(include_str!("../../../tests/fixtures/result-v1.json")).unwrap_or_else(|e| panic!("{e}"));
    r.job_id.clone_from(&id.job_id);
    r.spec = spec.clone();
    r
}

struct FakeAgent {
    script: Arc<Script>,
    request: OpenRequest,
}

impl FakeAgent {
    fn say(&self, message: FromAgent) {
        let _ = self.request.events.send(Incoming::Agent { slot: self.request.slot, message });
    }

    fn deliver(&self, id: &AttemptId) {
        let Some(spec) = Script::lock(&self.script.outbox).get(id).cloned() else { return };
        let bytes = artifact_of(id);
        let cut =
            self.script.cut_deliveries.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        let sent = if cut { &bytes[..50] } else { &bytes[..] };
        for (offset, chunk) in [(0, &sent[..sent.len().min(60)]), (60, sent.get(60..).unwrap_or_default())] {
            if offset == 0 || !chunk.is_empty() {
                let base64 = base64::engine::general_purpose::STANDARD.encode(chunk);
                self.say(FromAgent::ArtifactChunk {
                    id: id.clone(),
                    name: "timeseries.parquet".into(),
                    offset,
                    base64,
                });
            }
        }
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let artifacts = vec![ArtifactEntry { name: "timeseries.parquet".into(), bytes: 100, sha256 }];
        self.say(FromAgent::Finished { id: id.clone(), result: Box::new(result_of(id, &spec)), artifacts });
    }

    fn serve(self, inbox: &Receiver<ToAgent>) {
        let why = self.answer(inbox);
        let (slot, generation) = (self.request.slot, self.request.generation);
        let _ = self.request.events.send(Incoming::Gone { slot, generation, why: why.to_owned() });
    }

    fn answer(&self, inbox: &Receiver<ToAgent>) -> &'static str {
        self.say(FromAgent::Hello(Hello::new("fake-node")));
        let waiting: Vec<AttemptId> = Script::lock(&self.script.outbox).keys().cloned().collect();
        for id in &waiting {
            self.deliver(id);
        }
        self.say(FromAgent::OutboxResent { count: waiting.len() as u32 });
        let mut running: Option<AttemptId> = None;
        while let Ok(message) = inbox.recv() {
            match message {
                ToAgent::Run { id, spec, .. } => {
                    if let Some(tell) = Script::lock(&self.script.runs).as_ref() {
                        let _ = tell.send(id.clone());
                    }
                    if self
                        .script
                        .drop_on_run
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return "the connection dropped";
                    }
                    if self.script.hold_runs {
                        running = Some(id);
                        continue;
                    }
                    Script::lock(&self.script.outbox).insert(id.clone(), *spec);
                    self.deliver(&id);
                }
                ToAgent::Cancel { id } if running.as_ref() == Some(&id) => {
                    running = None;
                    self.say(FromAgent::Failed { id, kind: FailureKind::Cancelled, message: "cancelled".into() });
                }
                ToAgent::Ack { id } => {
                    Script::lock(&self.script.outbox).remove(&id);
                }
                ToAgent::Resend { id } => self.deliver(&id),
                ToAgent::Probe => {
                    self.script.probes.fetch_add(1, Ordering::SeqCst);
                    if self.script.crash_on_probe {
                        return "the agent crashed";
                    }
                    let source = SourceStatus { name: "none".into(), available: true, detail: "fake".into() };
                    let report = ProbeReport {
                        node: Default::default(),
                        energy_sources: vec![source],
                        cuda: Default::default(),
                        sampler_cost: Vec::new(),
                    };
                    self.say(FromAgent::Probed { report: Box::new(report) });
                }
                ToAgent::Prepare { model } => {
                    let status = if self.script.missing_models.contains(&model) {
                        ModelStatus::Unavailable { path: model.clone(), reason: "No such file or directory".into() }
                    } else {
                        ModelStatus::Ready { path: model.clone(), bytes: 1, files: 1, fast_sha256: "0".repeat(64) }
                    };
                    self.say(FromAgent::Prepared { model, status });
                }
                ToAgent::Shutdown => return "shut down",
                ToAgent::Hello(_) | ToAgent::Cancel { .. } | ToAgent::Heartbeat => {}
            }
        }
        "the coordinator went away"
    }
}
