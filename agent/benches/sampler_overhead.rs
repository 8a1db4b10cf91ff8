//! Benchmark: CPU cost of the sampler thread. Prints the sampler thread's own CPU time
//! (from /proc/self/task/<tid>/schedstat) as a share of one core, for a RAPL sensor on a
//! fake powercap tree and for no sensor, at 10 Hz (the default) and 100 Hz.
//! Target: ≤ 0.5 % of one core at 10 Hz.
//!
//!   cargo bench -p llem-agent --bench sampler_overhead            # 20 s per case
//!   cargo bench -p llem-agent --bench sampler_overhead -- 5       # 5 s per case

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;

use llem_agent::clock::{Clock, SystemClock};
use llem_agent::sampler::{Meter, ThreadedMeter};
use llem_agent::sensor::{rapl::RaplSensor, NoSensor, Sensor};

/// CPU nanoseconds of the thread named `llem-sampler`.
fn sampler_cpu_ns() -> Option<u64> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "llem-sampler" {
            let stat = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn case(name: &str, sensor: Box<dyn Sensor>, hz: f64, seconds: f64) {
    let clock = Arc::new(SystemClock::default());
    let mut meter = ThreadedMeter::new(sensor, Arc::clone(&clock));
    let t0 = clock.now();
    meter.start(hz);
    clock.sleep(seconds);
    let cpu_ns = sampler_cpu_ns();
    let wall = clock.now() - t0;
    let samples = meter.stop().len();
    match cpu_ns {
        Some(ns) => println!(
            "  {name:<6} {hz:>5} Hz  {samples:>5} samples in {wall:.1} s  sampler CPU {:.2} ms = {:.4} % of one core ({:.1} µs/sample)",
            ns as f64 / 1e6,
            ns as f64 / 1e9 / wall * 100.0,
            ns as f64 / 1e3 / samples.max(1) as f64
        ),
        None => println!("  {name:<6} {hz:>5} Hz  CPU time unavailable (no /proc/self/task/*/schedstat)"),
    }
}

fn main() {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20.0);
    let dir = std::env::temp_dir().join(format!("llem-sampler-bench-{}", std::process::id()));
    let zone = dir.join("intel-rapl:0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("name"), "package-0\n").unwrap();
    std::fs::write(zone.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::write(zone.join("energy_uj"), "123456789\n").unwrap();
    println!("sampler_overhead: {seconds} s per case");
    for hz in [10.0, 100.0] {
        case("rapl", Box::new(RaplSensor::open(&dir).unwrap()), hz, seconds);
        case("none", Box::new(NoSensor::new(llem_common::spec::Device::Cpu)), hz, seconds);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
