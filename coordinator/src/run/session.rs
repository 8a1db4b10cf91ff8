//! An agent session over a child process's stdin/stdout: `llem-agent serve --stdio`
//! itself locally, or `ssh … -- <agent> serve --stdio`. A reader thread forwards every
//! frame to the dispatcher's channel and reports `Gone` when the stream ends. Used by the
//! local and SSH connectors alike.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

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
        let log = std::fs::File::create(&request.log)
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
            session.end(true);
            return Err(ConnectError::Unreachable(format!("{e:#}")));
        }
        Ok(session)
    }

    fn end(&mut self, kill: bool) {
        if kill {
            let _ = self.child.kill();
        }
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
        self.end(true);
    }

    fn shutdown(mut self: Box<Self>) {
        let _ = self.send(&ToAgent::Shutdown);
        // Closing stdin ends the session even if the goodbye was lost; then wait for it.
        drop(self.input.take());
        self.end(false);
    }
}

impl Drop for ChildSession {
    /// A session is never left behind: whatever path drops it, the child is reaped.
    fn drop(&mut self) {
        drop(self.input.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
