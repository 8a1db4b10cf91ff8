//! Durable file writes (shared with the coordinator, in llem-common).

pub use llem_common::util::write_atomic;
