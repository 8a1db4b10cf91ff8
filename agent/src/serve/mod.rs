//! `llem-agent serve --stdio`: the agent as the coordinator drives it, over a byte stream
//! (a child's stdin/stdout locally, an SSH channel remotely). stdout carries protocol
//! frames only; logs go to stderr.
//!
//! Each `run` executes in a worker thread through the same locked sequence as
//! `llem-agent run`, into the node-local outbox (`outbox.rs`), and is delivered from
//! there: its files in chunks, then `finished` with their manifest. The attempt stays in
//! the outbox until the coordinator's `ack`; `resend` delivers it again, and every
//! unacknowledged attempt is delivered again after the next `hello`, so a coordinator
//! that died, or a connection that dropped, after a job finished loses nothing.
//! `probe` and `prepare` are answered at once, from this loop.

use std::io::BufReader;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use llem_common::failure::FailureKind;
use llem_common::protocol::{is_safe_artifact_name, read_frame, AttemptId, FromAgent, Hello, Phase, ToAgent};
use llem_common::spec::ExperimentSpec;

use crate::run::{run_job_observed, Observers};
use crate::sequence::PhaseObserver;
use crate::workload::Cancel;

mod outbox;

use outbox::{safe_id, send, Out, Outbox};

struct Running {
    id: AttemptId,
    cancel: Cancel,
    /// Set when the job itself is over (lock released) and only its report is left to
    /// send: the coordinator may already be sending the next `Run`.
    reporting: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn failed(out: &Out, id: AttemptId, kind: FailureKind, message: impl Into<String>) {
    send(out, &FromAgent::Failed { id, kind, message: message.into() });
}

/// Serves one coordinator until it says `Shutdown` or goes away: its input ends, or it
/// stays silent for longer than its hello's heartbeat allows.
pub fn serve(state: &Path, base_dir: &Path) -> Result<()> {
    // Unlocked: after the hello, a reader thread owns it.
    let mut input = BufReader::new(std::io::stdin());
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().context("cannot use stdout")?;
    let out: Out = Arc::new(Mutex::new(std::fs::File::from(stdout)));
    let host = crate::probe::host_snapshot("").hostname;
    let ours = Hello::new(host);
    // This session's outbox: the run's own, so a resend never hands one run's result
    // to another run of the same jobs.
    let (outbox, silence_limit) =
        match read_frame::<ToAgent>(&mut input).context("cannot read the coordinator's hello")? {
            Some(ToAgent::Hello(theirs)) => {
                let silence_limit = theirs.silence_limit();
                send(&out, &FromAgent::Hello(ours.clone()));
                ours.check(&theirs)?;
                // Outboxes are per run: without a run's own name, results could reach another
                // run, which must never happen.
                let Some(run) = theirs.run.filter(|r| is_safe_artifact_name(r)) else {
                    let message = "the coordinator's hello names no run (or not as a plain name): refused".to_owned();
                    send(&out, &FromAgent::Log { id: None, level: "error".to_owned(), message: message.clone() });
                    bail!(message);
                };
                (Outbox::new(state.join("outbox").join(run)), silence_limit)
            }
            Some(other) => bail!("the coordinator spoke before saying hello: {other:?}"),
            None => return Ok(()),
        };
    let pending = outbox.pending();
    for id in &pending {
        tracing::info!("re-sending {}/attempt-{} from the outbox", id.job_id, id.attempt);
        outbox.deliver(&out, id);
    }
    send(&out, &FromAgent::OutboxResent { count: pending.len() as u32 });
    let messages = read_in_thread(input);
    let mut running: Option<Running> = None;
    loop {
        let message = match silence_limit {
            Some(limit) => match messages.recv_timeout(limit) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::error!(
                        "no word from the coordinator for {:.0} s (it promised a heartbeat every {:.1} s): it is gone; stopping",
                        limit.as_secs_f64(),
                        limit.as_secs_f64() / llem_common::protocol::HEARTBEAT_MISSES
                    );
                    None
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
            None => messages.recv().ok().flatten(),
        };
        match message {
            // The coordinator is gone (or said goodbye): stop the job, release the lock.
            None | Some(ToAgent::Shutdown) => {
                if let Some(r) = running.take() {
                    r.cancel.request();
                    let _ = r.thread.join();
                }
                return Ok(());
            }
            Some(ToAgent::Hello(_) | ToAgent::Heartbeat) => {}
            Some(ToAgent::Ack { id }) => {
                if safe_id(&id) {
                    outbox.remove(&id);
                }
            }
            Some(ToAgent::Resend { id }) => {
                // Off this loop: a large attempt takes a while, and a cancel may come.
                let (out, outbox) = (Arc::clone(&out), outbox.clone());
                std::thread::spawn(move || {
                    if safe_id(&id) && !outbox.deliver(&out, &id) {
                        tracing::warn!(
                            "asked to re-send {}/attempt-{}, which is not in the outbox",
                            id.job_id,
                            id.attempt
                        );
                    }
                });
            }
            Some(ToAgent::Probe) => {
                send(&out, &FromAgent::Probed { report: Box::new(crate::probe::probe()) });
            }
            Some(ToAgent::Prepare { model }) => {
                let status = crate::prepare::check_model(base_dir, &model);
                send(&out, &FromAgent::Prepared { model, status });
            }
            Some(ToAgent::Cancel { id }) => {
                if let Some(r) = running.as_ref().filter(|r| r.id == id) {
                    tracing::info!("cancelling {}/attempt-{}", id.job_id, id.attempt);
                    r.cancel.request();
                }
            }
            Some(ToAgent::Run { id, spec, gpus }) => {
                if !safe_id(&id) {
                    failed(&out, id, FailureKind::BadJob, "the job id is not `<hex>-c<cycle>`");
                    continue;
                }
                // The previous attempt's report is on its way out: wait for it to be sent.
                if let Some(r) = running.take_if(|r| r.reporting.load(Ordering::SeqCst) || r.thread.is_finished()) {
                    let _ = r.thread.join();
                }
                if let Some(r) = &running {
                    failed(&out, id, FailureKind::Busy, format!("the agent is busy with {}", r.id.job_id));
                    continue;
                }
                running = Some(start(&out, &outbox, state, base_dir, id, *spec, gpus));
            }
        }
    }
}

/// Forwards the coordinator's messages from a thread of their own, so that silence can
/// be timed; `None` once the stream ends or breaks. (Nudges, which a coordinator sends
/// over srun, are skipped by `read_frame`.)
fn read_in_thread(mut input: BufReader<std::io::Stdin>) -> Receiver<Option<ToAgent>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        let message = match read_frame::<ToAgent>(&mut input) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("protocol error: {e}");
                None
            }
        };
        let end = message.is_none();
        if tx.send(message).is_err() || end {
            return;
        }
    });
    rx
}

/// Runs one attempt in a worker thread, into the outbox, and delivers it from there.
fn start(
    out: &Out,
    outbox: &Outbox,
    state: &Path,
    base_dir: &Path,
    id: AttemptId,
    spec: ExperimentSpec,
    gpus: Vec<u32>,
) -> Running {
    let cancel = Cancel::default();
    let reporting = Arc::new(AtomicBool::new(false));
    let (out, outbox, state, base_dir) = (Arc::clone(out), outbox.clone(), state.to_owned(), base_dir.to_owned());
    let (job, stop, done) = (id.clone(), cancel.clone(), Arc::clone(&reporting));
    let thread = std::thread::spawn(move || {
        let dir = outbox.attempt_dir(&job);
        let _ = std::fs::remove_dir_all(&dir);
        send(&out, &FromAgent::Phase { id: job.clone(), phase: Phase::WaitingForLock });
        let (phase_out, phase_id) = (Arc::clone(&out), job.clone());
        // Live power goes out from a thread of its own: the sampler must never wait on
        // stdout (a resend may be writing 5 MiB frames there); a sample that finds the
        // previous one still waiting is dropped.
        let (power_tx, power_rx) = std::sync::mpsc::sync_channel::<f64>(1);
        let (power_out, power_id) = (Arc::clone(&out), job.clone());
        std::thread::spawn(move || {
            for watts in power_rx {
                let sample = FromAgent::Sample { id: power_id.clone(), power_w: Some(watts), tokens_per_s: None };
                send(&power_out, &sample);
            }
        });
        let observers = Observers {
            phase: PhaseObserver(Some(Arc::new(move |phase| {
                send(&phase_out, &FromAgent::Phase { id: phase_id.clone(), phase });
            }))),
            power: Some(Arc::new(move |watts| {
                let _ = power_tx.try_send(watts);
            })),
            gpus,
        };
        let outcome = run_job_observed(&spec, &job.job_id, &base_dir, &dir, &state, stop.clone(), observers);
        done.store(true, Ordering::SeqCst);
        match outcome {
            Ok(_) => {
                outbox.deliver(&out, &job);
            }
            Err(e) => {
                // A cancelled or failed attempt leaves nothing to count.
                let _ = std::fs::remove_dir_all(&dir);
                let kind = if stop.is_requested() { FailureKind::Cancelled } else { e.kind };
                failed(&out, job, kind, e.message);
            }
        }
    });
    Running { id, cancel, reporting, thread }
}
