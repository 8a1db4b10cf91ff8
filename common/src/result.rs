//! `result.json`: what one measured job produced. Documented field by field in
//! `docs/results.md`. Versioned: readers accept every `schema_version` up to
//! [`SCHEMA_VERSION`]; `tests/fixtures/result-v1.json` must keep loading.
//!
//! Honesty rules: a quantity that was not measured is `null` (with a warning saying why),
//! never 0.

use serde::{Deserialize, Serialize};

pub use crate::serving::{Distribution, ServingResult, SteadyState, TokenCountMethod};
use crate::spec::ExperimentSpec;

/// The version written by this build.
/// 2: the optional `serving` section (server jobs) and `spec` fields of `engine: openai`.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub schema_version: u32,
    pub job_id: String,
    pub spec: ExperimentSpec,
    /// What the node was, at the time of the run.
    pub node: NodeSnapshot,
    pub energy: Energy,
    pub baseline: BaselineInfo,
    /// Seconds of the measured window (first prompt sent → last token, engine synced).
    pub duration_s: f64,
    pub tokens: Tokens,
    pub throughput: Throughput,
    pub latency: Latency,
    pub warmup: WarmupInfo,
    pub thermal_floor: ThermalInfo,
    pub load: LoadInfo,
    pub sampling: SamplingInfo,
    pub flops: Flops,
    pub warnings: Vec<Warning>,
    /// UTC, RFC 3339, when the job (lock taken) started and ended.
    pub started_at: String,
    pub finished_at: String,
    /// `engine: openai`: the server under load (absent for other engines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingResult>,
}

/// The environment a result was measured in.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub hostname: String,
    pub agent_version: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_mb: Option<f64>,
    /// The device the job ran on (`cpu`, `cuda:0`).
    pub device: String,
    /// GPUs the job used, with their provenance (empty for CPU jobs).
    pub gpus: Vec<GpuInfo>,
    pub driver_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub persistence_mode: Option<bool>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    pub memory_total_mb: Option<f64>,
}

/// Energy of the measured window, in joules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Energy {
    /// `nvml` (total-energy counter), `nvml_power` (integrated power), `rapl`, or `none`.
    pub source: String,
    /// The figure to use: the counter when there is one, else integrated power; `null`
    /// when nothing measured energy.
    pub total_j: Option<f64>,
    /// Idle power of the devices (sum), from the baseline phase.
    pub baseline_w: Option<f64>,
    /// `max(0, total_j − baseline_w × duration_s)`.
    pub adjusted_j: Option<f64>,
    /// Difference of cumulative energy counters (wrap-arounds handled).
    pub counter_j: Option<f64>,
    /// Trapezoid integral of sampled power.
    pub integrated_j: Option<f64>,
    pub j_per_output_token: Option<f64>,
    pub j_per_output_token_adjusted: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BaselineInfo {
    pub power_w: Option<f64>,
    /// Whether the value came from the on-disk cache.
    pub cached: bool,
    /// Unix seconds when it was measured.
    pub measured_at_unix: Option<f64>,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tokens {
    /// Prompt tokens actually fed to the model (padding never counted).
    pub input: u64,
    /// Generated tokens (warmup never counted).
    pub output: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Throughput {
    pub output_tokens_per_s: Option<f64>,
    pub requests_per_s: Option<f64>,
}

/// Summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub n: u64,
}

impl Stats {
    /// `None` for an empty sample. Percentiles by linear interpolation between ranks.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| percentile(&sorted, p);
        Some(Stats {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: pct(50.0),
            p95: pct(95.0),
            p99: pct(99.0),
            n: sorted.len() as u64,
        })
    }
}

/// The `p`-th percentile of sorted, non-empty values, by linear interpolation between
/// ranks (the one rule every figure of llem uses).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Time to first token per request.
    pub ttft_ms: Option<Stats>,
    /// Gaps between consecutive output tokens.
    pub itl_ms: Option<Stats>,
    /// Whole request, sent → last token.
    pub request_ms: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WarmupInfo {
    pub prompts: u32,
    /// Adaptive warmup: whether the CV fell below the threshold (fixed warmup: `null`).
    pub converged: Option<bool>,
    pub final_cv: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThermalInfo {
    pub waited_s: f64,
    /// Whether temperature settled; `null` when there is no temperature sensor or the
    /// floor was disabled (`max_s: 0`).
    pub settled: Option<bool>,
    pub start_c: Option<f64>,
    pub end_c: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LoadInfo {
    pub time_s: f64,
    /// What loading the model took: GPU memory (NVML, used after load minus before, on the
    /// job's GPUs) or the agent's resident memory; `memory_of` says which.
    pub memory_mb: Option<f64>,
    /// GPU: the most in use during the measured window, minus before the load. Host: the
    /// agent's resident high-water mark.
    pub peak_memory_mb: Option<f64>,
    /// Absent in results written before it existed (they measured host memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_of: Option<MemoryOf>,
}

/// Whose memory `load.memory_mb` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryOf {
    /// The job's GPUs, read by NVML (a server's model counts, wherever its process runs).
    Gpu,
    /// The agent process's resident memory (CPU jobs, or no NVML).
    Host,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SamplingInfo {
    pub sample_hz: f64,
    /// Samples taken inside the measured window.
    pub samples: u64,
    /// `timeseries.parquet` rows (one per device per second).
    pub timeseries_rows: u64,
}

/// Compute estimate (metadata, not a measurement).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Flops {
    pub total: Option<f64>,
    /// How `total` was estimated, e.g. `palm: 2 × non-embedding params × tokens`.
    pub method: String,
    pub non_embedding_params: Option<u64>,
}

/// A condition that makes a number less trustworthy. Never blocks a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

impl JobResult {
    /// Reads a result of any schema version this build understands.
    pub fn from_json(text: &str) -> Result<JobResult, ResultError> {
        let probe: serde_json::Value = serde_json::from_str(text).map_err(ResultError::Json)?;
        let version = probe.get("schema_version").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if version == 0 || version > u64::from(SCHEMA_VERSION) {
            return Err(ResultError::Version(version));
        }
        serde_json::from_value(probe).map_err(ResultError::Json)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("read result.json: {0}")]
    Json(serde_json::Error),
    #[error("result.json has schema_version {0}; this llem reads versions 1 to {SCHEMA_VERSION}")]
    Version(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).expect("stats");
        assert_eq!((s.mean, s.p50, s.n), (3.0, 3.0, 5));
        assert!((s.p95 - 4.8).abs() < 1e-12);
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[7.0]).map(|s| s.p99), Some(7.0));
    }

    #[test]
    fn the_v1_fixture_keeps_loading() {
        let text = include_str!("../../tests/fixtures/result-v1.json");
        let result = JobResult::from_json(text).expect("v1 loads");
        assert_eq!(result.schema_version, 1);
        assert_eq!(result.energy.total_j, None, "the fixture is a run without an energy sensor");
        assert!(result.warnings.iter().any(|w| w.code == "no_energy_sensor"));
    }

    #[test]
    fn future_versions_are_refused() {
        let err = JobResult::from_json(r#"{"schema_version": 99}"#).expect_err("too new");
        assert!(err.to_string().contains("schema_version 99"));
    }
}
