//! The builds of the agent a node keeps (`~/.cache/llem/bin/llem-agent-<version>-<hash>`,
//! one per coordinator build that reached it), and how old ones go: `llem-agent
//! prune-builds` keeps the newest few and never one in use. An agent in use holds a
//! shared lock on its own binary for as long as it serves; pruning takes an exclusive
//! lock before it removes a file, so it can never remove a build an agent runs.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Temp files of an upload that did not finish are removed once this old.
const STALE_UPLOAD_S: u64 = 3600;

/// A shared lock on this process's own binary, held while it serves.
#[derive(Debug)]
pub struct InUse(#[allow(dead_code)] File);

/// Marks this agent's binary as in use until the returned guard drops (best effort: a
/// binary that cannot be opened is simply not protected).
pub fn hold_own_binary() -> Option<InUse> {
    let exe = std::env::current_exe().ok()?;
    let file = File::open(exe).ok()?;
    file.lock_shared().ok()?;
    Some(InUse(file))
}

/// What a prune did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub removed: Vec<PathBuf>,
    /// Old builds kept because an agent runs them.
    pub in_use: Vec<PathBuf>,
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Removes all but the `keep` newest builds in `dir` (by modification time; `current`,
/// this binary, always counts as kept), never one another agent holds.
pub fn prune(dir: &Path, keep: usize, current: Option<&Path>) -> std::io::Result<Pruned> {
    let mut builds: Vec<PathBuf> = Vec::new();
    let mut pruned = Pruned::default();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("llem-agent-") || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if name.contains(".tmp.") {
            let age = SystemTime::now().duration_since(modified(&path)).map_or(0, |d| d.as_secs());
            if age > STALE_UPLOAD_S && std::fs::remove_file(&path).is_ok() {
                pruned.removed.push(path);
            }
            continue;
        }
        if current.is_some_and(|c| c == path) {
            continue;
        }
        builds.push(path);
    }
    builds.sort_by_key(|p| std::cmp::Reverse(modified(p)));
    let others = keep.saturating_sub(usize::from(current.is_some()));
    for path in builds.into_iter().skip(others) {
        let Ok(file) = File::open(&path) else { continue };
        match file.try_lock() {
            Ok(()) => {
                std::fs::remove_file(&path)?;
                pruned.removed.push(path);
            }
            Err(TryLockError::WouldBlock) => pruned.in_use.push(path),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn build(dir: &Path, name: &str, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, name).expect("write");
        let when = SystemTime::now() - Duration::from_secs(age_s);
        File::options().write(true).open(&path).expect("open").set_modified(when).expect("mtime");
        path
    }

    #[test]
    fn keeps_the_newest_and_any_in_use() {
        let dir = tempfile::tempdir().expect("tmp");
        let current = build(dir.path(), "llem-agent-0.1.0-aaaaaa", 500);
        let newer = build(dir.path(), "llem-agent-0.1.0-bbbbbb", 10);
        let old = build(dir.path(), "llem-agent-0.1.0-cccccc", 100);
        let oldest = build(dir.path(), "llem-agent-0.1.0-dddddd", 200);
        let running = build(dir.path(), "llem-agent-0.1.0-eeeeee", 300);
        let stale_upload = build(dir.path(), "llem-agent-0.1.0-ffffff.tmp.123", 2 * STALE_UPLOAD_S);
        let fresh_upload = build(dir.path(), "llem-agent-0.1.0-ffffff.tmp.456", 1);
        let other = build(dir.path(), "notes.txt", 900);
        let holder = File::open(&running).expect("open");
        holder.lock_shared().expect("an agent runs this build");
        let pruned = prune(dir.path(), 3, Some(&current)).expect("prune");
        // Kept: this build and the two newest others; the running one is spared.
        assert!(current.exists() && newer.exists() && old.exists());
        assert!(!oldest.exists() && !stale_upload.exists());
        assert!(running.exists() && fresh_upload.exists() && other.exists());
        assert_eq!(pruned.in_use, vec![running.clone()]);
        drop(holder);
        // A process that another test forks in this instant shares `holder`'s open file,
        // and with it the lock, until it execs (close-on-exec closes it only then): an
        // exec is milliseconds, so a prune within 5 s must find the build free.
        let freed = Instant::now();
        while running.exists() && freed.elapsed() < Duration::from_secs(5) {
            prune(dir.path(), 3, Some(&current)).expect("prune");
            if running.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(!running.exists(), "once nothing runs it, it goes");
    }
}
