//! The meter: one-off readings at phase boundaries, and a sampler thread that records
//! every device at `sample_hz` over a window.
//!
//! The measurement sequence talks to a [`Meter`], so it can be tested with a meter that
//! computes samples from known functions of a fake clock instead of a thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::clock::Clock;
use crate::sensor::{DeviceReading, SensedDevice, Sensor, SensorKind};

/// Every device's reading at time `t` (the clock's monotonic seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub readings: Vec<DeviceReading>,
}

/// Readings of the devices a job uses.
pub trait Meter {
    fn kind(&self) -> SensorKind;
    fn devices(&self) -> Vec<SensedDevice>;
    /// Reads every device now.
    fn read_now(&mut self) -> Sample;
    /// Starts recording at `hz` until [`Meter::stop`].
    fn start(&mut self, hz: f64);
    /// Stops recording; returns the samples, with power filled in from energy counters
    /// for sensors that only count energy (RAPL).
    fn stop(&mut self) -> Vec<Sample>;
    /// See [`Sensor::wrap_range_j`].
    fn wrap_range_j(&self) -> Option<f64> {
        None
    }
}

/// Fills `power_w` from consecutive energy readings where a sensor has no power reading.
pub fn derive_power(samples: &mut [Sample]) {
    for i in 1..samples.len() {
        let dt = samples[i].t - samples[i - 1].t;
        for d in 0..samples[i].readings.len() {
            let (prev, cur) = (samples[i - 1].readings[d], samples[i].readings[d]);
            if cur.power_w.is_none() {
                samples[i].readings[d].power_w = match (prev.energy_j, cur.energy_j) {
                    (Some(e0), Some(e1)) if dt > 0.0 => Some((e1 - e0) / dt),
                    // Two readings at the same instant: the power of the one before.
                    _ if dt <= 0.0 => prev.power_w,
                    _ => None,
                };
            }
        }
    }
}

type Stop = Arc<(Mutex<bool>, Condvar)>;

/// A sensor and how fast it can be read.
struct TimedSensor {
    sensor: Box<dyn Sensor>,
    /// The shortest read seen (seconds between the clock readings around it).
    fastest_s: f64,
}

/// A reading is timed by the clock just before and just after it. One that took much
/// longer than this sensor's fastest read was interrupted (the thread was preempted
/// between reading a counter and reading the clock, which on a busy node skews the window
/// by as much as the stall) and is taken again, up to [`READ_TRIES`] times; the tightest
/// is kept, timed at its middle.
const READ_SLACK_S: f64 = 0.002;
const READ_TRIES: usize = 5;

/// The real meter: a sensor shared with a sampler thread.
pub struct ThreadedMeter<C: Clock + 'static> {
    sensor: Arc<Mutex<TimedSensor>>,
    devices: Vec<SensedDevice>,
    kind: SensorKind,
    clock: Arc<C>,
    running: Option<(JoinHandle<Vec<Sample>>, Stop)>,
    on_power: Option<PowerObserver>,
}

/// Told the devices' total power at most once a second while sampling (live progress).
pub type PowerObserver = Arc<dyn Fn(f64) + Send + Sync>;

/// Seconds between two live power reports.
pub const LIVE_PERIOD_S: f64 = 1.0;

/// The devices' total power between two samples: their own power readings where every
/// device has one (NVML), else the energy counters' rise over the gap (RAPL); `None`
/// without a sensor.
pub fn live_power(prev: &Sample, cur: &Sample) -> Option<f64> {
    if !cur.readings.is_empty() && cur.readings.iter().all(|r| r.power_w.is_some()) {
        return Some(cur.readings.iter().filter_map(|r| r.power_w).sum());
    }
    let dt = cur.t - prev.t;
    let joules = crate::energy::counter_delta(&prev.readings, &cur.readings)?;
    (dt > 0.0).then(|| joules / dt)
}

impl<C: Clock> std::fmt::Debug for ThreadedMeter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedMeter").field("devices", &self.devices).finish_non_exhaustive()
    }
}

impl<C: Clock> ThreadedMeter<C> {
    pub fn new(sensor: Box<dyn Sensor>, clock: Arc<C>) -> Self {
        let devices = sensor.devices().to_vec();
        let kind = sensor.kind();
        let sensor = Arc::new(Mutex::new(TimedSensor { sensor, fastest_s: f64::INFINITY }));
        ThreadedMeter { sensor, devices, kind, clock, running: None, on_power: None }
    }

    /// Reports live power (≤ 1 Hz) to `observer` while sampling.
    #[must_use]
    pub fn with_power_observer(mut self, observer: PowerObserver) -> Self {
        self.on_power = Some(observer);
        self
    }

    /// The sensor, for provenance queries.
    pub fn with_sensor<T>(&self, f: impl FnOnce(&dyn Sensor) -> T) -> T {
        let guard = self.sensor.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.sensor.as_ref())
    }
}

fn read(sensor: &Mutex<TimedSensor>, clock: &dyn Clock) -> Sample {
    let mut guard = sensor.lock().unwrap_or_else(|e| e.into_inner());
    // One reading, bracketed by the clock: (how long it took, the sample).
    let read_once = |timed: &mut TimedSensor| {
        let before = clock.now();
        let readings = timed.sensor.read();
        let took = clock.now() - before;
        timed.fastest_s = timed.fastest_s.min(took);
        (took, Sample { t: before + took / 2.0, readings })
    };
    let mut best = read_once(&mut guard);
    for _ in 1..READ_TRIES {
        if best.0 <= 3.0 * guard.fastest_s + READ_SLACK_S {
            break;
        }
        let again = read_once(&mut guard);
        if again.0 < best.0 {
            best = again;
        }
    }
    best.1
}

impl<C: Clock> Meter for ThreadedMeter<C> {
    fn kind(&self) -> SensorKind {
        self.kind
    }

    fn devices(&self) -> Vec<SensedDevice> {
        self.devices.clone()
    }

    fn read_now(&mut self) -> Sample {
        read(&self.sensor, self.clock.as_ref())
    }

    fn wrap_range_j(&self) -> Option<f64> {
        self.with_sensor(|s| s.wrap_range_j())
    }

    fn start(&mut self, hz: f64) {
        let _ = self.stop();
        let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (sensor, clock, flag) = (Arc::clone(&self.sensor), Arc::clone(&self.clock), Arc::clone(&stop));
        let on_power = self.on_power.clone();
        let period = 1.0 / hz.max(1e-3);
        let handle = std::thread::Builder::new().name("llem-sampler".to_owned()).spawn(move || {
            let mut samples: Vec<Sample> = Vec::new();
            // The sample the last live report was measured from.
            let mut reported: Option<usize> = None;
            let mut next = clock.now();
            loop {
                samples.push(read(&sensor, clock.as_ref()));
                if let Some(observer) = &on_power {
                    let cur = samples.len() - 1;
                    match reported {
                        None => reported = Some(cur),
                        Some(prev) if samples[cur].t - samples[prev].t >= LIVE_PERIOD_S => {
                            if let Some(watts) = live_power(&samples[prev], &samples[cur]) {
                                observer(watts);
                            }
                            reported = Some(cur);
                        }
                        Some(_) => {}
                    }
                }
                next += period;
                let (lock, cvar) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                // Wait until the next tick, waking at once when told to stop.
                loop {
                    if *stopped {
                        return samples;
                    }
                    let wait = next - clock.now();
                    if wait <= 0.0 {
                        break;
                    }
                    let timeout = std::time::Duration::from_secs_f64(wait);
                    stopped = cvar.wait_timeout(stopped, timeout).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        });
        match handle {
            Ok(h) => self.running = Some((h, stop)),
            Err(e) => tracing::error!("failed to start the sampler thread: {e}"),
        }
    }

    fn stop(&mut self) -> Vec<Sample> {
        let Some((handle, stop)) = self.running.take() else { return Vec::new() };
        {
            let (lock, cvar) = &*stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cvar.notify_all();
        }
        let mut samples = handle.join().unwrap_or_default();
        // A last reading closes the window exactly at the stop time.
        samples.push(read(&self.sensor, self.clock.as_ref()));
        derive_power(&mut samples);
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_from_energy() {
        let r = |e| DeviceReading { energy_j: Some(e), ..DeviceReading::default() };
        let mut samples = vec![
            Sample { t: 0.0, readings: vec![r(0.0)] },
            Sample { t: 0.5, readings: vec![r(10.0)] },
            Sample { t: 1.0, readings: vec![r(20.0)] },
        ];
        derive_power(&mut samples);
        assert_eq!(samples[0].readings[0].power_w, None);
        assert_eq!(samples[1].readings[0].power_w, Some(20.0));
        assert_eq!(samples[2].readings[0].power_w, Some(20.0));
    }

    /// A counter read that the thread was preempted in the middle of: the clock jumps
    /// 100 ms between reading the counter and reading the clock.
    #[derive(Debug)]
    struct StallingSensor {
        clock: Arc<crate::clock::fake::FakeClock>,
        devices: Vec<SensedDevice>,
        reads: u32,
    }

    impl Sensor for StallingSensor {
        fn kind(&self) -> SensorKind {
            SensorKind::Rapl
        }
        fn devices(&self) -> &[SensedDevice] {
            &self.devices
        }
        fn read(&mut self) -> Vec<DeviceReading> {
            self.reads += 1;
            // 1 J per second of the fake clock, read now.
            let reading = DeviceReading { energy_j: Some(self.clock.now()), ..DeviceReading::default() };
            self.clock.advance(if self.reads == 2 { 0.1 } else { 0.0001 });
            vec![reading]
        }
    }

    #[test]
    fn a_preempted_read_is_taken_again() {
        let clock = Arc::new(crate::clock::fake::FakeClock::new(0.0));
        let device = SensedDevice { index: -1, name: "cpu".into(), key: "cpu".into() };
        let sensor = StallingSensor { clock: Arc::clone(&clock), devices: vec![device], reads: 0 };
        let mut meter = ThreadedMeter::new(Box::new(sensor), Arc::clone(&clock));
        let first = meter.read_now();
        assert!((first.t - first.readings[0].energy_j.unwrap_or(f64::NAN)).abs() < 0.0001);
        // The second read stalls for 100 ms: retaken, and its time matches its value.
        let second = meter.read_now();
        let value = second.readings[0].energy_j.unwrap_or(f64::NAN);
        assert!(value > 0.1, "the stalled reading was dropped: {second:?}");
        assert!((second.t - value).abs() < 0.0001, "timed within the read: {second:?}");
    }

    #[test]
    fn live_power_from_power_readings_or_counters() {
        let p = |w| DeviceReading { power_w: Some(w), ..DeviceReading::default() };
        let e = |j| DeviceReading { energy_j: Some(j), ..DeviceReading::default() };
        let (a, b) =
            (Sample { t: 0.0, readings: vec![p(1.0), p(2.0)] }, Sample { t: 1.0, readings: vec![p(3.0), p(4.0)] });
        assert_eq!(live_power(&a, &b), Some(7.0));
        let (a, b) = (Sample { t: 2.0, readings: vec![e(10.0)] }, Sample { t: 4.0, readings: vec![e(90.0)] });
        assert_eq!(live_power(&a, &b), Some(40.0));
        let none = Sample { t: 5.0, readings: vec![DeviceReading::default()] };
        assert_eq!(live_power(&none, &none), None, "no sensor: nothing to report, never 0");
    }

    /// A counter that rises 50 J per second of the fake clock, which the sensor advances.
    #[derive(Debug)]
    struct Counter {
        clock: Arc<crate::clock::fake::FakeClock>,
        devices: Vec<SensedDevice>,
    }

    impl Sensor for Counter {
        fn kind(&self) -> SensorKind {
            SensorKind::Rapl
        }
        fn devices(&self) -> &[SensedDevice] {
            &self.devices
        }
        fn read(&mut self) -> Vec<DeviceReading> {
            // Time stands still at 35 s, so the test knows when the window is over.
            if self.clock.now() < 35.0 {
                self.clock.advance(0.1);
            }
            vec![DeviceReading { energy_j: Some(50.0 * self.clock.now()), ..DeviceReading::default() }]
        }
    }

    #[test]
    fn the_observer_hears_the_power_about_once_a_second() {
        let clock = Arc::new(crate::clock::fake::FakeClock::new(0.0));
        let device = SensedDevice { index: -1, name: "cpu".into(), key: "cpu".into() };
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&heard);
        let sensor = Counter { clock: Arc::clone(&clock), devices: vec![device] };
        let mut meter = ThreadedMeter::new(Box::new(sensor), Arc::clone(&clock))
            .with_power_observer(Arc::new(move |w| sink.lock().expect("lock").push(w)));
        meter.start(1000.0);
        while clock.now() < 35.0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        meter.stop();
        let heard = heard.lock().expect("lock").clone();
        assert!((30..=35).contains(&heard.len()), "{} reports over 35 s", heard.len());
        assert!(heard.iter().all(|w| (w - 50.0).abs() < 1e-6), "{heard:?}");
    }

    #[test]
    fn the_thread_samples_until_stopped() {
        let clock = Arc::new(crate::clock::SystemClock::default());
        let mut meter =
            ThreadedMeter::new(Box::new(crate::sensor::NoSensor::new(llem_common::spec::Device::Cpu)), clock);
        meter.start(1000.0);
        let samples = meter.stop();
        // The thread's first reading happens before it looks at the stop flag, and stop
        // adds a closing one.
        assert!(samples.len() >= 2, "{samples:?}");
        assert!(samples.windows(2).all(|w| w[0].t <= w[1].t));
        assert!(meter.stop().is_empty(), "stopping twice gives nothing more");
    }
}
