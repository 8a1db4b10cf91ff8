//! llem-common: the vocabulary shared by the coordinator (`llem`) and the agent
//! (`llem-agent`): experiment specs, the YAML reader with exact positions, diagnostics.
//! No runtime and no I/O beyond (de)serialising.

pub mod cli;
pub mod de;
pub mod diag;
pub mod failure;
pub mod probe;
pub mod protocol;
pub mod result;
pub mod serving;
pub mod spec;
pub mod util;
pub mod yaml;
