//! The report: `report/index.html` (self-contained, inline SVG), `summary.md`,
//! `summary.csv` and each plot as an `.svg` file.
//!
//! Plots: J per output token per configuration with 95 % confidence intervals over
//! cycles; output tokens/s likewise; energy against latency per job with the Pareto front
//! marked; each job's power timeseries; and, when a configuration ran on several nodes,
//! the per-node comparison. Energy that was not measured is shown as "not measured",
//! never as 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use super::results::{mean_ci, Row};
use llem_common::util::write_atomic;

use super::rundir::attempt_dir;

const W: f64 = 720.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const TOP: f64 = 20.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn svg_open(id: &str, title: &str) -> String {
    format!(
        "<svg class=\"plot\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\"><rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>",
        esc(title)
    )
}

fn not_measured(id: &str, title: &str, what: &str) -> String {
    let mut s = svg_open(id, title);
    let _ = write!(
        s,
        "<text class=\"not-measured\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"16\" fill=\"#666\">{} not measured on this node (no energy sensor) — never shown as 0</text></svg>",
        W / 2.0,
        H / 2.0,
        esc(what)
    );
    s
}

/// Nice upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|&m| m >= v).unwrap_or(10.0 * mag)
}

fn axes(s: &mut String, y_max: f64, y_label: &str, x_label: &str) {
    let (x0, y0, y1) = (LEFT, H - BOTTOM, TOP);
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#333\"/>", W - 10.0);
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#333\"/>");
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = y0 - (y0 - y1) * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eee\"/>", W - 10.0);
    }
    let _ = write!(
        s,
        "<text x=\"14\" y=\"{}\" font-size=\"12\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        (x0 + W) / 2.0,
        H - 8.0,
        esc(x_label)
    );
}

fn fmt_num(v: f64) -> String {
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

/// Bars with 95 % CI whiskers, one per configuration.
fn bar_chart(id: &str, title: &str, unit: &str, groups: &[(String, Vec<f64>)]) -> Option<String> {
    let stats: Vec<(String, (f64, Option<f64>))> =
        groups.iter().filter_map(|(l, v)| mean_ci(v).map(|m| (l.clone(), m))).collect();
    if stats.is_empty() {
        return None;
    }
    let top = stats.iter().map(|(_, (m, ci))| m + ci.unwrap_or(0.0)).fold(0.0, f64::max);
    let y_max = nice_max(top);
    let mut s = svg_open(id, title);
    axes(&mut s, y_max, unit, "configuration");
    let plot_w = W - 10.0 - LEFT;
    let slot = plot_w / stats.len() as f64;
    let scale = |v: f64| (H - BOTTOM) - (H - BOTTOM - TOP) * v / y_max;
    for (i, (label, (mean, ci))) in stats.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let w = slot * 0.6;
        let _ = write!(
            s,
            "<rect class=\"mark\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} {}</title></rect>",
            scale(*mean),
            (H - BOTTOM) - scale(*mean),
            COLOURS[i % COLOURS.len()],
            esc(label),
            fmt_num(*mean),
            esc(unit)
        );
        if let Some(ci) = ci {
            let cx = x + w / 2.0;
            let (lo, hi) = (scale((mean - ci).max(0.0)), scale(mean + ci));
            let _ = write!(s, "<line x1=\"{cx:.1}\" y1=\"{lo:.1}\" x2=\"{cx:.1}\" y2=\"{hi:.1}\" stroke=\"black\"/>");
            for y in [lo, hi] {
                let _ = write!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>",
                    cx - 6.0,
                    cx + 6.0
                );
            }
        }
        let short: String = label.chars().take(28).collect();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + w / 2.0,
            H - BOTTOM + 14.0,
            esc(&short)
        );
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

fn scatter(rows: &[Row]) -> Option<String> {
    let pts: Vec<(f64, f64, &Row)> = rows
        .iter()
        .filter_map(|r| Some((r.result.latency.request_ms.map(|s| s.p50)?, r.result.energy.j_per_output_token?, r)))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let (x_max, y_max) =
        (nice_max(pts.iter().map(|p| p.0).fold(0.0, f64::max)), nice_max(pts.iter().map(|p| p.1).fold(0.0, f64::max)));
    let mut s = svg_open("energy-latency", "energy against latency");
    axes(&mut s, y_max, "J per output token", "request latency p50 (ms)");
    let sx = |v: f64| LEFT + (W - 10.0 - LEFT) * v / x_max;
    let sy = |v: f64| (H - BOTTOM) - (H - BOTTOM - TOP) * v / y_max;
    let front = pareto_front(&pts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>());
    let mut line: Vec<(f64, f64)> = front.iter().map(|&i| (pts[i].0, pts[i].1)).collect();
    line.sort_by(|a, b| a.0.total_cmp(&b.0));
    let path: Vec<String> = line.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
    let _ = write!(
        s,
        "<polyline class=\"pareto\" points=\"{}\" fill=\"none\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>",
        path.join(" ")
    );
    for (i, (x, y, r)) in pts.iter().enumerate() {
        let on_front = front.contains(&i);
        let _ = write!(
            s,
            "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{}\"><title>{} cycle {}: {} ms, {} J/token{}</title></circle>",
            sx(*x),
            sy(*y),
            if on_front { 6 } else { 4 },
            if on_front { "#d62728" } else { "#1f77b4" },
            esc(&r.config_id),
            r.cycle,
            fmt_num(*x),
            fmt_num(*y),
            if on_front { " (Pareto front)" } else { "" }
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#d62728\">— Pareto front</text>",
        W - 120.0,
        TOP + 12.0
    );
    s.push_str("</svg>");
    Some(s)
}

/// Power (W) per second of one attempt's window, from its timeseries.parquet.
fn power_series(path: &Path) -> Vec<(f64, Option<f64>)> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(reader) = SerializedFileReader::new(file) else { return Vec::new() };
    reader
        .into_iter()
        .flatten()
        .map(|row| {
            let mut t = 0.0;
            let mut p = None;
            for (name, field) in row.get_column_iter() {
                match (name.as_str(), field) {
                    ("timestamp_s", Field::Double(v)) => t = *v,
                    ("power_w", Field::Float(v)) => p = Some(f64::from(*v)),
                    _ => {}
                }
            }
            (t, p)
        })
        .collect()
}

fn timeseries(rows: &[Row], run_dir: &Path) -> Option<String> {
    let series: Vec<(&Row, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| {
            let pts = power_series(&attempt_dir(run_dir, &r.job_id, r.attempt).join("timeseries.parquet"));
            (r, pts.into_iter().filter_map(|(t, p)| Some((t, p?))).collect::<Vec<_>>())
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return None;
    }
    let x_max = nice_max(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0, f64::max));
    let y_max = nice_max(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(0.0, f64::max));
    let mut s = svg_open("power-timeseries", "power timeseries of each job");
    axes(&mut s, y_max, "power (W)", "seconds into the measured window");
    let sx = |v: f64| LEFT + (W - 10.0 - LEFT) * v / x_max;
    let sy = |v: f64| (H - BOTTOM) - (H - BOTTOM - TOP) * v / y_max;
    for (i, (r, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|(t, p)| format!("{:.1},{:.1}", sx(*t), sy(*p))).collect();
        let _ = write!(
            s,
            "<polyline class=\"mark\" points=\"{}\" fill=\"none\" stroke=\"{}\"><title>{}</title></polyline>",
            path.join(" "),
            COLOURS[i % COLOURS.len()],
            esc(&r.job_id)
        );
    }
    s.push_str("</svg>");
    Some(s)
}

fn label(r: &Row) -> String {
    let parts: Vec<String> = r
        .swept
        .iter()
        .map(|(k, v)| {
            format!("{}={}", k.rsplit('.').next().unwrap_or(k), v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        })
        .collect();
    if parts.is_empty() {
        r.config_id.clone()
    } else {
        parts.join(" ")
    }
}

/// Writes `report/` and returns the path of index.html.
pub fn write_report(
    sweep: &str,
    rows: &[Row],
    run_dir: &Path,
    summary_md: &str,
    summary_csv: &str,
) -> Result<std::path::PathBuf> {
    let dir = run_dir.join("report");
    std::fs::create_dir_all(&dir)?;
    let mut by_config: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in rows {
        if !by_config.contains_key(&r.config_id) {
            order.push(r.config_id.clone());
        }
        by_config.entry(r.config_id.clone()).or_default().push(r);
    }
    let groups = |f: fn(&Row) -> Option<f64>| -> Vec<(String, Vec<f64>)> {
        order.iter().map(|id| (label(by_config[id][0]), by_config[id].iter().filter_map(|r| f(r)).collect())).collect()
    };
    let jpt = bar_chart(
        "j-per-token",
        "J per output token",
        "J per output token",
        &groups(|r| r.result.energy.j_per_output_token),
    )
    .unwrap_or_else(|| not_measured("j-per-token", "J per output token", "Energy"));
    let tps = bar_chart(
        "tokens-per-s",
        "output tokens per second",
        "output tokens/s",
        &groups(|r| r.result.throughput.output_tokens_per_s),
    )
    .unwrap_or_else(|| not_measured("tokens-per-s", "throughput", "Throughput"));
    let sc = scatter(rows).unwrap_or_else(|| not_measured("energy-latency", "energy against latency", "Energy"));
    let ts = timeseries(rows, run_dir).unwrap_or_else(|| not_measured("power-timeseries", "power timeseries", "Power"));
    // Per-node comparison: configurations that ran on several nodes.
    let mut nodes_html = String::new();
    for id in &order {
        let mut per_node: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in &by_config[id] {
            per_node.entry(r.result.node.hostname.clone()).or_default().extend(r.result.energy.j_per_output_token);
        }
        if per_node.len() > 1 {
            let g: Vec<(String, Vec<f64>)> = per_node.into_iter().collect();
            if let Some(svg) = bar_chart(&format!("nodes-{id}"), "per node", "J per output token", &g) {
                let _ = write!(nodes_html, "<h3>{}</h3>{svg}", esc(&label(by_config[id][0])));
            }
        }
    }
    if nodes_html.is_empty() {
        nodes_html = "<p>Every configuration ran on one node.</p>".to_owned();
    }
    for (name, svg) in [
        ("j-per-token.svg", &jpt),
        ("tokens-per-s.svg", &tps),
        ("energy-latency.svg", &sc),
        ("power-timeseries.svg", &ts),
    ] {
        write_atomic(&dir.join(name), svg.as_bytes())?;
    }
    write_atomic(&dir.join("summary.md"), summary_md.as_bytes())?;
    write_atomic(&dir.join("summary.csv"), summary_csv.as_bytes())?;
    let table = markdown_table_to_html(summary_md);
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llem report: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:780px;margin:2em auto;color:#222}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 8px}}svg{{max-width:100%;height:auto}}</style></head>
<body>
<h1>llem report: {title}</h1>
<p>{n} finished jobs. Means over cycles with 95 % confidence intervals (Student's t). Energy that was not measured reads "not measured", never 0.</p>
<h2>Summary</h2>{table}
<h2>J per output token</h2>{jpt}
<h2>Throughput</h2>{tps}
<h2>Energy against latency</h2>{sc}
<h2>Power during each job</h2>{ts}
<h2>Per-node comparison</h2>{nodes_html}
<h2>Nodes</h2>{provenance}
<script>
// Records what the browser actually laid out, so a headless check can tell drawn plots
// from empty ones.
window.addEventListener('load', () => {{
  const plots = [...document.querySelectorAll('svg.plot')].map(s => {{
    const r = s.getBoundingClientRect();
    return {{id: s.id, width: Math.round(r.width), height: Math.round(r.height),
             marks: s.querySelectorAll('.mark').length, notMeasured: s.querySelectorAll('.not-measured').length}};
  }});
  document.body.setAttribute('data-plots', JSON.stringify(plots));
}});
</script>
</body></html>
"#,
        title = esc(sweep),
        n = rows.len(),
        provenance = nodes_provenance(run_dir),
    );
    let index = dir.join("index.html");
    write_atomic(&index, html.as_bytes())?;
    Ok(index)
}

/// Where the jobs ran, as each node's probe reported it before its first job
/// (`probe/<node>.json`).
fn nodes_provenance(run_dir: &Path) -> String {
    let mut probes: Vec<(String, llem_common::probe::ProbeReport)> = std::fs::read_dir(run_dir.join("probe"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.path().file_stem()?.to_string_lossy().into_owned();
            let report = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((name, report))
        })
        .collect();
    if probes.is_empty() {
        return "<p>No node was probed (a run from before probes were kept).</p>".to_owned();
    }
    probes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from(
        "<table><tr><th>node</th><th>host</th><th>system</th><th>CPU</th><th>GPUs</th><th>driver</th><th>energy sources</th></tr>",
    );
    for (name, p) in &probes {
        let n = &p.node;
        let gpus: Vec<&str> = n.gpus.iter().map(|g| g.name.as_str()).collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{} ({})</td><td>{} × {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(&n.hostname),
            esc(&n.os),
            esc(&n.kernel),
            n.cpu_cores,
            esc(&n.cpu_model),
            if gpus.is_empty() { "none".to_owned() } else { esc(&gpus.join(", ")) },
            esc(n.driver_version.as_deref().unwrap_or("–")),
            esc(&p.available_sources().join(", ")),
        );
    }
    out.push_str("</table>");
    out
}

fn markdown_table_to_html(md: &str) -> String {
    let mut out = String::from("<table>");
    for (i, line) in md.lines().filter(|l| l.starts_with('|')).enumerate() {
        if i == 1 {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for cell in line.trim_matches('|').split('|') {
            let _ = write!(out, "<{tag}>{}</{tag}>", esc(cell.trim().trim_matches('`')));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto() {
        let pts = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.0), (2.0, 2.0)];
        assert_eq!(pareto_front(&pts), vec![0, 1, 3, 4]);
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(0.023), 0.025);
    }
}
