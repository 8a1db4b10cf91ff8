//! `llem run`, `llem resume`, `llem status`.

use std::collections::HashMap;
use std::io::Write as _;

use anyhow::{Context as _, Result};

use crate::cli::{NodesArgs, ReportArgs, ResumeArgs, RunArgs, StatusArgs};
use crate::commands::{plan_or_report, print_warnings};
use crate::exit;
use crate::plan::Plan;
use crate::run::journal::{self, Outcome};
use crate::run::{self, report, results, Ending};
use llem_common::diag::render_all;

/// Writes results.parquet and the report; returns the summary table and index.html.
fn write_outputs(plan: &Plan, run_dir: &std::path::Path) -> Result<(usize, String, std::path::PathBuf)> {
    let rows = results::finished_rows(plan, run_dir)?;
    results::write_results_parquet(&rows, &run_dir.join("results.parquet"))?;
    let (md, csv) = results::summary(&rows);
    let index = report::write_report(&plan.sweep.name, &rows, run_dir, &md, &csv)?;
    Ok((rows.len(), md, index))
}

fn finish(plan: &Plan, run_dir: &std::path::Path, ending: Ending) -> Result<u8> {
    let (finished, summary, index) = write_outputs(plan, run_dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    writeln!(out, "{finished} of {} jobs finished; results in {}", plan.expansion.jobs.len(), run_dir.display())?;
    writeln!(out, "report: {}", index.display())?;
    Ok(match ending {
        Ending::AllSucceeded => exit::OK,
        Ending::SomeFailed => exit::RUN_FAILED,
        Ending::Interrupted => {
            eprintln!("interrupted: continue with `llem resume {}`", run_dir.display());
            exit::INTERRUPTED
        }
    })
}

pub fn run(args: &RunArgs) -> Result<u8> {
    let plan = match plan_or_report(&args.file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    print_warnings(&plan);
    let (run_dir, journal) = run::create_run_dir(&plan, &args.runs_dir)?;
    eprintln!("run directory: {}", run_dir.display());
    let options = run::Options { accept_new_host_keys: args.accept_new_host_keys };
    let ending = run::dispatch(&plan, &run_dir, journal, &[], &HashMap::new(), options)?;
    finish(&plan, &run_dir, ending)
}

/// Drops a torn last line so appending starts on a fresh one.
fn repair_tail(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read(path)?;
    if let Some(last) = text.iter().rposition(|&b| b == b'\n') {
        if last + 1 < text.len() {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(last as u64 + 1)?;
            file.sync_all()?;
        }
    }
    Ok(())
}

pub fn resume(args: &ResumeArgs) -> Result<u8> {
    let journal_path = args.run_dir.join("journal.jsonl");
    let replayed = journal::replay(&journal_path).with_context(|| format!("read {}", journal_path.display()))?;
    let sweep_file = std::path::PathBuf::from(&replayed.header.sweep_file);
    let plan = match plan_or_report(&sweep_file) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    if plan.sweep.source_hash != replayed.header.source_hash && !args.allow_changed_sweep {
        eprintln!(
            "error: {} changed since this run started: its jobs may no longer be the ones measured\n  = help: pass --allow-changed-sweep to keep the finished jobs and run only new or changed ones",
            sweep_file.display()
        );
        return Ok(exit::BAD_INPUT);
    }
    repair_tail(&journal_path)?;
    let (outcomes, attempts) = replayed.outcomes();
    let done: Vec<(String, Outcome)> =
        outcomes.into_iter().filter(|(_, o)| matches!(o, Outcome::Finished { .. }) || !args.retry_failed).collect();
    let journal = journal::Journal::append_to(&journal_path)?;
    eprintln!("resuming {}: {} jobs already done", args.run_dir.display(), done.len());
    let attempts: HashMap<String, u32> = attempts.into_iter().collect();
    let options = run::Options { accept_new_host_keys: args.accept_new_host_keys };
    let ending = run::dispatch(&plan, &args.run_dir, journal, &done, &attempts, options)?;
    finish(&plan, &args.run_dir, ending)
}

pub fn status(args: &StatusArgs) -> Result<u8> {
    let journal_path = args.run_dir.join("journal.jsonl");
    let replayed = journal::replay(&journal_path).with_context(|| format!("read {}", journal_path.display()))?;
    let plan_text = std::fs::read_to_string(args.run_dir.join("plan.json")).context("read plan.json")?;
    let plan: serde_json::Value = serde_json::from_str(&plan_text)?;
    let (outcomes, attempts) = replayed.outcomes();
    let jobs: Vec<(String, String, u32)> = plan["jobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| {
                    let id = j["id"].as_str()?.to_owned();
                    let state = match outcomes.get(&id) {
                        Some(Outcome::Finished { .. }) => "finished",
                        Some(Outcome::Failed { .. }) => "failed",
                        Some(Outcome::Skipped) => "skipped",
                        None if attempts.contains_key(&id) => "interrupted",
                        None => "pending",
                    };
                    Some((id.clone(), state.to_owned(), attempts.get(&id).copied().unwrap_or(0)))
                })
                .collect()
        })
        .unwrap_or_default();
    let count = |s: &str| jobs.iter().filter(|j| j.1 == s).count();
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<_> =
            jobs.iter().map(|(id, s, a)| serde_json::json!({"id": id, "state": s, "attempts": a})).collect();
        let counts = serde_json::json!({"total": jobs.len(), "finished": count("finished"), "failed": count("failed"),
            "skipped": count("skipped"), "interrupted": count("interrupted"), "pending": count("pending")});
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"sweep": replayed.header.sweep, "counts": counts, "jobs": list}),
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: {} jobs — {} finished, {} failed, {} skipped, {} interrupted, {} pending",
            replayed.header.sweep,
            jobs.len(),
            count("finished"),
            count("failed"),
            count("skipped"),
            count("interrupted"),
            count("pending")
        )?;
        for (id, s, a) in &jobs {
            writeln!(out, "  {id}  {s:<11}  attempts {a}")?;
        }
    }
    Ok(exit::OK)
}

/// The plan of a run directory, from the sweep file it recorded.
fn plan_of(run_dir: &std::path::Path) -> Result<Result<Plan, u8>> {
    let journal_path = run_dir.join("journal.jsonl");
    let replayed = journal::replay(&journal_path).with_context(|| format!("read {}", journal_path.display()))?;
    // The run directory keeps the sweep as it was: report from that copy.
    let copy = run_dir.join("sweep.yaml");
    let file = if copy.exists() { copy } else { std::path::PathBuf::from(&replayed.header.sweep_file) };
    Ok(plan_or_report(&file))
}

pub fn report(args: &ReportArgs) -> Result<u8> {
    let plan = match plan_of(&args.run_dir)? {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    let (finished, _, index) = write_outputs(&plan, &args.run_dir)?;
    writeln!(std::io::stdout().lock(), "{finished} finished jobs; report: {}", index.display())?;
    Ok(exit::OK)
}

/// `llem nodes check` / `llem nodes deploy`.
pub fn nodes(args: &NodesArgs, deploy_only: bool) -> Result<u8> {
    let sweep = match crate::sweep::load(&args.file) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{}", render_all(&e.diagnostics, &e.sources));
            return Ok(exit::BAD_INPUT);
        }
    };
    let control = std::env::temp_dir().join(format!("llem-ssh-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut failed = 0;
    for node in &sweep.nodes {
        let row = match run::ssh::SshTarget::for_node(node, &control, args.accept_new_host_keys) {
            None => {
                let probe =
                    std::process::Command::new(run::transport::agent_binary()).args(["probe", "--json"]).output()?;
                let report: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap_or_default();
                serde_json::json!({"node": node.name, "ok": probe.status.success(), "rtt_ms": 0.0, "probe": report})
            }
            Some(target) => {
                let outcome = (|| -> Result<serde_json::Value> {
                    let remote = target.deploy(&run::transport::agent_binary())?;
                    let rtt = target.round_trip()?;
                    let probe = if deploy_only { serde_json::Value::Null } else { target.probe(&remote)? };
                    Ok(
                        serde_json::json!({"node": node.name, "ok": true, "agent": remote, "rtt_ms": rtt.as_secs_f64() * 1000.0, "probe": probe}),
                    )
                })();
                target.close();
                outcome
                    .unwrap_or_else(|e| serde_json::json!({"node": node.name, "ok": false, "error": format!("{e:#}")}))
            }
        };
        failed += usize::from(row["ok"] != true);
        rows.push(row);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{:<12} {:<4} {:>8}  {:<12} {:<28} energy sources", "node", "ok", "rtt ms", "agent", "gpus")?;
        for r in &rows {
            if r["ok"] != true {
                writeln!(out, "{:<12} no   {}", r["node"].as_str().unwrap_or(""), r["error"].as_str().unwrap_or(""))?;
                continue;
            }
            let p = &r["probe"];
            let gpus: Vec<String> = p["node"]["gpus"]
                .as_array()
                .map(|g| g.iter().filter_map(|x| x["name"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let sources: Vec<String> = p["energy_sources"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter(|x| x["available"] == true)
                        .filter_map(|x| x["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{:<12} yes  {:>8.1}  {:<12} {:<28} {}",
                r["node"].as_str().unwrap_or(""),
                r["rtt_ms"].as_f64().unwrap_or(0.0),
                p["node"]["agent_version"].as_str().unwrap_or(if deploy_only { "deployed" } else { "?" }),
                if gpus.is_empty() { "none".to_owned() } else { gpus.join(", ") },
                sources.join(", ")
            )?;
        }
    }
    Ok(if failed > 0 { exit::RUN_FAILED } else { exit::OK })
}
