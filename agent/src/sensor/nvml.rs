//! NVML: the total-energy counter (Volta and later) as the primary energy source, power
//! polling as the fallback and cross-check, plus temperature, memory, utilisation,
//! throttle reasons and provenance (persistence mode, power limit, clocks, driver).
//!
//! `libnvidia-ml.so` is loaded at run time: on a machine without it, opening fails with
//! "NVML unavailable: <reason>" and nothing crashes.

use llem_common::result::GpuInfo;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;

use super::{DeviceReading, SensedDevice, Sensor, SensorError, SensorKind};

/// Reads a fixed set of GPUs.
pub struct NvmlSensor {
    nvml: Nvml,
    indices: Vec<u32>,
    devices: Vec<SensedDevice>,
    /// Whether each GPU has a working total-energy counter.
    has_counter: Vec<bool>,
}

impl std::fmt::Debug for NvmlSensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSensor").field("devices", &self.devices).finish_non_exhaustive()
    }
}

/// Initialises NVML, with the reason when it cannot.
pub fn init() -> Result<Nvml, SensorError> {
    Nvml::init().map_err(|e| SensorError::NvmlUnavailable(e.to_string()))
}

impl NvmlSensor {
    pub fn open(indices: &[u32]) -> Result<Self, SensorError> {
        let nvml = init()?;
        let count = nvml.device_count().map_err(|e| SensorError::NvmlUnavailable(e.to_string()))?;
        let mut devices = Vec::new();
        let mut has_counter = Vec::new();
        for &index in indices {
            if index >= count {
                return Err(SensorError::NoSuchGpu { index, count });
            }
            let device = nvml.device_by_index(index).map_err(|e| SensorError::NvmlUnavailable(e.to_string()))?;
            let name = device.name().unwrap_or_else(|_| format!("GPU {index}"));
            let uuid = device.uuid().unwrap_or_else(|_| format!("index-{index}"));
            has_counter.push(device.total_energy_consumption().is_ok());
            devices.push(SensedDevice { index: index as i32, name, key: format!("nvml-{uuid}") });
        }
        Ok(NvmlSensor { nvml, indices: indices.to_vec(), devices, has_counter })
    }

    /// Every GPU's provenance (for `llem-agent probe`).
    pub fn all_gpus() -> Result<(Vec<GpuInfo>, Option<String>), SensorError> {
        let nvml = init()?;
        let count = nvml.device_count().map_err(|e| SensorError::NvmlUnavailable(e.to_string()))?;
        let sensor = NvmlSensor::open(&(0..count).collect::<Vec<_>>())?;
        Ok((sensor.gpu_info(), sensor.driver_version()))
    }
}

impl Sensor for NvmlSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Nvml
    }

    fn devices(&self) -> &[SensedDevice] {
        &self.devices
    }

    fn read(&mut self) -> Vec<DeviceReading> {
        self.indices
            .iter()
            .zip(&self.has_counter)
            .map(|(&index, &has_counter)| {
                let Ok(d) = self.nvml.device_by_index(index) else { return DeviceReading::default() };
                let memory = d.memory_info().ok();
                DeviceReading {
                    power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                    energy_j: if has_counter {
                        d.total_energy_consumption().ok().map(|mj| mj as f64 / 1000.0)
                    } else {
                        None
                    },
                    temperature_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                    memory_used_mb: memory.as_ref().map(|m| m.used as f64 / 1_048_576.0),
                    memory_total_mb: memory.as_ref().map(|m| m.total as f64 / 1_048_576.0),
                    utilisation_pct: d.utilization_rates().ok().map(|u| f64::from(u.gpu)),
                    throttle_reasons: d.current_throttle_reasons().ok().map(|r| r.bits()),
                }
            })
            .collect()
    }

    fn gpu_info(&self) -> Vec<GpuInfo> {
        self.indices
            .iter()
            .filter_map(|&index| {
                let d = self.nvml.device_by_index(index).ok()?;
                Some(GpuInfo {
                    index,
                    name: d.name().unwrap_or_default(),
                    uuid: d.uuid().ok(),
                    persistence_mode: d.is_in_persistent_mode().ok(),
                    power_limit_w: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1000.0),
                    sm_clock_mhz: d.clock_info(Clock::SM).ok(),
                    memory_clock_mhz: d.clock_info(Clock::Memory).ok(),
                    memory_total_mb: d.memory_info().ok().map(|m| m.total as f64 / 1_048_576.0),
                })
            })
            .collect()
    }

    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }
}

/// NVML throttle-reason bits that mean "slowed down because hot".
pub const THERMAL_THROTTLE_BITS: u64 = 0x20 | 0x40;
