//! The warnings a result can carry. They never block a run; each says what happened and
//! what to do about it.

use llem_common::result::Warning;

/// Below this, a measured window is too short for stable energy figures.
pub const MIN_DURATION_S: f64 = 10.0;
/// Below this many samples in the window, integrated power is coarse.
pub const MIN_SAMPLES: usize = 10;
/// Temperature rise during the window above which the result is suspect.
pub const MAX_DRIFT_C: f64 = 10.0;
/// Relative disagreement between the energy counter and integrated power.
pub const MAX_DISAGREEMENT: f64 = 0.05;

pub fn short_measurement_duration(duration_s: f64) -> Warning {
    Warning {
        code: "short_measurement_duration".to_owned(),
        message: format!(
            "the measured window lasted {duration_s:.2} s (< {MIN_DURATION_S} s): counter resolution and sampling dominate; raise `n_prompts` or `max_output_tokens`"
        ),
    }
}

pub fn gpu_persistence_mode_off(gpus: &[u32]) -> Warning {
    Warning {
        code: "gpu_persistence_mode_off".to_owned(),
        message: format!(
            "persistence mode is off on GPU {gpus:?}: the driver may reinitialise between jobs, adding idle energy and latency; enable it with `nvidia-smi -pm 1`"
        ),
    }
}

pub fn thermal_drift_detected(rise_c: f64) -> Warning {
    Warning {
        code: "thermal_drift_detected".to_owned(),
        message: format!(
            "temperature changed by {rise_c:.1} °C during the window (> {MAX_DRIFT_C} °C): power depends on temperature; raise `measurement.thermal_floor.max_s` or add `execution.gap_s`"
        ),
    }
}

pub fn low_sample_count(samples: usize, hz: f64) -> Warning {
    Warning {
        code: "low_sample_count".to_owned(),
        message: format!(
            "only {samples} power samples in the window (< {MIN_SAMPLES}): integrated energy is coarse; raise `measurement.sample_hz` (now {hz}) or lengthen the run"
        ),
    }
}

pub fn energy_sources_disagree(counter_j: f64, integrated_j: f64) -> Warning {
    let rel = (counter_j - integrated_j).abs() / counter_j.abs().max(f64::MIN_POSITIVE);
    Warning {
        code: "energy_sources_disagree".to_owned(),
        message: format!(
            "the energy counter says {counter_j:.2} J and integrated power {integrated_j:.2} J ({:.1} % apart, > {:.0} %): the counter is used; a coarse sampling rate or a power reading averaged by the driver usually explains it, raise `measurement.sample_hz`",
            rel * 100.0,
            MAX_DISAGREEMENT * 100.0
        ),
    }
}

pub fn counter_gap(gap: &crate::energy::CounterGap) -> Warning {
    Warning {
        code: "counter_gap".to_owned(),
        message: format!(
            "the energy counter went unread for {:.1} s ({:.1} s into the window), longer than it takes to wrap at the {:.0} W of the window ({:.1} s): it may have wrapped more than once, so the energy is uncertain and may be low; the sampler stalled (a loaded or suspended node)",
            gap.gap_s, gap.at_s, gap.watts, gap.wrap_period_s
        ),
    }
}

pub fn thermal_throttling(samples: usize) -> Warning {
    Warning {
        code: "thermal_throttling".to_owned(),
        message: format!(
            "the GPU throttled for heat in {samples} sample(s) of the window: clocks were lowered, so speed and energy do not reflect the card's normal state; improve cooling or add gaps between jobs"
        ),
    }
}

pub fn no_energy_sensor(reasons: &[String]) -> Warning {
    let why = if reasons.is_empty() { "no sensor was available".to_owned() } else { reasons.join("; ") };
    Warning {
        code: "no_energy_sensor".to_owned(),
        message: format!(
            "energy was not measured ({why}); energy fields are null. Run on a node with NVML (NVIDIA GPU) or readable RAPL (`/sys/class/powercap`, usually needs root)"
        ),
    }
}
