//! Receiving an attempt's files: chunks are appended to partial files under the
//! attempt's `.incoming/<session>/` as they arrive (memory stays flat, however large a
//! file), and `finished`'s manifest decides: every listed file complete, with its size and
//! sha256, or nothing is stored and the agent is asked to send it again. Names are
//! checked before they touch the disk: a plain file name of a planned job, nothing else.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use llem_common::protocol::{is_safe_artifact_name, ArtifactEntry, AttemptId};
use sha2::{Digest, Sha256};

/// A file being received.
#[derive(Debug)]
struct Partial {
    file: std::fs::File,
    bytes: u64,
    hasher: Sha256,
}

/// One delivery of one attempt, from one session.
#[derive(Debug, Default)]
struct Delivery {
    dir: PathBuf,
    files: HashMap<String, Partial>,
    /// Why this delivery cannot be complete (a chunk out of order, a write that failed).
    broken: Option<String>,
}

/// Deliveries in progress, per (slot, attempt): several sessions of one node may send
/// the same attempt at once (each re-sends the node's outbox), and they must not mix.
#[derive(Debug, Default)]
pub struct Inbox {
    deliveries: HashMap<(usize, AttemptId), Delivery>,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("refused artifact {name:?} of {job}: not a plain file name")]
    BadName { name: String, job: String },
    #[error("{0}")]
    Incomplete(String),
}

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Inbox {
    /// Appends one chunk. `attempt_dir` is where the attempt's files end up.
    pub fn chunk(
        &mut self,
        slot: usize,
        id: &AttemptId,
        attempt_dir: &Path,
        name: &str,
        offset: u64,
        base64: &str,
    ) -> Result<(), DeliveryError> {
        if !is_safe_artifact_name(name) {
            return Err(DeliveryError::BadName { name: name.to_owned(), job: id.job_id.clone() });
        }
        let delivery = self.deliveries.entry((slot, id.clone())).or_insert_with(|| {
            let dir = attempt_dir.join(".incoming").join(format!("slot-{slot}"));
            let _ = std::fs::remove_dir_all(&dir);
            Delivery { dir, ..Delivery::default() }
        });
        if delivery.broken.is_some() {
            return Ok(());
        }
        if let Err(why) = delivery.append(name, offset, base64) {
            delivery.broken = Some(why);
        }
        Ok(())
    }

    /// Ends a delivery with its manifest: on success the files are moved into
    /// `attempt_dir` (each fsynced, then renamed) and their names returned; otherwise
    /// nothing of it is kept.
    pub fn complete(
        &mut self,
        slot: usize,
        id: &AttemptId,
        attempt_dir: &Path,
        manifest: &[ArtifactEntry],
    ) -> Result<Vec<String>, DeliveryError> {
        let delivery = self.deliveries.remove(&(slot, id.clone())).unwrap_or_default();
        let outcome = delivery.check(id, manifest).and_then(|()| delivery.store(attempt_dir, manifest));
        if !delivery.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&delivery.dir);
        }
        let _ = std::fs::remove_dir(attempt_dir.join(".incoming"));
        outcome
    }

    /// Drops the deliveries of a session that ended (their agents send them again).
    pub fn forget_slot(&mut self, slot: usize) {
        self.deliveries.retain(|(s, _), d| {
            if *s == slot {
                let _ = std::fs::remove_dir_all(&d.dir);
            }
            *s != slot
        });
    }
}

impl Delivery {
    fn append(&mut self, name: &str, offset: u64, base64: &str) -> Result<(), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| format!("a chunk of {name} is not base64: {e}"))?;
        if !self.files.contains_key(name) {
            std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
            let path = self.dir.join(name);
            let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            self.files.insert(name.to_owned(), Partial { file, bytes: 0, hasher: Sha256::new() });
        }
        let partial = self.files.get_mut(name).ok_or("no partial file")?;
        if offset != partial.bytes {
            return Err(format!("{name}: a chunk at byte {offset} came after {} bytes", partial.bytes));
        }
        partial.file.write_all(&bytes).map_err(|e| format!("cannot write {name}: {e}"))?;
        partial.hasher.update(&bytes);
        partial.bytes += bytes.len() as u64;
        Ok(())
    }

    fn check(&self, id: &AttemptId, manifest: &[ArtifactEntry]) -> Result<(), DeliveryError> {
        if let Some(why) = &self.broken {
            return Err(DeliveryError::Incomplete(why.clone()));
        }
        for entry in manifest {
            if !is_safe_artifact_name(&entry.name) {
                return Err(DeliveryError::BadName { name: entry.name.clone(), job: id.job_id.clone() });
            }
            let Some(p) = self.files.get(&entry.name) else {
                return Err(DeliveryError::Incomplete(format!("{} did not arrive", entry.name)));
            };
            if p.bytes != entry.bytes {
                return Err(DeliveryError::Incomplete(format!(
                    "{} arrived with {} of its {} bytes",
                    entry.name, p.bytes, entry.bytes
                )));
            }
            let actual = hex(p.hasher.clone().finalize());
            if actual != entry.sha256 {
                return Err(DeliveryError::Incomplete(format!(
                    "{} is corrupt: sha256 {actual}, expected {}",
                    entry.name, entry.sha256
                )));
            }
        }
        Ok(())
    }

    fn store(&self, attempt_dir: &Path, manifest: &[ArtifactEntry]) -> Result<Vec<String>, DeliveryError> {
        let io = |what: String| move |e: std::io::Error| DeliveryError::Incomplete(format!("{what}: {e}"));
        for entry in manifest {
            let partial = &self.files[&entry.name];
            partial.file.sync_all().map_err(io(format!("cannot sync {}", entry.name)))?;
            let target = attempt_dir.join(&entry.name);
            std::fs::rename(self.dir.join(&entry.name), &target)
                .map_err(io(format!("cannot store {}", target.display())))?;
        }
        std::fs::File::open(attempt_dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("cannot sync {}", attempt_dir.display())))?;
        Ok(manifest.iter().map(|e| e.name.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> AttemptId {
        AttemptId { job_id: "0123456789abcdef-c1".into(), attempt: 1 }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn entry(name: &str, bytes: &[u8]) -> ArtifactEntry {
        ArtifactEntry { name: name.into(), bytes: bytes.len() as u64, sha256: hex(Sha256::digest(bytes)) }
    }

    #[test]
    fn chunks_in_order_make_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut inbox = Inbox::default();
        inbox.chunk(0, &id(), dir.path(), "out.bin", 0, &b64(b"hello ")).expect("chunk");
        inbox.chunk(0, &id(), dir.path(), "out.bin", 6, &b64(b"world")).expect("chunk");
        inbox.chunk(0, &id(), dir.path(), "empty.txt", 0, "").expect("chunk");
        let stored = inbox
            .complete(0, &id(), dir.path(), &[entry("out.bin", b"hello world"), entry("empty.txt", b"")])
            .expect("ok");
        assert_eq!(stored, ["out.bin", "empty.txt"]);
        assert_eq!(std::fs::read(dir.path().join("out.bin")).expect("read"), b"hello world");
        assert!(!dir.path().join(".incoming").exists(), "nothing partial left");
    }

    #[test]
    fn a_missing_chunk_a_short_file_or_a_bad_checksum_stores_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut inbox = Inbox::default();
        inbox.chunk(0, &id(), dir.path(), "out.bin", 6, &b64(b"world")).expect("chunk");
        let err = inbox.complete(0, &id(), dir.path(), &[entry("out.bin", b"hello world")]).expect_err("gap");
        assert!(err.to_string().contains("came after 0 bytes"), "{err}");
        inbox.chunk(0, &id(), dir.path(), "out.bin", 0, &b64(b"hello")).expect("chunk");
        let err = inbox.complete(0, &id(), dir.path(), &[entry("out.bin", b"hello world")]).expect_err("short");
        assert!(err.to_string().contains("5 of its 11 bytes"), "{err}");
        inbox.chunk(0, &id(), dir.path(), "out.bin", 0, &b64(b"hellO world")).expect("chunk");
        let err = inbox.complete(0, &id(), dir.path(), &[entry("out.bin", b"hello world")]).expect_err("corrupt");
        assert!(err.to_string().contains("is corrupt"), "{err}");
        assert!(!dir.path().join("out.bin").exists());
        let err = inbox.complete(0, &id(), dir.path(), &[entry("never.bin", b"x")]).expect_err("missing");
        assert!(err.to_string().contains("did not arrive"), "{err}");
    }

    #[test]
    fn two_sessions_sending_one_attempt_do_not_mix() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut inbox = Inbox::default();
        inbox.chunk(0, &id(), dir.path(), "f", 0, &b64(b"ab")).expect("chunk");
        inbox.chunk(1, &id(), dir.path(), "f", 0, &b64(b"ab")).expect("chunk");
        inbox.chunk(0, &id(), dir.path(), "f", 2, &b64(b"cd")).expect("chunk");
        inbox.chunk(1, &id(), dir.path(), "f", 2, &b64(b"cd")).expect("chunk");
        assert!(inbox.complete(1, &id(), dir.path(), &[entry("f", b"abcd")]).is_ok());
        assert!(inbox.complete(0, &id(), dir.path(), &[entry("f", b"abcd")]).is_ok());
    }

    #[test]
    fn names_that_escape_are_refused_before_touching_the_disk() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut inbox = Inbox::default();
        for bad in ["../../x", "/tmp/abs", ".hidden", "a/b"] {
            assert!(matches!(
                inbox.chunk(0, &id(), dir.path(), bad, 0, &b64(b"x")),
                Err(DeliveryError::BadName { .. })
            ));
        }
        assert!(!dir.path().join(".incoming").exists());
    }
}
