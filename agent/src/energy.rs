//! Energy arithmetic over a window: counter deltas, trapezoid integration of power,
//! baseline power, and what the samples say about temperature and throttling.

use crate::sampler::Sample;
use crate::sensor::DeviceReading;

/// Trapezoid integral of device `d`'s power over `[t0, t1]`, in joules. Samples outside
/// the window are ignored; the edges hold the nearest sample's power. `None` when no
/// sample in the window has power.
pub fn integrate_power(samples: &[Sample], d: usize, t0: f64, t1: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= t0 && s.t <= t1)
        .filter_map(|s| s.readings.get(d).and_then(|r| r.power_w).map(|p| (s.t, p)))
        .collect();
    let (first, last) = (points.first()?, points.last()?);
    let mut joules = first.1 * (first.0 - t0) + last.1 * (t1 - last.0);
    for w in points.windows(2) {
        joules += (w[0].1 + w[1].1) / 2.0 * (w[1].0 - w[0].0);
    }
    Some(joules)
}

/// A stretch of a window in which the energy counter went unread for longer than it takes
/// to wrap at the power seen: it may have wrapped more than once, and one wrap cannot be
/// told from two, so the energy may be low.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterGap {
    pub gap_s: f64,
    /// Where the gap began, in seconds into the window.
    pub at_s: f64,
    pub wrap_period_s: f64,
    pub watts: f64,
}

/// The longest unread stretch of `[t0, t1]` (the samples, and the window's own first and
/// last readings at its edges), when it exceeds the counter's wrap period at the window's
/// median power; `range_j` is what the counter holds before it wraps.
pub fn counter_gap(samples: &[Sample], t0: f64, t1: f64, range_j: f64) -> Option<CounterGap> {
    let mut times: Vec<f64> = samples.iter().map(|s| s.t).filter(|t| *t > t0 && *t < t1).collect();
    times.push(t0);
    times.push(t1);
    times.sort_by(f64::total_cmp);
    // The median of the power seen: the one stretch that missed wraps reads low, and a
    // few readings microseconds apart (a sampler catching up) read absurdly high.
    let mut powers: Vec<f64> = samples
        .iter()
        .filter(|s| s.t >= t0 && s.t <= t1)
        .filter_map(|s| s.readings.iter().map(|r| r.power_w).sum::<Option<f64>>())
        .filter(|p| p.is_finite())
        .collect();
    powers.sort_by(f64::total_cmp);
    let watts = powers.get(powers.len() / 2).copied().unwrap_or(0.0);
    if watts <= 0.0 || range_j <= 0.0 {
        return None;
    }
    let wrap_period_s = range_j / watts;
    let (at, gap) = times.windows(2).map(|w| (w[0], w[1] - w[0])).max_by(|a, b| a.1.total_cmp(&b.1))?;
    (gap > wrap_period_s).then_some(CounterGap { gap_s: gap, at_s: at - t0, wrap_period_s, watts })
}

/// Sum over devices of `f`, or `None` when any device lacks it.
pub fn sum_devices(n: usize, f: impl Fn(usize) -> Option<f64>) -> Option<f64> {
    (0..n).map(f).sum()
}

/// Energy between two one-off readings (cumulative counters), summed over devices.
pub fn counter_delta(start: &[DeviceReading], end: &[DeviceReading]) -> Option<f64> {
    start.iter().zip(end).map(|(a, b)| Some(b.energy_j? - a.energy_j?)).sum()
}

/// Mean power over a window of samples (the baseline): from the energy counter when
/// there is one, else integrated power over the window's span.
pub fn mean_power(samples: &[Sample], n_devices: usize) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.t - first.t;
    if span <= 0.0 {
        return None;
    }
    if let Some(joules) = counter_delta(&first.readings, &last.readings) {
        return Some(joules / span);
    }
    sum_devices(n_devices, |d| integrate_power(samples, d, first.t, last.t)).map(|j| j / span)
}

/// Temperature range (max − min) over the window, any device; `None` without readings.
pub fn temperature_range(samples: &[Sample], t0: f64, t1: f64) -> Option<f64> {
    let temps: Vec<f64> = samples
        .iter()
        .filter(|s| s.t >= t0 && s.t <= t1)
        .flat_map(|s| s.readings.iter().filter_map(|r| r.temperature_c))
        .collect();
    let max = temps.iter().copied().reduce(f64::max)?;
    let min = temps.iter().copied().reduce(f64::min)?;
    Some(max - min)
}

/// Samples in the window whose throttle reasons include any of `bits`.
pub fn throttled_samples(samples: &[Sample], t0: f64, t1: f64, bits: u64) -> usize {
    samples
        .iter()
        .filter(|s| s.t >= t0 && s.t <= t1)
        .filter(|s| s.readings.iter().any(|r| r.throttle_reasons.is_some_and(|t| t & bits != 0)))
        .count()
}

/// `max(0, total − baseline × duration)`.
pub fn adjusted(total_j: f64, baseline_w: f64, duration_s: f64) -> f64 {
    (total_j - baseline_w * duration_s).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, p: f64) -> Sample {
        Sample { t, readings: vec![DeviceReading { power_w: Some(p), ..DeviceReading::default() }] }
    }

    #[test]
    fn a_gap_longer_than_the_wrap_period_is_found_and_a_short_one_is_not() {
        // 50 W into a 200 J counter: it wraps every 4 s. Sampled at 10 Hz but for 3 → 9 s.
        let samples: Vec<Sample> =
            (0..=100).map(|i| f64::from(i) / 10.0).filter(|t| *t <= 3.0 || *t >= 9.0).map(|t| s(t, 50.0)).collect();
        let gap = counter_gap(&samples, 0.0, 10.0, 200.0).expect("a 6 s gap");
        assert!((gap.gap_s - 6.0).abs() < 1e-9 && (gap.at_s - 3.0).abs() < 1e-9, "{gap:?}");
        assert!((gap.wrap_period_s - 4.0).abs() < 1e-9 && (gap.watts - 50.0).abs() < 1e-9, "{gap:?}");
        // The same gap with a counter that takes 8 s to wrap, or no gap at all: nothing.
        assert_eq!(counter_gap(&samples, 0.0, 10.0, 400.0), None);
        let every: Vec<Sample> = (0..=100).map(|i| s(f64::from(i) / 10.0, 50.0)).collect();
        assert_eq!(counter_gap(&every, 0.0, 10.0, 200.0), None);
        // No power seen: no wrap to miss.
        assert_eq!(counter_gap(&[s(5.0, 0.0)], 0.0, 10.0, 200.0), None);
    }

    #[test]
    fn trapezoid_with_edges() {
        // 100 W constant, samples at 0.1 … 0.9 in a [0, 1] window: exactly 100 J.
        let samples: Vec<Sample> = (1..10).map(|i| s(f64::from(i) / 10.0, 100.0)).collect();
        assert!((integrate_power(&samples, 0, 0.0, 1.0).expect("j") - 100.0).abs() < 1e-9);
        // A ramp 0 → 100 W over 1 s: 50 J.
        let ramp: Vec<Sample> = (0..=10).map(|i| s(f64::from(i) / 10.0, f64::from(i) * 10.0)).collect();
        assert!((integrate_power(&ramp, 0, 0.0, 1.0).expect("j") - 50.0).abs() < 1e-9);
        assert_eq!(integrate_power(&[], 0, 0.0, 1.0), None);
    }

    #[test]
    fn adjusted_never_negative() {
        assert_eq!(adjusted(100.0, 30.0, 2.0), 40.0);
        assert_eq!(adjusted(10.0, 30.0, 2.0), 0.0);
    }

    #[test]
    fn counters_sum_or_none() {
        let r = |e: Option<f64>| DeviceReading { energy_j: e, ..DeviceReading::default() };
        assert_eq!(counter_delta(&[r(Some(1.0)), r(Some(2.0))], &[r(Some(4.0)), r(Some(6.0))]), Some(7.0));
        assert_eq!(counter_delta(&[r(Some(1.0)), r(None)], &[r(Some(4.0)), r(Some(6.0))]), None);
    }
}
