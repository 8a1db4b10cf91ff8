//! An agent session over a child process's stdin/stdout: `llem-agent serve --stdio`
//! itself locally, or `ssh … -- <agent> serve --stdio`. A reader thread forwards every
//! frame to the dispatcher's channel and reports `Gone` when the stream ends. Used by the
//! local and SSH connectors alike.
//!
//! A session ends by closing the agent's input first: the agent then stops its job (its
//! engine, a `command` program) and releases the lock before it exits. Only one that has
//! not exited after a grace period is killed.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an agent whose input closed may take to stop its job and exit.
const GRACE: Duration = Duration::from_secs(5);
/// How long an agent told to shut down may take (it is idle: at once, normally).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

use anyhow::{Context as _, Result};
use llem_common::protocol::{write_frame, FrameReader, FromAgent, ToAgent};

use super::connect::{ConnectError, Incoming, OpenRequest, Session};

/// The agent's input: `None` once closed (the agent then sees its input end). Shared with
/// the reader threads, which may nudge through it.
type Input = super::srun_io::NudgeInput;

/// A child process speaking the protocol.
#[derive(Debug)]
pub struct ChildSession {
    child: Child,
    input: Input,
}

impl ChildSession {
    /// Starts `command` (stderr to the request's log), says hello, and forwards what the
    /// agent sends from a reader thread.
    pub fn start(command: Command, request: &OpenRequest) -> Result<ChildSession, ConnectError> {
        Self::start_with(command, request, false)
    }

    /// [`ChildSession::start`] for a child that is `srun -u`, tuned so that frames do not
    /// wait on Slurm's delayed TCP acknowledgements (`srun_io.rs`).
    pub fn start_over_srun(command: Command, request: &OpenRequest) -> Result<ChildSession, ConnectError> {
        Self::start_with(command, request, true)
    }

    fn start_with(mut command: Command, request: &OpenRequest, nudge: bool) -> Result<ChildSession, ConnectError> {
        // Appended: the log of the session that ended (why a reconnect happened) stays.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&request.log)
            .map_err(|e| ConnectError::Refused(format!("cannot create {}: {e}", request.log.display())))?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        // Over srun the log passes through us, to nudge when it runs dry.
        let relayed_log = if nudge {
            command.stderr(Stdio::piped());
            Some(log)
        } else {
            command.stderr(log);
            None
        };
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command.spawn().map_err(|e| ConnectError::Refused(format!("cannot start {program}: {e}")))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            let _ = child.kill();
            return Err(ConnectError::Refused(format!("{program} has no stdin/stdout")));
        };
        let (slot, generation, tx) = (request.slot, request.generation, request.events.clone());
        let input: Input = Arc::new(Mutex::new(Some(BufWriter::new(stdin))));
        let nudge_input = nudge.then(|| Arc::clone(&input));
        if let (Some(log), Some(stderr)) = (relayed_log, child.stderr.take()) {
            let input = Arc::clone(&input);
            std::thread::spawn(move || super::srun_io::relay_stderr(stderr, log, input));
        }
        let pid = child.id();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new(BufReader::new(stdout));
            let mut nudge_agent = || {
                if let Some(input) = &nudge_input {
                    super::srun_io::nudge(input);
                }
            };
            let mut first = true;
            let why = loop {
                match reader.read::<FromAgent>(&mut nudge_agent) {
                    Ok(Some(message)) => {
                        if std::mem::take(&mut first) && nudge {
                            // The agent speaks: srun's connection to its step exists.
                            match super::srun_io::set_nodelay(pid) {
                                Ok(n) => tracing::debug!("TCP_NODELAY on {n} of srun's sockets"),
                                Err(e) => {
                                    tracing::warn!("cannot tune srun's sockets ({e}): frames may wait 40 ms each")
                                }
                            }
                        }
                        if !message.is_answered() {
                            reader.settle(&mut nudge_agent);
                        }
                        if tx.send(Incoming::Agent { slot, message }).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "the agent exited".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = tx.send(Incoming::Gone { slot, generation, why });
        });
        let mut session = ChildSession { child, input };
        if let Err(e) = session.send(&ToAgent::Hello(request.hello.clone())) {
            session.end(Duration::ZERO);
            return Err(ConnectError::Unreachable(format!("{e:#}")));
        }
        Ok(session)
    }

    /// Closes the agent's input, gives it `grace` to exit, then kills it; reaps it.
    fn end(&mut self, grace: Duration) {
        drop(self.input.lock().unwrap_or_else(PoisonError::into_inner).take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Session for ChildSession {
    fn send(&mut self, message: &ToAgent) -> Result<()> {
        let mut guard = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        let input = guard.as_mut().context("the session is closed")?;
        write_frame(input, message).context("cannot write to the agent")?;
        input.flush().context("cannot write to the agent")
    }

    fn kill(mut self: Box<Self>) {
        // Off the caller's thread: the dispatcher's loop never waits on an agent.
        std::thread::spawn(move || self.end(GRACE));
    }

    fn shutdown(mut self: Box<Self>) {
        let _ = self.send(&ToAgent::Shutdown);
        self.end(SHUTDOWN_GRACE);
    }
}

impl Drop for ChildSession {
    /// A session is never left behind: whatever path drops it, the child is reaped.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.end(GRACE);
        }
    }
}
