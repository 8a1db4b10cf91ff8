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

/// The real meter: a sensor shared with a sampler thread.
pub struct ThreadedMeter<C: Clock + 'static> {
    sensor: Arc<Mutex<Box<dyn Sensor>>>,
    devices: Vec<SensedDevice>,
    kind: SensorKind,
    clock: Arc<C>,
    running: Option<(JoinHandle<Vec<Sample>>, Stop)>,
    on_power: Option<PowerObserver>,
}

/// Told the devices' total power at most once a second while sampling (live progress).
pub type PowerObserver = Arc<dyn Fn(f64) + Send + Sync>;

impl<C: Clock> std::fmt::Debug for ThreadedMeter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedMeter").field("devices", &self.devices).finish_non_exhaustive()
    }
}

impl<C: Clock> ThreadedMeter<C> {
    pub fn new(sensor: Box<dyn Sensor>, clock: Arc<C>) -> Self {
        let devices = sensor.devices().to_vec();
        let kind = sensor.kind();
        ThreadedMeter { sensor: Arc::new(Mutex::new(sensor)), devices, kind, clock, running: None, on_power: None }
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
        f(guard.as_ref())
    }
}

fn read(sensor: &Mutex<Box<dyn Sensor>>, clock: &dyn Clock) -> Sample {
    let mut guard = sensor.lock().unwrap_or_else(|e| e.into_inner());
    let readings = guard.read();
    Sample { t: clock.now(), readings }
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

    fn start(&mut self, hz: f64) {
        let _ = self.stop();
        let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (sensor, clock, flag) = (Arc::clone(&self.sensor), Arc::clone(&self.clock), Arc::clone(&stop));
        let period = 1.0 / hz.max(1e-3);
        let handle = std::thread::Builder::new().name("llem-sampler".to_owned()).spawn(move || {
            let mut samples = Vec::new();
            let mut next = clock.now();
            loop {
                samples.push(read(&sensor, clock.as_ref()));
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
