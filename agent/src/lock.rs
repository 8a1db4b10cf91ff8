//! The exclusive per-device lock: `flock` on `<state>/locks/<device>.lock`. A second job
//! on the same device waits, and says who holds it. The kernel drops the lock when the
//! holder exits, however it exits, so a crashed agent never leaves a device locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct DeviceLock {
    file: File,
    pub path: PathBuf,
    /// Whether we had to wait for another holder.
    pub waited: bool,
}

impl DeviceLock {
    /// Takes the lock of `device` (`cpu`, `gpu-0`), waiting while another job holds it.
    pub fn acquire(state_dir: &Path, device: &str, job_id: &str) -> std::io::Result<DeviceLock> {
        let dir = state_dir.join("locks");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{device}.lock"));
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        let waited = match file.try_lock() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                tracing::warn!(
                    "waiting for the lock on {device} ({}), held by {}",
                    path.display(),
                    if holder.trim().is_empty() { "another job".to_owned() } else { holder.trim().to_owned() }
                );
                file.lock()?;
                true
            }
            Err(TryLockError::Error(e)) => return Err(e),
        };
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {} job {job_id}", std::process::id())?;
        tracing::info!("lock on {device} acquired");
        Ok(DeviceLock { file, path, waited })
    }
}

impl Drop for DeviceLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_blocks_until_release() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = DeviceLock::acquire(dir.path(), "gpu-0", "a").expect("lock");
        assert!(!first.waited);
        let other = OpenOptions::new().read(true).write(true).open(&first.path).expect("open");
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        assert_eq!(
            std::fs::read_to_string(&first.path).expect("read").trim(),
            format!("pid {} job a", std::process::id())
        );
        drop(first);
        other.try_lock().expect("free after release");
    }
}
