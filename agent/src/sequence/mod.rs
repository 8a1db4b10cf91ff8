//! The locked measurement sequence: baseline → load → warmup → thermal floor → measure.
//!
//! Generic over the clock, the meter (sensor + sampler) and the engine, with the baseline
//! cache behind a trait: no sleeping, threads or files are needed to test it. The GPU lock
//! is taken around it by the caller (`run`).

use llem_common::result::{
    BaselineInfo, Energy, Flops, GpuInfo, JobResult, Latency, LoadInfo, MemoryOf, NodeSnapshot, SamplingInfo, Stats,
    ThermalInfo, Throughput, Tokens, WarmupInfo, Warning, SCHEMA_VERSION,
};
use llem_common::spec::ExperimentSpec;

use crate::baseline::{BaselineStore, CachedBaseline};
use crate::clock::Clock;
use crate::energy;
use crate::sampler::{Meter, Sample};
use crate::sensor::{nvml::THERMAL_THROTTLE_BITS, SensedDevice, SensorKind};
use crate::warnings;
use crate::workload::{Engine, EngineError, RequestMetrics};

/// Readings kept to decide that temperature has settled (one per second).
pub const THERMAL_WINDOW: usize = 5;

/// What the sequence needs besides its generic parts.
#[derive(Debug, Clone)]
pub struct Context {
    pub job_id: String,
    pub node: NodeSnapshot,
    pub gpus: Vec<GpuInfo>,
    /// Why better energy sources were not used (from `sensor::open`).
    pub skipped_sensors: Vec<String>,
    /// Told each phase as it starts (progress displays).
    pub on_phase: PhaseObserver,
}

/// A callback for phase changes (none by default).
#[derive(Clone, Default)]
pub struct PhaseObserver(pub Option<std::sync::Arc<dyn Fn(llem_common::protocol::Phase) + Send + Sync>>);

impl PhaseObserver {
    fn tell(&self, phase: llem_common::protocol::Phase) {
        if let Some(f) = &self.0 {
            f(phase);
        }
    }
}

impl std::fmt::Debug for PhaseObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "PhaseObserver(set)" } else { "PhaseObserver(none)" })
    }
}

/// A finished measurement: the result and the samples of the measured window.
#[derive(Debug)]
pub struct Measured {
    pub result: JobResult,
    /// Every measured request, and the energy attributed to each (server jobs).
    pub requests: Vec<RequestMetrics>,
    pub per_request_j: Vec<Option<f64>>,
    /// The window's start on the engine clock (request times are on it too).
    pub window_start: f64,
    /// Samples inside the measured window, times relative to its start.
    pub window: Vec<Sample>,
    pub devices: Vec<SensedDevice>,
}

/// The phase a failure happened in.
#[derive(Debug, thiserror::Error)]
#[error("{phase} failed: {source}")]
pub struct SequenceError {
    pub phase: &'static str,
    #[source]
    pub source: EngineError,
}

fn fail(phase: &'static str) -> impl FnOnce(EngineError) -> SequenceError {
    move |source| SequenceError { phase, source }
}

/// Coefficient of variation (sample standard deviation ÷ mean).
pub fn coefficient_of_variation(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return None;
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some(var.sqrt() / mean)
}

/// Runs the whole sequence for one job.
pub fn run<C, M, E, B>(
    spec: &ExperimentSpec,
    clock: &C,
    meter: &mut M,
    engine: &mut E,
    store: &B,
    ctx: &Context,
) -> Result<Measured, SequenceError>
where
    C: Clock + ?Sized,
    M: Meter + ?Sized,
    E: Engine + ?Sized,
    B: BaselineStore + ?Sized,
{
    let started_at = clock.unix_now();
    let m = &spec.measurement;
    let devices = meter.devices();

    // 1. Baseline: idle power before the model loads, cached per device.
    use llem_common::protocol::Phase;
    ctx.on_phase.tell(Phase::Baseline);
    let baseline = baseline(spec, clock, meter, store, &devices);

    // 2. Load.
    ctx.on_phase.tell(Phase::Loading);
    let gpu_before = gpu_memory_mb(&meter.read_now());
    let t = clock.now();
    let loaded = engine.load().map_err(fail("loading the model"))?;
    let time_s = clock.now() - t;
    // GPU memory only for a GPU job (a CPU job measured with `energy: nvml` reads GPU 0).
    // A server it attached to was loaded before: the load added nothing to count.
    let gpu_job = spec.device != llem_common::spec::Device::Cpu;
    let attached = spec.server.as_ref().is_some_and(|s| s.url.is_some());
    let mut load = match (gpu_before.filter(|_| gpu_job), gpu_memory_mb(&meter.read_now())) {
        (Some(before), Some(after)) => LoadInfo {
            time_s,
            memory_mb: (!attached).then(|| (after - before).max(0.0)),
            peak_memory_mb: None,
            memory_of: Some(MemoryOf::Gpu),
        },
        // The run fills in the host peak (the process's high-water mark) at the end.
        _ => LoadInfo { time_s, memory_mb: loaded.memory_mb, peak_memory_mb: None, memory_of: Some(MemoryOf::Host) },
    };

    // 3. Warmup: its tokens never count.
    ctx.on_phase.tell(Phase::Warmup);
    let warmup = warmup(spec, engine)?;

    // 4. Thermal floor.
    ctx.on_phase.tell(Phase::ThermalFloor);
    let thermal = thermal_floor(spec, clock, meter);

    // 5. Measure: sampler over the whole window; counters read after a device sync on
    //    both sides.
    ctx.on_phase.tell(Phase::Measuring);
    meter.start(m.sample_hz);
    engine.sync();
    let start = meter.read_now();
    let requests = engine.measure();
    engine.sync();
    let end = meter.read_now();
    let mut samples = meter.stop();
    let requests = requests.map_err(fail("the measured run"))?;
    engine.after_window().map_err(fail("the measured run"))?;
    let (t0, t1) = (start.t, end.t);
    let duration_s = t1 - t0;
    samples.retain(|s| s.t >= t0 && s.t <= t1);
    if let (Some(MemoryOf::Gpu), Some(before)) = (load.memory_of, gpu_before) {
        let peak = samples.iter().chain([&start, &end]).filter_map(gpu_memory_mb).fold(f64::NAN, f64::max);
        load.peak_memory_mb = (!peak.is_nan()).then(|| (peak - before).max(0.0));
    }

    let mut warnings: Vec<Warning> = Vec::new();
    let energy = energy_of(meter.kind(), &samples, &start, &end, duration_s, baseline.power_w, &mut warnings, ctx);
    if let Some(gap) = meter.wrap_range_j().and_then(|range| energy::counter_gap(&samples, t0, t1, range)) {
        warnings.push(warnings::counter_gap(&gap));
    }
    let tokens = Tokens {
        input: requests.iter().map(|r| r.input_tokens).sum(),
        output: requests.iter().map(|r| r.output_tokens).sum(),
    };
    let serving = spec.load.as_ref().and_then(|load| {
        let window = crate::serving::Window {
            t0,
            t1,
            samples: &samples,
            devices: devices.len(),
            total_j: energy.total_j,
            baseline_w: baseline.power_w,
        };
        crate::serving::compute(&requests, &window, load, engine.server_name())
    });
    // A server request whose tokens could not be counted exactly leaves the totals short:
    // then no per-token figure is given rather than one that is too high.
    let exact =
        requests.iter().filter(|r| !r.failed()).all(|r| r.served.as_ref().is_none_or(|s| s.output_tokens.is_some()));
    let per_token = |j: Option<f64>| j.filter(|_| tokens.output > 0 && exact).map(|j| j / tokens.output as f64);
    let energy = Energy {
        j_per_output_token: per_token(energy.total_j),
        j_per_output_token_adjusted: per_token(energy.adjusted_j),
        ..energy
    };
    let completed = requests.iter().filter(|r| !r.failed()).count();

    if duration_s < warnings::MIN_DURATION_S {
        warnings.push(warnings::short_measurement_duration(duration_s));
    }
    let sampled = samples.iter().filter(|s| s.readings.iter().any(|r| r.power_w.is_some())).count();
    if meter.kind() != SensorKind::None && sampled < warnings::MIN_SAMPLES {
        warnings.push(warnings::low_sample_count(sampled, m.sample_hz));
    }
    let off: Vec<u32> = ctx.gpus.iter().filter(|g| g.persistence_mode == Some(false)).map(|g| g.index).collect();
    if !off.is_empty() {
        warnings.push(warnings::gpu_persistence_mode_off(&off));
    }
    if let Some(range) = energy::temperature_range(&samples, t0, t1).filter(|r| *r > warnings::MAX_DRIFT_C) {
        warnings.push(warnings::thermal_drift_detected(range));
    }
    let throttled = energy::throttled_samples(&samples, t0, t1, THERMAL_THROTTLE_BITS);
    if throttled > 0 {
        warnings.push(warnings::thermal_throttling(throttled));
    }

    let flops = match loaded.non_embedding_params {
        Some(n) => Flops {
            total: Some(2.0 * n as f64 * (tokens.input + tokens.output) as f64),
            method: "palm: 2 × non-embedding parameters × (prompt + generated tokens) of the measured window"
                .to_owned(),
            non_embedding_params: Some(n),
        },
        None => Flops {
            total: None,
            method: "unknown: the engine does not know its parameter count".to_owned(),
            non_embedding_params: None,
        },
    };

    let (serving, per_request_j) = match serving {
        Some(c) => {
            warnings.extend(c.warnings);
            (Some(c.result), c.per_request_j)
        }
        None => (None, Vec::new()),
    };
    let window: Vec<Sample> = samples.iter().map(|s| Sample { t: s.t - t0, readings: s.readings.clone() }).collect();
    let result = JobResult {
        schema_version: SCHEMA_VERSION,
        job_id: ctx.job_id.clone(),
        spec: spec.clone(),
        node: NodeSnapshot { gpus: ctx.gpus.clone(), ..ctx.node.clone() },
        energy,
        baseline,
        duration_s,
        tokens,
        throughput: Throughput {
            output_tokens_per_s: (duration_s > 0.0 && exact).then(|| tokens.output as f64 / duration_s),
            // Completed requests: a failed one is no throughput.
            requests_per_s: (duration_s > 0.0).then(|| completed as f64 / duration_s),
        },
        latency: latency(&requests),
        warmup,
        thermal_floor: thermal,
        load,
        sampling: SamplingInfo { sample_hz: m.sample_hz, samples: samples.len() as u64, timeseries_rows: 0 },
        flops,
        warnings,
        started_at: crate::clock::rfc3339(started_at),
        finished_at: crate::clock::rfc3339(clock.unix_now()),
        serving,
    };
    Ok(Measured { result, requests, per_request_j, window_start: t0, window, devices })
}

fn baseline<C, M, B>(
    spec: &ExperimentSpec,
    clock: &C,
    meter: &mut M,
    store: &B,
    devices: &[SensedDevice],
) -> BaselineInfo
where
    C: Clock + ?Sized,
    M: Meter + ?Sized,
    B: BaselineStore + ?Sized,
{
    let b = &spec.measurement.baseline;
    if b.duration_s <= 0.0 || meter.kind() == SensorKind::None {
        return BaselineInfo { power_w: None, cached: false, measured_at_unix: None, duration_s: 0.0 };
    }
    let key = devices.iter().map(|d| d.key.as_str()).collect::<Vec<_>>().join("+");
    let now = clock.unix_now();
    if let Some(c) = store.get(&key).filter(|c| now - c.measured_at_unix <= b.cache_ttl_s && now >= c.measured_at_unix)
    {
        tracing::info!("baseline {:.2} W from cache ({:.0} s old)", c.power_w, now - c.measured_at_unix);
        return BaselineInfo {
            power_w: Some(c.power_w),
            cached: true,
            measured_at_unix: Some(c.measured_at_unix),
            duration_s: c.duration_s,
        };
    }
    tracing::info!("measuring idle power for {} s", b.duration_s);
    meter.start(spec.measurement.sample_hz);
    clock.sleep(b.duration_s);
    let samples = meter.stop();
    let power = energy::mean_power(&samples, devices.len());
    if let Some(power_w) = power {
        store.put(&key, &CachedBaseline { power_w, measured_at_unix: now, duration_s: b.duration_s });
    }
    BaselineInfo { power_w: power, cached: false, measured_at_unix: power.map(|_| now), duration_s: b.duration_s }
}

fn warmup<E: Engine + ?Sized>(spec: &ExperimentSpec, engine: &mut E) -> Result<WarmupInfo, SequenceError> {
    let w = &spec.measurement.warmup;
    let mut latencies: Vec<f64> = Vec::new();
    let tail_cv = |l: &[f64]| coefficient_of_variation(&l[l.len().saturating_sub(w.window as usize)..]);
    if let Some(n) = w.prompts {
        for step in 0..n {
            match engine.warmup_step(step).map_err(fail("warmup"))? {
                Some(ms) => latencies.push(ms),
                None => break,
            }
        }
        return Ok(WarmupInfo { prompts: latencies.len() as u32, converged: None, final_cv: tail_cv(&latencies) });
    }
    let mut converged = false;
    for step in 0..w.max_prompts {
        match engine.warmup_step(step).map_err(fail("warmup"))? {
            Some(ms) => latencies.push(ms),
            None => break,
        }
        if latencies.len() >= w.window as usize && tail_cv(&latencies).is_some_and(|cv| cv < w.cv) {
            converged = true;
            break;
        }
    }
    let ran = latencies.len() as u32;
    Ok(WarmupInfo {
        prompts: ran,
        // An engine with no warmup at all has nothing to converge.
        converged: (ran > 0).then_some(converged),
        final_cv: if latencies.len() >= w.window as usize { tail_cv(&latencies) } else { None },
    })
}

fn thermal_floor<C: Clock + ?Sized, M: Meter + ?Sized>(spec: &ExperimentSpec, clock: &C, meter: &mut M) -> ThermalInfo {
    let t = &spec.measurement.thermal_floor;
    let temp = |meter: &mut M| meter.read_now().readings.iter().filter_map(|r| r.temperature_c).reduce(f64::max);
    let Some(first) = temp(meter).filter(|_| t.max_s > 0.0) else {
        return ThermalInfo { waited_s: 0.0, settled: None, start_c: None, end_c: None };
    };
    let start = clock.now();
    let mut history = vec![first];
    loop {
        let waited = clock.now() - start;
        let tail = &history[history.len().saturating_sub(THERMAL_WINDOW)..];
        let range =
            tail.iter().copied().reduce(f64::max).unwrap_or(0.0) - tail.iter().copied().reduce(f64::min).unwrap_or(0.0);
        let settled = waited >= t.min_s && tail.len() >= THERMAL_WINDOW && range < t.delta_c;
        if settled || waited >= t.max_s {
            return ThermalInfo {
                waited_s: waited,
                settled: Some(settled),
                start_c: Some(first),
                end_c: history.last().copied(),
            };
        }
        clock.sleep(1.0);
        if let Some(c) = temp(meter) {
            history.push(c);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn energy_of(
    kind: SensorKind,
    samples: &[Sample],
    start: &Sample,
    end: &Sample,
    duration_s: f64,
    baseline_w: Option<f64>,
    warnings: &mut Vec<Warning>,
    ctx: &Context,
) -> Energy {
    let n = start.readings.len();
    let counter_j = energy::counter_delta(&start.readings, &end.readings);
    let integrated_j = energy::sum_devices(n, |d| energy::integrate_power(samples, d, start.t, end.t));
    // RAPL's power is derived from its own counter, so only a sensor with its own power
    // reading (NVML) gives an independent cross-check.
    if let (SensorKind::Nvml, Some(c), Some(i)) = (kind, counter_j, integrated_j) {
        if c > 0.0 && (c - i).abs() / c > warnings::MAX_DISAGREEMENT {
            warnings.push(warnings::energy_sources_disagree(c, i));
        }
    }
    let (source, total_j) = match (counter_j, integrated_j) {
        (Some(c), _) => (kind.name().to_owned(), Some(c)),
        (None, Some(i)) => (format!("{}_power", kind.name()), Some(i)),
        (None, None) => ("none".to_owned(), None),
    };
    if total_j.is_none() {
        warnings.push(warnings::no_energy_sensor(&ctx.skipped_sensors));
    }
    let adjusted_j = match (total_j, baseline_w) {
        (Some(t), Some(b)) => Some(energy::adjusted(t, b, duration_s)),
        _ => None,
    };
    Energy {
        source,
        total_j,
        baseline_w,
        adjusted_j,
        counter_j,
        integrated_j,
        j_per_output_token: None,
        j_per_output_token_adjusted: None,
    }
}

fn latency(requests: &[RequestMetrics]) -> Latency {
    // A failed request's latency describes the failure, not the server.
    let ok = || requests.iter().filter(|r| !r.failed());
    let ttft: Vec<f64> = ok().filter_map(|r| r.ttft_ms).collect();
    let itl: Vec<f64> = ok().flat_map(|r| r.itl_ms.iter().copied()).collect();
    let req: Vec<f64> = ok().map(|r| r.request_ms).collect();
    Latency { ttft_ms: Stats::of(&ttft), itl_ms: Stats::of(&itl), request_ms: Stats::of(&req) }
}

#[cfg(test)]
mod tests;

/// GPU memory in use on the job's devices (NVML), or `None` where nothing reports it.
pub(crate) fn gpu_memory_mb(sample: &Sample) -> Option<f64> {
    sample.readings.iter().map(|r| r.memory_used_mb).sum()
}
