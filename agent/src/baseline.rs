//! Idle power per device, cached on disk so every job does not pay for it again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A measured baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CachedBaseline {
    pub power_w: f64,
    pub measured_at_unix: f64,
    pub duration_s: f64,
}

/// Where baselines are kept (a directory in production, memory in tests).
pub trait BaselineStore {
    fn get(&self, key: &str) -> Option<CachedBaseline>;
    fn put(&self, key: &str, value: &CachedBaseline);
}

/// `<state>/baseline/<key>.json`, written temp → fsync → rename.
#[derive(Debug, Clone)]
pub struct FileBaselineStore {
    dir: PathBuf,
}

impl FileBaselineStore {
    pub fn new(state_dir: &std::path::Path) -> Self {
        FileBaselineStore { dir: state_dir.join("baseline") }
    }

    fn path(&self, key: &str) -> PathBuf {
        let safe: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.dir.join(format!("{safe}.json"))
    }
}

impl BaselineStore for FileBaselineStore {
    fn get(&self, key: &str) -> Option<CachedBaseline> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn put(&self, key: &str, value: &CachedBaseline) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            crate::fsutil::write_atomic(&self.path(key), serde_json::to_string_pretty(value)?.as_bytes())
        };
        if let Err(e) = write() {
            // A lost cache entry only costs a re-measurement next time.
            tracing::warn!("failed to cache the baseline in {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
pub mod memory {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::{BaselineStore, CachedBaseline};

    #[derive(Debug, Default)]
    pub struct MemoryStore(pub RefCell<HashMap<String, CachedBaseline>>);

    impl BaselineStore for MemoryStore {
        fn get(&self, key: &str) -> Option<CachedBaseline> {
            self.0.borrow().get(key).copied()
        }
        fn put(&self, key: &str, value: &CachedBaseline) {
            self.0.borrow_mut().insert(key.to_owned(), *value);
        }
    }
}
