//! llem-agent: runs on a node; owns sensors, the device lock and the engines.
//!
//! Its stdout is the protocol when serving a coordinator; logs always go to stderr.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

pub mod baseline;
pub mod builds;
pub mod cli;
pub mod clock;
pub mod cuda;
pub mod energy;
pub mod fsutil;
pub mod lock;
pub mod prepare;
pub mod probe;
pub mod requests;
pub mod run;
pub mod sampler;
pub mod sampler_cost;
pub mod sensor;
pub mod sequence;
pub mod serve;
pub mod serving;
pub mod timeseries;
pub mod warnings;
pub mod workload;

use llem_common::cli::exit::{BAD_INPUT as EXIT_BAD_INPUT, RUN_FAILED as EXIT_RUN_FAILED};

/// Entry point of the `llem-agent` binary.
pub fn main() -> ExitCode {
    // Before anything else: a CUDA build that found its libraries outside the loader's
    // path runs itself again with them on it (the loader reads LD_LIBRARY_PATH only at start).
    cuda::reexec_with_library_path();
    let cli = cli::Cli::parse();
    llem_common::cli::init_logging(cli.verbose, "info", true);
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    }
}

fn dispatch(command: cli::Command) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    match command {
        cli::Command::Probe { json, sampler_cost } => {
            let mut report = probe::probe();
            if let Some(seconds) = sampler_cost {
                report.sampler_cost = probe::sampler_costs(&report, 10.0, seconds);
            }
            if json {
                serde_json::to_writer_pretty(&mut stdout, &report)?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", probe::render(&report))?;
            }
            Ok(0)
        }
        cli::Command::Serve { stdio: _, state_dir } => {
            drop(stdout);
            let state = state_dir.unwrap_or_else(run::default_state_dir);
            // While it serves, `prune-builds` leaves this binary alone.
            let _in_use = builds::hold_own_binary();
            // A local agent shares the terminal's process group: Ctrl-C reaches it as well
            // as the coordinator. The coordinator cancels the job over the protocol and ends
            // the session; dying here instead would skip stopping the job's server cleanly.
            let _ = ctrlc::set_handler(|| tracing::info!("interrupt: the coordinator stops the job"));
            serve::serve(&state, Path::new("."))?;
            Ok(0)
        }
        cli::Command::PruneBuilds { keep } => {
            let exe = std::env::current_exe()?;
            let dir = exe.parent().unwrap_or(Path::new("."));
            let pruned = builds::prune(dir, keep, Some(&exe))?;
            for p in &pruned.removed {
                tracing::info!("removed {}", p.display());
            }
            for p in &pruned.in_use {
                tracing::info!("kept {}: an agent runs it", p.display());
            }
            Ok(0)
        }
        cli::Command::Run(args) => {
            let text = match std::fs::read_to_string(&args.job) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("error: failed to read `{}`: {e}", args.job.display());
                    return Ok(EXIT_BAD_INPUT);
                }
            };
            let spec = match llem_common::spec::experiment_from_yaml(&args.job.display().to_string(), &text) {
                Ok(spec) => spec,
                Err((sources, diagnostics)) => {
                    eprint!("{}", llem_common::diag::render_all(&diagnostics, &sources));
                    return Ok(EXIT_BAD_INPUT);
                }
            };
            let job_id = args.job_id.unwrap_or_else(|| llem_common::spec::job_id(&spec.hash(), 1));
            let state_dir = args.state_dir.unwrap_or_else(run::default_state_dir);
            // Relative model and dataset paths are relative to the working directory, as in
            // sweep files run from the repository root.
            // Ctrl-C stops the job cleanly: the engine ends, a server it started is stopped.
            let cancel = workload::Cancel::default();
            let on_signal = cancel.clone();
            let _ = ctrlc::set_handler(move || on_signal.request());
            let result = match run::run_job(&spec, &job_id, Path::new("."), &args.out, &state_dir, cancel) {
                Ok(result) => result,
                Err(e) if e.kind == llem_common::failure::FailureKind::Cancelled => {
                    eprintln!("error: {e}");
                    return Ok(llem_common::cli::exit::INTERRUPTED);
                }
                Err(e) => return Err(e.into()),
            };
            let e = &result.energy;
            let joules = e.total_j.map_or_else(|| "not measured".to_owned(), |j| format!("{j:.2} J ({})", e.source));
            writeln!(
                stdout,
                "{job_id}: {:.2} s, {} output tokens, energy {joules}; {}",
                result.duration_s,
                result.tokens.output,
                args.out.join("result.json").display()
            )?;
            for w in &result.warnings {
                tracing::warn!("{}: {}", w.code, w.message);
            }
            Ok(0)
        }
    }
}
