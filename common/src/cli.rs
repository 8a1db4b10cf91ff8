//! What both binaries' command lines share: exit codes and logging to stderr.

/// Exit codes (documented in the README and in `--help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUN_FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const INTERRUPTED: u8 = 130;
}

/// Logs to stderr (stdout is for results, and the agent's is the protocol): `quiet` level
/// by default, debug with `-v`, trace with `-vv`; `RUST_LOG` overrides. Colour only on a
/// terminal.
pub fn init_logging(verbose: u8, quiet: &str, timestamps: bool) {
    let default = match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if timestamps { builder.try_init() } else { builder.without_time().try_init() };
}
