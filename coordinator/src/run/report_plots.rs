//! Drawing the report's plots as inline SVG: every plot opens with [`begin`], which lays
//! out its legend above a frame with labelled, numbered ticks on both axes (`tick-x`,
//! `tick-y`; a categorical x axis labels each category), then the marks are drawn on the
//! returned [`Frame`]. Here too are the plots every run has: bars with 95 % confidence
//! intervals and energy against latency with the Pareto front. The power timeseries
//! (`report.rs`) and the server-sweep plots (`report_server.rs`) use the same frame.
//!
//! Classes a headless check counts: `mark` (a drawn datum), `not-measured`, `tick-x`,
//! `tick-y`, `legend-entry`, `steady-state`.

use std::fmt::Write as _;

use super::results::{mean_ci, Row};

const W: f64 = 720.0;
/// Height of a "not measured" panel.
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = W - 10.0;
const BOTTOM: f64 = 60.0;
/// Height of the plotting area (between the legend and the x axis).
const PLOT_H: f64 = 220.0;
const LEGEND_ROW: f64 = 16.0;
/// Approximate width of one character of legend text (font size 11).
const LEGEND_CHAR_W: f64 = 6.2;
const LEGEND_MAX_CHARS: usize = 60;
/// Per-series legend entries shown; the rest are counted in one more entry.
pub(super) const MAX_SERIES_ENTRIES: usize = 12;
const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const PARETO: &str = "#d62728";

/// The colour of the `i`th series.
pub(super) fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn svg_open(id: &str, title: &str, height: f64) -> String {
    format!(
        "<svg class=\"plot\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" aria-label=\"{}\"><rect width=\"{W}\" height=\"{height}\" fill=\"white\"/>",
        esc(title)
    )
}

/// A panel that says why there is nothing to plot (class `not-measured`).
pub(super) fn not_available(id: &str, title: &str, message: &str) -> String {
    let mut s = svg_open(id, title, H);
    let _ = write!(
        s,
        "<text class=\"not-measured\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"16\" fill=\"#666\">{}</text></svg>",
        W / 2.0,
        H / 2.0,
        esc(message)
    );
    s
}

/// The panel of a quantity no sensor measured: never drawn as 0.
pub(super) fn not_measured(id: &str, title: &str, what: &str) -> String {
    not_available(id, title, &format!("{what} not measured on this node (no energy sensor) — never shown as 0"))
}

/// Nice upper bound for an axis.
pub(super) fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|&m| m >= v).unwrap_or(10.0 * mag)
}

pub(super) fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// What a legend entry shows beside its text.
#[derive(Debug, Clone, Copy)]
pub(super) enum Swatch {
    Bar(&'static str),
    Line(&'static str),
    Dashed(&'static str),
    Dot(&'static str, f64),
    /// A hollow square marker.
    Square(&'static str),
    /// A confidence-interval whisker.
    Whisker,
    /// A translucent area.
    Shade(&'static str),
    /// Text only.
    Blank,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub swatch: Swatch,
    pub label: String,
}

impl Entry {
    pub(super) fn new(swatch: Swatch, label: impl Into<String>) -> Entry {
        let label: String = label.into();
        let label = if label.chars().count() > LEGEND_MAX_CHARS {
            format!("{}…", label.chars().take(LEGEND_MAX_CHARS - 1).collect::<String>())
        } else {
            label
        };
        Entry { swatch, label }
    }
}

/// One legend entry per series, at most [`MAX_SERIES_ENTRIES`]; the rest are counted.
pub(super) fn series_entries(items: impl IntoIterator<Item = (Swatch, String)>, noun: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut more = 0usize;
    for (swatch, label) in items {
        if out.len() < MAX_SERIES_ENTRIES {
            out.push(Entry::new(swatch, label));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(Entry::new(Swatch::Blank, format!("… and {more} more {noun}")));
    }
    out
}

/// Where each entry goes (left to right, wrapping) and how many rows that takes.
fn legend_layout(entries: &[Entry]) -> (Vec<(f64, f64)>, usize) {
    let mut pos = Vec::with_capacity(entries.len());
    let (mut x, mut row) = (LEFT, 0usize);
    for e in entries {
        let w = 26.0 + LEGEND_CHAR_W * e.label.chars().count() as f64;
        if x > LEFT && x + w > RIGHT {
            x = LEFT;
            row += 1;
        }
        pos.push((x, 8.0 + LEGEND_ROW * row as f64));
        x += w + 14.0;
    }
    (pos, if entries.is_empty() { 0 } else { row + 1 })
}

fn draw_legend(s: &mut String, entries: &[Entry], pos: &[(f64, f64)]) {
    s.push_str("<g class=\"legend\">");
    for (e, &(x, y)) in entries.iter().zip(pos) {
        s.push_str("<g class=\"legend-entry\">");
        let (cx, cy, x2) = (x + 9.0, y + 7.0, x + 18.0);
        let _ = match e.swatch {
            Swatch::Bar(c) => {
                write!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"10\" fill=\"{c}\"/>", y + 2.0)
            }
            Swatch::Line(c) => write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{cy:.1}\" x2=\"{x2:.1}\" y2=\"{cy:.1}\" stroke=\"{c}\" stroke-width=\"2\"/>"
            ),
            Swatch::Dashed(c) => write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{cy:.1}\" x2=\"{x2:.1}\" y2=\"{cy:.1}\" stroke=\"{c}\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>"
            ),
            Swatch::Dot(c, r) => write!(s, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r}\" fill=\"{c}\"/>"),
            Swatch::Square(c) => write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"white\" stroke=\"{c}\" stroke-width=\"1.5\"/>",
                cx - 4.0,
                cy - 4.0
            ),
            Swatch::Whisker => write!(
                s,
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"black\"/><line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/><line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                y + 1.0,
                y + 13.0,
                cx - 4.0,
                y + 1.0,
                cx + 4.0,
                y + 1.0,
                cx - 4.0,
                y + 13.0,
                cx + 4.0,
                y + 13.0
            ),
            Swatch::Shade(c) => write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"12\" fill=\"{c}\" fill-opacity=\"0.25\"/>",
                y + 1.0
            ),
            Swatch::Blank => Ok(()),
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text></g>",
            x + 24.0,
            y + 11.0,
            esc(&e.label)
        );
    }
    s.push_str("</g>");
}

/// The x axis of a plot.
#[derive(Debug, Clone, Copy)]
pub(super) enum XAxis<'a> {
    /// Numbers from 0 to `max`.
    Linear { max: f64 },
    /// One tick per label, equally spaced.
    Categories(&'a [String]),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Axes<'a> {
    pub x: XAxis<'a>,
    /// With its unit, e.g. `request latency p50 (ms)`.
    pub x_label: &'a str,
    /// The y axis runs from 0 to `y_max`.
    pub y_max: f64,
    pub y_label: &'a str,
}

/// Where a plot's data go, in SVG coordinates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    pub top: f64,
    pub height: f64,
    x_max: f64,
    y_max: f64,
    categories: usize,
}

impl Frame {
    pub(super) fn bottom(&self) -> f64 {
        self.height - BOTTOM
    }
    pub(super) fn sx(&self, v: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * v / self.x_max
    }
    pub(super) fn sy(&self, v: f64) -> f64 {
        self.bottom() - (self.bottom() - self.top) * v / self.y_max
    }
    /// Width of one category.
    pub(super) fn slot(&self) -> f64 {
        (RIGHT - LEFT) / self.categories.max(1) as f64
    }
    /// Centre of category `i`.
    pub(super) fn cat_x(&self, i: usize) -> f64 {
        LEFT + self.slot() * (i as f64 + 0.5)
    }
}

/// Opens a plot: the legend above, then the frame with its ticks and axis labels. Draw
/// the marks on the frame, then close with `</svg>`.
pub(super) fn begin(id: &str, title: &str, legend: &[Entry], axes: &Axes<'_>) -> (String, Frame) {
    let (pos, rows) = legend_layout(legend);
    let top = 8.0 + LEGEND_ROW * rows as f64 + 12.0;
    let height = top + PLOT_H + BOTTOM;
    let (x_max, categories) = match axes.x {
        XAxis::Linear { max } => (if max > 0.0 && max.is_finite() { max } else { 1.0 }, 0),
        XAxis::Categories(labels) => (1.0, labels.len()),
    };
    let y_max = if axes.y_max > 0.0 && axes.y_max.is_finite() { axes.y_max } else { 1.0 };
    let frame = Frame { top, height, x_max, y_max, categories };
    let mut s = svg_open(id, title, height);
    draw_legend(&mut s, legend, &pos);
    draw_axes(&mut s, &frame, axes);
    (s, frame)
}

fn draw_axes(s: &mut String, frame: &Frame, axes: &Axes<'_>) {
    let (x0, y0, y1) = (LEFT, frame.bottom(), frame.top);
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{RIGHT}\" y2=\"{y0}\" stroke=\"#333\"/>");
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#333\"/>");
    for i in 0..=4 {
        let v = frame.y_max * f64::from(i) / 4.0;
        let y = frame.sy(v);
        let _ = write!(
            s,
            "<text class=\"tick-y\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{RIGHT}\" y2=\"{y:.1}\" stroke=\"#eee\"/>");
        let _ = write!(s, "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{x0}\" y2=\"{y:.1}\" stroke=\"#333\"/>", x0 - 4.0);
    }
    match axes.x {
        XAxis::Linear { .. } => {
            for i in 0..=4 {
                let v = frame.x_max * f64::from(i) / 4.0;
                let x = frame.sx(v);
                let _ =
                    write!(s, "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#333\"/>", y0 + 4.0);
                let _ = write!(
                    s,
                    "<text class=\"tick-x\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                    y0 + 16.0,
                    fmt_num(v)
                );
            }
        }
        XAxis::Categories(labels) => {
            for (i, label) in labels.iter().enumerate() {
                let x = frame.cat_x(i);
                let short: String = label.chars().take(28).collect();
                let _ =
                    write!(s, "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#333\"/>", y0 + 4.0);
                let _ = write!(
                    s,
                    "<text class=\"tick-x\" x=\"{x:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                    y0 + 14.0,
                    esc(&short)
                );
            }
        }
    }
    let mid = (y0 + y1) / 2.0;
    let _ = write!(
        s,
        "<text x=\"14\" y=\"{mid:.1}\" font-size=\"12\" transform=\"rotate(-90 14 {mid:.1})\" text-anchor=\"middle\">{}</text>",
        esc(axes.y_label)
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        (x0 + RIGHT) / 2.0,
        frame.height - 8.0,
        esc(axes.x_label)
    );
}

/// A 95 % confidence-interval whisker at `cx` around `mean`.
pub(super) fn whisker(s: &mut String, frame: &Frame, cx: f64, mean: f64, ci: f64) {
    let (lo, hi) = (frame.sy((mean - ci).max(0.0)), frame.sy(mean + ci));
    let _ = write!(
        s,
        "<g class=\"ci\"><line x1=\"{cx:.1}\" y1=\"{lo:.1}\" x2=\"{cx:.1}\" y2=\"{hi:.1}\" stroke=\"black\"/>"
    );
    for y in [lo, hi] {
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>",
            cx - 6.0,
            cx + 6.0
        );
    }
    s.push_str("</g>");
}

/// Bars with 95 % CI whiskers, one per group (`x_label` names what a group is:
/// `configuration`, `node`).
pub(super) fn bar_chart(
    id: &str,
    title: &str,
    unit: &str,
    x_label: &str,
    groups: &[(String, Vec<f64>)],
) -> Option<String> {
    let stats: Vec<(String, (f64, Option<f64>))> =
        groups.iter().filter_map(|(l, v)| mean_ci(v).map(|m| (l.clone(), m))).collect();
    if stats.is_empty() {
        return None;
    }
    let top = stats.iter().map(|(_, (m, ci))| m + ci.unwrap_or(0.0)).fold(0.0, f64::max);
    let labels: Vec<String> = stats.iter().map(|(l, _)| l.clone()).collect();
    let legend = [
        Entry::new(Swatch::Bar(colour(0)), format!("mean over cycles (one bar per {x_label})")),
        Entry::new(Swatch::Whisker, "95 % CI over cycles (Student's t)"),
    ];
    let axes = Axes { x: XAxis::Categories(&labels), x_label, y_max: nice_max(top), y_label: unit };
    let (mut s, frame) = begin(id, title, &legend, &axes);
    let w = frame.slot() * 0.6;
    for (i, (label, (mean, ci))) in stats.iter().enumerate() {
        let cx = frame.cat_x(i);
        let y = frame.sy(*mean);
        let _ = write!(
            s,
            "<rect class=\"mark\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} {}</title></rect>",
            cx - w / 2.0,
            frame.bottom() - y,
            colour(i),
            esc(label),
            fmt_num(*mean),
            esc(unit)
        );
        if let Some(ci) = ci {
            whisker(&mut s, &frame, cx, *mean, *ci);
        }
    }
    s.push_str("</svg>");
    Some(s)
}

/// Indices of the points on the Pareto front (lower energy and lower latency are better).
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            !points.iter().enumerate().any(|(j, q)| {
                j != i && q.0 <= points[i].0 && q.1 <= points[i].1 && (q.0 < points[i].0 || q.1 < points[i].1)
            })
        })
        .collect()
}

/// Energy against latency, one point per job, the Pareto front marked.
pub(super) fn scatter(rows: &[Row]) -> Option<String> {
    let pts: Vec<(f64, f64, &Row)> = rows
        .iter()
        .filter_map(|r| Some((r.result.latency.request_ms.map(|s| s.p50)?, r.result.energy.j_per_output_token?, r)))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let x_max = nice_max(pts.iter().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice_max(pts.iter().map(|p| p.1).fold(0.0, f64::max));
    let legend = [
        Entry::new(Swatch::Dot(colour(0), 4.0), "job (one cycle)"),
        Entry::new(Swatch::Dot(PARETO, 6.0), "job on the Pareto front"),
        Entry::new(Swatch::Dashed(PARETO), "Pareto front (lower is better on both axes)"),
    ];
    let axes = Axes {
        x: XAxis::Linear { max: x_max },
        x_label: "request latency p50 (ms)",
        y_max,
        y_label: "J per output token",
    };
    let (mut s, frame) = begin("energy-latency", "energy against latency", &legend, &axes);
    let front = pareto_front(&pts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>());
    let mut line: Vec<(f64, f64)> = front.iter().map(|&i| (pts[i].0, pts[i].1)).collect();
    line.sort_by(|a, b| a.0.total_cmp(&b.0));
    let path: Vec<String> = line.iter().map(|(x, y)| format!("{:.1},{:.1}", frame.sx(*x), frame.sy(*y))).collect();
    let _ = write!(
        s,
        "<polyline class=\"pareto\" points=\"{}\" fill=\"none\" stroke=\"{PARETO}\" stroke-dasharray=\"4 3\"/>",
        path.join(" ")
    );
    for (i, (x, y, r)) in pts.iter().enumerate() {
        let on_front = front.contains(&i);
        let _ = write!(
            s,
            "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{}\"><title>{} cycle {}: {} ms, {} J/token{}</title></circle>",
            frame.sx(*x),
            frame.sy(*y),
            if on_front { 6 } else { 4 },
            if on_front { PARETO } else { colour(0) },
            esc(&r.config_id),
            r.cycle,
            fmt_num(*x),
            fmt_num(*y),
            if on_front { " (Pareto front)" } else { "" }
        );
    }
    s.push_str("</svg>");
    Some(s)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::run::results::test_rows::candle_row;

    /// Counts of (x tick labels, y tick labels, legend entries) in an SVG.
    pub(in crate::run) fn ticks_and_legend(svg: &str) -> (usize, usize, usize) {
        (
            svg.matches("class=\"tick-x\"").count(),
            svg.matches("class=\"tick-y\"").count(),
            svg.matches("class=\"legend-entry\"").count(),
        )
    }

    pub(in crate::run) fn assert_labelled(svg: &str) {
        let (x, y, legend) = ticks_and_legend(svg);
        assert!(x >= 2 && y >= 2, "ticks x {x}, y {y}: {svg}");
        assert!(legend >= 1, "no legend: {svg}");
        assert!(svg.starts_with("<svg class=\"plot\"") && svg.ends_with("</svg>"), "{svg}");
    }

    #[test]
    fn pareto() {
        let pts = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.0), (2.0, 2.0)];
        assert_eq!(pareto_front(&pts), vec![0, 1, 3, 4]);
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(0.023), 0.025);
    }

    #[test]
    fn every_plot_has_ticks_on_both_axes_and_a_legend() {
        let groups = vec![("a".to_owned(), vec![1.0, 2.0]), ("b".to_owned(), vec![3.0])];
        let bars = bar_chart("j-per-token", "J per output token", "J per output token", "configuration", &groups)
            .expect("bars");
        assert_labelled(&bars);
        assert_eq!(ticks_and_legend(&bars).0, 2, "one x tick per configuration");
        assert!(bars.contains("95 % CI"));

        let mut rows = vec![candle_row("a", 1), candle_row("b", 1)];
        rows[0].result.energy.j_per_output_token = Some(0.5);
        rows[1].result.energy.j_per_output_token = Some(0.2);
        let sc = scatter(&rows).expect("scatter");
        assert_labelled(&sc);
        assert!(sc.contains("Pareto front"));
        // The marks sit inside the frame, below the legend.
        assert!(!sc.contains("cy=\"-"), "{sc}");
    }

    #[test]
    fn energy_never_reads_0() {
        let none = bar_chart("j-per-token", "J", "J", "configuration", &[("a".to_owned(), Vec::new())]);
        assert!(none.is_none(), "no values: no bars (the caller shows `not measured`)");
        let nm = not_measured("j-per-token", "J", "Energy");
        assert!(nm.contains("class=\"not-measured\"") && !nm.contains("class=\"mark\""));
    }

    #[test]
    fn long_legends_wrap_and_count_the_rest() {
        let entries =
            series_entries((0..20).map(|i| (Swatch::Line(colour(i)), format!("job-{i:02}-with-a-long-name"))), "jobs");
        assert_eq!(entries.len(), MAX_SERIES_ENTRIES + 1);
        assert!(entries[MAX_SERIES_ENTRIES].label.contains("8 more jobs"));
        let (pos, rows) = legend_layout(&entries);
        assert!(rows > 1 && pos.iter().all(|&(x, _)| (LEFT..RIGHT).contains(&x)));
    }
}
