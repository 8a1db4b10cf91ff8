use llem_common::spec::{Load, Rate, Slo};

use super::*;
use crate::sensor::DeviceReading;

fn load(concurrency: Option<u32>) -> Load {
    Load {
        burstiness: None,
        concurrency,
        duration_s: None,
        max_error_rate: 0.1,
        request_rate: concurrency.is_none().then_some(Rate(2.0)),
        requests: Some(4),
        seed: 0,
        slo: None,
        timeout_s: 60.0,
    }
}

fn request(sent: f64, end: f64, events: &[(f64, u32)]) -> RequestMetrics {
    let out: u64 = events.iter().map(|(_, n)| u64::from(*n)).sum();
    RequestMetrics {
        output_tokens: out,
        served: Some(Box::new(ServedRequest {
            sent,
            end,
            events: events.iter().map(|&(t, n)| (t, Some(n))).collect(),
            input_tokens: Some(5),
            output_tokens: Some(out),
            method: TokenCountMethod::Usage,
            ..ServedRequest::default()
        })),
        ..RequestMetrics::default()
    }
}

fn flat_power(watts: f64, from: f64, to: f64, step: f64) -> Vec<Sample> {
    let n = ((to - from) / step).round() as usize;
    (0..=n)
        .map(|i| Sample {
            t: from + i as f64 * step,
            readings: vec![DeviceReading { power_w: Some(watts), ..DeviceReading::default() }],
        })
        .collect()
}

fn window(samples: &[Sample], t1: f64, total_j: Option<f64>) -> Window<'_> {
    Window { t0: 0.0, t1, samples, devices: 1, total_j, baseline_w: Some(10.0) }
}

#[test]
fn ttft_e2el_and_tpot_follow_their_formulas() {
    let r = request(1.0, 1.35, &[(1.1, 1), (1.2, 1), (1.3, 1)]);
    let (ttft, e2el, tpot) = request_latencies(r.served.as_deref().expect("served"));
    assert!((ttft.expect("ttft") - 100.0).abs() < 1e-9);
    assert!((e2el - 350.0).abs() < 1e-9);
    // (E2EL − TTFT) / (out − 1) = 250 / 2.
    assert!((tpot.expect("tpot") - 125.0).abs() < 1e-9);
    let single = request(0.0, 0.2, &[(0.1, 1)]);
    assert_eq!(request_latencies(single.served.as_deref().expect("served")).2, None, "one token has no TPOT");
}

#[test]
fn itl_per_gap_and_per_token_when_an_event_carries_several() {
    // Gaps 100 ms (1 token) and 300 ms (3 tokens): per gap [100, 300]; per token [100, 100, 100, 100].
    let requests = [request(0.0, 0.5, &[(0.05, 1), (0.15, 1), (0.45, 3)])];
    let samples = flat_power(50.0, 0.0, 0.5, 0.1);
    let c = compute(&requests, &window(&samples, 0.5, Some(25.0)), &load(Some(1)), None).expect("served");
    let itl = c.result.itl_ms.expect("itl");
    assert_eq!(itl.n, 2);
    assert!((itl.mean - 200.0).abs() < 1e-6);
    let per_token = c.result.itl_per_token_ms.expect("per token");
    assert_eq!(per_token.n, 4);
    assert!((per_token.p99 - 100.0).abs() < 1e-6);
    assert!((c.result.output_tokens_per_s.expect("tps") - 10.0).abs() < 1e-9, "5 tokens in 0.5 s");
    assert!((c.result.total_tokens_per_s.expect("total") - 20.0).abs() < 1e-9, "5 + 5 tokens in 0.5 s");
}

#[test]
fn the_closed_loop_steady_state_runs_from_full_to_the_first_unreplaced_end() {
    // Concurrency 2: full at 0.01 (second send); the last send is at 2.001, and the
    // first end after it is 3.0. The dips while a worker re-sends do not end it.
    let requests = [
        request(0.0, 1.0, &[(0.5, 1)]),
        request(0.01, 2.0, &[(1.5, 1)]),
        request(1.0005, 3.0, &[(2.5, 1)]),
        request(2.001, 3.5, &[(3.2, 1)]),
    ];
    let all = served(&requests);
    assert_eq!(steady_bounds(&all, &load(Some(2))), Some((0.01, 3.0)));
    assert_eq!(steady_bounds(&all, &load(Some(3))), None, "never three in flight");
    let samples = flat_power(100.0, 0.0, 3.5, 0.5);
    let c = compute(&requests, &window(&samples, 3.5, Some(350.0)), &load(Some(2)), None).expect("served");
    let s = c.result.steady_state.expect("steady");
    assert!((s.energy_j.expect("energy") - 299.0).abs() < 1e-6, "100 W × 2.99 s");
    assert_eq!(s.output_tokens, 3, "the tokens at 0.5, 1.5 and 2.5 s");
    assert!((s.j_per_output_token.expect("jpt") - 299.0 / 3.0).abs() < 1e-6);
    assert!((s.adjusted_j.expect("adj") - (299.0 - 10.0 * 2.99)).abs() < 1e-6);
}

#[test]
fn the_open_loop_steady_state_ends_at_the_last_arrival() {
    let mut requests = vec![request(0.1, 1.0, &[(0.5, 1)]), request(0.6, 2.0, &[(1.5, 1)])];
    for (r, s) in requests.iter_mut().zip([0.1, 0.6]) {
        r.served.as_mut().expect("served").scheduled = Some(s);
    }
    assert_eq!(steady_bounds(&served(&requests), &load(None)), Some((0.1, 0.6)));
}

#[test]
fn energy_per_request_follows_tokens_and_sums_to_the_window() {
    // 100 W for 1 s, sampled at 10 Hz; the window's figure is 102 J (a counter that read
    // a little more than the integral): the parts are scaled to it.
    let samples = flat_power(100.0, 0.0, 1.0, 0.1);
    let requests = [
        // Tokens in [0, 0.5): request 0 alone.
        request(0.0, 0.5, &[(0.05, 1), (0.25, 1), (0.45, 1)]),
        // Tokens in (0.5, 1]: request 1, three to request 2's one in the last interval.
        request(0.5, 1.0, &[(0.55, 1), (0.75, 1), (0.95, 3)]),
        request(0.9, 1.0, &[(0.92, 1)]),
    ];
    let all = served(&requests);
    let parts = per_request_energy(&all, &window(&samples, 1.0, Some(102.0)));
    let parts: Vec<f64> = parts.into_iter().map(|p| p.expect("measured")).collect();
    assert!((parts.iter().sum::<f64>() - 102.0).abs() < 1e-9, "{parts:?}");
    // Intervals without tokens go to the requests in flight: request 0 holds [0, 0.5].
    assert!(parts[0] > parts[2] && parts[1] > parts[2], "{parts:?}");
    assert!((parts[0] - 51.0).abs() < 1e-6, "half the window, scaled: {parts:?}");
    assert!((parts[2] - 102.0 * 2.5 / 100.0).abs() < 1e-6, "a quarter of the last interval: {parts:?}");
    // Power read 0 throughout while the counter moved: equal parts, still summing exactly.
    let zero = flat_power(0.0, 0.0, 1.0, 0.1);
    let equal = per_request_energy(&all, &window(&zero, 1.0, Some(9.0)));
    assert_eq!(equal, vec![Some(3.0); 3]);
    // No power reading: no energy, never 0.
    let none = per_request_energy(&all, &window(&[], 1.0, None));
    assert!(none.iter().all(Option::is_none));
}

#[test]
fn idle_intervals_are_split_by_token_share() {
    let samples = flat_power(10.0, 0.0, 2.0, 0.5);
    // [0, 0.5]: 5 J by tokens, 1:3. [0.5, 1]: no tokens, both in flight: 2.5 J each.
    // [1, 2]: nothing in flight: its 10 J goes 1:3 by the requests' token shares.
    let requests = [request(0.0, 1.0, &[(0.2, 1)]), request(0.0, 1.0, &[(0.3, 3)])];
    let parts = per_request_energy(&served(&requests), &window(&samples, 2.0, Some(20.0)));
    let parts: Vec<f64> = parts.into_iter().map(|p| p.expect("measured")).collect();
    assert!((parts[0] + parts[1] - 20.0).abs() < 1e-9);
    assert!((parts[0] - 6.25).abs() < 1e-9 && (parts[1] - 13.75).abs() < 1e-9, "{parts:?}");
}

#[test]
fn goodput_errors_and_send_lag() {
    let mut l = load(None);
    l.slo = Some(Slo { ttft_ms: Some(150.0), tpot_ms: None });
    let mut requests =
        vec![request(0.0, 1.0, &[(0.1, 1), (0.2, 1)]), request(0.0, 1.0, &[(0.5, 1)]), request(0.0, 0.1, &[])];
    let failed = requests[2].served.as_mut().expect("served");
    failed.error = Some("the stream was cut".to_owned());
    failed.scheduled = Some(-0.05);
    let samples = flat_power(1.0, 0.0, 1.0, 0.5);
    let c = compute(&requests, &window(&samples, 1.0, Some(1.0)), &l, Some("me".to_owned())).expect("served");
    assert_eq!((c.result.requests, c.result.errors), (3, 1));
    assert_eq!(c.result.goodput_requests_per_s, Some(1.0), "one of two completed requests met the TTFT SLO");
    assert_eq!(c.result.ttft_ms.expect("ttft").n, 2, "a failed request has no latency");
    assert!(c.warnings.iter().any(|w| w.code == "request_errors"));
    assert!(c.warnings.iter().any(|w| w.code == "client_bottleneck"), "50 ms late");
    assert_eq!(c.result.server.as_deref(), Some("me"));
    requests.iter_mut().for_each(|r| r.served = None);
    assert!(compute(&requests, &window(&samples, 1.0, None), &l, None).is_none());
}
