//! What a command can end with, at the CLI edge: the errors a user can cause or meet,
//! each with its documented exit code (as cargo-nextest's `ExpectedError`), and anything
//! else, which is a bug or the machine's fault (exit 1).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | a run had failed jobs, a node check failed, or an unexpected error |
//! | 2 | bad input: the sweep file, the command line, a run directory that is not one, a sweep that changed since the run began |
//! | 130 | interrupted (Ctrl-C) |

use crate::exit;
use crate::run::rundir::RunDirError;

/// An error a user can cause or meet, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Expected {
    /// A sweep file with mistakes: every one, rendered at file:line:col.
    #[error("{rendered}")]
    Sweep { rendered: String },
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The sweep's files differ from the run directory's copy.
    #[error("{what} changed since this run started: its jobs may no longer be the ones measured\n  = help: pass --allow-changed-sweep to keep the finished jobs and run only new or changed ones")]
    SweepChanged { what: String },
}

impl Expected {
    pub fn exit_code(&self) -> u8 {
        match self {
            Expected::Sweep { .. } | Expected::SweepChanged { .. } => exit::BAD_INPUT,
            Expected::RunDir(
                RunDirError::NotARunDir { .. } | RunDirError::Journal { .. } | RunDirError::Create { .. },
            ) => exit::BAD_INPUT,
            Expected::RunDir(RunDirError::Write { .. }) => exit::RUN_FAILED,
        }
    }

    /// The message as stderr shows it.
    pub fn render(&self) -> String {
        match self {
            // Rendered diagnostics carry their own `error:` lines.
            Expected::Sweep { rendered } => rendered.clone(),
            other => format!("error: {other}\n"),
        }
    }
}

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Expected(#[from] Expected),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<RunDirError> for CommandError {
    fn from(e: RunDirError) -> Self {
        CommandError::Expected(Expected::RunDir(e))
    }
}

impl From<std::io::Error> for CommandError {
    fn from(e: std::io::Error) -> Self {
        CommandError::Unexpected(e.into())
    }
}

impl From<serde_json::Error> for CommandError {
    fn from(e: serde_json::Error) -> Self {
        CommandError::Unexpected(e.into())
    }
}

impl CommandError {
    /// Prints the error on stderr; returns the exit code.
    pub fn report(&self) -> u8 {
        match self {
            CommandError::Expected(e) => {
                eprint!("{}", e.render());
                e.exit_code()
            }
            CommandError::Unexpected(e) => {
                eprintln!("error: {e:#}");
                exit::RUN_FAILED
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_code() {
        let not_a_run = Expected::RunDir(RunDirError::NotARunDir { path: "/no/such".into() });
        assert_eq!(not_a_run.exit_code(), exit::BAD_INPUT);
        assert!(not_a_run.render().starts_with("error: /no/such is not a run directory"), "{}", not_a_run.render());
        assert_eq!(Expected::SweepChanged { what: "s.yaml".into() }.exit_code(), exit::BAD_INPUT);
        let unexpected = CommandError::Unexpected(anyhow::anyhow!("disk on fire"));
        assert!(!format!("{unexpected}").contains("failed to"));
    }
}
