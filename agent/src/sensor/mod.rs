//! Sensors: what a node can tell about power, energy, temperature, memory and load.
//!
//! One trait, three implementations: NVML (GPUs), RAPL (CPU packages, through the
//! powercap sysfs tree) and none. A missing sensor is never a crash and never a zero:
//! readings are `None` and the result says why.

use llem_common::result::GpuInfo;
use llem_common::spec::{Device, EnergySource};

pub mod nvml;
pub mod rapl;

/// What one device reported at one moment. `None` = this sensor cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceReading {
    pub power_w: Option<f64>,
    /// A cumulative energy counter, in joules, already unwrapped (monotonic).
    pub energy_j: Option<f64>,
    pub temperature_c: Option<f64>,
    pub memory_used_mb: Option<f64>,
    pub memory_total_mb: Option<f64>,
    pub utilisation_pct: Option<f64>,
    pub throttle_reasons: Option<u64>,
}

/// A device a sensor watches.
#[derive(Debug, Clone, PartialEq)]
pub struct SensedDevice {
    /// `gpu_index` in the timeseries: the GPU's index, or -1 for the host CPU.
    pub index: i32,
    pub name: String,
    /// Key of the device's cached baseline (stable across runs).
    pub key: String,
}

/// Which sensor family a reading came from (`result.json`'s `energy.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorKind {
    Nvml,
    Rapl,
    None,
}

impl SensorKind {
    pub fn name(self) -> &'static str {
        match self {
            SensorKind::Nvml => "nvml",
            SensorKind::Rapl => "rapl",
            SensorKind::None => "none",
        }
    }
}

/// A source of readings for a fixed set of devices.
pub trait Sensor: Send {
    fn kind(&self) -> SensorKind;
    fn devices(&self) -> &[SensedDevice];
    /// One reading per device, in [`Sensor::devices`] order.
    fn read(&mut self) -> Vec<DeviceReading>;
    /// The energy its counter holds before it wraps (the smallest of its counters'), when
    /// it wraps within a job's lifetime: read less often than that takes, a wrap can be
    /// missed. `None`: no counter, or one that never wraps in practice (NVML's is 64-bit mJ).
    fn wrap_range_j(&self) -> Option<f64> {
        None
    }
    /// Provenance of the GPUs (empty for CPU sensors).
    fn gpu_info(&self) -> Vec<GpuInfo> {
        Vec::new()
    }
    fn driver_version(&self) -> Option<String> {
        None
    }
}

/// The sensor for when nothing can measure: every reading is `None`.
#[derive(Debug)]
pub struct NoSensor {
    devices: Vec<SensedDevice>,
}

impl NoSensor {
    pub fn new(device: Device) -> Self {
        let (index, name) = match device {
            Device::Cpu => (-1, "cpu".to_owned()),
            Device::Cuda(i) => (i.map_or(0, |i| i as i32), device.to_string()),
        };
        NoSensor { devices: vec![SensedDevice { index, key: format!("none-{name}"), name }] }
    }
}

impl Sensor for NoSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::None
    }
    fn devices(&self) -> &[SensedDevice] {
        &self.devices
    }
    fn read(&mut self) -> Vec<DeviceReading> {
        vec![DeviceReading::default(); self.devices.len()]
    }
}

/// Why a sensor could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SensorError {
    #[error("NVML unavailable: {0}")]
    NvmlUnavailable(String),
    #[error("RAPL unavailable: {0}")]
    RaplUnavailable(String),
    #[error("GPU {index} not found: this node has {count} GPU(s)")]
    NoSuchGpu { index: u32, count: u32 },
}

/// Opens the sensor a job asked for. `auto` falls back NVML (GPU jobs) → RAPL → none and
/// returns the reasons for each source it skipped; an explicit choice that is missing is
/// an error naming why.
/// `gpus`: every GPU the job holds (energy is summed over them, each keeps its own
/// timeseries rows); empty for a CPU job.
pub fn open(choice: EnergySource, device: Device, gpus: &[u32]) -> Result<(Box<dyn Sensor>, Vec<String>), SensorError> {
    let gpu = match device {
        Device::Cuda(i) => Some(i.unwrap_or(0)),
        Device::Cpu => None,
    };
    let indices: Vec<u32> = if gpus.is_empty() { gpu.into_iter().collect() } else { gpus.to_vec() };
    match choice {
        EnergySource::Nvml => {
            let indices = if indices.is_empty() { vec![0] } else { indices };
            Ok((Box::new(nvml::NvmlSensor::open(&indices)?), Vec::new()))
        }
        EnergySource::Rapl => Ok((Box::new(rapl::RaplSensor::open(&rapl::powercap_root())?), Vec::new())),
        EnergySource::None => Ok((Box::new(NoSensor::new(device)), Vec::new())),
        EnergySource::Auto => {
            let mut skipped = Vec::new();
            if gpu.is_some() {
                match nvml::NvmlSensor::open(&indices) {
                    Ok(s) => return Ok((Box::new(s), skipped)),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            match rapl::RaplSensor::open(&rapl::powercap_root()) {
                Ok(s) if gpu.is_none() => return Ok((Box::new(s), skipped)),
                // A GPU job measured by the CPU's RAPL would report the wrong device's
                // energy: say so instead.
                Ok(_) => skipped.push("RAPL measures the CPU, not the GPU this job uses".to_owned()),
                Err(e) => skipped.push(e.to_string()),
            }
            Ok((Box::new(NoSensor::new(device)), skipped))
        }
    }
}
