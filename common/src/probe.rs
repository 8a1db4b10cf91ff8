//! What an agent reports about its node (`probe`) and about a model it was asked to
//! prepare: the types both sides share, stored in the run directory as they arrive.

use serde::{Deserialize, Serialize};

use crate::result::NodeSnapshot;

/// Whether an energy source can be used on the node, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceStatus {
    /// `nvml`, `rapl` or `none`.
    pub name: String,
    pub available: bool,
    pub detail: String,
}

/// `llem-agent probe`: the node and what it can measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReport {
    pub node: NodeSnapshot,
    pub energy_sources: Vec<SourceStatus>,
    /// Whether candle can run on this node's GPUs (absent in reports of older agents).
    #[serde(default)]
    pub cuda: CudaStatus,
    /// `probe --sampler-cost`: what sampling each available sensor costs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sampler_cost: Vec<SamplerCost>,
}

/// The sampler thread's own CPU time while sampling one sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerCost {
    /// `nvml`, `rapl` or `none`.
    pub sensor: String,
    pub hz: f64,
    /// How long it sampled.
    pub seconds: f64,
    pub samples: u64,
    /// `None` where the kernel does not account threads (no schedstat).
    pub cpu_ms: Option<f64>,
    pub per_sample_us: Option<f64>,
    /// CPU time as a share of one core over the wall time.
    pub core_share_pct: Option<f64>,
}

/// One CUDA user-space library the agent needs for GPU jobs, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaLibrary {
    /// The file name the agent loads (`libcublas.so.13`).
    pub name: String,
    /// What it is (`cuBLAS`).
    pub purpose: String,
    pub path: Option<String>,
    /// From the file the name resolves to (`13.1.0.3`), when it says.
    pub version: Option<String>,
    /// Where it was found: `LD_LIBRARY_PATH`, `ldconfig`, `CUDA toolkit`, `Python nvidia packages`.
    pub found_in: Option<String>,
}

/// Whether a `cuda` job can run with this agent on this node, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaStatus {
    /// Whether this agent was built with CUDA (`scripts/build-agent`).
    pub built_with_cuda: bool,
    pub libraries: Vec<CudaLibrary>,
    pub usable: bool,
    /// A sentence: what works, or what is missing and how to fix it.
    pub detail: String,
}

impl ProbeReport {
    /// Names of the energy sources that can be used.
    pub fn available_sources(&self) -> Vec<&str> {
        self.energy_sources.iter().filter(|s| s.available).map(|s| s.name.as_str()).collect()
    }
}

/// A model's files as the agent found them before any job used them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelStatus {
    /// Present and readable.
    Ready {
        /// The path as the agent resolved it.
        path: String,
        /// Total size of the model's files.
        bytes: u64,
        files: u32,
        /// sha256 over each file's name, size, first and last MiB: fast on models of many
        /// GB, and it changes when a file is replaced or cut short (not a full checksum).
        fast_sha256: String,
    },
    /// Missing or unreadable: the jobs that need it cannot run on this node.
    Unavailable { path: String, reason: String },
}

impl ModelStatus {
    pub fn is_ready(&self) -> bool {
        matches!(self, ModelStatus::Ready { .. })
    }
}
