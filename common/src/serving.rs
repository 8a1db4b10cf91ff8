//! `result.json`'s `serving` section: what a server did under load (`engine: openai`).
//! Every metric is defined next to its formula in docs/engines.md. Absent for other
//! engines, so results of other engines read as before.

use serde::{Deserialize, Serialize};

/// A distribution's mean and percentiles (linear interpolation between ranks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub n: u64,
}

impl Distribution {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Distribution> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| crate::result::percentile(&sorted, p);
        Some(Distribution {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: pct(50.0),
            p90: pct(90.0),
            p95: pct(95.0),
            p99: pct(99.0),
            n: sorted.len() as u64,
        })
    }
}

/// How output tokens were counted. Never a guess presented as exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCountMethod {
    /// The server's final `usage` chunk (`stream_options.include_usage`).
    Usage,
    /// The server's own per-response fields (llama.cpp's `timings.predicted_n`).
    ServerTimings,
    /// One token per streamed event, for a server known to stream exactly that.
    OnePerEvent,
    /// The server gave no exact count: token figures are `null`.
    #[default]
    Unknown,
}

/// The window between the in-flight count first reaching its target and first falling
/// below it again (docs/engines.md, "Steady state"). Times from the window's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteadyState {
    pub start_s: f64,
    pub end_s: f64,
    /// Output tokens streamed inside it.
    pub output_tokens: u64,
    pub output_tokens_per_s: Option<f64>,
    pub energy_j: Option<f64>,
    pub adjusted_j: Option<f64>,
    pub j_per_output_token: Option<f64>,
    pub j_per_output_token_adjusted: Option<f64>,
}

/// The server-under-load figures of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingResult {
    /// The server as it named itself (`/v1/models` `owned_by`), when it did.
    pub server: Option<String>,
    /// Requests in the measured window, and how many of them failed.
    pub requests: u64,
    pub errors: u64,
    pub token_count_method: TokenCountMethod,
    pub request_throughput_per_s: Option<f64>,
    pub output_tokens_per_s: Option<f64>,
    /// (prompt + output tokens) ÷ window.
    pub total_tokens_per_s: Option<f64>,
    pub ttft_ms: Option<Distribution>,
    pub tpot_ms: Option<Distribution>,
    /// Gaps between token-bearing events.
    pub itl_ms: Option<Distribution>,
    /// The same gaps, each divided over the tokens its event carried (one value per token).
    pub itl_per_token_ms: Option<Distribution>,
    pub e2el_ms: Option<Distribution>,
    /// Successful requests within every SLO per second; `null` without `load.slo`.
    pub goodput_requests_per_s: Option<f64>,
    /// `null` when the in-flight count never reached its target.
    pub steady_state: Option<SteadyState>,
    /// Energy attributed to each request (docs/engines.md, "Energy per request").
    pub energy_per_request_j: Option<Distribution>,
    /// Open loop: actual − scheduled send time. Large values mean the client, not the
    /// server, limited the load.
    pub send_lag_ms: Option<Distribution>,
}

impl TokenCountMethod {
    pub fn name(self) -> &'static str {
        match self {
            TokenCountMethod::Usage => "usage",
            TokenCountMethod::ServerTimings => "server_timings",
            TokenCountMethod::OnePerEvent => "one_per_event",
            TokenCountMethod::Unknown => "unknown",
        }
    }
}
