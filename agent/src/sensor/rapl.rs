//! RAPL through the powercap sysfs tree: `intel-rapl:N/energy_uj` per CPU package, with
//! `max_energy_range_uj` for wrap-around. The root comes from `LLEM_POWERCAP_ROOT`
//! (default `/sys/class/powercap`) so tests can drive a fake tree at a known wattage.
//!
//! Only top-level zones (`intel-rapl:0`, `intel-rapl:1`, … or AMD's `amd-rapl:*`) are
//! summed: sub-zones (`intel-rapl:0:0`, core/uncore/dram) are parts of their package and
//! would count twice.

use std::path::{Path, PathBuf};

use super::{DeviceReading, SensedDevice, Sensor, SensorError, SensorKind};

pub const ROOT_ENV: &str = "LLEM_POWERCAP_ROOT";
const DEFAULT_ROOT: &str = "/sys/class/powercap";

/// The powercap root to read.
pub fn powercap_root() -> PathBuf {
    std::env::var_os(ROOT_ENV).map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

#[derive(Debug)]
struct Zone {
    energy_path: PathBuf,
    range_uj: u64,
    last_uj: u64,
    /// Energy counted since opening, unwrapped.
    total_uj: u128,
}

/// Sums the packages of one host into one device (`gpu_index` -1).
#[derive(Debug)]
pub struct RaplSensor {
    zones: Vec<Zone>,
    devices: Vec<SensedDevice>,
}

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| format!("{} does not hold a number", path.display()))
}

fn is_package_zone(name: &str) -> bool {
    let Some((prefix, rest)) = name.split_once(':') else { return false };
    prefix.ends_with("-rapl") && !rest.contains(':')
}

impl RaplSensor {
    pub fn open(root: &Path) -> Result<Self, SensorError> {
        let entries = std::fs::read_dir(root)
            .map_err(|e| SensorError::RaplUnavailable(format!("cannot list {}: {e}", root.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_package_zone(n))
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(SensorError::RaplUnavailable(format!(
                "no RAPL package zones (intel-rapl:N) under {} (a VM, or a CPU without RAPL)",
                root.display()
            )));
        }
        let mut zones = Vec::new();
        for name in &names {
            let dir = root.join(name);
            let energy_path = dir.join("energy_uj");
            // Reading energy_uj needs root on recent kernels: report that plainly.
            let last_uj = read_u64(&energy_path).map_err(SensorError::RaplUnavailable)?;
            let range_uj = read_u64(&dir.join("max_energy_range_uj")).map_err(SensorError::RaplUnavailable)?;
            zones.push(Zone { energy_path, range_uj, last_uj, total_uj: 0 });
        }
        let label: Vec<String> = names
            .iter()
            .map(|n| {
                std::fs::read_to_string(root.join(n).join("name")).map_or_else(|_| n.clone(), |s| s.trim().to_owned())
            })
            .collect();
        let devices =
            vec![SensedDevice { index: -1, name: format!("cpu ({})", label.join(" + ")), key: "rapl-cpu".to_owned() }];
        Ok(RaplSensor { zones, devices })
    }
}

/// Energy between two readings of a counter that wraps at `range`.
pub fn counter_delta(last: u64, now: u64, range: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        // Wrapped once (reads are far more frequent than the wrap period).
        range.saturating_sub(last) + now
    }
}

impl Sensor for RaplSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Rapl
    }

    fn devices(&self) -> &[SensedDevice] {
        &self.devices
    }

    fn wrap_range_j(&self) -> Option<f64> {
        self.zones.iter().map(|z| z.range_uj as f64 / 1e6).reduce(f64::min)
    }

    fn read(&mut self) -> Vec<DeviceReading> {
        let mut ok = true;
        for zone in &mut self.zones {
            match read_u64(&zone.energy_path) {
                Ok(now) => {
                    zone.total_uj += u128::from(counter_delta(zone.last_uj, now, zone.range_uj));
                    zone.last_uj = now;
                }
                Err(err) => {
                    tracing::warn!("RAPL read failed: {err}");
                    ok = false;
                }
            }
        }
        let energy = ok.then(|| self.zones.iter().map(|z| z.total_uj as f64 / 1e6).sum());
        vec![DeviceReading { energy_j: energy, ..DeviceReading::default() }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        assert_eq!(counter_delta(10, 25, 100), 15);
        assert_eq!(counter_delta(90, 5, 100), 15);
    }

    #[test]
    fn only_package_zones() {
        assert!(is_package_zone("intel-rapl:0"));
        assert!(is_package_zone("amd-rapl:1"));
        assert!(!is_package_zone("intel-rapl:0:1"));
        assert!(!is_package_zone("intel-rapl"));
        assert!(!is_package_zone("dtpm"));
    }

    #[test]
    fn reads_a_tree_and_unwraps() {
        let dir = tempfile::tempdir().expect("tmp");
        let zone = dir.path().join("intel-rapl:0");
        std::fs::create_dir_all(zone.join("intel-rapl:0:0")).expect("mkdir");
        std::fs::write(zone.join("name"), "package-0\n").expect("write");
        std::fs::write(zone.join("max_energy_range_uj"), "1000000\n").expect("write");
        std::fs::write(zone.join("energy_uj"), "900000\n").expect("write");
        let mut sensor = RaplSensor::open(dir.path()).expect("opens");
        assert_eq!(sensor.devices()[0].name, "cpu (package-0)");
        std::fs::write(zone.join("energy_uj"), "100000\n").expect("write");
        let r = sensor.read();
        assert_eq!(r[0].energy_j, Some(0.2));
        assert_eq!(r[0].power_w, None);
        let empty = tempfile::tempdir().expect("tmp");
        let err = RaplSensor::open(empty.path()).expect_err("no zones");
        assert!(err.to_string().starts_with("RAPL unavailable: no RAPL package zones"), "{err}");
    }
}
