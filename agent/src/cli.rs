//! The `llem-agent` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// llem-agent runs on a measured node: it owns the energy sensors, the per-device lock and
/// the engines, and runs the locked sequence baseline → load → warmup → thermal floor →
/// measure. The coordinator (`llem`) starts it; it can also be used directly.
///
/// Exit codes: 0 ok · 1 the run failed · 2 bad input.
#[derive(Debug, Parser)]
#[command(name = "llem-agent", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log detail on stderr (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this node has and can measure, and why not.
    ///
    /// Lists the OS, CPU, memory, GPUs (through NVML) and each energy source (nvml, rapl,
    /// none) with its availability and the reason when unavailable.
    Probe {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Also measure what sampling costs: run the sampler at 10 Hz on each available
        /// sensor for SECONDS and report its thread's CPU time per sample.
        #[arg(long, value_name = "SECONDS")]
        sampler_cost: Option<f64>,
    },

    /// Serve a coordinator over stdin/stdout (how `llem run` drives agents).
    ///
    /// stdout carries protocol frames only (docs/protocol.md); logs go to stderr.
    Serve {
        /// Speak the protocol on stdin/stdout.
        #[arg(long, required = true)]
        stdio: bool,
        /// Locks, cached baselines and the outbox [default: $LLEM_STATE_DIR, else
        /// ~/.cache/llem/agent].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },

    /// Remove older agent builds from the directory this binary is in, keeping the
    /// newest N (this one among them) and any that a running agent uses.
    ///
    /// `llem` runs it on a node after installing a new build there.
    PruneBuilds {
        /// How many builds to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },

    /// Run one experiment through the full locked sequence.
    ///
    /// FILE holds one experiment in the sweep-file field names (no `sweep:`), e.g.
    ///
    ///   model: synthetic
    ///   engine: synthetic
    ///   n_prompts: 20
    ///   max_output_tokens: 100
    ///
    /// Leaves result.json and timeseries.parquet in DIR.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment (YAML).
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,

    /// Where result.json and timeseries.parquet go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Locks and cached baselines [default: $LLEM_STATE_DIR, else ~/.cache/llem/agent].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The job's id in result.json [default: the spec's content hash, cycle 1].
    #[arg(long)]
    pub job_id: Option<String>,
}
