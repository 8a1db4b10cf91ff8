//! `llem validate` and `llem plan`: a sweep read, expanded and shown.

use std::io::{self, BufWriter, Write};

use llem_common::diag::{render_all, Diagnostic};
use llem_common::spec::fields;
use llem_common::yaml::Sources;
use serde_json::json;

use super::{load_plan_diagnostics, plan_or_report, print_warnings};
use crate::cli::{PlanArgs, ValidateArgs};
use crate::error::CommandError;
use crate::exit;
use crate::expand::{point_display, point_spec};
use crate::plan::{Plan, Task};
use crate::sweep::Sweep;

fn diagnostic_json(d: &Diagnostic, sources: &Sources) -> serde_json::Value {
    let file = d.span.and_then(|s| sources.get(s.source)).map(|s| s.name.clone());
    json!({
        "file": file,
        "line": d.span.map(|s| s.line),
        "column": d.span.map(|s| s.col),
        "message": d.message,
        "help": d.help,
    })
}

pub fn validate(args: &ValidateArgs) -> Result<u8, CommandError> {
    let mut failed = 0usize;
    let mut report = Vec::new();
    let mut out = io::stdout().lock();
    for file in &args.files {
        match load_plan_diagnostics(file) {
            Ok(plan) => {
                let c = &plan.expansion.counts;
                if args.json {
                    let warnings: Vec<_> = plan
                        .sweep
                        .warnings
                        .iter()
                        .chain(&plan.expansion.warnings)
                        .map(|w| diagnostic_json(w, &plan.sweep.sources))
                        .collect();
                    report.push(json!({"file": file, "ok": true, "counts": c, "errors": [], "warnings": warnings}));
                } else {
                    print_warnings(&plan);
                    writeln!(
                        out,
                        "ok: {} ({} jobs = {} configurations × {} cycles)",
                        file.display(),
                        c.jobs,
                        c.configurations,
                        c.cycles
                    )?;
                }
            }
            Err((sources, diagnostics)) => {
                failed += 1;
                if args.json {
                    let errors: Vec<_> = diagnostics.iter().map(|d| diagnostic_json(d, &sources)).collect();
                    report.push(json!({"file": file, "ok": false, "errors": errors, "warnings": []}));
                } else {
                    eprint!("{}", render_all(&diagnostics, &sources));
                }
            }
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else if failed > 0 {
        eprintln!("{failed} of {} files have errors", args.files.len());
    }
    Ok(if failed > 0 { exit::BAD_INPUT } else { exit::OK })
}

pub fn plan(args: &PlanArgs) -> Result<u8, CommandError> {
    let plan = plan_or_report(&args.file)?;
    print_warnings(&plan);
    let mut out = BufWriter::new(io::stdout().lock());
    match (args.json, args.summary) {
        (true, true) => {
            serde_json::to_writer_pretty(&mut out, &summary_json(&plan))?;
            writeln!(out)?;
        }
        (true, false) => write_json(&plan, &mut out)?,
        (false, true) => write_summary(&plan, &mut out)?,
        (false, false) => {
            write_table(&plan, &mut out)?;
            writeln!(out)?;
            write_summary(&plan, &mut out)?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

struct GraphCounts {
    probes: usize,
    prepares: usize,
    jobs: usize,
}

fn graph_counts(plan: &Plan) -> GraphCounts {
    let mut c = GraphCounts { probes: 0, prepares: 0, jobs: 0 };
    for task in plan.graph.node_weights() {
        match task {
            Task::Probe { .. } => c.probes += 1,
            Task::Prepare { .. } => c.prepares += 1,
            Task::Job { .. } => c.jobs += 1,
            Task::Report => {}
        }
    }
    c
}

fn summary_json(plan: &Plan) -> serde_json::Value {
    let g = graph_counts(plan);
    json!({
        "sweep": sweep_json(&plan.sweep),
        "counts": plan.expansion.counts,
        "execution": plan.sweep.execution,
        "graph": {"tasks": plan.graph.node_count(), "edges": plan.graph.edge_count(),
                  "probes": g.probes, "prepares": g.prepares, "jobs": g.jobs},
        "nodes": plan.sweep.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
    })
}

fn sweep_json(sweep: &Sweep) -> serde_json::Value {
    json!({"name": sweep.name, "file": sweep.path, "source_hash": sweep.source_hash})
}

fn write_summary(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let c = &plan.expansion.counts;
    let e = &plan.sweep.execution;
    let g = graph_counts(plan);
    writeln!(out, "sweep {} ({})", plan.sweep.name, plan.sweep.path.display())?;
    writeln!(
        out,
        "configurations: {} = grid {} − excluded {} + included {}",
        c.configurations, c.grid, c.excluded, c.included
    )?;
    writeln!(out, "jobs: {} = {} configurations × {} cycles, order {}", c.jobs, c.configurations, c.cycles, e.order)?;
    writeln!(
        out,
        "graph: {} tasks ({} probe, {} prepare, {} jobs, 1 report), {} edges",
        plan.graph.node_count(),
        g.probes,
        g.prepares,
        g.jobs,
        plan.graph.edge_count()
    )?;
    let nodes: Vec<&str> = plan.sweep.nodes.iter().map(|n| n.name.as_str()).collect();
    writeln!(out, "nodes: {}", nodes.join(", "))?;
    if !e.monotone.is_empty() {
        writeln!(out, "monotone: {} (a failure skips the larger values)", e.monotone.join(", "))?;
    }
    Ok(())
}

fn write_table(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let (sweep, exp) = (&plan.sweep, &plan.expansion);
    // Columns: every swept or included field, in first-seen order.
    let mut columns: Vec<&str> = Vec::new();
    for point in &exp.points {
        for (k, _) in point_display(sweep, exp, point) {
            if !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    let rows: Vec<Vec<String>> = exp
        .jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let point = &exp.points[job.point as usize];
            let values = point_display(sweep, exp, point);
            let mut row = vec![(i + 1).to_string(), exp.job_id(job), job.cycle.to_string()];
            // An include entry sets only some columns; the others show the resolved value.
            let resolved = (values.len() < columns.len()).then(|| point_spec(sweep, exp, point).to_json());
            for col in &columns {
                let cell = values.iter().find(|(k, _)| k == col).map(|(_, v)| v.clone()).unwrap_or_else(|| {
                    resolved.as_ref().and_then(|j| fields::lookup(j, col)).map_or_else(|| "·".to_owned(), compact_json)
                });
                row.push(cell);
            }
            row.push(plan.placement_names(point.placement).join(","));
            row
        })
        .collect();
    let mut header = vec!["#", "job", "cycle"];
    header.extend(&columns);
    header.push("nodes");
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 || i == 2 { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

fn compact_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Streams the plan as JSON (a million jobs never sit in memory as one value).
fn write_json(plan: &Plan, out: &mut impl Write) -> Result<(), CommandError> {
    let (sweep, exp) = (&plan.sweep, &plan.expansion);
    write!(out, "{{\"sweep\":")?;
    serde_json::to_writer(&mut *out, &sweep_json(sweep))?;
    write!(out, ",\"counts\":")?;
    serde_json::to_writer(&mut *out, &exp.counts)?;
    write!(out, ",\"execution\":")?;
    serde_json::to_writer(&mut *out, &sweep.execution)?;
    write!(out, ",\"nodes\":")?;
    serde_json::to_writer(&mut *out, &sweep.nodes)?;
    write!(out, ",\"jobs\":[")?;
    for (i, job) in exp.jobs.iter().enumerate() {
        let point = &exp.points[job.point as usize];
        let spec = point_spec(sweep, exp, point).to_json();
        let swept: serde_json::Map<String, serde_json::Value> = point_display(sweep, exp, point)
            .iter()
            .map(|(k, _)| (k.clone(), fields::lookup(&spec, k).cloned().unwrap_or_default()))
            .collect();
        if i > 0 {
            write!(out, ",")?;
        }
        serde_json::to_writer(
            &mut *out,
            &json!({
                "id": exp.job_id(job),
                "config_id": point.hash.short(),
                "cycle": job.cycle,
                "position": i + 1,
                "swept": swept,
                "nodes": plan.placement_names(point.placement),
                "spec": spec,
            }),
        )?;
    }
    write!(out, "],\"graph\":{{\"nodes\":[")?;
    for (i, n) in plan.graph.node_indices().enumerate() {
        if i > 0 {
            write!(out, ",")?;
        }
        let kind = match plan.graph[n] {
            Task::Probe { .. } => "probe",
            Task::Prepare { .. } => "prepare",
            Task::Job { .. } => "job",
            Task::Report => "report",
        };
        serde_json::to_writer(&mut *out, &json!({"id": plan.task_name(n), "kind": kind}))?;
    }
    write!(out, "],\"edges\":[")?;
    for (i, e) in plan.graph.raw_edges().iter().enumerate() {
        if i > 0 {
            write!(out, ",")?;
        }
        serde_json::to_writer(
            &mut *out,
            &json!({"from": plan.task_name(e.source()), "to": plan.task_name(e.target()), "kind": e.weight}),
        )?;
    }
    writeln!(out, "]}}}}")?;
    Ok(())
}
