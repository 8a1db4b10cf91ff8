//! The plots of server sweeps (rows whose result has a `serving` section, `engine:
//! openai`): output throughput against time to first token, and J per output token
//! against load, one line per server configuration.
//!
//! A server configuration is everything of a job's spec but its load level: jobs that
//! differ only in `load.concurrency` (closed loop) or `load.request_rate` (open loop) are
//! the points of one line, ordered by that level. Each point is the mean over the cycles
//! of its configuration. A run without server jobs has no lines, and so none of these plots.

use std::fmt::Write as _;

use llem_common::result::ServingResult;
use llem_common::spec::ExperimentSpec;

use super::report::swept_label;
use super::report_plots::{
    begin, colour, esc, fmt_num, nice_max, not_available, not_measured, series_entries, whisker, Axes, Entry, Frame,
    Swatch, XAxis,
};
use super::results::{mean_ci, Row};

pub(super) const THROUGHPUT_LATENCY: &str = "plot-throughput-latency";
pub(super) const ENERGY_VS_LOAD: &str = "plot-energy-vs-load";

/// Swept keys that set the load level rather than the server configuration.
const LOAD_KEYS: [&str; 3] = ["load", "load.concurrency", "load.request_rate"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LoadKind {
    /// `load.concurrency` requests in flight.
    Closed,
    /// `load.request_rate` arrivals per second.
    Open,
}

/// One configuration of a line: its load level and the rows of its cycles.
#[derive(Debug)]
pub(super) struct LoadPoint<'r> {
    /// Concurrency or requests/s (`inf` for an open loop that sends everything at once).
    pub load: f64,
    pub config_id: String,
    pub rows: Vec<&'r Row>,
}

impl LoadPoint<'_> {
    fn values(&self, f: impl Fn(&Row) -> Option<f64>) -> Vec<f64> {
        self.rows.iter().filter_map(|&r| f(r)).collect()
    }

    /// Mean over the cycles that have the value.
    fn mean(&self, f: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
        mean_ci(&self.values(f)).map(|m| m.0)
    }
}

/// One server configuration across its load levels.
#[derive(Debug)]
pub(super) struct ServerLine<'r> {
    /// The spec without its load level (and the loop kind): what makes it one line.
    pub key: String,
    pub label: String,
    pub kind: LoadKind,
    /// Ascending load.
    pub points: Vec<LoadPoint<'r>>,
}

fn serving(r: &Row) -> Option<&ServingResult> {
    r.result.serving()
}

fn load_of(spec: &ExperimentSpec) -> (LoadKind, f64) {
    let load = spec.load.as_ref();
    match (load.and_then(|l| l.request_rate), load.and_then(|l| l.concurrency)) {
        (Some(rate), _) => (LoadKind::Open, rate.0),
        (None, c) => (LoadKind::Closed, f64::from(c.unwrap_or(1))),
    }
}

fn line_key(spec: &ExperimentSpec, kind: LoadKind) -> String {
    let mut spec = spec.to_json();
    if let Some(load) = spec.get_mut("load").and_then(serde_json::Value::as_object_mut) {
        load.remove("concurrency");
        load.remove("request_rate");
    }
    format!("{kind:?} {spec}")
}

fn line_label(r: &Row) -> String {
    let swept = swept_label(r.swept.iter().filter(|(k, _)| !LOAD_KEYS.contains(&k.as_str())));
    if !swept.is_empty() {
        return swept;
    }
    let (model, gpus) = (&r.result.model, r.result.gpus);
    match gpus {
        0 => format!("{model} on the CPU"),
        1 => format!("{model} on 1 GPU"),
        n => format!("{model} on {n} GPUs"),
    }
}

/// The server configurations of a run, in the order their first job appears; empty
/// when no row is a server job.
pub(super) fn server_lines(rows: &[Row]) -> Vec<ServerLine<'_>> {
    let mut lines: Vec<ServerLine<'_>> = Vec::new();
    for (r, served) in rows.iter().filter_map(|r| Some((r, r.result.server.as_deref()?))) {
        let (kind, load) = load_of(&served.spec);
        let key = line_key(&served.spec, kind);
        let found = lines.iter().position(|l| l.key == key);
        let i = match found {
            Some(i) => i,
            None => {
                lines.push(ServerLine { key, label: line_label(r), kind, points: Vec::new() });
                lines.len() - 1
            }
        };
        let points = &mut lines[i].points;
        let found = points.iter().position(|p| p.config_id == r.config_id);
        match found {
            Some(j) => points[j].rows.push(r),
            None => points.push(LoadPoint { load, config_id: r.config_id.clone(), rows: vec![r] }),
        }
    }
    for line in &mut lines {
        line.points.sort_by(|a, b| a.load.total_cmp(&b.load));
    }
    // Lines whose labels coincide (their difference was not swept) are numbered.
    let labels: Vec<String> = lines.iter().map(|l| l.label.clone()).collect();
    for (i, line) in lines.iter_mut().enumerate() {
        if labels.iter().filter(|l| **l == labels[i]).count() > 1 {
            let n = labels[..=i].iter().filter(|l| **l == labels[i]).count();
            line.label = format!("{} #{n}", labels[i]);
        }
    }
    lines
}

fn mixed(lines: &[ServerLine<'_>]) -> bool {
    lines.iter().any(|l| l.kind == LoadKind::Closed) && lines.iter().any(|l| l.kind == LoadKind::Open)
}

/// A load level as a tick or point label: `8`, `2.5`, `inf`; `c=8` / `r=2.5` when the
/// plot holds both loop kinds.
fn load_text(kind: LoadKind, load: f64, both: bool) -> String {
    let v = if load.is_infinite() { "inf".to_owned() } else { format!("{load}") };
    match (both, kind) {
        (false, _) => v,
        (true, LoadKind::Closed) => format!("c={v}"),
        (true, LoadKind::Open) => format!("r={v}"),
    }
}

fn load_axis_label(lines: &[ServerLine<'_>]) -> &'static str {
    if mixed(lines) {
        "load: c = concurrency (requests in flight), r = request rate (requests/s)"
    } else if lines.iter().all(|l| l.kind == LoadKind::Open) {
        "request rate (requests/s)"
    } else {
        "concurrency (requests in flight)"
    }
}

fn polyline(s: &mut String, frame: &Frame, pts: &[(f64, f64)], stroke: &str, dashed: bool) {
    if pts.len() < 2 {
        return;
    }
    let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", frame.sx(*x), frame.sy(*y))).collect();
    let _ = write!(
        s,
        "<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.5\"{}/>",
        path.join(" "),
        if dashed { " stroke-dasharray=\"5 3\"" } else { "" }
    );
}

/// One point of the throughput–latency curve: (load, TTFT p50, TTFT p99, output tokens/s).
type CurvePoint = (f64, Option<f64>, Option<f64>, f64);

/// Output tokens/s against TTFT (p50 circles on solid lines, p99 squares on dashed
/// lines), one colour per server configuration, points in load order.
pub(super) fn throughput_latency(lines: &[ServerLine<'_>]) -> String {
    const TITLE: &str = "output throughput against time to first token";
    // Per line: (load, TTFT p50, TTFT p99, output tokens/s), means over cycles.
    let pts: Vec<Vec<CurvePoint>> = lines
        .iter()
        .map(|l| {
            l.points
                .iter()
                .filter_map(|p| {
                    let y = p.mean(|r| serving(r)?.output_tokens_per_s)?;
                    let p50 = p.mean(|r| Some(serving(r)?.ttft_ms?.p50));
                    let p99 = p.mean(|r| Some(serving(r)?.ttft_ms?.p99));
                    (p50.is_some() || p99.is_some()).then_some((p.load, p50, p99, y))
                })
                .collect()
        })
        .collect();
    if pts.iter().all(Vec::is_empty) {
        return not_available(
            THROUGHPUT_LATENCY,
            TITLE,
            "Throughput or time to first token not measured (no exact token count) — never shown as 0",
        );
    }
    let x_max = nice_max(pts.iter().flatten().flat_map(|q| [q.1, q.2]).flatten().fold(0.0, f64::max));
    let y_max = nice_max(pts.iter().flatten().map(|q| q.3).fold(0.0, f64::max));
    let mut legend = series_entries(
        lines.iter().enumerate().map(|(i, l)| (Swatch::Line(colour(i)), l.label.clone())),
        "server configurations",
    );
    legend.push(Entry::new(Swatch::Dot("#444444", 4.0), "TTFT p50 (solid line)"));
    legend.push(Entry::new(Swatch::Square("#444444"), "TTFT p99 (dashed line)"));
    let axes = Axes {
        x: XAxis::Linear { max: x_max },
        x_label: "time to first token (ms, mean over cycles)",
        y_max,
        y_label: "output tokens/s (served)",
    };
    let (mut s, frame) = begin(THROUGHPUT_LATENCY, TITLE, &legend, &axes);
    let both = mixed(lines);
    for (i, (line, pts)) in lines.iter().zip(&pts).enumerate() {
        let c = colour(i);
        let p50: Vec<(f64, f64, f64)> = pts.iter().filter_map(|q| Some((q.0, q.1?, q.3))).collect();
        let p99: Vec<(f64, f64, f64)> = pts.iter().filter_map(|q| Some((q.0, q.2?, q.3))).collect();
        polyline(&mut s, &frame, &p50.iter().map(|q| (q.1, q.2)).collect::<Vec<_>>(), c, false);
        polyline(&mut s, &frame, &p99.iter().map(|q| (q.1, q.2)).collect::<Vec<_>>(), c, true);
        for &(load, x, y) in &p50 {
            let (cx, cy) = (frame.sx(x), frame.sy(y));
            let text = load_text(line.kind, load, both);
            let _ = write!(
                s,
                "<circle class=\"mark\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"{c}\"><title>{} at {}: TTFT p50 {} ms, {} output tokens/s</title></circle>",
                esc(&line.label),
                esc(&text),
                fmt_num(x),
                fmt_num(y)
            );
            let _ = write!(
                s,
                "<text class=\"point-label\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{c}\">{}</text>",
                cx + 6.0,
                cy - 6.0,
                esc(&text)
            );
        }
        for &(load, x, y) in &p99 {
            let _ = write!(
                s,
                "<rect class=\"mark\" x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"white\" stroke=\"{c}\" stroke-width=\"1.5\"><title>{} at {}: TTFT p99 {} ms, {} output tokens/s</title></rect>",
                frame.sx(x) - 4.0,
                frame.sy(y) - 4.0,
                esc(&line.label),
                esc(&load_text(line.kind, load, both)),
                fmt_num(x),
                fmt_num(y)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// J per output token (the measured window) against load, mean over cycles with 95 %
/// CIs, one line per server configuration; "not measured" when no job measured energy.
pub(super) fn energy_vs_load(lines: &[ServerLine<'_>]) -> String {
    const TITLE: &str = "J per output token against load";
    // Per line: (load, mean, CI half-width).
    let stats: Vec<Vec<(f64, f64, Option<f64>)>> = lines
        .iter()
        .map(|l| {
            l.points
                .iter()
                .filter_map(|p| {
                    let (m, ci) = mean_ci(&p.values(|r| r.result.energy.j_per_output_token))?;
                    Some((p.load, m, ci))
                })
                .collect()
        })
        .collect();
    if stats.iter().all(Vec::is_empty) {
        return not_measured(ENERGY_VS_LOAD, TITLE, "Energy");
    }
    let both = mixed(lines);
    let mut cats: Vec<(LoadKind, f64)> =
        lines.iter().zip(&stats).flat_map(|(l, st)| st.iter().map(move |q| (l.kind, q.0))).collect();
    cats.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    cats.dedup_by(|a, b| a.0 == b.0 && a.1.total_cmp(&b.1).is_eq());
    let labels: Vec<String> = cats.iter().map(|&(k, v)| load_text(k, v, both)).collect();
    let top = stats.iter().flatten().map(|q| q.1 + q.2.unwrap_or(0.0)).fold(0.0, f64::max);
    let mut legend = series_entries(
        lines.iter().zip(&stats).enumerate().map(|(i, (l, st))| {
            let label = if st.is_empty() { format!("{} (energy not measured)", l.label) } else { l.label.clone() };
            (Swatch::Line(colour(i)), label)
        }),
        "server configurations",
    );
    legend.push(Entry::new(Swatch::Whisker, "mean over cycles ± 95 % CI (Student's t)"));
    let axes = Axes {
        x: XAxis::Categories(&labels),
        x_label: load_axis_label(lines),
        y_max: nice_max(top),
        y_label: "J per output token (measured window)",
    };
    let (mut s, frame) = begin(ENERGY_VS_LOAD, TITLE, &legend, &axes);
    let n = lines.len() as f64;
    let step = (frame.slot() * 0.4 / n).min(6.0);
    for (i, (line, st)) in lines.iter().zip(&stats).enumerate() {
        let c = colour(i);
        let dodge = (i as f64 - (n - 1.0) / 2.0) * step;
        // (x, load, mean, CI half-width)
        let at: Vec<(f64, f64, f64, Option<f64>)> = st
            .iter()
            .filter_map(|&(load, m, ci)| {
                let j = cats.iter().position(|&(k, v)| k == line.kind && v.total_cmp(&load).is_eq())?;
                Some((frame.cat_x(j) + dodge, load, m, ci))
            })
            .collect();
        if at.len() > 1 {
            let path: Vec<String> = at.iter().map(|(x, _, m, _)| format!("{x:.1},{:.1}", frame.sy(*m))).collect();
            let _ = write!(
                s,
                "<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\"/>",
                path.join(" ")
            );
        }
        for &(x, load, m, ci) in &at {
            if let Some(ci) = ci {
                whisker(&mut s, &frame, x, m, ci);
            }
            let _ = write!(
                s,
                "<circle class=\"mark\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"><title>{} at {}: {} J per output token{}</title></circle>",
                frame.sy(m),
                esc(&line.label),
                esc(&load_text(line.kind, load, both)),
                fmt_num(m),
                ci.map_or_else(String::new, |ci| format!(" ± {}", fmt_num(ci)))
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::report_plots::tests::assert_labelled;
    use crate::run::results::test_rows::{candle_row, server_row, server_row_with};
    use llem_common::spec::Rate;

    #[test]
    fn configurations_that_differ_only_in_load_form_one_line() {
        let rows = vec![
            server_row("a4", 1, 4, 64),
            server_row("a1", 1, 1, 64),
            server_row("b8", 1, 8, 128),
            candle_row("cpu", 1),
            server_row("a4", 2, 4, 64),
            server_row("b1", 1, 1, 128),
            server_row("a1", 2, 1, 64),
            server_row("b2", 1, 2, 128),
        ];
        let lines = server_lines(&rows);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let loads = |l: &ServerLine<'_>| l.points.iter().map(|p| p.load).collect::<Vec<_>>();
        assert_eq!(loads(&lines[0]), vec![1.0, 4.0], "ordered by concurrency");
        assert_eq!(loads(&lines[1]), vec![1.0, 2.0, 8.0]);
        assert_eq!(lines[0].points.iter().map(|p| p.rows.len()).collect::<Vec<_>>(), vec![2, 2], "cycles together");
        assert_eq!(lines[0].points[0].config_id, "a1");
        assert_eq!((lines[0].label.as_str(), lines[1].label.as_str()), ("max-num-seqs=64", "max-num-seqs=128"));
        assert!(lines.iter().all(|l| l.kind == LoadKind::Closed));
        // The mean over cycles: cycle 1 and 2 of a1 have J/token 1.01 and 1.02.
        let m = lines[0].points[0].mean(|r| r.result.energy.j_per_output_token).expect("mean");
        assert!((m - 1.015).abs() < 1e-9, "{m}");
    }

    #[test]
    fn an_open_loop_or_other_gpus_is_another_line() {
        let open = server_row_with("r2", 1, 1, 64, |r| {
            if let Some(load) = r.spec.load.as_mut() {
                load.concurrency = None;
                load.request_rate = Some(Rate(f64::INFINITY));
            }
        });
        let mut wide = server_row_with("g4", 1, 4, 64, |r| r.spec.gpus = Some(4));
        wide.swept.push(("gpus".to_owned(), serde_json::json!(4)));
        let rows = vec![server_row("a1", 1, 1, 64), open, wide, server_row("a4", 1, 4, 64)];
        let lines = server_lines(&rows);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[0].points.len(), 2);
        assert_eq!((lines[1].kind, lines[1].points[0].load), (LoadKind::Open, f64::INFINITY));
        assert_eq!(lines[1].label, "max-num-seqs=64 #2", "same swept label, numbered");
        assert_eq!(lines[2].label, "max-num-seqs=64 gpus=4");
        assert_eq!(load_text(LoadKind::Open, f64::INFINITY, true), "r=inf");
        let el = energy_vs_load(&lines);
        assert_labelled(&el);
        assert!(el.contains(">r=inf<") && el.contains(">c=4<"), "{el}");
    }

    #[test]
    fn server_plots_have_ticks_legends_and_marks() {
        let rows: Vec<_> = [(1, 1), (1, 2), (4, 1), (4, 2), (16, 1)]
            .into_iter()
            .map(|(c, cycle)| server_row(&format!("c{c}"), cycle, c, 64))
            .collect();
        let lines = server_lines(&rows);
        let tl = throughput_latency(&lines);
        assert_labelled(&tl);
        assert!(tl.contains(&format!("id=\"{THROUGHPUT_LATENCY}\"")));
        assert_eq!(tl.matches("class=\"mark\"").count(), 6, "a p50 and a p99 marker per load level");
        assert!(tl.contains("TTFT p50") && tl.contains("TTFT p99"));
        let el = energy_vs_load(&lines);
        assert_labelled(&el);
        assert!(el.contains(&format!("id=\"{ENERGY_VS_LOAD}\"")));
        assert_eq!(el.matches("class=\"mark\"").count(), 3);
        assert_eq!(el.matches("class=\"tick-x\"").count(), 3, "one tick per concurrency");
        assert_eq!(el.matches("class=\"ci\"").count(), 2, "a CI where there are two cycles");
        assert!(!el.contains("not-measured"));
    }

    #[test]
    fn unmeasured_energy_reads_not_measured_never_0() {
        let mut rows = vec![server_row("a1", 1, 1, 64), server_row("a2", 1, 2, 64)];
        for r in &mut rows {
            r.result.energy.j_per_output_token = None;
        }
        let lines = server_lines(&rows);
        let el = energy_vs_load(&lines);
        assert!(el.contains("class=\"not-measured\"") && !el.contains("class=\"mark\""), "{el}");
        assert!(el.contains(&format!("id=\"{ENERGY_VS_LOAD}\"")));
        // Throughput still plots.
        assert!(throughput_latency(&lines).contains("class=\"mark\""));
    }

    #[test]
    fn a_candle_only_run_has_no_server_lines() {
        let rows = vec![candle_row("a", 1), candle_row("a", 2), candle_row("b", 1)];
        assert!(server_lines(&rows).is_empty());
    }
}
