//! `engine: synthetic`: each prompt keeps one core busy for `synthetic.ms_per_token` ms per
//! output token and yields exactly `max_output_tokens` tokens. Its energy is whatever the
//! CPU draws doing that: a known, repeatable load for checking the measurement chain.

use llem_common::spec::ExperimentSpec;

use super::{Engine, EngineError, Loaded, RequestMetrics};
use crate::clock::Clock;

pub struct Synthetic<'c> {
    clock: &'c dyn Clock,
    ms_per_token: f64,
    prompts: u32,
    tokens: u32,
    input_tokens: u64,
    cancel: super::Cancel,
}

impl std::fmt::Debug for Synthetic<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synthetic").field("ms_per_token", &self.ms_per_token).field("tokens", &self.tokens).finish()
    }
}

impl<'c> Synthetic<'c> {
    pub fn new(spec: &ExperimentSpec, clock: &'c dyn Clock) -> Self {
        let input_tokens = match spec.dataset {
            llem_common::spec::Dataset::Synthetic { input_len, .. } => u64::from(input_len.min(spec.max_input_tokens)),
            _ => u64::from(spec.max_input_tokens),
        };
        Synthetic {
            clock,
            ms_per_token: spec.synthetic.ms_per_token,
            prompts: spec.n_prompts,
            tokens: spec.max_output_tokens,
            input_tokens,
            cancel: super::Cancel::default(),
        }
    }

    #[must_use]
    pub fn with_cancel(mut self, cancel: super::Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    fn request(&self) -> Result<RequestMetrics, EngineError> {
        let start = self.clock.now();
        let mut last = start;
        let mut ttft = None;
        let mut itl = Vec::with_capacity(self.tokens as usize);
        for _ in 0..self.tokens {
            self.cancel.check()?;
            self.clock.busy(self.ms_per_token / 1000.0);
            let now = self.clock.now();
            if ttft.is_none() {
                ttft = Some((now - start) * 1000.0);
            } else {
                itl.push((now - last) * 1000.0);
            }
            last = now;
        }
        Ok(RequestMetrics {
            input_tokens: self.input_tokens,
            output_tokens: u64::from(self.tokens),
            ttft_ms: ttft,
            itl_ms: itl,
            request_ms: (self.clock.now() - start) * 1000.0,
            served: None,
        })
    }
}

impl Engine for Synthetic<'_> {
    fn load(&mut self) -> Result<Loaded, EngineError> {
        Ok(Loaded::default())
    }

    fn warmup_step(&mut self, _step: u32) -> Result<Option<f64>, EngineError> {
        Ok(Some(self.request()?.request_ms))
    }

    fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError> {
        (0..self.prompts).map(|_| self.request()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;

    #[test]
    fn exact_tokens_and_latencies() {
        let clock = FakeClock::new(0.0);
        let mut spec = llem_common::spec::raw::RawExperiment::default()
            .with_model("synthetic")
            .validate(Default::default())
            .expect("valid");
        spec.n_prompts = 3;
        spec.max_output_tokens = 5;
        spec.synthetic.ms_per_token = 2.0;
        let mut engine = Synthetic::new(&spec, &clock);
        let requests = engine.measure().expect("runs");
        assert_eq!(requests.len(), 3);
        assert!(requests.iter().all(|r| r.output_tokens == 5 && r.itl_ms.len() == 4));
        assert!((requests[0].request_ms - 10.0).abs() < 1e-9);
        assert!((requests[0].ttft_ms.expect("ttft") - 2.0).abs() < 1e-9);
        assert!((clock.now() - 0.030).abs() < 1e-9);
    }
}
