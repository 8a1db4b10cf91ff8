//! What the dispatcher does with each message an agent sends: progress, files, results
//! (acknowledged only once every listed file arrived intact), failures, probe reports and
//! prepared models.

use anyhow::Result;
use llem_common::failure::FailureKind;
use llem_common::probe::{ModelStatus, ProbeReport};
use llem_common::protocol::{ArtifactEntry, AttemptId, FromAgent, Hello, ToAgent};
use llem_common::result::JobResult;
use llem_common::util::{now_rfc3339, write_atomic};

use super::dispatcher::Dispatcher;
use super::journal::Record;
use crate::scheduler::{Event, JobState};

/// How often one attempt's delivery is asked for again before the attempt counts as
/// lost (and is retried as a new attempt, where retries are left).
pub const MAX_RESENDS: u32 = 2;

fn describe_energy(r: &JobResult) -> String {
    let tokens = format!("{} tokens in {:.2} s", r.tokens.output, r.duration_s);
    match r.energy.total_j {
        Some(j) => format!("{tokens}, {j:.2} J"),
        None => format!("{tokens}, energy not measured"),
    }
}

impl Dispatcher<'_> {
    pub(super) fn agent_message(&mut self, slot: usize, message: FromAgent, now: f64) -> Result<Option<Event>> {
        match message {
            FromAgent::Hello(theirs) => match Hello::new("coordinator").check(&theirs) {
                Ok(()) => Ok(None),
                // Another protocol: nothing can be done with that node's agents.
                Err(e) => self.node_lost(self.node_of(slot), &e.to_string()),
            },
            FromAgent::OutboxResent { count } => {
                if count > 0 {
                    let text = format!("collected {count} finished attempt(s) from {}", self.slot_names[slot]);
                    self.progress.line(&text);
                }
                self.outbox_resent(slot);
                Ok(Some(Event::Tick { now }))
            }
            FromAgent::Phase { id, phase } => {
                tracing::debug!("{} attempt {}: {phase:?}", id.job_id, id.attempt);
                self.progress.slot_phase(slot, &format!("{phase:?}").to_lowercase());
                Ok(None)
            }
            FromAgent::Sample { power_w, .. } => {
                self.progress.slot_watts(slot, power_w);
                Ok(None)
            }
            FromAgent::Log { message, .. } => {
                tracing::info!("agent {}: {message}", self.slot_names[slot]);
                Ok(None)
            }
            FromAgent::ArtifactChunk { id, name, offset, base64 } => {
                if self.index.contains_key(&id.job_id) {
                    let dir = self.run.attempt_dir(&id.job_id, id.attempt);
                    if let Err(e) = self.inbox.chunk(slot, &id, &dir, &name, offset, &base64) {
                        tracing::error!("{e}");
                    }
                }
                Ok(None)
            }
            FromAgent::Finished { id, result, artifacts } => {
                self.progressed(slot);
                self.finished(slot, id, *result, &artifacts, now)
            }
            FromAgent::Failed { id, kind, message } => {
                self.progressed(slot);
                let Some(&job) = self.index.get(&id.job_id) else { return Ok(None) };
                if !matches!(self.state.states[job as usize], JobState::Running { attempt, .. } if attempt == id.attempt)
                {
                    return Ok(None);
                }
                Ok(Some(self.attempt_failed(job, id.attempt, kind, &message)?))
            }
            FromAgent::Probed { report } => self.probed(slot, &report, now),
            FromAgent::Prepared { model, status } => self.prepared(slot, &model, status, now),
        }
    }

    fn probed(&mut self, slot: usize, report: &ProbeReport, now: f64) -> Result<Option<Event>> {
        let node = self.node_of(slot);
        self.answered(slot);
        let name = self.node_name(node).to_owned();
        self.run.write_probe(&name, report)?;
        let gpus = report.node.gpus.len();
        let sources = report.available_sources().join(", ");
        tracing::info!("node {name}: {} ({gpus} GPUs; energy: {sources})", report.node.hostname);
        // GPUs the agent cannot drive: said before any job runs there, not by each job's failure.
        if gpus > 0 && !report.cuda.usable && self.state.gpu_jobs_read_models(node) {
            self.progress.line(&format!(
                "node {name} has {gpus} GPUs, but its agent cannot run candle on them: {}",
                report.cuda.detail
            ));
        }
        Ok(Some(Event::Probed { node, now }))
    }

    fn prepared(&mut self, slot: usize, model: &str, status: ModelStatus, now: f64) -> Result<Option<Event>> {
        let node = self.node_of(slot);
        self.answered(slot);
        let Some(m) = self.plan.expansion.models.iter().position(|r| r.reads_files && r.name == model) else {
            return Ok(None);
        };
        let ok = status.is_ready();
        if let ModelStatus::Unavailable { reason, .. } = &status {
            self.progress.line(&format!("model {model} is not usable on node {}: {reason}", self.node_name(node)));
        }
        let found = self.prepared.entry(node).or_default();
        found.insert(model.to_owned(), serde_json::to_value(&status).unwrap_or_default());
        let found = serde_json::Value::Object(found.clone());
        let name = self.node_name(node).to_owned();
        self.run.write_prepared(&name, &found)?;
        Ok(Some(Event::Prepared { node, model: m as u32, ok, now }))
    }

    fn ack(&mut self, slot: usize, id: AttemptId) {
        // If the session is gone the ack is lost, which is harmless: the outbox delivers
        // the attempt again, and a stored one is not counted twice.
        self.send(slot, &ToAgent::Ack { id });
    }

    /// A delivery that did not arrive intact is asked for again; after [`MAX_RESENDS`]
    /// the attempt counts as lost (it stays in the agent's outbox all the same).
    fn delivery_failed(&mut self, slot: usize, id: AttemptId, why: &str) -> Result<Option<Event>> {
        let tries = self.resends.entry(id.clone()).or_default();
        *tries += 1;
        if *tries <= MAX_RESENDS {
            let text = format!("{} attempt {} arrived incomplete ({why}): asking for it again", id.job_id, id.attempt);
            self.progress.line(&text);
            self.send(slot, &ToAgent::Resend { id });
            return Ok(None);
        }
        let Some(&job) = self.index.get(&id.job_id) else { return Ok(None) };
        if !matches!(self.state.states[job as usize], JobState::Running { attempt, .. } if attempt == id.attempt) {
            return Ok(None);
        }
        let error = format!("its files did not arrive intact after {MAX_RESENDS} more tries: {why}");
        Ok(Some(self.attempt_failed(job, id.attempt, FailureKind::LostConnection, &error)?))
    }

    fn finished(
        &mut self,
        slot: usize,
        id: AttemptId,
        result: JobResult,
        artifacts: &[ArtifactEntry],
        now: f64,
    ) -> Result<Option<Event>> {
        let Some(&job) = self.index.get(&id.job_id) else {
            // Not part of this plan (an old outbox entry): acknowledge so it is dropped.
            self.ack(slot, id);
            return Ok(None);
        };
        let dir = self.run.attempt_dir(&id.job_id, id.attempt);
        if matches!(self.state.states[job as usize], JobState::Succeeded { .. }) {
            // Already stored (a resent outbox entry): never counted twice.
            let _ = self.inbox.complete(slot, &id, &dir, &[]);
            self.ack(slot, id);
            return Ok(None);
        }
        std::fs::create_dir_all(&dir)?;
        if let Err(e) = self.inbox.complete(slot, &id, &dir, artifacts) {
            tracing::error!("{e}");
            return self.delivery_failed(slot, id, &e.to_string());
        }
        write_atomic(&dir.join("result.json"), &serde_json::to_vec_pretty(&result)?)?;
        // The journal line makes it count; only then may the agent forget it.
        self.record(&Record::Finished { job: id.job_id.clone(), attempt: id.attempt, at: now_rfc3339() })?;
        self.progress.ended(&id.job_id, &format!("finished: {}", describe_energy(&result)), false);
        self.progress.slot_job(slot, None);
        self.resends.remove(&id);
        self.ack(slot, id.clone());
        if matches!(self.state.states[job as usize], JobState::Running { attempt, .. } if attempt == id.attempt) {
            return Ok(Some(Event::Succeeded { job, attempt: id.attempt, now }));
        }
        // Finished in an earlier, interrupted run and delivered from the outbox. If a newer
        // attempt already started, it is redundant: stop it.
        if let JobState::Running { attempt, .. } = self.state.states[job as usize] {
            let newer = AttemptId { job_id: id.job_id.clone(), attempt };
            for s in 0..self.sessions.len() {
                self.send(s, &ToAgent::Cancel { id: newer.clone() });
            }
        }
        self.state.mark_done(job, id.attempt);
        Ok(Some(Event::Tick { now }))
    }
}
