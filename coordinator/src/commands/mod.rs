//! What each subcommand does. Results go to stdout; diagnostics and logs to stderr.
//!
//! * `sweep_cmds.rs`: `validate`, `plan` (a sweep read, expanded and shown);
//! * `runs.rs`: `run`, `resume`, `status`, `report` (a run directory);
//! * `nodes.rs`: `nodes check`, `nodes deploy`.

use std::path::Path;

use llem_common::diag::{render_all, Diagnostic};
use llem_common::yaml::Sources;

use crate::cli::{Command, NodesCommand};
use crate::error::{CommandError, Expected};
use crate::plan::Plan;
use crate::sweep::{self, Sweep, SweepError};

mod nodes;
mod runs;
mod sweep_cmds;

/// Runs one subcommand; returns its exit code.
pub fn run(command: Command) -> Result<u8, CommandError> {
    match command {
        Command::Validate(args) => sweep_cmds::validate(&args),
        Command::Plan(args) => sweep_cmds::plan(&args),
        Command::Run(args) => runs::run(&args),
        Command::Resume(args) => runs::resume(&args),
        Command::Status(args) => runs::status(&args),
        Command::Report(args) => runs::report(&args),
        Command::Nodes(NodesCommand::Check(args)) => nodes::nodes(&args, false),
        Command::Nodes(NodesCommand::Deploy(args)) => nodes::nodes(&args, true),
    }
}

/// Expands and graphs a loaded sweep; on failure, every problem and where to show it.
fn plan_of_sweep(sweep: Result<Sweep, SweepError>) -> Result<Plan, (Sources, Vec<Diagnostic>)> {
    let sweep = sweep.map_err(|e| (e.sources, e.diagnostics))?;
    let sources = sweep.sources.clone();
    Plan::build(sweep).map_err(|d| (sources, d))
}

/// Loads, expands and graphs a sweep file; on failure returns the problems to show.
pub(crate) fn load_plan_diagnostics(path: &Path) -> Result<Plan, (Sources, Vec<Diagnostic>)> {
    plan_of_sweep(sweep::load(path))
}

/// The bad-input error that shows every problem of a sweep.
pub(crate) fn sweep_error(e: &SweepError) -> Expected {
    Expected::Sweep { rendered: render_all(&e.diagnostics, &e.sources) }
}

/// A sweep, or the bad-input error that shows every problem in it.
pub(crate) fn sweep_or_error(sweep: Result<Sweep, SweepError>) -> Result<Sweep, Expected> {
    sweep.map_err(|e| sweep_error(&e))
}

/// A plan, or the bad-input error that shows every problem of the sweep.
pub(crate) fn plan_or_error(sweep: Result<Sweep, SweepError>) -> Result<Plan, Expected> {
    plan_of_sweep(sweep)
        .map_err(|(sources, diagnostics)| Expected::Sweep { rendered: render_all(&diagnostics, &sources) })
}

/// Loads a plan from a sweep file, or the bad-input error that shows its problems.
pub(crate) fn plan_or_report(path: &Path) -> Result<Plan, Expected> {
    plan_or_error(sweep::load(path))
}

pub(crate) fn print_warnings(plan: &Plan) {
    for w in plan.sweep.warnings.iter().chain(&plan.expansion.warnings) {
        eprint!("{}", w.render_as("warning", &plan.sweep.sources));
    }
}
