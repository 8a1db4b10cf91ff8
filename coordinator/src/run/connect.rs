//! The transport seam: how the dispatcher reaches agents, whatever carries the bytes.
//!
//! A [`Connector`] serves one node: it installs the agent where needed, opens agent
//! sessions (one per device slot) and tries the node again after its sessions drop. A
//! [`Session`] carries protocol messages to one agent; everything the agent sends
//! arrives on the dispatcher's channel as [`Incoming`]. One implementation per
//! transport, chosen by the exhaustive match in [`connector_for`]: a new transport that
//! is not handled there does not compile. Every method may block (process starts,
//! uploads, SSH handshakes): the dispatcher calls them from threads, never from its loop.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use llem_common::protocol::{FromAgent, Hello, ToAgent};

use super::{local, slurm, ssh};
use crate::sweep::{NodeSpec, Transport};

/// What threads tell the dispatcher's loop.
#[derive(Debug)]
pub enum Incoming {
    Agent {
        slot: usize,
        message: FromAgent,
    },
    /// A session's stream ended (the agent exited or crashed, the connection dropped).
    /// `generation` tells a report about an earlier session of the slot from one about
    /// the current session.
    Gone {
        slot: usize,
        generation: u64,
        why: String,
    },
    /// An attempt to open a session for `slot` ended.
    Opened {
        slot: usize,
        generation: u64,
        outcome: Result<Box<dyn Session>, ConnectError>,
    },
    /// A node whose sessions dropped answers again.
    NodeBack {
        node: u16,
    },
    /// A node whose sessions dropped stayed unreachable.
    NodeUnreachable {
        node: u16,
        error: ConnectError,
    },
    /// The transport holds resources for the run under `id` (a Slurm allocation on
    /// `hosts`): journaled before anything runs there, so that `llem resume` can release
    /// what a coordinator killed outright left behind.
    Allocated {
        id: String,
        hosts: Vec<String>,
    },
    /// Ctrl-C.
    Interrupt,
}

/// Why a node could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// Trying again cannot help (a refused host key, no agent binary, another protocol
    /// version): the node is lost for this run.
    #[error("{0}")]
    Refused(String),
    /// The node may answer later (refused connection, timeout, a dropped link).
    #[error("{0}")]
    Unreachable(String),
    /// What the run was given to run on is gone for good (its Slurm allocation reached
    /// its time limit, was pre-empted or cancelled): the run stops, its jobs are not
    /// failed, and `llem resume` continues with new resources.
    #[error("{0}")]
    Ended(String),
}

impl ConnectError {
    pub fn is_final(&self) -> bool {
        matches!(self, ConnectError::Refused(_) | ConnectError::Ended(_))
    }
}

/// Everything an opening session needs.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    pub slot: usize,
    /// The GPU the slot is for (`None`: the node's CPU slot). A Slurm step asks for one GPU
    /// or none accordingly.
    pub gpu: Option<u32>,
    pub generation: u64,
    /// Our hello (it names the run, whose outbox the agent re-sends).
    pub hello: Hello,
    /// Where the agent's stderr goes.
    pub log: PathBuf,
    pub events: Sender<Incoming>,
}

/// One agent session.
pub trait Session: Send + std::fmt::Debug {
    /// Sends one message. An error means the session is gone; its reader reports `Gone`.
    fn send(&mut self, message: &ToAgent) -> anyhow::Result<()>;
    /// Ends the session at once (its node is unreachable: a goodbye would not arrive).
    /// The agent sees its input close and stops its job.
    fn kill(self: Box<Self>);
    /// Says goodbye and waits for the agent to exit.
    fn shutdown(self: Box<Self>);
}

/// How to reach one node's agents.
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Makes sure the node runs exactly this build of the agent; returns its path there.
    fn deploy(&self) -> Result<String, ConnectError>;
    /// Opens an agent session (deploying first when needed).
    fn open(&self, request: OpenRequest) -> Result<Box<dyn Session>, ConnectError>;
    /// After the node's sessions dropped: waits and tries again; `Ok` once it answers.
    fn reconnect(&self) -> Result<(), ConnectError>;
    /// A no-op's round trip over the transport (zero for a local child).
    fn round_trip(&self) -> Result<Duration, ConnectError>;
    /// Ends what the connector keeps open between sessions (SSH's master connection).
    fn close(&self);
}

/// What connectors of one run share.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Accept host keys not yet in known_hosts (a changed key is still refused).
    pub accept_new_host_keys: bool,
    /// Local agents start here (the run's working directory: relative model paths in the
    /// sweep mean the same on `resume` from anywhere).
    pub working_dir: PathBuf,
    /// Where SSH keeps its master connections (one socket per node).
    pub control_dir: PathBuf,
    /// The run's Slurm allocation, shared by the connectors of its nodes.
    pub slurm: Arc<slurm::Allocation>,
}

impl ConnectOptions {
    /// For run `run_id` (`None`: a command that is not a run).
    pub fn new(working_dir: &Path, accept_new_host_keys: bool, run_id: Option<&str>) -> Self {
        ConnectOptions {
            accept_new_host_keys,
            working_dir: working_dir.to_owned(),
            control_dir: std::env::temp_dir().join(format!("llem-ssh-{}", std::process::id())),
            slurm: Arc::new(slurm::Allocation::new(working_dir, run_id)),
        }
    }
}

/// The connector of a node's transport: the one place a transport is chosen.
pub fn connector_for(node: &NodeSpec, options: &ConnectOptions) -> Arc<dyn Connector> {
    match &node.transport {
        Transport::Local => Arc::new(local::LocalConnector::new(&options.working_dir)),
        Transport::Ssh(target) => Arc::new(ssh::SshConnector::new(&node.name, target, options)),
        Transport::Slurm(target) => Arc::new(slurm::SlurmConnector::new(target, options)),
    }
}

/// The agent binary: `$LLEM_AGENT`; else, next to this executable, `llem-agent-cuda` (the
/// one binary for CPU and GPU nodes that `scripts/build-agent` puts there) when it exists,
/// and `llem-agent` otherwise. When both exist, the newer: a `cargo build` after an older
/// `scripts/build-agent` must not leave the run with a stale agent of another protocol.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LLEM_AGENT") {
        return PathBuf::from(p);
    }
    let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) else {
        return PathBuf::from("llem-agent");
    };
    let (cuda, plain) = (dir.join("llem-agent-cuda"), dir.join("llem-agent"));
    let built = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (built(&cuda), built(&plain)) {
        (Some(c), Some(p)) if p > c => plain,
        (Some(_), _) => cuda,
        _ => plain,
    }
}
