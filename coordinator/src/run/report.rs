//! The report: `report/index.html` (self-contained, inline SVG), `summary.md`,
//! `summary.csv` and each plot as an `.svg` file named after its id.
//!
//! Plots: J per output token per configuration with 95 % confidence intervals over
//! cycles; output tokens/s likewise; energy against latency per job with the Pareto front
//! marked; the power timeseries of the first 24 jobs with readings (a server job's
//! steady-state window shaded); and,
//! when a configuration ran on several nodes, the per-node comparison. A run with server
//! jobs (`engine: openai`) adds throughput against latency and J per output token against
//! load, one line per server configuration (`report_server.rs`). Every plot has numbered
//! ticks on both axes and a legend (`report_plots.rs`). Energy that was not measured is
//! shown as "not measured", never as 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use super::report_plots::{
    bar_chart, begin, colour, esc, fmt_num, nice_max, not_measured, scatter, series_entries, Axes, Entry, Swatch, XAxis,
};
use super::report_server::{energy_vs_load, server_lines, throughput_latency, ENERGY_VS_LOAD, THROUGHPUT_LATENCY};
use super::results::Row;
use llem_common::util::write_atomic;

use super::rundir::attempt_dir;

pub use super::report_plots::pareto_front;

/// `key=value` of swept fields, each key by its last part (`decoding.temperature` →
/// `temperature`).
pub(super) fn swept_label<'a>(swept: impl IntoIterator<Item = &'a (String, serde_json::Value)>) -> String {
    swept
        .into_iter()
        .map(|(k, v)| {
            format!("{}={}", k.rsplit('.').next().unwrap_or(k), v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn label(r: &Row) -> String {
    let parts = swept_label(&r.swept);
    if parts.is_empty() {
        r.config_id.clone()
    } else {
        parts
    }
}

/// Power (W) per second of one attempt's window, from its timeseries.parquet: the rows
/// of a second (one per device) summed; seconds without any reading left out.
fn power_series(path: &Path) -> Vec<(f64, f64)> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(reader) = SerializedFileReader::new(file) else { return Vec::new() };
    let readings: Vec<(f64, Option<f64>)> = reader
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
        .collect();
    summed_per_second(readings)
}

/// Sums the readings of equal timestamps (the devices of one second), in time order.
fn summed_per_second(readings: Vec<(f64, Option<f64>)>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = readings.into_iter().filter_map(|(t, p)| Some((t, p?))).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
    for (t, p) in pts {
        match out.last_mut() {
            Some(last) if last.0.total_cmp(&t).is_eq() => last.1 += p,
            _ => out.push((t, p)),
        }
    }
    out
}

/// Each job's power over its measured window, a server job's steady-state window shaded
/// in the job's colour.
fn timeseries_svg(series: &[(&Row, Vec<(f64, f64)>)], title: &str) -> Option<String> {
    if series.is_empty() {
        return None;
    }
    let steady: Vec<(usize, f64, f64)> = series
        .iter()
        .enumerate()
        .filter_map(|(i, (r, _))| {
            let ss = r.result.serving()?.steady_state.as_ref()?;
            Some((i, ss.start_s, ss.end_s))
        })
        .collect();
    let t_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .chain(steady.iter().map(|w| w.2).filter(|t| t.is_finite()))
        .fold(1.0, f64::max);
    let y_max = nice_max(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(0.0, f64::max));
    let mut legend = series_entries(
        series.iter().enumerate().map(|(i, (r, _))| (Swatch::Line(colour(i)), r.job_id.clone())),
        "jobs",
    );
    if !steady.is_empty() {
        legend.push(Entry::new(Swatch::Shade("#888888"), "steady-state window (shaded in its job's colour)"));
    }
    let axes = Axes {
        x: XAxis::Linear { max: nice_max(t_max) },
        x_label: "time into the measured window (s)",
        y_max,
        y_label: "power (W, devices summed)",
    };
    let (mut s, frame) = begin("power-timeseries", title, &legend, &axes);
    for &(i, start, end) in &steady {
        let (x1, x2) = (frame.sx(start.max(0.0)), frame.sx(end.max(start).min(nice_max(t_max))));
        let _ = write!(
            s,
            "<rect class=\"steady-state\" x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"0.15\"><title>{}: steady state {} s to {} s</title></rect>",
            frame.top,
            (x2 - x1).max(0.0),
            frame.bottom() - frame.top,
            colour(i),
            esc(&series[i].0.job_id),
            fmt_num(start),
            fmt_num(end)
        );
    }
    for (i, (r, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|(t, p)| format!("{:.1},{:.1}", frame.sx(*t), frame.sy(*p))).collect();
        let _ = write!(
            s,
            "<polyline class=\"mark\" points=\"{}\" fill=\"none\" stroke=\"{}\"><title>{}</title></polyline>",
            path.join(" "),
            colour(i),
            esc(&r.job_id)
        );
    }
    s.push_str("</svg>");
    Some(s)
}

/// At most this many jobs' power is drawn: more lines cannot be told apart, and a large
/// run's series would all be held in memory.
const TIMESERIES_JOBS: usize = 24;

/// The power of the first [`TIMESERIES_JOBS`] jobs with readings, in plan order. The
/// file of a job whose energy source is `none` (no sensor gave anything over its window)
/// is not read: a CPU run of 50,000 jobs read 50,000 files of nulls.
fn timeseries(rows: &[Row], run_dir: &Path) -> Option<String> {
    let has_sensor = |r: &&Row| r.result.energy.source != "none";
    let mut sensed = rows.iter().filter(has_sensor);
    let series: Vec<(&Row, Vec<(f64, f64)>)> = sensed
        .by_ref()
        .map(|r| (r, power_series(&attempt_dir(run_dir, &r.job_id, r.attempt).join("timeseries.parquet"))))
        .filter(|(_, p)| !p.is_empty())
        .take(TIMESERIES_JOBS)
        .collect();
    let title = if sensed.next().is_none() {
        "power timeseries of each job with readings".to_owned()
    } else {
        format!("power timeseries of the first {} jobs with readings, in plan order", series.len())
    };
    timeseries_svg(&series, &title)
}

/// At most this many configurations get a bar: more cannot be told apart (a 50,000-job
/// sweep drew a 14 MB chart), and summary.csv has every one.
const BAR_CONFIGS: usize = 40;

/// At most this many configurations are rows of index.html's summary table; summary.md
/// and summary.csv have every one.
const TABLE_ROWS: usize = 200;

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
    // The first BAR_CONFIGS configurations with the value, and how many have it.
    let bars = |id: &str, title: &str, unit: &str, f: fn(&Row) -> Option<f64>| {
        let (mut shown, mut with_value) = (Vec::new(), 0);
        for config in &order {
            let values: Vec<f64> = by_config[config].iter().filter_map(|r| f(r)).collect();
            if values.is_empty() {
                continue;
            }
            with_value += 1;
            if shown.len() < BAR_CONFIGS {
                shown.push((label(by_config[config][0]), values));
            }
        }
        let title = if with_value > BAR_CONFIGS {
            format!("{title}: the first {BAR_CONFIGS} of {with_value} configurations (summary.csv has every one)")
        } else {
            title.to_owned()
        };
        bar_chart(id, &title, unit, "configuration", &shown)
    };
    let jpt = bars("j-per-token", "J per output token", "J per output token", |r| r.result.energy.j_per_output_token)
        .unwrap_or_else(|| not_measured("j-per-token", "J per output token", "Energy"));
    let tps = bars("tokens-per-s", "output tokens per second", "output tokens/s", |r| {
        r.result.throughput.output_tokens_per_s
    })
    .unwrap_or_else(|| not_measured("tokens-per-s", "throughput", "Throughput"));
    let sc = scatter(rows).unwrap_or_else(|| not_measured("energy-latency", "energy against latency", "Energy"));
    let ts = timeseries(rows, run_dir).unwrap_or_else(|| not_measured("power-timeseries", "power timeseries", "Power"));
    // Server sweeps only: a run without server jobs has none of these plots.
    let lines = server_lines(rows);
    let server_plots: Vec<(&str, String)> = if lines.is_empty() {
        Vec::new()
    } else {
        vec![(THROUGHPUT_LATENCY, throughput_latency(&lines)), (ENERGY_VS_LOAD, energy_vs_load(&lines))]
    };
    let server_html = server_section(&server_plots);
    // Per-node comparison: configurations that ran on several nodes.
    let mut nodes_html = String::new();
    for id in &order {
        let mut per_node: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in &by_config[id] {
            per_node.entry(r.result.node.clone()).or_default().extend(r.result.energy.j_per_output_token);
        }
        if per_node.len() > 1 {
            let g: Vec<(String, Vec<f64>)> = per_node.into_iter().collect();
            if let Some(svg) = bar_chart(&format!("nodes-{id}"), "per node", "J per output token", "node", &g) {
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
    for (id, svg) in &server_plots {
        write_atomic(&dir.join(format!("{id}.svg")), svg.as_bytes())?;
    }
    write_atomic(&dir.join("summary.md"), summary_md.as_bytes())?;
    write_atomic(&dir.join("summary.csv"), summary_csv.as_bytes())?;
    let table = markdown_table_to_html(summary_md, TABLE_ROWS);
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
{server_html}<h2>Per-node comparison</h2>{nodes_html}
<h2>Nodes</h2>{provenance}
<script>
// Records what the browser actually laid out, so a headless check can tell drawn plots
// from empty ones.
window.addEventListener('load', () => {{
  const plots = [...document.querySelectorAll('svg.plot')].map(s => {{
    const r = s.getBoundingClientRect();
    return {{id: s.id, width: Math.round(r.width), height: Math.round(r.height),
             marks: s.querySelectorAll('.mark').length, notMeasured: s.querySelectorAll('.not-measured').length,
             ticksX: s.querySelectorAll('.tick-x').length, ticksY: s.querySelectorAll('.tick-y').length,
             legend: s.querySelectorAll('.legend-entry').length}};
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

/// The server-sweep plots with their headings (empty without server jobs).
fn server_section(plots: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (id, svg) in plots {
        let (heading, about) = match *id {
            THROUGHPUT_LATENCY => (
                "Throughput against latency",
                "One line per server configuration (jobs that differ only in load), points in load order; each point the mean over cycles.",
            ),
            _ => (
                "J per output token against load",
                "Energy of the whole measured window per output token, mean over cycles with 95 % confidence intervals.",
            ),
        };
        let _ = write!(out, "<h2>{heading}</h2>\n<p>{about}</p>{svg}\n");
    }
    out
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

/// The table's header and its first `max_rows` rows, and a line saying how many more
/// there are.
fn markdown_table_to_html(md: &str, max_rows: usize) -> String {
    let mut out = String::from("<table>");
    let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    // The header, then the |---| line.
    let rows = lines.len().saturating_sub(2);
    for (i, line) in lines.iter().enumerate().take(max_rows + 2) {
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
    if rows > max_rows {
        let _ = write!(
            out,
            "<p>The first {max_rows} of {rows} configurations; summary.md and summary.csv have every one.</p>"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::report_plots::tests::assert_labelled;
    use crate::run::results::summary;
    use crate::run::results::test_rows::{candle_row, server_row};

    fn report(rows: &[Row]) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let (md, csv) = summary(rows);
        let index = write_report("t", rows, dir.path(), &md, &csv).expect("report");
        let html = std::fs::read_to_string(index).expect("index.html");
        (dir, html)
    }

    #[test]
    fn a_large_sweep_draws_the_first_configurations_and_says_how_many_there_are() {
        let mut rows: Vec<Row> = (0..250).map(|c| candle_row(&format!("k{c:03}"), 1)).collect();
        // Energy for 45 configurations only: the chart counts those that have it.
        for r in &mut rows[..45] {
            r.result.energy.j_per_output_token = Some(0.5);
        }
        let (dir, html) = report(&rows);
        let svg = std::fs::read_to_string(dir.path().join("report").join("j-per-token.svg")).expect("svg");
        assert_eq!(svg.matches("<rect class=\"mark\"").count(), BAR_CONFIGS, "{svg}");
        assert!(svg.contains("the first 40 of 45 configurations (summary.csv has every one)"), "{svg}");
        assert!(html.contains("The first 200 of 250 configurations; summary.md and summary.csv have every one."));
        assert_eq!(html.matches("<tr>").count(), 1 + TABLE_ROWS, "the header and 200 rows");
        let (md, _) = summary(&rows[..3]);
        let small = markdown_table_to_html(&md, TABLE_ROWS);
        assert_eq!(small.matches("<tr>").count(), 4);
        assert!(!small.contains("The first"), "{small}");
    }

    #[test]
    fn a_candle_only_run_makes_none_of_the_server_plots() {
        let mut rows = vec![candle_row("a", 1), candle_row("a", 2), candle_row("b", 1)];
        for (r, j) in rows.iter_mut().zip([0.5, 0.6, 0.2]) {
            r.result.energy.j_per_output_token = Some(j);
        }
        let (dir, html) = report(&rows);
        let report = dir.path().join("report");
        for id in [THROUGHPUT_LATENCY, ENERGY_VS_LOAD] {
            assert!(!html.contains(id), "{id} in a run without server jobs");
            assert!(!report.join(format!("{id}.svg")).exists(), "{id}.svg");
        }
        let ids: Vec<&str> = html
            .match_indices("<svg class=\"plot\" id=\"")
            .map(|(i, m)| &html[i + m.len()..])
            .map(|t| &t[..t.find('"').unwrap_or(0)])
            .collect();
        assert_eq!(ids, vec!["j-per-token", "tokens-per-s", "energy-latency", "power-timeseries"]);
        for name in ["j-per-token.svg", "tokens-per-s.svg", "energy-latency.svg"] {
            assert_labelled(&std::fs::read_to_string(report.join(name)).expect("svg"));
        }
        // No timeseries here: "not measured", never an empty frame or 0.
        let ts = std::fs::read_to_string(report.join("power-timeseries.svg")).expect("svg");
        assert!(ts.contains("class=\"not-measured\""), "{ts}");
        assert!(html.contains("ticksX") && html.contains("data-plots"), "the headless check's markers stay");
    }

    #[test]
    fn a_server_sweep_adds_its_plots() {
        let rows = vec![server_row("c1", 1, 1, 64), server_row("c4", 1, 4, 64), server_row("c4", 2, 4, 64)];
        let (dir, html) = report(&rows);
        for id in [THROUGHPUT_LATENCY, ENERGY_VS_LOAD] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
            let svg = std::fs::read_to_string(dir.path().join("report").join(format!("{id}.svg"))).expect("svg");
            assert_labelled(&svg);
        }
        assert!(html.find("power-timeseries") < html.find(THROUGHPUT_LATENCY));
    }

    #[test]
    fn power_timeseries_have_ticks_a_legend_and_the_steady_state_shaded() {
        let candle = candle_row("a", 1);
        let served = server_row("s", 1, 4, 64);
        let series = vec![(&candle, vec![(0.0, 10.0), (1.0, 12.0)]), (&served, vec![(0.0, 50.0), (1.0, 80.0)])];
        let ts = timeseries_svg(&series, "power").expect("timeseries");
        assert_labelled(&ts);
        assert_eq!(ts.matches("class=\"legend-entry\"").count(), 3, "one entry per job, one for the shading");
        assert!(ts.contains("steady-state window"));
        assert_eq!(ts.matches("class=\"steady-state\"").count(), 1, "{ts}");
        assert_eq!(ts.matches("class=\"mark\"").count(), 2);
        let ts = timeseries_svg(&series[..1], "power").expect("timeseries");
        assert!(!ts.contains("steady-state"), "no server job, no shading: {ts}");
        assert!(timeseries_svg(&[], "power").is_none());
    }

    /// A timeseries.parquet with the agent's two columns the report reads: 10 W, 20 W.
    fn write_power(path: &Path) {
        use parquet::data_type::{DoubleType, FloatType};
        use parquet::file::writer::SerializedFileWriter;
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        let schema = std::sync::Arc::new(
            parquet::schema::parser::parse_message_type(
                "message t { OPTIONAL DOUBLE timestamp_s; OPTIONAL FLOAT power_w; }",
            )
            .expect("schema"),
        );
        let file = std::fs::File::create(path).expect("create");
        let mut writer = SerializedFileWriter::new(file, schema, Default::default()).expect("writer");
        let mut group = writer.next_row_group().expect("group");
        let mut col = group.next_column().expect("column").expect("timestamp_s");
        col.typed::<DoubleType>().write_batch(&[0.0, 1.0], Some(&[1, 1]), None).expect("write");
        col.close().expect("close");
        let mut col = group.next_column().expect("column").expect("power_w");
        col.typed::<FloatType>().write_batch(&[10.0, 20.0], Some(&[1, 1]), None).expect("write");
        col.close().expect("close");
        group.close().expect("close");
        writer.close().expect("close");
    }

    #[test]
    fn the_timeseries_draws_the_first_jobs_with_a_sensor_and_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut rows: Vec<Row> = (1..=30).map(|c| candle_row(&format!("k{c:02}"), 1)).collect();
        for r in &mut rows[1..] {
            r.result.energy.source = "nvml".to_owned();
        }
        for r in &rows {
            write_power(&attempt_dir(dir.path(), &r.job_id, r.attempt).join("timeseries.parquet"));
        }
        let ts = timeseries(&rows, dir.path()).expect("timeseries");
        assert_eq!(ts.matches("<polyline class=\"mark\"").count(), TIMESERIES_JOBS, "{ts}");
        assert!(ts.contains("the first 24 jobs with readings"), "{ts}");
        assert!(!ts.contains(">k01-c1<") && ts.contains(">k02-c1<") && ts.contains(">k25-c1<"), "no sensor, not drawn");
        assert!(!ts.contains(">k26-c1<"));
        let few = timeseries(&rows[..5], dir.path()).expect("timeseries");
        assert!(few.contains("of each job with readings") && few.matches("<polyline").count() == 4, "{few}");
    }

    #[test]
    fn devices_of_one_second_are_summed() {
        let summed = summed_per_second(vec![(1.0, Some(2.0)), (0.0, Some(1.0)), (1.0, Some(3.0)), (2.0, None)]);
        assert_eq!(summed, vec![(0.0, 1.0), (1.0, 5.0)]);
    }

    #[test]
    fn labels_name_the_swept_fields() {
        let row = server_row("c1", 1, 1, 64);
        assert_eq!(label(&row), "concurrency=1 max-num-seqs=64");
        assert_eq!(label(&candle_row("abc", 1)), "abc");
    }
}
