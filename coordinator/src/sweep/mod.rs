//! A sweep file, read and validated: fixed fields, grid axes, explicit points, exclusions,
//! execution settings and nodes. [`load`] reads one (with its `base:` chain and
//! `nodes_file:`), collecting every problem as a [`Diagnostic`] with its position.

use std::collections::BTreeMap;
use std::path::PathBuf;

use llem_common::de::from_node;
use llem_common::diag::{render_all, Diagnostic};
use llem_common::spec::raw::RawExperiment;
use llem_common::yaml::{Node, Sources, Span};
use serde::{Deserialize, Serialize};

mod files;
mod load;
mod nodes;
mod raw;

pub use files::{absolute, CopyOf};
pub use load::{describe_labels, load, load_copy, DEFAULT_CYCLES, DEFAULT_RETRIES};

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// `name:` or the file's stem; names the run directory.
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Every file read, for messages.
    pub sources: Sources,
    /// Every file read (the sweep, its bases, its nodes files), in reading order: a run
    /// directory keeps a copy of each, laid out as they are under [`Sweep::root`].
    pub files: Vec<SweepFile>,
    /// The deepest directory that holds every file read.
    pub root: PathBuf,
    /// sha256 over every file read, each named by its path under [`Sweep::root`]: the same
    /// for the originals and for a run directory's copy; resume refuses to continue when
    /// it changes.
    pub source_hash: String,
    /// The hash run directories of journal version 1 recorded (paths as typed).
    pub legacy_source_hash: String,
    /// The fields every point starts from (the `base:` chain merged, then this file).
    pub fixed: RawExperiment,
    /// Where the fixed fields were written (the file's top level).
    pub fixed_span: Span,
    /// `sweep:` keys in file order; the first varies slowest.
    pub axes: Vec<Axis>,
    pub includes: Vec<Patch>,
    pub excludes: Vec<Exclude>,
    pub execution: Execution,
    pub nodes: Vec<NodeSpec>,
    /// Problems that do not stop the sweep (shown by `validate` and `plan`).
    pub warnings: Vec<Diagnostic>,
}

/// A file a sweep was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFile {
    /// Absolute, symbolic links resolved.
    pub path: PathBuf,
    pub text: String,
}

/// One `sweep:` key and its values.
#[derive(Debug, Clone)]
pub struct Axis {
    pub path: String,
    pub span: Span,
    pub values: Vec<Patch>,
}

/// Fields laid over the fixed ones: one axis value, or one `include:` entry.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The fields as written (dotted keys nested into maps), decoded again by
    /// [`Patch::raw`] each time a point is built. They decoded without a problem when the
    /// sweep was loaded. Held decoded, a patch was 1.4 KB however few fields it set, and
    /// an axis can have 50,000 values.
    fields: Node,
    pub span: Span,
    /// How the value reads in tables: `batch_size=4` parts.
    pub display: Vec<(String, String)>,
}

impl Patch {
    /// The partial experiment these fields make.
    pub fn raw(&self) -> RawExperiment {
        from_node(&self.fields, "").unwrap_or_else(|_| undecodable_patch())
    }
}

#[allow(clippy::panic)]
fn undecodable_patch() -> RawExperiment {
    panic!("a sweep value that decoded when the sweep was loaded no longer decodes")
}

/// One `exclude:` entry: a point is dropped when every pair matches it.
#[derive(Debug, Clone)]
pub struct Exclude {
    pub span: Span,
    /// (dotted path, the value as the resolved spec's JSON would hold it)
    pub matches: Vec<(String, serde_json::Value)>,
}

/// How jobs follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Each configuration's cycles back to back: AAA BBB.
    Sequential,
    /// One of each configuration per cycle: AB AB AB (spreads drift evenly; the default).
    Interleaved,
    /// Like interleaved, but each cycle in its own random order, reproducible from `seed`.
    Shuffled,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::Sequential => "sequential",
            Order::Interleaved => "interleaved",
            Order::Shuffled => "shuffled",
        })
    }
}

/// `execution:` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    pub cycles: u32,
    pub order: Order,
    pub seed: u64,
    pub gap_s: f64,
    pub cycle_gap_s: f64,
    pub retries: u32,
    /// Fields along which a failure (e.g. out of memory) skips the larger values.
    pub monotone: Vec<String>,
}

/// A machine that runs agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSpec {
    pub name: String,
    pub transport: Transport,
    /// Number of GPUs, when given (else learnt from the node's probe).
    pub gpus: Option<u32>,
    pub labels: BTreeMap<String, String>,
}

/// How the coordinator reaches a node's agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The agent is a child process of the coordinator.
    Local,
    /// The agent is started over SSH.
    Ssh(SshNode),
    /// The agent runs as a step of a Slurm allocation: node `index` of it.
    Slurm(SlurmNode),
}

/// One node of a Slurm allocation. Which host it is, Slurm says once the allocation is
/// granted; until then it is `slurm-<index>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlurmNode {
    pub allocation: SlurmAllocation,
    pub index: u32,
}

/// The allocation `nodes: {slurm: …}` asks for: `nodes` nodes with `gpus_per_node` GPUs
/// each. Every value reaches salloc/srun as one argument, never through a shell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlurmAllocation {
    pub partition: Option<String>,
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// Slurm's time format (`04:00:00`, `1-00:00:00`, minutes).
    pub time: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    pub reservation: Option<String>,
    /// Passed to salloc as they are (`--exclusive`).
    pub extra: Vec<String>,
    /// The agent on a filesystem every node sees; else the coordinator's own agent, which
    /// must then be on such a filesystem too.
    pub agent: Option<PathBuf>,
}

/// An SSH node as the sweep gives it. What is unset is left to `ssh` and the user's
/// `~/.ssh/config` (or the node's own `ssh_config`): an alias's `Port`, `User`,
/// `ProxyJump` then apply as they do for `ssh HOST`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshNode {
    /// A host name, address or `~/.ssh/config` alias.
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Paths below are absolute (`~` expanded, relative ones resolved against the file
    /// that names them).
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// An OpenSSH client configuration used instead of `~/.ssh/config` (`ssh -F`).
    pub ssh_config: Option<PathBuf>,
}

impl NodeSpec {
    pub fn local() -> Self {
        NodeSpec { name: "local".to_owned(), transport: Transport::Local, gpus: None, labels: BTreeMap::new() }
    }
}

/// Why a sweep could not be read: every problem found, and the files to show them in.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_all(.diagnostics, .sources))]
pub struct SweepError {
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Loads a sweep from text (written to a temporary file, as `load` reads files).
    pub(crate) fn sweep_from(text: &str) -> Sweep {
        try_sweep_from(text).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn try_sweep_from(text: &str) -> Result<Sweep, SweepError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sweep.yaml");
        std::fs::write(&path, text).expect("write");
        load(&path)
    }
}
