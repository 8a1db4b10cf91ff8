//! `llem-agent serve --stdio`: the agent as the coordinator drives it, over a byte stream
//! (a child's stdin/stdout locally, an SSH channel remotely). stdout carries protocol
//! frames only; logs go to stderr.
//!
//! Each `Run` executes in a worker thread through the same locked sequence as
//! `llem-agent run`, into the node-local outbox `<state>/outbox/<run>/<job>/attempt-<n>/`
//! (`<run>` from the coordinator's hello). The
//! agent sends the attempt's files as `Artifact`s, then `Finished`; the directory stays
//! until the coordinator's `Ack`, and every un-acked attempt is sent again after the next
//! `Hello` — a coordinator that died after a job finished loses nothing.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use llem_common::protocol::{
    is_safe_artifact_name, read_frame, write_frame, AttemptId, FromAgent, Hello, Phase, ToAgent,
};
use llem_common::result::JobResult;
use sha2::{Digest, Sha256};

use crate::run::{run_job_observed, Observers};
use crate::sequence::PhaseObserver;
use crate::workload::Cancel;

type Out = Arc<Mutex<std::io::Stdout>>;

fn send(out: &Out, message: &FromAgent) {
    let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = write_frame(&mut *guard, message) {
        tracing::warn!("failed to send to the coordinator: {e}");
    }
}

/// A job id is `<16 hex>-c<cycle>`: checked before it names a directory.
fn safe_id(id: &AttemptId) -> bool {
    !id.job_id.is_empty() && id.job_id.len() <= 64 && id.job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn attempt_dir(outbox: &Path, id: &AttemptId) -> PathBuf {
    outbox.join(&id.job_id).join(format!("attempt-{}", id.attempt))
}

/// Sends an outbox entry: its files, then the result.
fn deliver(out: &Out, dir: &Path, id: &AttemptId, result: JobResult) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    names.sort();
    for name in names.into_iter().filter(|n| n != "result.json" && !n.starts_with('.')) {
        match std::fs::read(dir.join(&name)) {
            Ok(bytes) => {
                let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                let base64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                send(out, &FromAgent::Artifact { id: id.clone(), name, sha256, base64 });
            }
            Err(e) => tracing::warn!("failed to read {}: {e}", dir.join(&name).display()),
        }
    }
    send(out, &FromAgent::Finished { id: id.clone(), result: Box::new(result) });
}

/// Re-sends every finished attempt the coordinator has not acknowledged; returns how many.
fn resend_outbox(out: &Out, outbox: &Path) -> u32 {
    let mut count = 0;
    let Ok(jobs) = std::fs::read_dir(outbox) else { return count };
    for job in jobs.flatten() {
        let Ok(attempts) = std::fs::read_dir(job.path()) else { continue };
        for attempt in attempts.flatten() {
            let dir = attempt.path();
            let Ok(text) = std::fs::read_to_string(dir.join("result.json")) else { continue };
            let Ok(result) = JobResult::from_json(&text) else { continue };
            let n = dir.file_name().and_then(|n| n.to_str()?.strip_prefix("attempt-")?.parse().ok()).unwrap_or(0);
            let id = AttemptId { job_id: job.file_name().to_string_lossy().into_owned(), attempt: n };
            tracing::info!("re-sending {}/attempt-{} from the outbox", id.job_id, id.attempt);
            deliver(out, &dir, &id, result);
            count += 1;
        }
    }
    count
}

struct Running {
    id: AttemptId,
    cancel: Cancel,
    /// Set when the job itself is over (lock released) and only its report is left to
    /// send: the coordinator may already be sending the next `Run`.
    reporting: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Serves one coordinator until it says `Shutdown` or goes away.
pub fn serve(state: &Path, base_dir: &Path) -> Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let host = crate::probe::host_snapshot("").hostname;
    let ours = Hello::new(host);
    // This session's outbox: the run's own, so a resend never hands one run's result
    // to another run of the same jobs.
    let outbox = match read_frame::<ToAgent>(&mut input).context("read the coordinator's hello")? {
        Some(ToAgent::Hello(theirs)) => {
            send(&out, &FromAgent::Hello(ours.clone()));
            ours.check(&theirs)?;
            let run = theirs.run.filter(|r| is_safe_artifact_name(r)).unwrap_or_else(|| "unnamed-run".to_owned());
            state.join("outbox").join(run)
        }
        Some(other) => bail!("the coordinator spoke before saying hello: {other:?}"),
        None => return Ok(()),
    };
    let count = resend_outbox(&out, &outbox);
    send(&out, &FromAgent::OutboxResent { count });
    let mut running: Option<Running> = None;
    loop {
        if running.as_ref().is_some_and(|r| r.thread.is_finished()) {
            if let Some(r) = running.take() {
                let _ = r.thread.join();
            }
        }
        let message = match read_frame::<ToAgent>(&mut input) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("protocol error: {e}");
                None
            }
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
            Some(ToAgent::Hello(_)) => {}
            Some(ToAgent::Ack { id }) => {
                if safe_id(&id) {
                    let _ = std::fs::remove_dir_all(attempt_dir(&outbox, &id));
                    // Emptied directories go too (removing one that is not empty fails).
                    let _ = std::fs::remove_dir(outbox.join(&id.job_id));
                    let _ = std::fs::remove_dir(&outbox);
                }
            }
            Some(ToAgent::Cancel { id }) => {
                if let Some(r) = running.as_ref().filter(|r| r.id == id) {
                    tracing::info!("cancelling {}/attempt-{}", id.job_id, id.attempt);
                    r.cancel.request();
                }
            }
            Some(ToAgent::Run { id, spec }) => {
                if !safe_id(&id) {
                    send(&out, &FromAgent::Failed { id, error: "invalid job id".to_owned(), retryable: false });
                    continue;
                }
                // The previous attempt's report is on its way out: wait for it to be sent.
                if let Some(r) = running.take_if(|r| r.reporting.load(std::sync::atomic::Ordering::SeqCst)) {
                    let _ = r.thread.join();
                }
                if let Some(r) = running.as_ref().filter(|r| !r.thread.is_finished()) {
                    let error = format!("busy with {}", r.id.job_id);
                    send(&out, &FromAgent::Failed { id, error, retryable: true });
                    continue;
                }
                let cancel = Cancel::default();
                let (out2, state2, base2, id2, cancel2) =
                    (Arc::clone(&out), state.to_owned(), base_dir.to_owned(), id.clone(), cancel.clone());
                let outbox2 = outbox.clone();
                let reporting = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reporting2 = Arc::clone(&reporting);
                let thread = std::thread::spawn(move || {
                    let dir = attempt_dir(&outbox2, &id2);
                    let _ = std::fs::remove_dir_all(&dir);
                    send(&out2, &FromAgent::Phase { id: id2.clone(), phase: Phase::WaitingForLock });
                    let (o_phase, o_power, pid, wid) = (Arc::clone(&out2), Arc::clone(&out2), id2.clone(), id2.clone());
                    let observers = Observers {
                        phase: PhaseObserver(Some(Arc::new(move |phase| {
                            send(&o_phase, &FromAgent::Phase { id: pid.clone(), phase })
                        }))),
                        power: Some(Arc::new(move |watts| {
                            send(
                                &o_power,
                                &FromAgent::Sample { id: wid.clone(), power_w: Some(watts), tokens_per_s: None },
                            );
                        })),
                    };
                    let outcome =
                        run_job_observed(&spec, &id2.job_id, &base2, &dir, &state2, cancel2.clone(), observers);
                    reporting2.store(true, std::sync::atomic::Ordering::SeqCst);
                    match outcome {
                        Ok(result) => deliver(&out2, &dir, &id2, result),
                        Err(e) => {
                            // A cancelled or failed attempt leaves nothing to count.
                            let _ = std::fs::remove_dir_all(&dir);
                            let cancelled = cancel2.is_requested();
                            let error = if cancelled { "cancelled".to_owned() } else { format!("{e:#}") };
                            let retryable = !cancelled && !error.contains("out of memory");
                            send(&out2, &FromAgent::Failed { id: id2, error, retryable });
                        }
                    }
                    let _ = out2.lock().map(|mut o| o.flush());
                });
                running = Some(Running { id, cancel, reporting, thread });
            }
        }
    }
}
