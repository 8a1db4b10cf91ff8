//! llem, the coordinator: sweep file → validated sweep → expanded jobs → dependency graph
//! → schedule → dispatch → journal → store → report.

use std::process::ExitCode;

use clap::Parser;

pub mod cli;
mod commands;
pub mod error;
pub mod expand;
pub mod plan;
pub mod run;
pub mod scheduler;
pub mod sweep;

pub use llem_common::cli::exit;

/// Entry point of the `llem` binary.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    llem_common::cli::init_logging(cli.verbose, "warn", false);
    match commands::run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(err) => ExitCode::from(err.report()),
    }
}
