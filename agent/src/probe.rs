//! What this node is and what it can measure: `llem-agent probe`, and the environment
//! snapshot stored in every result.

pub use llem_common::probe::{ProbeReport, SourceStatus};
use llem_common::result::{GpuInfo, NodeSnapshot};

use crate::sensor::{nvml::NvmlSensor, rapl};

fn source(name: &str, available: bool, detail: String) -> SourceStatus {
    SourceStatus { name: name.to_owned(), available, detail }
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    Some(line.split_once([':', '='])?.1.trim().trim_matches('"').to_owned())
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The host, without GPU details (those come from the job's sensor).
pub fn host_snapshot(device: &str) -> NodeSnapshot {
    NodeSnapshot {
        hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".to_owned()),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        os: first_line_with("/etc/os-release", "PRETTY_NAME").unwrap_or_else(|| std::env::consts::OS.to_owned()),
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpu_model: first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total_mb: first_line_with("/proc/meminfo", "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0),
        device: device.to_owned(),
        gpus: Vec::new(),
        driver_version: None,
    }
}

pub fn probe() -> ProbeReport {
    let mut node = host_snapshot("");
    let mut sources = Vec::new();
    match NvmlSensor::all_gpus() {
        Ok((gpus, driver)) => {
            let counters = gpus.len();
            node.gpus = gpus;
            node.driver_version = driver;
            sources.push(source("nvml", true, format!("{counters} GPU(s)")));
        }
        Err(e) => sources.push(source("nvml", false, e.to_string())),
    }
    let root = rapl::powercap_root();
    match rapl::RaplSensor::open(&root) {
        Ok(s) => {
            use crate::sensor::Sensor as _;
            let name = s.devices().first().map(|d| d.name.clone()).unwrap_or_default();
            sources.push(source("rapl", true, format!("{name} under {}", root.display())));
        }
        Err(e) => sources.push(source("rapl", false, e.to_string())),
    }
    sources.push(source("none", true, "always: energy is reported as null with a warning".to_owned()));
    ProbeReport { node, energy_sources: sources, cuda: crate::cuda::status(), sampler_cost: Vec::new() }
}

fn gpu_line(g: &GpuInfo) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
    format!(
        "  gpu {}   {} · {} MiB · power limit {} W · persistence {}",
        g.index,
        g.name,
        opt(g.memory_total_mb.map(|m| format!("{m:.0}"))),
        opt(g.power_limit_w.map(|w| format!("{w:.0}"))),
        opt(g.persistence_mode.map(|p| if p { "on".to_owned() } else { "off".to_owned() }))
    )
}

/// The report as a person reads it.
pub fn render(report: &ProbeReport) -> String {
    let n = &report.node;
    let mut out = format!("llem-agent {} on {}\n", n.agent_version, n.hostname);
    out += &format!("  os      {} (kernel {})\n", n.os, n.kernel);
    out += &format!(
        "  cpu     {} · {} cores · {} memory\n",
        n.cpu_model,
        n.cpu_cores,
        n.memory_total_mb.map_or_else(|| "?".to_owned(), |m| format!("{:.1} GiB", m / 1024.0))
    );
    if n.gpus.is_empty() {
        out += "  gpus    none found\n";
    } else {
        out += &format!("  driver  {}\n", n.driver_version.clone().unwrap_or_else(|| "?".to_owned()));
        for g in &n.gpus {
            out += &gpu_line(g);
            out.push('\n');
        }
    }
    out += "energy sources\n";
    for s in &report.energy_sources {
        out += &format!("  {:<5} {:<11} {}\n", s.name, if s.available { "available" } else { "unavailable" }, s.detail);
    }
    let c = &report.cuda;
    out += &format!("cuda      {}: {}\n", if c.usable { "usable" } else { "not usable" }, c.detail);
    for l in &c.libraries {
        let at = match (&l.path, &l.found_in) {
            (Some(p), Some(from)) => {
                format!("{p} ({from}{})", l.version.as_ref().map_or(String::new(), |v| format!(", {v}")))
            }
            _ => "not found".to_owned(),
        };
        out += &format!("  {:<18} {:<18} {at}\n", l.name, l.purpose);
    }
    if !report.sampler_cost.is_empty() {
        out += "sampler cost (the sampler thread's own CPU time)\n";
        for c in &report.sampler_cost {
            out += &crate::sampler_cost::render(c);
        }
    }
    out
}

/// `probe --sampler-cost`: samples every available sensor (all GPUs through NVML, the
/// CPU packages through RAPL) at `hz` for `seconds` each.
pub fn sampler_costs(report: &ProbeReport, hz: f64, seconds: f64) -> Vec<llem_common::probe::SamplerCost> {
    let mut out = Vec::new();
    let gpus: Vec<u32> = report.node.gpus.iter().map(|g| g.index).collect();
    if !gpus.is_empty() {
        if let Ok(s) = NvmlSensor::open(&gpus) {
            out.push(crate::sampler_cost::measure("nvml", Box::new(s), hz, seconds));
        }
    }
    if let Ok(s) = rapl::RaplSensor::open(&rapl::powercap_root()) {
        out.push(crate::sampler_cost::measure("rapl", Box::new(s), hz, seconds));
    }
    out
}
