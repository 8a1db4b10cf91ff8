//! The agent as it travels to a node: this build's `llem-agent` without its debug
//! sections (the local build keeps its line tables for backtraces; the node's copy keeps
//! its symbol names), gzip-compressed on the wire where the node can unpack it, under a
//! name that carries the version and a content hash, so a node never runs another build
//! than the coordinator's. Made once per process: every node of a cluster gets the same
//! bytes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// How many builds a node keeps in `~/.cache/llem/bin` (the newest; builds in use by a
/// running agent are never removed).
pub const KEEP_BUILDS: u32 = 3;

/// One build, ready to upload.
#[derive(Debug)]
pub struct Payload {
    /// `llem-agent-<version>-<hash>`: the file name on the node.
    pub name: String,
    /// The stripped binary.
    pub stripped: Vec<u8>,
    /// `stripped`, gzip-compressed.
    pub gzip: Vec<u8>,
    /// Size of the local build.
    pub local_bytes: u64,
}

/// Why a payload could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot read the agent {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot compress the agent: {0}")]
    Compress(std::io::Error),
}

/// The payload of the agent at `agent`, made on first use.
pub fn payload(agent: &Path) -> Result<Arc<Payload>, PayloadError> {
    static MADE: Mutex<Vec<(PathBuf, Arc<Payload>)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, p)) = made.iter().find(|(path, _)| path == agent) {
        return Ok(Arc::clone(p));
    }
    let local =
        std::fs::read(agent).map_err(|source| PayloadError::Read { path: agent.display().to_string(), source })?;
    let hash: String = Sha256::digest(&local)[..6].iter().map(|b| format!("{b:02x}")).collect();
    let stripped = strip_debug(&local).unwrap_or_else(|e| {
        tracing::warn!("cannot strip {} ({e}): uploading it whole", agent.display());
        local.clone()
    });
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&stripped).map_err(PayloadError::Compress)?;
    let gzip = encoder.finish().map_err(PayloadError::Compress)?;
    let payload = Arc::new(Payload {
        name: format!("llem-agent-{}-{hash}", env!("CARGO_PKG_VERSION")),
        stripped,
        gzip,
        local_bytes: local.len() as u64,
    });
    tracing::info!(
        "agent for nodes: {} bytes built, {} stripped, {} compressed",
        payload.local_bytes,
        payload.stripped.len(),
        payload.gzip.len()
    );
    made.push((agent.to_owned(), Arc::clone(&payload)));
    Ok(payload)
}

/// An ELF file without its `.debug_*` sections (what `strip --strip-debug` removes).
/// Anything that is not an ELF file is an error, and the caller uploads it as it is.
pub fn strip_debug(elf: &[u8]) -> Result<Vec<u8>, object::build::Error> {
    let mut builder = object::build::elf::Builder::read(elf)?;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".zdebug_") {
            section.delete = true;
        }
    }
    builder.delete_orphans();
    let mut out = Vec::with_capacity(elf.len() / 4);
    builder.write(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stripped_agent_is_smaller_and_still_runs() {
        // scripts/test builds the binaries before the tests.
        let p = payload(&llem_tests::binary("llem-agent")).expect("payload");
        eprintln!("agent: {} bytes built, {} stripped, {} on the wire", p.local_bytes, p.stripped.len(), p.gzip.len());
        assert!(p.stripped.len() < p.local_bytes as usize, "{} of {}", p.stripped.len(), p.local_bytes);
        assert!(p.gzip.len() < p.stripped.len());
        let dir = tempfile::tempdir().expect("tmp");
        let copy = dir.path().join(&p.name);
        std::fs::write(&copy, &p.stripped).expect("write");
        let status = std::process::Command::new("chmod").arg("755").arg(&copy).status().expect("chmod");
        assert!(status.success());
        let out = std::process::Command::new(&copy).arg("--version").output().expect("run the stripped agent");
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn what_is_not_elf_is_not_stripped() {
        assert!(strip_debug(b"#!/bin/sh\necho hi\n").is_err());
    }
}
