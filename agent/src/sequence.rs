//! The locked measurement sequence: baseline → load → warmup → thermal floor → measure.
//!
//! Generic over the clock, the meter (sensor + sampler) and the engine, with the baseline
//! cache behind a trait: no sleeping, threads or files are needed to test it. The GPU lock
//! is taken around it by the caller (`run`).

use llem_common::result::{
    BaselineInfo, Energy, Flops, GpuInfo, JobResult, Latency, LoadInfo, NodeSnapshot, SamplingInfo, Stats, ThermalInfo,
    Throughput, Tokens, WarmupInfo, Warning, SCHEMA_VERSION,
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
    let t = clock.now();
    let loaded = engine.load().map_err(fail("loading the model"))?;
    let load = LoadInfo { time_s: clock.now() - t, memory_mb: loaded.memory_mb, peak_memory_mb: None };

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
    let (t0, t1) = (start.t, end.t);
    let duration_s = t1 - t0;
    samples.retain(|s| s.t >= t0 && s.t <= t1);

    let mut warnings: Vec<Warning> = Vec::new();
    let energy = energy_of(meter.kind(), &samples, &start, &end, duration_s, baseline.power_w, &mut warnings, ctx);
    let tokens = Tokens {
        input: requests.iter().map(|r| r.input_tokens).sum(),
        output: requests.iter().map(|r| r.output_tokens).sum(),
    };
    let energy = Energy {
        j_per_output_token: energy.total_j.filter(|_| tokens.output > 0).map(|j| j / tokens.output as f64),
        j_per_output_token_adjusted: energy.adjusted_j.filter(|_| tokens.output > 0).map(|j| j / tokens.output as f64),
        ..energy
    };

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
            output_tokens_per_s: (duration_s > 0.0).then(|| tokens.output as f64 / duration_s),
            requests_per_s: (duration_s > 0.0).then(|| requests.len() as f64 / duration_s),
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
    };
    Ok(Measured { result, window, devices })
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
    let ttft: Vec<f64> = requests.iter().filter_map(|r| r.ttft_ms).collect();
    let itl: Vec<f64> = requests.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
    let req: Vec<f64> = requests.iter().map(|r| r.request_ms).collect();
    Latency { ttft_ms: Stats::of(&ttft), itl_ms: Stats::of(&itl), request_ms: Stats::of(&req) }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use llem_common::spec::raw::RawExperiment;

    use super::*;
    use crate::baseline::memory::MemoryStore;
    use crate::clock::fake::FakeClock;
    use crate::sensor::DeviceReading;
    use crate::workload::Loaded;

    type Curve = Box<dyn Fn(f64) -> Option<f64>>;

    /// A meter whose readings are known functions of (fake) time: the ground truth.
    struct FakeMeter {
        clock: Rc<FakeClock>,
        kind: SensorKind,
        power: Curve,
        energy: Curve,
        temperature: Curve,
        throttle: Box<dyn Fn(f64) -> Option<u64>>,
        recording: Option<(f64, f64)>,
    }

    impl FakeMeter {
        fn constant(clock: Rc<FakeClock>, watts: f64) -> Self {
            FakeMeter {
                clock,
                kind: SensorKind::Nvml,
                power: Box::new(move |_| Some(watts)),
                energy: Box::new(move |t| Some(watts * t)),
                temperature: Box::new(|_| Some(50.0)),
                throttle: Box::new(|_| Some(0)),
                recording: None,
            }
        }

        fn at(&self, t: f64) -> Sample {
            let reading = DeviceReading {
                power_w: (self.power)(t),
                energy_j: (self.energy)(t),
                temperature_c: (self.temperature)(t),
                throttle_reasons: (self.throttle)(t),
                ..DeviceReading::default()
            };
            Sample { t, readings: vec![reading] }
        }
    }

    impl Meter for FakeMeter {
        fn kind(&self) -> SensorKind {
            self.kind
        }
        fn devices(&self) -> Vec<SensedDevice> {
            vec![SensedDevice { index: 0, name: "fake".into(), key: "fake-0".into() }]
        }
        fn read_now(&mut self) -> Sample {
            self.at(self.clock.now())
        }
        fn start(&mut self, hz: f64) {
            self.recording = Some((self.clock.now(), hz));
        }
        fn stop(&mut self) -> Vec<Sample> {
            let Some((start, hz)) = self.recording.take() else { return Vec::new() };
            let end = self.clock.now();
            let n = ((end - start) * hz).floor() as u64;
            let mut samples: Vec<Sample> = (0..=n).map(|k| self.at(start + k as f64 / hz)).collect();
            samples.push(self.at(end));
            crate::sampler::derive_power(&mut samples);
            samples
        }
    }

    /// An engine whose latencies come from a list; each prompt advances the fake clock.
    struct FakeEngine {
        clock: Rc<FakeClock>,
        warmup_ms: Vec<f64>,
        prompts: u32,
        ms_per_prompt: f64,
        tokens_per_prompt: u64,
        warmup_calls: Rc<RefCell<u32>>,
    }

    impl Engine for FakeEngine {
        fn load(&mut self) -> Result<Loaded, EngineError> {
            self.clock.advance(2.0);
            Ok(Loaded { memory_mb: Some(100.0), non_embedding_params: Some(1_000) })
        }
        fn warmup_step(&mut self, step: u32) -> Result<Option<f64>, EngineError> {
            *self.warmup_calls.borrow_mut() += 1;
            let ms = self.warmup_ms.get(step as usize).copied().unwrap_or(100.0);
            self.clock.advance(ms / 1000.0);
            Ok(Some(ms))
        }
        fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError> {
            Ok((0..self.prompts)
                .map(|_| {
                    self.clock.advance(self.ms_per_prompt / 1000.0);
                    RequestMetrics {
                        input_tokens: 10,
                        output_tokens: self.tokens_per_prompt,
                        ttft_ms: Some(5.0),
                        itl_ms: vec![1.0; self.tokens_per_prompt.saturating_sub(1) as usize],
                        request_ms: self.ms_per_prompt,
                    }
                })
                .collect())
        }
    }

    struct Setup {
        clock: Rc<FakeClock>,
        spec: ExperimentSpec,
        engine: FakeEngine,
        store: MemoryStore,
        ctx: Context,
    }

    fn setup(yaml: &str) -> Setup {
        let node = llem_common::yaml::parse(Default::default(), &format!("model: fake\n{yaml}")).expect("yaml");
        let raw: RawExperiment = llem_common::de::from_node(&node, "").expect("decodes");
        let spec = raw.validate(Default::default()).expect("valid");
        let clock = Rc::new(FakeClock::new(1_800_000_000.0));
        let engine = FakeEngine {
            clock: Rc::clone(&clock),
            warmup_ms: Vec::new(),
            prompts: 20,
            ms_per_prompt: 1000.0,
            tokens_per_prompt: 50,
            warmup_calls: Rc::default(),
        };
        let ctx = Context {
            job_id: "j-c1".into(),
            node: NodeSnapshot::default(),
            gpus: Vec::new(),
            skipped_sensors: Vec::new(),
            on_phase: PhaseObserver::default(),
        };
        Setup { clock, spec, engine, store: MemoryStore::default(), ctx }
    }

    fn codes(m: &Measured) -> Vec<&str> {
        m.result.warnings.iter().map(|w| w.code.as_str()).collect()
    }

    const QUIET: &str = "measurement: {baseline: {duration_s: 5}, warmup: {prompts: 1}, thermal_floor: {max_s: 0}}\n";

    #[test]
    fn constant_power_gives_exact_energy_and_no_warnings() {
        let mut s = setup(QUIET);
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 150.0);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        let e = &m.result.energy;
        assert_eq!(m.result.duration_s, 20.0);
        assert!((e.counter_j.expect("counter") - 3000.0).abs() < 1e-6);
        assert!((e.integrated_j.expect("integrated") - 3000.0).abs() < 1e-6);
        assert_eq!(e.total_j, e.counter_j);
        assert_eq!(e.source, "nvml");
        assert!((e.baseline_w.expect("baseline") - 150.0).abs() < 1e-9);
        assert!(e.adjusted_j.expect("adjusted").abs() < 1e-6);
        assert!((e.j_per_output_token.expect("per token") - 3.0).abs() < 1e-9);
        assert_eq!(m.result.tokens, Tokens { input: 200, output: 1000 });
        assert_eq!(m.result.throughput.output_tokens_per_s, Some(50.0));
        assert_eq!(m.result.flops.total, Some(2.0 * 1000.0 * 1200.0));
        assert_eq!(m.result.load.time_s, 2.0);
        assert!(codes(&m).is_empty(), "{:?}", m.result.warnings);
        assert_eq!(m.result.started_at, "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn idle_baseline_is_subtracted() {
        let mut s = setup(QUIET);
        let clock = Rc::clone(&s.clock);
        // 60 W idle until the model loads (t = 5 s), 200 W after.
        let mut meter = FakeMeter::constant(Rc::clone(&clock), 0.0);
        meter.power = Box::new(|t| Some(if t < 5.0 { 60.0 } else { 200.0 }));
        meter.energy = Box::new(|t| Some(if t < 5.0 { 60.0 * t } else { 300.0 + 200.0 * (t - 5.0) }));
        let m = run(&s.spec, clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        let e = &m.result.energy;
        assert!((e.baseline_w.expect("baseline") - 60.0).abs() < 1e-9);
        assert!((e.adjusted_j.expect("adjusted") - (4000.0 - 60.0 * 20.0)).abs() < 1e-6);
    }

    #[test]
    fn the_baseline_cache_expires() {
        let mut s = setup("measurement: {baseline: {duration_s: 5, cache_ttl_s: 100}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\n");
        let clock = Rc::clone(&s.clock);
        let mut meter = FakeMeter::constant(Rc::clone(&clock), 80.0);
        let first = run(&s.spec, clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert!(!first.result.baseline.cached);
        let second = run(&s.spec, clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert!(second.result.baseline.cached, "reused within the TTL");
        clock.advance(101.0);
        let before = clock.now();
        let third = run(&s.spec, clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert!(!third.result.baseline.cached, "re-measured when stale");
        assert!(clock.now() - before >= 5.0, "the re-measurement took its duration");
    }

    #[test]
    fn warmup_stops_when_latency_converges() {
        let mut s = setup("measurement: {baseline: {duration_s: 0}, warmup: {cv: 0.05, window: 3, max_prompts: 20}, thermal_floor: {max_s: 0}}\n");
        s.engine.warmup_ms = vec![500.0, 300.0, 200.0, 150.0, 101.0, 100.0, 99.0, 100.0, 100.0, 100.0];
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(m.result.warmup.prompts, 7, "101, 100, 99 (prompts 5–7) is the first window under 5 %");
        assert_eq!(m.result.warmup.converged, Some(true));
        assert!(m.result.warmup.final_cv.expect("cv") < 0.05);
        assert_eq!(m.result.tokens.output, 1000, "warmup tokens never count");
    }

    #[test]
    fn warmup_gives_up_at_max_prompts() {
        let mut s = setup("measurement: {baseline: {duration_s: 0}, warmup: {cv: 0.01, window: 2, max_prompts: 4}, thermal_floor: {max_s: 0}}\n");
        s.engine.warmup_ms = vec![100.0, 200.0, 100.0, 200.0, 100.0];
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        let calls = Rc::clone(&s.engine.warmup_calls);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!((m.result.warmup.prompts, m.result.warmup.converged), (4, Some(false)));
        assert_eq!(*calls.borrow(), 4);
    }

    #[test]
    fn thermal_floor_waits_for_settling_within_bounds() {
        // Cooling from 70 °C by 2 °C/s to a floor of 50 °C: settles once 5 readings span < 1 °C.
        let mut s = setup("measurement: {baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {min_s: 3, max_s: 60, delta_c: 1}}\n");
        let clock = Rc::clone(&s.clock);
        let mut meter = FakeMeter::constant(Rc::clone(&clock), 100.0);
        let t_load_end = 2.0;
        meter.temperature = Box::new(move |t| Some((70.0 - 2.0 * (t - t_load_end).max(0.0)).max(50.0)));
        let m = run(&s.spec, clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        let th = &m.result.thermal_floor;
        assert_eq!(th.settled, Some(true));
        assert_eq!(th.waited_s, 14.0, "reaches 50 °C at 10 s, then 4 more readings");
        assert_eq!((th.start_c, th.end_c), (Some(70.0), Some(50.0)));

        // Never settles: bounded by max_s.
        let mut s = setup("measurement: {baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {min_s: 0, max_s: 8, delta_c: 1}}\n");
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        meter.temperature = Box::new(|t| Some(40.0 + 3.0 * t));
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!((m.result.thermal_floor.waited_s, m.result.thermal_floor.settled), (8.0, Some(false)));

        // min_s holds even when already stable.
        let mut s = setup("measurement: {baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {min_s: 9, max_s: 60, delta_c: 1}}\n");
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(m.result.thermal_floor.waited_s, 9.0);
    }

    #[test]
    fn every_warning_is_triggered() {
        // no_energy_sensor
        let mut s = setup(QUIET);
        s.ctx.skipped_sensors = vec!["NVML unavailable: libnvidia-ml.so not found".into()];
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 0.0);
        meter.kind = SensorKind::None;
        meter.power = Box::new(|_| None);
        meter.energy = Box::new(|_| None);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(codes(&m), vec!["no_energy_sensor"]);
        assert!(m.result.warnings[0].message.contains("libnvidia-ml.so not found"));
        let e = &m.result.energy;
        assert_eq!((e.total_j, e.adjusted_j, e.j_per_output_token, e.baseline_w), (None, None, None, None));
        assert_eq!(e.source, "none");

        // energy_sources_disagree: the counter runs 10 % above integrated power.
        let mut s = setup(QUIET);
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        meter.energy = Box::new(|t| Some(110.0 * t));
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(codes(&m), vec!["energy_sources_disagree"]);
        assert!((m.result.energy.total_j.expect("total") - 2200.0).abs() < 1e-6, "the counter is used");

        // short_measurement_duration and low_sample_count: 2 prompts of 1 s at 2 Hz.
        let mut s = setup(
            "measurement: {sample_hz: 2, baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\n",
        );
        s.engine.prompts = 2;
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(codes(&m), vec!["short_measurement_duration", "low_sample_count"]);

        // thermal_drift_detected and thermal_throttling.
        let mut s = setup(QUIET);
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        meter.temperature = Box::new(|t| Some(40.0 + t));
        meter.throttle = Box::new(|t| Some(if t > 20.0 { 0x40 } else { 0x4 }));
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(codes(&m), vec!["thermal_drift_detected", "thermal_throttling"]);

        // gpu_persistence_mode_off
        let mut s = setup(QUIET);
        s.ctx.gpus = vec![GpuInfo {
            index: 0,
            name: "H100".into(),
            uuid: None,
            persistence_mode: Some(false),
            power_limit_w: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            memory_total_mb: None,
        }];
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 100.0);
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(codes(&m), vec!["gpu_persistence_mode_off"]);
        assert!(m.result.warnings.iter().all(|w| w.message.len() > 40), "each warning carries a remedy");
    }

    #[test]
    fn rapl_power_comes_from_its_counter() {
        let mut s = setup(QUIET);
        let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 0.0);
        meter.kind = SensorKind::Rapl;
        meter.power = Box::new(|_| None);
        meter.energy = Box::new(|t| Some(42.5 * t));
        let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
        assert_eq!(m.result.energy.source, "rapl");
        assert!((m.result.energy.total_j.expect("j") - 850.0).abs() < 1e-6);
        assert!((m.result.energy.integrated_j.expect("j") - 850.0).abs() < 1e-6);
        assert!(m.window.iter().skip(1).all(|s| s.readings[0].power_w.is_some_and(|p| (p - 42.5).abs() < 1e-9)));
    }

    #[test]
    fn cv() {
        assert_eq!(coefficient_of_variation(&[1.0]), None);
        assert_eq!(coefficient_of_variation(&[2.0, 2.0, 2.0]), Some(0.0));
        let cv = coefficient_of_variation(&[1.0, 2.0, 3.0]).expect("cv");
        assert!((cv - 0.5).abs() < 1e-12);
    }
}
