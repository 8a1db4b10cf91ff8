//! Benchmark: CPU cost of the sampler thread. Prints the sampler thread's own CPU time
//! (from /proc/self/task/<tid>/schedstat) as a share of one core, for a RAPL sensor on a
//! fake powercap tree and for no sensor, at 10 Hz (the default) and 100 Hz.
//! Target: ≤ 0.5 % of one core at 10 Hz.
//!
//!   cargo bench -p llem-agent --bench sampler_overhead            # 20 s per case
//!   cargo bench -p llem-agent --bench sampler_overhead -- 5       # 5 s per case

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use llem_agent::sampler_cost::{measure, render};
use llem_agent::sensor::{rapl::RaplSensor, NoSensor, Sensor};

fn case(name: &str, sensor: Box<dyn Sensor>, hz: f64, seconds: f64) {
    print!("{}", render(&measure(name, sensor, hz, seconds)));
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
