//! The `llem` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// llem measures the energy of LLM inference, from one laptop to a GPU cluster.
///
/// Write a sweep file (models × batch sizes × precisions × token lengths …), check it
/// with `llem validate`, see exactly what will run with `llem plan`.
///
/// Exit codes: 0 ok · 1 a run failed · 2 bad input (the file or the command line) ·
/// 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "llem", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log detail on stderr (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check sweep files and report every mistake at once, with file:line:col.
    ///
    /// Checks the YAML, every field's type and range, the rules between fields, every
    /// point of the grid, `include`/`exclude` entries, nodes and the dependency graph.
    ///
    /// Example: llem validate sweeps/*.yaml
    Validate(ValidateArgs),

    /// Show the jobs a sweep expands to: order, ids, swept values, nodes.
    ///
    /// Job ids are content hashes of each fully resolved experiment plus its cycle, so the
    /// same sweep always gives the same ids (reordering keys changes none; changing a value
    /// changes exactly the jobs it touches).
    ///
    /// Examples:
    ///   llem plan sweeps/quickstart.yaml
    ///   llem plan --summary big-sweep.yaml
    ///   llem plan --json sweeps/gpu-grid.yaml | jq '.jobs[].id'
    Plan(PlanArgs),

    /// Measure every job of a sweep on this machine's agents; write the run directory.
    ///
    /// Creates runs/<sweep>-<utc>/ with the journal, every attempt's result.json and
    /// timeseries.parquet, results.parquet and summary.md/csv. Ctrl-C cancels running jobs
    /// cleanly and exits 130 (a second Ctrl-C exits at once); `llem resume` continues.
    ///
    /// Example: llem run sweeps/quickstart.yaml
    Run(RunArgs),

    /// Continue an interrupted run: finished jobs are kept, the rest run.
    ///
    /// The run directory holds a copy of every file the sweep read, so resume works from
    /// any directory, even after the files moved. While the original files are still
    /// where they were (or the file given with --sweep), resume compares them with the
    /// copy and refuses when they differ, unless --allow-changed-sweep (then only new or
    /// changed jobs run, and the run keeps a copy of the changed files).
    ///
    /// Examples:
    ///   llem resume runs/quickstart-20261201080000
    ///   llem resume --sweep sweeps/quickstart.yaml --allow-changed-sweep runs/quickstart-20261201080000
    Resume(ResumeArgs),

    /// Show how far a run got: counts and each job's state.
    ///
    /// Example: llem status --json runs/quickstart-20261201080000 | jq .counts
    Status(StatusArgs),

    /// Write results.parquet and report/ (index.html with plots, summary.md, summary.csv)
    /// for a run directory (`llem run` does this at the end).
    Report(ReportArgs),

    /// The nodes of a sweep: check what each has, or install the agent on them.
    #[command(subcommand)]
    Nodes(NodesCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Connect to every node: GPUs, driver, energy sources, agent version, round-trip time.
    ///
    /// Example: llem nodes check sweeps/cluster.yaml
    Check(NodesArgs),
    /// Install this llem-agent on every node (llem run does it on connect when missing).
    Deploy(NodesArgs),
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// The sweep file whose nodes to use.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,

    /// Accept SSH host keys not yet in known_hosts (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory.
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sweep file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Where run directories are created.
    #[arg(long, value_name = "DIR", default_value = "runs")]
    pub runs_dir: PathBuf,

    /// Accept SSH host keys not yet in known_hosts (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run directory (runs/<sweep>-<utc>).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,

    /// Compare with (and, allowed, continue with) this sweep file instead of the
    /// original files [default: the originals, where they still are].
    #[arg(long, value_name = "FILE")]
    pub sweep: Option<PathBuf>,

    /// Continue even though the sweep file changed: only new or changed jobs run.
    #[arg(long)]
    pub allow_changed_sweep: bool,

    /// Run the jobs that failed again (with new attempt numbers).
    #[arg(long)]
    pub retry_failed: bool,

    /// Accept SSH host keys not yet in known_hosts (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run directory.
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Sweep files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Print the outcome as JSON on stdout (errors with file, line, column).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The sweep file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print the plan as JSON: {"sweep", "counts", "jobs": [{"id", "cycle", "spec", …}],
    /// "graph": {"nodes", "edges"}}.
    #[arg(long)]
    pub json: bool,

    /// Print only the counts (for huge sweeps). With --json, as JSON.
    #[arg(long)]
    pub summary: bool,
}
