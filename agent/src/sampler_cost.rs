//! What sampling costs: the sampler thread's own CPU time per sample, read from the
//! kernel's per-thread accounting (`/proc/self/task/<tid>/schedstat`). `probe
//! --sampler-cost` reports it for each sensor this node has; the sampler benchmark uses it
//! for the fake sensors.

use std::sync::Arc;

use llem_common::probe::SamplerCost;

use crate::clock::{Clock, SystemClock};
use crate::sampler::{Meter, ThreadedMeter};
use crate::sensor::Sensor;

/// CPU nanoseconds used so far by this process's thread named `llem-sampler`.
pub fn sampler_thread_cpu_ns() -> Option<u64> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "llem-sampler" {
            let stat = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// Runs the sampler on `sensor` at `hz` for `seconds` and returns what its thread used.
pub fn measure(name: &str, sensor: Box<dyn Sensor>, hz: f64, seconds: f64) -> SamplerCost {
    let clock = Arc::new(SystemClock::default());
    let mut meter = ThreadedMeter::new(sensor, Arc::clone(&clock));
    let t0 = clock.now();
    meter.start(hz);
    clock.sleep(seconds);
    // Read before stop: the thread's accounting goes with it.
    let cpu_ns = sampler_thread_cpu_ns();
    let wall = clock.now() - t0;
    let samples = meter.stop().len() as u64;
    let cpu_ms = cpu_ns.map(|ns| ns as f64 / 1e6);
    SamplerCost {
        sensor: name.to_owned(),
        hz,
        seconds: wall,
        samples,
        cpu_ms,
        per_sample_us: cpu_ms.filter(|_| samples > 0).map(|ms| ms * 1e3 / samples as f64),
        core_share_pct: cpu_ms.filter(|_| wall > 0.0).map(|ms| ms / 1e3 / wall * 100.0),
    }
}

/// One line of `probe`'s text.
pub fn render(c: &SamplerCost) -> String {
    match (c.per_sample_us, c.core_share_pct) {
        (Some(us), Some(pct)) => format!(
            "  {:<5} {:>5} Hz  {} samples in {:.1} s: {us:.1} µs of CPU per sample, {pct:.3} % of one core\n",
            c.sensor, c.hz, c.samples, c.seconds
        ),
        _ => format!("  {:<5} {:>5} Hz  CPU time unavailable (no /proc/self/task/*/schedstat)\n", c.sensor, c.hz),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_threads_cost_is_counted_per_sample() {
        let cost = measure("none", Box::new(crate::sensor::NoSensor::new(llem_common::spec::Device::Cpu)), 100.0, 0.3);
        assert!(cost.samples >= 10, "{cost:?}");
        // Linux has schedstat; the thread did some work, far less than a core.
        let pct = cost.core_share_pct.expect("schedstat");
        assert!(pct > 0.0 && pct < 50.0, "{cost:?}");
        assert!(render(&cost).contains("µs of CPU per sample"));
    }
}
