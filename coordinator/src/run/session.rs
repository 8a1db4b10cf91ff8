//! An agent session over a child process's stdin/stdout: `llem-agent serve --stdio`
//! itself locally, or `ssh … -- <agent> serve --stdio`. A reader thread forwards every
//! frame to the dispatcher's channel and reports `Gone` when the stream ends. Used by the
//! local and SSH connectors alike.
//!
//! A session ends by closing the agent's input first: the agent then stops its job (its
//! engine, a `command` program) and releases the lock before it exits. Only one that has
//! not exited after a grace period is killed.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an agent whose input closed may take to stop its job and exit.
const GRACE: Duration = Duration::from_secs(5);
/// How long an agent told to shut down may take (it is idle: at once, normally).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

use anyhow::{Context as _, Result};
use llem_common::protocol::{read_frame, write_frame, FromAgent, ToAgent};

use super::connect::{ConnectError, Incoming, OpenRequest, Session};

/// A child process speaking the protocol.
#[derive(Debug)]
pub struct ChildSession {
    child: Child,
    /// `None` once closed (the agent then sees its input end).
    input: Option<BufWriter<ChildStdin>>,
}

impl ChildSession {
    /// Starts `command` (stderr to the request's log), says hello, and forwards what the
    /// agent sends from a reader thread.
    pub fn start(mut command: Command, request: &OpenRequest) -> Result<ChildSession, ConnectError> {
        // Appended: the log of the session that ended (why a reconnect happened) stays.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&request.log)
            .map_err(|e| ConnectError::Refused(format!("cannot create {}: {e}", request.log.display())))?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command.spawn().map_err(|e| ConnectError::Refused(format!("cannot start {program}: {e}")))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            let _ = child.kill();
            return Err(ConnectError::Refused(format!("{program} has no stdin/stdout")));
        };
        let (slot, generation, tx) = (request.slot, request.generation, request.events.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let why = loop {
                match read_frame::<FromAgent>(&mut reader) {
                    Ok(Some(message)) => {
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
        let mut session = ChildSession { child, input: Some(BufWriter::new(stdin)) };
        if let Err(e) = session.send(&ToAgent::Hello(request.hello.clone())) {
            session.end(Duration::ZERO);
            return Err(ConnectError::Unreachable(format!("{e:#}")));
        }
        Ok(session)
    }

    /// Closes the agent's input, gives it `grace` to exit, then kills it; reaps it.
    fn end(&mut self, grace: Duration) {
        drop(self.input.take());
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
        let input = self.input.as_mut().context("the session is closed")?;
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
