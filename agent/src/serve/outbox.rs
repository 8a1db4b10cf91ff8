//! The node-local outbox: `<state>/outbox/<run>/<job>/attempt-<n>/`, where every finished
//! attempt stays until the coordinator acknowledges it, and how an attempt is delivered:
//! each file in chunks of [`CHUNK_BYTES`], then `finished` with the manifest (name, size,
//! sha256 of every file). The coordinator acknowledges only a delivery that matches its
//! manifest; anything else it asks for again (`resend`), so a partial send loses nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use llem_common::protocol::{
    is_safe_artifact_name, read_full, write_frame, ArtifactEntry, AttemptId, FromAgent, CHUNK_BYTES,
};
use llem_common::result::JobResult;
use sha2::{Digest, Sha256};

/// The protocol's output stream, shared by the threads that send.
/// The protocol's output: stdout as a plain file. Not `std::io::Stdout`, whose line
/// buffering splits a frame into two writes at any 0x0A byte of its length.
pub type Out = Arc<Mutex<std::fs::File>>;

/// Sends one message. A failed write means the coordinator is gone: the main loop sees
/// its input end and stops; whatever was being delivered stays in the outbox.
pub fn send(out: &Out, message: &FromAgent) {
    let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = write_frame(&mut *guard, message) {
        tracing::warn!("cannot send to the coordinator: {e}");
    }
}

/// A job id is `<16 hex>-c<cycle>`: checked before it names a directory.
pub fn safe_id(id: &AttemptId) -> bool {
    !id.job_id.is_empty() && id.job_id.len() <= 64 && id.job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// One run's outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    root: PathBuf,
    /// Held for the whole of one delivery: the chunks of two deliveries never interleave.
    delivering: Arc<Mutex<()>>,
}

impl Outbox {
    pub fn new(root: PathBuf) -> Self {
        Outbox { root, delivering: Arc::new(Mutex::new(())) }
    }

    pub fn attempt_dir(&self, id: &AttemptId) -> PathBuf {
        self.root.join(&id.job_id).join(format!("attempt-{}", id.attempt))
    }

    /// Drops an acknowledged attempt, and the directories it leaves empty.
    pub fn remove(&self, id: &AttemptId) {
        let _ = std::fs::remove_dir_all(self.attempt_dir(id));
        // Removing a directory that is not empty fails, which is what we want.
        let _ = std::fs::remove_dir(self.root.join(&id.job_id));
        let _ = std::fs::remove_dir(&self.root);
    }

    /// Sends a stored attempt: its files in chunks, then its result with the manifest.
    /// Returns false when it is not (or no longer) in the outbox.
    pub fn deliver(&self, out: &Out, id: &AttemptId) -> bool {
        let _one_at_a_time = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.attempt_dir(id);
        let Ok(text) = std::fs::read_to_string(dir.join("result.json")) else { return false };
        let result = match JobResult::from_json(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{}: {e}", dir.join("result.json").display());
                return false;
            }
        };
        let mut artifacts = Vec::new();
        for name in artifact_names(&dir) {
            match send_file(out, id, &dir.join(&name), &name) {
                Ok(entry) => artifacts.push(entry),
                Err(e) => {
                    // Listed all the same, as a file that cannot match: the coordinator
                    // then never acknowledges this delivery, and the attempt is not
                    // forgotten here without it.
                    tracing::warn!("cannot send {}: {e}", dir.join(&name).display());
                    artifacts.push(ArtifactEntry { name, bytes: u64::MAX, sha256: format!("unreadable: {e}") });
                }
            }
        }
        send(out, &FromAgent::Finished { id: id.clone(), result: Box::new(result), artifacts });
        true
    }

    /// Every attempt waiting for an acknowledgement.
    pub fn pending(&self) -> Vec<AttemptId> {
        let mut ids = Vec::new();
        for job in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            for attempt in std::fs::read_dir(job.path()).into_iter().flatten().flatten() {
                let n = attempt.file_name().to_str().and_then(|n| n.strip_prefix("attempt-")?.parse().ok());
                let id = n.map(|attempt| AttemptId { job_id: job.file_name().to_string_lossy().into_owned(), attempt });
                if let Some(id) = id.filter(|id| safe_id(id) && attempt.path().join("result.json").exists()) {
                    ids.push(id);
                }
            }
        }
        ids.sort_by(|a, b| (&a.job_id, a.attempt).cmp(&(&b.job_id, b.attempt)));
        ids
    }
}

/// The files of an attempt that travel: regular files with plain names, but the result.
fn artifact_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "result.json" && is_safe_artifact_name(n))
        .collect();
    names.sort();
    names
}

/// Sends one file in chunks (an empty file is one empty chunk); returns its entry.
fn send_file(out: &Out, id: &AttemptId, path: &Path, name: &str) -> std::io::Result<ArtifactEntry> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n > 0 || offset == 0 {
            hasher.update(&buf[..n]);
            let base64 = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
            send(out, &FromAgent::ArtifactChunk { id: id.clone(), name: name.to_owned(), offset, base64 });
        }
        offset += n as u64;
        if n < buf.len() {
            break;
        }
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(ArtifactEntry { name: name.to_owned(), bytes: offset, sha256 })
}
