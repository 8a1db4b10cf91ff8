//! llem-agent: runs on a node; owns sensors, the GPU lock and the engines.

use std::process::ExitCode;

/// Entry point of the `llem-agent` binary.
pub fn main() -> ExitCode {
    eprintln!("llem-agent {}: nothing to do yet", env!("CARGO_PKG_VERSION"));
    ExitCode::from(2)
}
