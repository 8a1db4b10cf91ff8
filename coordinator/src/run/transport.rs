//! Byte streams to agents. Locally an agent is a child process (`llem-agent serve
//! --stdio`) per device slot; everything above the stream (frames, messages, the
//! dispatcher) is shared with the SSH transport.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Sender;

use anyhow::{Context as _, Result};
use llem_common::protocol::{read_frame, write_frame, FromAgent, Hello, ToAgent};

/// What reader threads tell the dispatcher.
#[derive(Debug)]
pub enum Incoming {
    Agent {
        slot: usize,
        message: FromAgent,
    },
    /// The agent's stream ended (it exited or crashed). `generation` tells a report about
    /// an earlier agent of the slot from one about the current agent.
    Gone {
        slot: usize,
        generation: u64,
        why: String,
    },
    /// A node whose connection dropped answers again.
    NodeBack {
        node: u16,
    },
    /// A node whose connection dropped stayed unreachable.
    NodeUnreachable {
        node: u16,
        why: String,
    },
    /// Ctrl-C.
    Interrupt,
}

/// The agent binary: `$LLEM_AGENT`, else `llem-agent` next to this executable.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LLEM_AGENT") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("llem-agent")))
        .unwrap_or_else(|| PathBuf::from("llem-agent"))
}

/// A local agent child.
#[derive(Debug)]
pub struct LocalAgent {
    child: Child,
    input: BufWriter<ChildStdin>,
    pub generation: u64,
}

impl LocalAgent {
    /// Starts an agent whose stderr goes to `log`, says `hello`, and forwards everything
    /// it sends to `tx` from a reader thread.
    pub fn spawn(
        slot: usize,
        generation: u64,
        hello: Hello,
        log: &Path,
        state_dir: Option<&Path>,
        tx: Sender<Incoming>,
    ) -> Result<LocalAgent> {
        let mut cmd = Command::new(agent_binary());
        cmd.args(["serve", "--stdio"]);
        if let Some(dir) = state_dir {
            cmd.arg("--state-dir").arg(dir);
        }
        Self::spawn_with(slot, generation, hello, cmd, log, tx)
    }

    /// Starts an agent session from any command whose stdin/stdout is the agent's (a
    /// local child, or `ssh … -- llem-agent serve --stdio`).
    pub fn spawn_with(
        slot: usize,
        generation: u64,
        hello: Hello,
        mut cmd: Command,
        log: &Path,
        tx: Sender<Incoming>,
    ) -> Result<LocalAgent> {
        let log_file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log_file);
        let mut child = cmd.spawn().with_context(|| format!("start {:?}", cmd.get_program()))?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let stdin = child.stdin.take().context("agent stdin")?;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                match read_frame::<FromAgent>(&mut reader) {
                    Ok(Some(message)) => {
                        if tx.send(Incoming::Agent { slot, message }).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Incoming::Gone { slot, generation, why: "the agent exited".to_owned() });
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Incoming::Gone { slot, generation, why: e.to_string() });
                        return;
                    }
                }
            }
        });
        let mut agent = LocalAgent { child, input: BufWriter::new(stdin), generation };
        agent.send(&ToAgent::Hello(hello))?;
        Ok(agent)
    }

    pub fn send(&mut self, message: &ToAgent) -> Result<()> {
        write_frame(&mut self.input, message).context("write to the agent")?;
        self.input.flush().context("write to the agent")
    }

    /// Ends the session at once (its node is unreachable: a goodbye would not arrive).
    /// The remote agent sees its input close and stops its job.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Says goodbye and waits for the agent to exit.
    pub fn shutdown(mut self) {
        let _ = self.send(&ToAgent::Shutdown);
        drop(self.input);
        let _ = self.child.wait();
    }
}
