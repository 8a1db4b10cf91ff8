//! A sweep file, read and validated: fixed fields, grid axes, explicit points, exclusions,
//! execution settings and nodes. [`load`] reads one (with its `base:` chain and
//! `nodes_file:`), collecting every problem as a [`Diagnostic`] with its position.

use std::collections::BTreeMap;
use std::path::PathBuf;

use llem_common::diag::{render_all, Diagnostic};
use llem_common::spec::raw::RawExperiment;
use llem_common::yaml::{Sources, Span};
use serde::{Deserialize, Serialize};

mod load;
mod raw;

pub use load::{describe_labels, load, DEFAULT_CYCLES, DEFAULT_RETRIES};

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// `name:` or the file's stem; names the run directory.
    pub name: String,
    pub path: PathBuf,
    /// Every file read, for messages.
    pub sources: Sources,
    /// sha256 over the texts of every file read (the sweep, its bases, its nodes file):
    /// resume refuses to continue when it changes.
    pub source_hash: String,
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
    pub raw: RawExperiment,
    pub span: Span,
    /// How the value reads in tables: `batch_size=4` parts.
    pub display: Vec<(String, String)>,
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
    Ssh { host: String, port: u16, user: Option<String>, identity_file: Option<String>, known_hosts: Option<String> },
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
