//! `llem-agent run`: one experiment through the locked sequence, leaving `result.json`
//! and `timeseries.parquet` in the output directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llem_common::failure::FailureKind;
use llem_common::result::JobResult;
use llem_common::spec::{Device, ExperimentSpec};

use crate::baseline::FileBaselineStore;
use crate::clock::SystemClock;
use crate::lock::DeviceLock;
use crate::sampler::PowerObserver;
use crate::sampler::{Meter as _, ThreadedMeter};
use crate::sequence::{self, Context, PhaseObserver};
use crate::{fsutil, probe, sensor, timeseries, workload};

/// Where the agent keeps locks and cached baselines: `$LLEM_STATE_DIR`, else
/// `~/.cache/llem/agent`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLEM_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("llem").join("agent")
}

/// The GPUs a job holds: those the coordinator gave it, else what `device` and `gpus`
/// say (`cuda` is GPU 0, `gpus: 4` GPUs 0 to 3, when run directly).
pub fn job_gpus(spec: &ExperimentSpec, given: &[u32]) -> Vec<u32> {
    if spec.device != Device::Cpu {
        if let Some(step) = slurm_step_gpus() {
            // A Slurm step measures the GPUs Slurm gave it: the coordinator's numbers count
            // slots of the allocation, not GPUs of this node.
            return step;
        }
    }
    if !given.is_empty() {
        let mut gpus = given.to_vec();
        gpus.sort_unstable();
        gpus.dedup();
        return gpus;
    }
    match spec.device {
        Device::Cpu => Vec::new(),
        Device::Cuda(Some(i)) => vec![i],
        Device::Cuda(None) => (0..spec.gpu_count().max(1)).collect(),
    }
}

/// The GPUs of this agent's Slurm step (`SLURM_STEP_GPUS`, node indices), when the
/// coordinator started it as one (`LLEM_SLURM_STEP`).
fn slurm_step_gpus() -> Option<Vec<u32>> {
    std::env::var_os(llem_common::protocol::SLURM_STEP_ENV)?;
    let list = std::env::var("SLURM_STEP_GPUS").ok()?;
    let gpus: Vec<u32> = list.split(',').filter_map(|g| g.trim().parse().ok()).collect();
    (!gpus.is_empty()).then_some(gpus)
}

/// Why a job produced no result: the kind, decided where it happened, and a sentence.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl JobFailure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        JobFailure { kind, message: message.into() }
    }
}

impl From<sequence::SequenceError> for JobFailure {
    fn from(e: sequence::SequenceError) -> Self {
        JobFailure::new(e.source.kind(), e.to_string())
    }
}

/// An I/O step of the agent's own (files, the lock): retried, as a passing fault may be.
fn io_step<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> JobFailure + '_ {
    move |e| JobFailure::new(FailureKind::EngineError, format!("cannot {what}: {e}"))
}

/// Runs one job; returns its result (already written to `out`).
/// `base_dir` resolves relative paths in the spec; `cancel` stops the engine.
pub fn run_job(
    spec: &ExperimentSpec,
    job_id: &str,
    base_dir: &Path,
    out: &Path,
    state_dir: &Path,
    cancel: workload::Cancel,
) -> Result<JobResult, JobFailure> {
    run_job_observed(spec, job_id, base_dir, out, state_dir, cancel, Observers::default())
}

/// Progress callbacks of a job (`serve` forwards them to the coordinator).
#[derive(Default)]
pub struct Observers {
    pub phase: PhaseObserver,
    pub power: Option<PowerObserver>,
    /// The GPUs the coordinator gave the attempt (empty: as the spec says).
    pub gpus: Vec<u32>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers").field("phase", &self.phase).field("power", &self.power.is_some()).finish()
    }
}

/// [`run_job`] with progress callbacks.
pub fn run_job_observed(
    spec: &ExperimentSpec,
    job_id: &str,
    base_dir: &Path,
    out: &Path,
    state_dir: &Path,
    cancel: workload::Cancel,
    observers: Observers,
) -> Result<JobResult, JobFailure> {
    std::fs::create_dir_all(out).map_err(io_step(&format!("create the output directory {}", out.display())))?;
    let gpus = job_gpus(spec, &observers.gpus);
    let device = match gpus.first() {
        Some(&g) => Device::Cuda(Some(g)),
        None => Device::Cpu,
    };
    // A sensor the job insists on and this node lacks: no retry can change that.
    let (sensor, skipped) = sensor::open(spec.measurement.energy, device, &gpus)
        .map_err(|e| JobFailure::new(FailureKind::BadJob, format!("cannot open the energy sensor: {e}")))?;
    for reason in &skipped {
        tracing::info!("energy source skipped: {reason}");
    }
    // Every GPU's lock, in ascending order (two agents never wait on each other's).
    let lock_names: Vec<String> =
        if gpus.is_empty() { vec!["cpu".to_owned()] } else { gpus.iter().map(|g| format!("gpu-{g}")).collect() };
    let mut _locks = Vec::new();
    for name in &lock_names {
        _locks.push(
            DeviceLock::acquire(state_dir, name, job_id)
                .map_err(io_step(&format!("take the lock of {name} in {}", state_dir.display())))?,
        );
    }
    // The engine sees the GPU it was given (`cuda:N`), the result keeps the spec as planned.
    let mut engine_spec = spec.clone();
    if let [g] = gpus[..] {
        engine_spec.device = Device::Cuda(Some(g));
    }

    let clock = Arc::new(SystemClock::default());
    let mut meter = ThreadedMeter::new(sensor, Arc::clone(&clock));
    if let Some(power) = observers.power {
        meter = meter.with_power_observer(power);
    }
    let (gpu_info, driver) = meter.with_sensor(|s| (s.gpu_info(), s.driver_version()));
    let shown = if gpus.len() > 1 { format!("cuda:{}", workload::gpu_list(&gpus)) } else { device.to_string() };
    let mut node = probe::host_snapshot(&shown);
    node.driver_version = driver;
    let ctx = Context {
        job_id: job_id.to_owned(),
        node,
        gpus: gpu_info,
        skipped_sensors: skipped,
        on_phase: observers.phase,
    };
    // GPU memory in use before anything of the job's loaded (NVML; `None` without it).
    let idle_memory_mb = sequence::gpu_memory_mb(&meter.read_now());
    let mut engine = workload::for_spec(&engine_spec, clock.as_ref(), base_dir, out, &gpus, cancel)
        .map_err(|e| JobFailure::new(e.kind(), format!("cannot start the engine: {e}")))?;
    let store = FileBaselineStore::new(state_dir);
    let outcome = sequence::run(spec, clock.as_ref(), &mut meter, engine.as_mut(), &store, &ctx);
    let _ = meter.stop();
    // A server is stopped here, before the locks are freed, and its GPU memory must be
    // back before the next job's baseline — whether this job succeeded or not.
    drop(engine);
    let released = wait_for_memory_release(&mut meter, idle_memory_mb);
    if let Some(warning) = &released {
        tracing::warn!("{}", warning.message);
    }
    let mut measured = outcome?;
    measured.result.warnings.extend(released);

    let mut result = measured.result;
    if result.load.memory_of != Some(llem_common::result::MemoryOf::Gpu) {
        // The agent's own high-water mark: the model, the KV cache and the sampler.
        result.load.peak_memory_mb = workload::candle::rss_mb("VmHWM:");
    }
    let rows = timeseries::downsample(&measured.window, &measured.devices);
    result.sampling.timeseries_rows = rows.len() as u64;
    let parquet = timeseries::to_parquet(&rows).map_err(io_step("encode timeseries.parquet"))?;
    fsutil::write_atomic(&out.join("timeseries.parquet"), &parquet).map_err(io_step("write timeseries.parquet"))?;
    let served = crate::requests::rows(&measured.requests, &measured.per_request_j, measured.window_start);
    if !served.is_empty() {
        let parquet = crate::requests::to_parquet(&served).map_err(io_step("encode requests.parquet"))?;
        fsutil::write_atomic(&out.join("requests.parquet"), &parquet).map_err(io_step("write requests.parquet"))?;
    }
    let json = serde_json::to_vec_pretty(&result).map_err(io_step("encode result.json"))?;
    fsutil::write_atomic(&out.join("result.json"), &json).map_err(io_step("write result.json"))?;
    Ok(result)
}

/// How long a stopped engine's GPU memory may take to be freed, and how much above the
/// job's starting level still counts as freed (drivers keep a little).
const MEMORY_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const MEMORY_RELEASE_SLACK_MB: f64 = 512.0;

/// After the engine (and any server it started) stopped: waits until the GPUs' memory is
/// back near where the job found it; a warning when it is not (the next job would share
/// the GPU with whatever still holds it).
fn wait_for_memory_release<M: crate::sampler::Meter + ?Sized>(
    meter: &mut M,
    idle_mb: Option<f64>,
) -> Option<llem_common::result::Warning> {
    let idle = idle_mb?;
    let start = std::time::Instant::now();
    loop {
        let now = sequence::gpu_memory_mb(&meter.read_now())?;
        if now <= idle + MEMORY_RELEASE_SLACK_MB {
            return None;
        }
        if start.elapsed() >= MEMORY_RELEASE_WAIT {
            return Some(llem_common::result::Warning {
                code: "gpu_memory_not_released".to_owned(),
                message: format!(
                    "{now:.0} MB of GPU memory were still in use {} s after the engine stopped ({idle:.0} MB before the job): another process holds the GPU; check nvidia-smi",
                    MEMORY_RELEASE_WAIT.as_secs()
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
