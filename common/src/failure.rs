//! Why a job attempt failed, as a type: set once where the failure happens (the engine,
//! the agent, the coordinator's session), carried in the protocol and the journal, and
//! read by the scheduler's one retry rule. Never recovered from message text.

use serde::{Deserialize, Serialize};

/// The kind of a failure. The message that goes with it is for people; decisions are
/// made on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The device or host ran out of memory. Not retried (it would fail again), and with
    /// `execution.monotone` the larger values of that configuration are skipped.
    OutOfMemory,
    /// Stopped on request (Ctrl-C, or a redundant attempt). Not a failure of the job:
    /// resume runs it again.
    Cancelled,
    /// The engine or the program failed while running. Retried.
    EngineError,
    /// Something did not happen in time (a server that never became ready). Retried.
    Timeout,
    /// The session to the agent ended while the attempt ran, or its files did not arrive
    /// intact. Retried.
    LostConnection,
    /// The job cannot run as written on this node: a bad id, a model that is not there,
    /// a sensor the job insists on that the node lacks. Not retried.
    BadJob,
    /// The agent was still busy with another attempt (a race between two coordinators, or
    /// a late report). Retried.
    Busy,
}

impl FailureKind {
    /// Whether running the attempt again may succeed.
    pub fn may_pass_on_retry(self) -> bool {
        match self {
            FailureKind::EngineError | FailureKind::Timeout | FailureKind::LostConnection | FailureKind::Busy => true,
            FailureKind::OutOfMemory | FailureKind::Cancelled | FailureKind::BadJob => false,
        }
    }

    /// Whether, along a monotone field, the larger values of the configuration are
    /// skipped after this failure (they need at least as much memory).
    pub fn skips_larger_values(self) -> bool {
        self == FailureKind::OutOfMemory
    }

    /// A few words for progress lines and summaries.
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::OutOfMemory => "out of memory",
            FailureKind::Cancelled => "cancelled",
            FailureKind::EngineError => "engine error",
            FailureKind::Timeout => "timed out",
            FailureKind::LostConnection => "connection lost",
            FailureKind::BadJob => "cannot run here",
            FailureKind::Busy => "agent busy",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_travel_as_snake_case() {
        assert_eq!(serde_json::to_string(&FailureKind::OutOfMemory).expect("json"), "\"out_of_memory\"");
        let back: FailureKind = serde_json::from_str("\"lost_connection\"").expect("parse");
        assert_eq!(back, FailureKind::LostConnection);
    }

    #[test]
    fn only_out_of_memory_skips_and_it_is_not_retried() {
        assert!(FailureKind::OutOfMemory.skips_larger_values() && !FailureKind::OutOfMemory.may_pass_on_retry());
        assert!(!FailureKind::EngineError.skips_larger_values() && FailureKind::EngineError.may_pass_on_retry());
        assert!(!FailureKind::Cancelled.may_pass_on_retry());
    }
}
