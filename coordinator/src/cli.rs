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
