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
    memory: Curve,
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
            memory: Box::new(|_| None),
            recording: None,
        }
    }

    fn at(&self, t: f64) -> Sample {
        let reading = DeviceReading {
            power_w: (self.power)(t),
            energy_j: (self.energy)(t),
            temperature_c: (self.temperature)(t),
            throttle_reasons: (self.throttle)(t),
            memory_used_mb: (self.memory)(t),
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
                    served: None,
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
fn gpu_memory_is_what_loading_added_and_its_window_peak() {
    // Another process holds 1000 MB; the 5 s baseline, a 2 s load to 5000 MB, then the
    // KV cache grows to 7000 MB from t0 + 15 s (inside the 20 s window).
    let memory = |t0: f64| -> Curve {
        Box::new(move |t| {
            Some(if t < t0 + 6.0 {
                1000.0
            } else if t < t0 + 15.0 {
                5000.0
            } else {
                7000.0
            })
        })
    };
    let gpu = format!("device: cuda:0\n{QUIET}");
    let mut s = setup(&gpu);
    let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 150.0);
    meter.memory = memory(s.clock.now());
    let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
    let load = &m.result.load;
    assert_eq!(load.memory_of, Some(MemoryOf::Gpu));
    assert_eq!(load.memory_mb, Some(4000.0));
    assert_eq!(load.peak_memory_mb, Some(6000.0));

    // A CPU job measured through NVML still reports its own (host) memory.
    let mut s = setup(QUIET);
    let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 150.0);
    meter.memory = memory(s.clock.now());
    let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
    assert_eq!(m.result.load.memory_of, Some(MemoryOf::Host));

    // Without NVML's memory field it is the engine's own (host) figure.
    let mut s = setup(&gpu);
    let mut meter = FakeMeter::constant(Rc::clone(&s.clock), 150.0);
    let m = run(&s.spec, s.clock.as_ref(), &mut meter, &mut s.engine, &s.store, &s.ctx).expect("runs");
    assert_eq!(m.result.load.memory_of, Some(MemoryOf::Host));
    assert_eq!(m.result.load.memory_mb, Some(100.0));
    assert_eq!(m.result.load.peak_memory_mb, None, "the run fills in the host peak");
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
    let mut s = setup(
        "measurement: {baseline: {duration_s: 5, cache_ttl_s: 100}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\n",
    );
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
