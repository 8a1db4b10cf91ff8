//! `llem run`, `llem resume`, `llem status`, `llem report`: a run directory made, carried
//! on, shown and reported. Everything but `run` works from the run directory alone, from
//! any working directory, whatever happened to the sweep's files since.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{plan_or_error, plan_or_report, print_warnings, sweep_error, sweep_or_error};
use crate::cli::{ReportArgs, ResumeArgs, RunArgs, StatusArgs};
use crate::error::{CommandError, Expected};
use crate::exit;
use crate::plan::Plan;
use crate::run::journal::{Journal, Outcome, Record, Replay};
use crate::run::{self, report, results, ConnectOptions, Earlier, Ending, RunDir};
use crate::sweep::{self, Sweep};

/// Writes results.parquet and the report; returns the finished count, the summary table
/// and index.html.
fn write_outputs(plan: &Plan, run: &RunDir) -> anyhow::Result<(usize, String, PathBuf)> {
    let rows = results::finished_rows(plan, &run.path)?;
    results::write_results_parquet(&rows, &run.path.join("results.parquet"))?;
    let (md, csv) = results::summary(&rows);
    let index = report::write_report(&plan.sweep.name, &rows, &run.path, &md, &csv)?;
    Ok((rows.len(), md, index))
}

fn finish(plan: &Plan, run: &RunDir, ending: Ending) -> Result<u8, CommandError> {
    let (finished, summary, index) = write_outputs(plan, run)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    writeln!(out, "{finished} of {} jobs finished; results in {}", plan.expansion.jobs.len(), run.path.display())?;
    writeln!(out, "report: {}", index.display())?;
    Ok(match ending {
        Ending::AllSucceeded => exit::OK,
        Ending::SomeFailed => exit::RUN_FAILED,
        Ending::Interrupted => {
            eprintln!("interrupted: continue with `llem resume {}`", run.path.display());
            exit::INTERRUPTED
        }
        Ending::Stopped(why) => {
            eprintln!(
                "the run stopped: {why}. No job was failed for it: `llem resume {}` runs the rest (with a new allocation)",
                run.path.display()
            );
            exit::RUN_FAILED
        }
    })
}

fn working_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

pub fn run(args: &RunArgs) -> Result<u8, CommandError> {
    let plan = plan_or_report(&args.file)?;
    print_warnings(&plan);
    let (run, journal) = RunDir::create(&plan, &args.runs_dir)?;
    eprintln!("run directory: {}", run.path.display());
    let options = ConnectOptions::new(&working_dir(), args.accept_new_host_keys, Some(&run.id));
    let ending = run::dispatch(&plan, &run, journal, &Earlier::default(), &options)?;
    finish(&plan, &run, ending)
}

/// Drops a torn last line so appending starts on a fresh one.
fn repair_tail(path: &Path) -> anyhow::Result<()> {
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

/// The sweep a run goes on with. It is the run directory's copy, unless the files it was
/// made from (or the file given with `--sweep`) differ from it: then resume refuses, or
/// with `--allow-changed-sweep` keeps a copy of the changed files as the run's sweep.
fn sweep_to_resume(
    run: &RunDir,
    replay: &Replay,
    args: &ResumeArgs,
    journal: &mut Journal,
) -> Result<Plan, CommandError> {
    let (snapshot, recorded) = replay.current_sweep();
    let original = match snapshot {
        Some(s) => PathBuf::from(&s.original_file),
        // Journal version 1: the file as typed at `llem run` (relative to where it ran).
        None => PathBuf::from(&replay.header.sweep_file),
    };
    let given: Option<Sweep> = match &args.sweep {
        // Given: it must load.
        Some(path) => Some(sweep_or_error(sweep::load(path))?),
        None if original.is_file() => match sweep::load(&original) {
            Ok(s) => Some(s),
            // Some of its files moved, or it was edited into something else: the run's
            // copy is intact, and it is what the run measured.
            Err(e) if snapshot.is_some() => {
                let first = e.diagnostics.first().map_or_else(String::new, |d| d.message.clone());
                let shown = original.display();
                eprintln!("warning: {shown} no longer reads as it did ({first}): going on with the run's own copy");
                None
            }
            Err(e) => return Err(sweep_error(&e).into()),
        },
        None => None,
    };
    let same = |s: &Sweep| {
        if snapshot.is_some() {
            s.source_hash == recorded
        } else {
            s.legacy_source_hash == recorded
        }
    };
    match (given, snapshot) {
        // The originals are as they were (or gone): go on with the run's copy.
        (Some(s), Some(copy)) if same(&s) => Ok(plan_or_error(run.load_copy(copy))?),
        (None, Some(copy)) => Ok(plan_or_error(run.load_copy(copy))?),
        (Some(s), _) if same(&s) || args.allow_changed_sweep => {
            // A changed sweep (allowed), or a version-1 run directory that had no copy:
            // from now on the run directory keeps one.
            let plan = plan_or_error(Ok(s))?;
            let copy = run.keep_sweep(&plan.sweep, &run.next_copy_name())?;
            let source_hash = plan.sweep.source_hash.clone();
            journal
                .append(&Record::SweepChanged { snapshot: copy, source_hash, at: llem_common::util::now_rfc3339() })
                .context("cannot append to the journal")?;
            run.write_plan(&plan)?;
            Ok(plan)
        }
        (Some(s), _) => Err(Expected::SweepChanged { what: s.path.display().to_string() }.into()),
        // Version 1 without its original: its copy of the top file is all there is.
        (None, None) => Ok(plan_or_report(&run.path.join("sweep.yaml"))?),
    }
}

pub fn resume(args: &ResumeArgs) -> Result<u8, CommandError> {
    let (run, replay) = RunDir::open(&args.run_dir)?;
    repair_tail(&run.journal_path())?;
    let mut journal = Journal::append_to(&run.journal_path()).context("cannot open the journal")?;
    let plan = sweep_to_resume(&run, &replay, args, &mut journal)?;
    print_warnings(&plan);
    let (outcomes, attempts) = replay.outcomes();
    let mut failures: HashMap<String, u32> = replay.failures().into_iter().collect();
    let mut done: Vec<(String, Outcome)> = Vec::new();
    for (job, outcome) in outcomes {
        match outcome {
            // Run again with --retry-failed, with its retries afresh.
            Outcome::Failed { .. } | Outcome::Skipped if args.retry_failed => {
                failures.remove(&job);
            }
            o => done.push((job, o)),
        }
    }
    eprintln!("resuming {}: {} jobs already done", run.path.display(), done.len());
    let earlier = Earlier { done, attempts: attempts.into_iter().collect(), failures };
    // Local agents start where the run began, so relative model paths mean the same.
    let dir = match replay.header.working_dir.as_deref().map(PathBuf::from) {
        Some(d) if d.is_dir() => d,
        Some(d) => {
            let gone = d.display();
            eprintln!("warning: {gone}, where the run began, is gone: local agents start in this directory instead");
            working_dir()
        }
        None => working_dir(),
    };
    let options = ConnectOptions::new(&dir, args.accept_new_host_keys, Some(&run.id));
    release_leftovers(&plan, &run, &replay);
    let ending = run::dispatch(&plan, &run, journal, &earlier, &options)?;
    finish(&plan, &run, ending)
}

/// Cancels the Slurm allocations an earlier run of this directory left behind (its
/// coordinator was killed outright): their steps would hold GPUs for nothing.
fn release_leftovers(plan: &Plan, run: &RunDir, replay: &Replay) {
    let recorded = replay.allocations();
    let slurm = plan.sweep.nodes.iter().any(|n| matches!(n.transport, sweep::Transport::Slurm(_)));
    if recorded.is_empty() && !slurm {
        return;
    }
    for id in run::slurm::release_leftovers(&run.id, &recorded) {
        eprintln!("cancelled Slurm allocation {id}, which an earlier run of this directory left behind");
    }
}

pub fn status(args: &StatusArgs) -> Result<u8, CommandError> {
    let (run, replay) = RunDir::open(&args.run_dir)?;
    let plan_text = std::fs::read_to_string(run.path.join("plan.json")).context("cannot read plan.json")?;
    let plan: serde_json::Value = serde_json::from_str(&plan_text)?;
    let (outcomes, attempts) = replay.outcomes();
    let jobs: Vec<(String, &str, u32)> = plan["jobs"]
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
                    let used = attempts.get(&id).copied().unwrap_or(0);
                    Some((id, state, used))
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
        let all = serde_json::json!({"sweep": replay.header.sweep, "counts": counts, "jobs": list});
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: {} jobs — {} finished, {} failed, {} skipped, {} interrupted, {} pending",
            replay.header.sweep,
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

/// The plan a run directory was measured with, from its own copy of the sweep.
fn recorded_plan(run: &RunDir, replay: &Replay) -> Result<Plan, CommandError> {
    match replay.current_sweep().0 {
        Some(copy) => Ok(plan_or_error(run.load_copy(copy))?),
        // Journal version 1 kept only the top file.
        None => Ok(plan_or_report(&run.path.join("sweep.yaml"))?),
    }
}

pub fn report(args: &ReportArgs) -> Result<u8, CommandError> {
    let (run, replay) = RunDir::open(&args.run_dir)?;
    let plan = recorded_plan(&run, &replay)?;
    let (finished, _, index) = write_outputs(&plan, &run)?;
    writeln!(std::io::stdout().lock(), "{finished} finished jobs; report: {}", index.display())?;
    Ok(exit::OK)
}
