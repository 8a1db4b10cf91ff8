//! When each request of an open loop is sent: gaps drawn from a gamma distribution with
//! mean 1/rate and shape `burstiness` (1 is a Poisson process; below 1 burstier, above 1
//! more regular), from a fixed generator so the same seed gives the same schedule forever.

/// SplitMix64 (the same generator as the coordinator's shuffles: tiny and fixed).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1): never 0, so logarithms stay finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang; shapes below 1 by the boost
    /// `G(a) = G(a + 1) · U^(1/a)`.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// Send offsets (seconds from the window's start) of an open loop: `count` requests, or
/// as many as fall within `duration_s`. An infinite rate sends every request at 0.
pub fn arrivals(rate: f64, burstiness: f64, seed: u64, count: Option<u32>, duration_s: Option<f64>) -> Vec<f64> {
    let mut out = Vec::new();
    if rate.is_infinite() {
        // All at once; a duration without a count cannot bound an infinite rate, so the
        // caller gives a count (the prompts) in that case.
        out.resize(count.unwrap_or(0) as usize, 0.0);
        return out;
    }
    let mut rng = SplitMix64::new(seed);
    let scale = 1.0 / (rate * burstiness);
    let mut t = 0.0;
    loop {
        if count.is_some_and(|n| out.len() >= n as usize) {
            break;
        }
        t += rng.gamma(burstiness) * scale;
        if duration_s.is_some_and(|d| t > d) {
            break;
        }
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[f64]) -> Vec<f64> {
        let mut prev = 0.0;
        times
            .iter()
            .map(|&t| {
                let g = t - prev;
                prev = t;
                g
            })
            .collect()
    }

    fn mean_and_cv(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn the_mean_rate_holds_and_burstiness_shapes_the_gaps() {
        // Gamma(k) gaps have CV 1/√k: Poisson 1, k=0.25 → 2, k=4 → 0.5.
        for (burstiness, want_cv) in [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)] {
            let times = arrivals(4.0, burstiness, 7, Some(20_000), None);
            let (mean, cv) = mean_and_cv(&gaps(&times));
            assert!((mean - 0.25).abs() / 0.25 < 0.03, "burstiness {burstiness}: mean gap {mean}");
            assert!((cv - want_cv).abs() / want_cv < 0.06, "burstiness {burstiness}: cv {cv}");
        }
    }

    #[test]
    fn a_seed_reproduces_its_schedule() {
        let a = arrivals(2.0, 1.0, 42, Some(50), None);
        assert_eq!(a, arrivals(2.0, 1.0, 42, Some(50), None));
        assert_ne!(a, arrivals(2.0, 1.0, 43, Some(50), None));
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn durations_and_infinite_rates() {
        let within = arrivals(10.0, 1.0, 1, None, Some(3.0));
        assert!(within.iter().all(|&t| t <= 3.0));
        assert!((20..=40).contains(&within.len()), "{}", within.len());
        assert_eq!(arrivals(f64::INFINITY, 1.0, 1, Some(5), None), [0.0; 5]);
    }
}
