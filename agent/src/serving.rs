//! The figures of a server under load, from the requests' timelines and the power samples
//! of the window: throughput, latency percentiles, goodput, the steady state, and energy
//! per request. Pure: docs/engines.md states each formula; the tests check them.

use llem_common::result::{Distribution, ServingResult, SteadyState, TokenCountMethod, Warning};
use llem_common::spec::Load;

use crate::energy;
use crate::sampler::Sample;
use crate::workload::{RequestMetrics, ServedRequest};

/// A share of failed requests above this gives a warning (the job fails above
/// `load.max_error_rate`).
pub const WARN_ERROR_RATE: f64 = 0.01;
/// Open loop: a p99 send lag above this means the client fell behind its schedule.
pub const MAX_SEND_LAG_MS: f64 = 10.0;

/// The serving figures, and each request's energy (in request order; `None` without a
/// power reading).
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub result: ServingResult,
    pub per_request_j: Vec<Option<f64>>,
    pub warnings: Vec<Warning>,
}

/// What the window was: its bounds (engine clock), its samples, and its energy.
#[derive(Debug, Clone, Copy)]
pub struct Window<'s> {
    pub t0: f64,
    pub t1: f64,
    pub samples: &'s [Sample],
    pub devices: usize,
    /// The window's energy figure (counter or integrated), which per-request energy sums to.
    pub total_j: Option<f64>,
    pub baseline_w: Option<f64>,
}

fn served(requests: &[RequestMetrics]) -> Vec<&ServedRequest> {
    requests.iter().filter_map(|r| r.served.as_deref()).collect()
}

/// Tokens of each event, when every event's count is known.
fn event_tokens(r: &ServedRequest) -> Option<Vec<u32>> {
    r.events.iter().map(|(_, n)| *n).collect()
}

/// TTFT, E2EL and TPOT of one completed request, in ms.
pub fn request_latencies(r: &ServedRequest) -> (Option<f64>, f64, Option<f64>) {
    let ttft = r.events.first().map(|(t, _)| (t - r.sent) * 1000.0);
    let e2el = (r.end - r.sent) * 1000.0;
    let tpot = match (ttft, r.output_tokens) {
        (Some(ttft), Some(out)) if out > 1 => Some((e2el - ttft) / (out - 1) as f64),
        _ => None,
    };
    (ttft, e2el, tpot)
}

/// Computes everything; `None` when no request was a server request.
pub fn compute(
    requests: &[RequestMetrics],
    window: &Window<'_>,
    load: &Load,
    server: Option<String>,
) -> Option<Computed> {
    let all = served(requests);
    if all.is_empty() {
        return None;
    }
    let ok: Vec<&ServedRequest> = all.iter().copied().filter(|r| r.error.is_none()).collect();
    let duration = window.t1 - window.t0;
    let per_s = |n: f64| (duration > 0.0).then(|| n / duration);
    let method = ok.first().map_or(TokenCountMethod::Unknown, |r| r.method);
    let outputs: Option<u64> = ok.iter().map(|r| r.output_tokens).sum();
    let inputs: Option<u64> = ok.iter().map(|r| r.input_tokens).sum();
    let mut warnings = Vec::new();

    let (mut ttft, mut e2el, mut tpot, mut itl, mut itl_token) = (vec![], vec![], vec![], vec![], vec![]);
    let mut good = 0u64;
    for r in &ok {
        let (t, e, p) = request_latencies(r);
        ttft.extend(t);
        e2el.push(e);
        tpot.extend(p);
        let tokens = event_tokens(r);
        for (i, w) in r.events.windows(2).enumerate() {
            let gap = (w[1].0 - w[0].0) * 1000.0;
            itl.push(gap);
            // A gap that delivered several tokens counts once per token, at gap ÷ tokens.
            if let Some(n) = tokens.as_ref().map(|t| t[i + 1]).filter(|n| *n > 0) {
                itl_token.extend(std::iter::repeat_n(gap / f64::from(n), n as usize));
            }
        }
        if let Some(slo) = &load.slo {
            let ttft_ok = slo.ttft_ms.is_none_or(|limit| t.is_some_and(|v| v <= limit));
            let tpot_ok = slo.tpot_ms.is_none_or(|limit| p.is_none_or(|v| v <= limit));
            good += u64::from(ttft_ok && tpot_ok);
        }
    }
    let lag: Vec<f64> = all.iter().filter_map(|r| r.scheduled.map(|s| (r.sent - s) * 1000.0)).collect();
    let send_lag_ms = Distribution::of(&lag);
    if let Some(l) = send_lag_ms.filter(|l| l.p99 > MAX_SEND_LAG_MS) {
        warnings.push(Warning {
            code: "client_bottleneck".to_owned(),
            message: format!(
                "requests left {:.1} ms (p99) after their scheduled time: the load generator, not the server, limited the rate; lower `load.request_rate` or give the agent more CPU",
                l.p99
            ),
        });
    }
    let errors = (all.len() - ok.len()) as u64;
    if errors as f64 > WARN_ERROR_RATE * all.len() as f64 {
        let first = all.iter().find_map(|r| r.error.clone()).unwrap_or_default();
        warnings.push(Warning {
            code: "request_errors".to_owned(),
            message: format!("{errors} of {} requests failed (more than 1 %); the first: {first}", all.len()),
        });
    }
    if method == TokenCountMethod::Unknown && !ok.is_empty() {
        warnings.push(Warning {
            code: "token_count_unknown".to_owned(),
            message: "the server sent no usage chunk and is not known to stream one token per event: token counts and J per token are null; enable its usage reporting (`stream_options.include_usage`)".to_owned(),
        });
    }

    let steady_state = steady_state(&all, window, load);
    let per_request_j = per_request_energy(&all, window);
    let energies: Vec<f64> = per_request_j.iter().flatten().copied().collect();
    let result = ServingResult {
        server,
        requests: all.len() as u64,
        errors,
        token_count_method: method,
        request_throughput_per_s: per_s(ok.len() as f64),
        output_tokens_per_s: outputs.and_then(|o| per_s(o as f64)),
        total_tokens_per_s: outputs.zip(inputs).and_then(|(o, i)| per_s((o + i) as f64)),
        ttft_ms: Distribution::of(&ttft),
        tpot_ms: Distribution::of(&tpot),
        itl_ms: Distribution::of(&itl),
        itl_per_token_ms: Distribution::of(&itl_token),
        e2el_ms: Distribution::of(&e2el),
        goodput_requests_per_s: load.slo.as_ref().and_then(|_| per_s(good as f64)),
        steady_state,
        energy_per_request_j: Distribution::of(&energies),
        send_lag_ms,
    };
    Some(Computed { result, per_request_j, warnings })
}

/// The steady state (docs/engines.md): closed loop, from when the number of requests in
/// flight first reaches `concurrency` until it first falls below it with no request to
/// replace the one that ended; open loop, from the
/// first send to the last scheduled arrival. `None` when that span is empty.
pub fn steady_bounds(all: &[&ServedRequest], load: &Load) -> Option<(f64, f64)> {
    if let Some(target) = load.concurrency {
        // +1 at each send, −1 at each end; ends before sends at the same instant.
        let mut edges: Vec<(f64, i64)> = all.iter().flat_map(|r| [(r.sent, 1), (r.end, -1)]).collect();
        edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut in_flight = 0i64;
        let start = edges.iter().find_map(|&(t, step)| {
            in_flight += step;
            (in_flight >= i64::from(target)).then_some(t)
        })?;
        // A worker re-sends the moment its request ends, so the count dips for an
        // instant all along; it falls below the target for good at the first end that
        // no send replaces: the first end at or after the last send.
        let last_send = all.iter().map(|r| r.sent).reduce(f64::max)?;
        let end = all.iter().map(|r| r.end).filter(|&e| e >= last_send).reduce(f64::min)?;
        return (end > start).then_some((start, end));
    }
    let first = all.iter().map(|r| r.sent).reduce(f64::min)?;
    let last = all.iter().filter_map(|r| r.scheduled.map(|s| s.max(r.sent))).reduce(f64::max)?;
    (last > first).then_some((first, last))
}

fn steady_state(all: &[&ServedRequest], w: &Window<'_>, load: &Load) -> Option<SteadyState> {
    let (start, end) = steady_bounds(all, load)?;
    let duration = end - start;
    let tokens: Option<u64> = all
        .iter()
        .filter(|r| r.error.is_none())
        .flat_map(|r| r.events.iter().filter(|(t, _)| *t >= start && *t <= end).map(|(_, n)| n.map(u64::from)))
        .sum();
    let energy_j = energy::sum_devices(w.devices, |d| energy::integrate_power(w.samples, d, start, end));
    let adjusted_j = energy_j.zip(w.baseline_w).map(|(e, b)| energy::adjusted(e, b, duration));
    let per_token = |j: Option<f64>| j.zip(tokens.filter(|t| *t > 0)).map(|(j, t)| j / t as f64);
    Some(SteadyState {
        start_s: start - w.t0,
        end_s: end - w.t0,
        output_tokens: tokens.unwrap_or(0),
        output_tokens_per_s: tokens.map(|t| t as f64 / duration),
        energy_j,
        adjusted_j,
        j_per_output_token: per_token(energy_j),
        j_per_output_token_adjusted: per_token(adjusted_j),
    })
}

/// Total power of all devices at each sample inside the window, with the window's edges
/// holding the nearest sample's power (as [`energy::integrate_power`] does).
fn power_points(w: &Window<'_>) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = w
        .samples
        .iter()
        .filter(|s| s.t >= w.t0 && s.t <= w.t1)
        .filter_map(|s| {
            let p: Option<f64> = (0..w.devices).map(|d| s.readings.get(d).and_then(|r| r.power_w)).sum();
            p.map(|p| (s.t, p))
        })
        .collect();
    if let (Some(&first), Some(&last)) = (points.first(), points.last()) {
        points.insert(0, (w.t0, first.1));
        points.push((w.t1, last.1));
    }
    points
}

/// Energy per request (docs/engines.md): each sampling interval's energy is split over
/// the requests in flight in it, by the tokens each received in it (equally when none
/// did); an interval with no request in flight is split by each request's share of all
/// tokens. The parts are then scaled so they sum to the window's energy figure exactly.
pub fn per_request_energy(all: &[&ServedRequest], w: &Window<'_>) -> Vec<Option<f64>> {
    let points = power_points(w);
    let Some(total_j) = w.total_j.filter(|_| points.len() >= 2) else {
        return vec![None; all.len()];
    };
    let tokens_of = |r: &ServedRequest, a: f64, b: f64| -> f64 {
        r.events.iter().filter(|(t, _)| *t > a && *t <= b).map(|(_, n)| f64::from(n.unwrap_or(1))).sum()
    };
    let mut parts = vec![0.0; all.len()];
    let mut idle_j = 0.0;
    for (i, seg) in points.windows(2).enumerate() {
        let (a, b) = (seg[0].0, seg[1].0);
        let joules = (seg[0].1 + seg[1].1) / 2.0 * (b - a);
        // The first interval also takes events exactly at its start.
        let a_open = if i == 0 { a - f64::EPSILON.max(a.abs() * 1e-12) } else { a };
        let weights: Vec<f64> = all.iter().map(|r| tokens_of(r, a_open, b)).collect();
        let sum: f64 = weights.iter().sum();
        if sum > 0.0 {
            for (p, wt) in parts.iter_mut().zip(&weights) {
                *p += joules * wt / sum;
            }
            continue;
        }
        let in_flight: Vec<usize> = (0..all.len()).filter(|&k| all[k].sent < b && all[k].end > a).collect();
        if in_flight.is_empty() {
            idle_j += joules;
        } else {
            for k in &in_flight {
                parts[*k] += joules / in_flight.len() as f64;
            }
        }
    }
    let shares: Vec<f64> = all.iter().map(|r| tokens_of(r, f64::NEG_INFINITY, f64::INFINITY)).collect();
    let share_sum: f64 = shares.iter().sum();
    for (k, p) in parts.iter_mut().enumerate() {
        *p += if share_sum > 0.0 { idle_j * shares[k] / share_sum } else { idle_j / all.len() as f64 };
    }
    let attributed: f64 = parts.iter().sum();
    if attributed <= 0.0 {
        // Every sample read 0 W while the counter moved: nothing to weigh by, so equal parts.
        return vec![Some(total_j / all.len() as f64); all.len()];
    }
    parts.into_iter().map(|p| Some(p * total_j / attributed)).collect()
}

#[cfg(test)]
mod tests;
