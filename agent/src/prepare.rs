//! `prepare`: before any job of a model runs on this node, check that the model's files
//! are there and readable, and record their size and a fast checksum. A missing model is
//! then one clear message for all its jobs, not a failure per job after its baseline.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use llem_common::probe::ModelStatus;
use sha2::{Digest, Sha256};

/// Bytes from each end of every file that go into the fast checksum.
pub const EDGE_BYTES: u64 = 1 << 20;

/// Checks `model` (a file, or a folder of files, resolved against `base_dir` as a job's
/// model is).
pub fn check_model(base_dir: &Path, model: &str) -> ModelStatus {
    let path = base_dir.join(model);
    let shown = path.display().to_string();
    match fingerprint(&path) {
        Ok((bytes, files, fast_sha256)) => ModelStatus::Ready { path: shown, bytes, files, fast_sha256 },
        Err(reason) => ModelStatus::Unavailable { path: shown, reason },
    }
}

/// The regular files of a model: the file itself, or a folder's files (not hidden ones),
/// sorted by name.
fn model_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{} is an empty folder", path.display()));
    }
    Ok(files)
}

/// (total bytes, file count, sha256 over each file's name, size, first and last MiB).
fn fingerprint(path: &Path) -> Result<(u64, u32, String), String> {
    let files = model_files(path)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for file in &files {
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
        let mut f = std::fs::File::open(file).map_err(cannot)?;
        let size = f.metadata().map_err(cannot)?.len();
        hasher.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        hasher.update([0]);
        hasher.update(size.to_le_bytes());
        let mut edge = Vec::with_capacity(EDGE_BYTES as usize);
        (&mut f).take(EDGE_BYTES).read_to_end(&mut edge).map_err(cannot)?;
        hasher.update(&edge);
        if size > EDGE_BYTES {
            edge.clear();
            // The last MiB, where it does not overlap the first.
            f.seek(SeekFrom::Start(EDGE_BYTES.max(size - EDGE_BYTES))).map_err(cannot)?;
            f.read_to_end(&mut edge).map_err(cannot)?;
            hasher.update(&edge);
        }
        total += size;
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, files.len() as u32, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_a_folder_and_what_is_missing() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("m.gguf"), vec![7u8; 3 * EDGE_BYTES as usize]).expect("write");
        let ModelStatus::Ready { bytes, files, fast_sha256, .. } = check_model(dir.path(), "m.gguf") else {
            panic!("a readable file is ready")
        };
        assert_eq!((bytes, files), (3 * EDGE_BYTES, 1));
        // Cutting the end off a file changes the checksum.
        std::fs::write(dir.path().join("m.gguf"), vec![7u8; 2 * EDGE_BYTES as usize]).expect("write");
        let ModelStatus::Ready { fast_sha256: shorter, .. } = check_model(dir.path(), "m.gguf") else { panic!() };
        assert_ne!(fast_sha256, shorter);

        std::fs::create_dir(dir.path().join("hf")).expect("dir");
        std::fs::write(dir.path().join("hf").join("config.json"), "{}").expect("write");
        std::fs::write(dir.path().join("hf").join("model.safetensors"), "weights").expect("write");
        assert!(matches!(check_model(dir.path(), "hf"), ModelStatus::Ready { files: 2, bytes: 9, .. }));

        match check_model(dir.path(), "nope.gguf") {
            ModelStatus::Unavailable { reason, .. } => assert!(reason.contains("No such file"), "{reason}"),
            ready => panic!("a missing model is not ready: {ready:?}"),
        }
        std::fs::create_dir(dir.path().join("empty")).expect("dir");
        assert!(!check_model(dir.path(), "empty").is_ready());
    }
}
