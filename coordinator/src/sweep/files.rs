//! The files a sweep is read from: where its references point (from the originals, or
//! from a run directory's copy of them), what is recorded for that copy, and the hash
//! resume compares. A copy keeps the files' layout under the deepest directory that
//! holds them all, so `base: ../base.yaml` means the same in the copy as it did in the
//! original tree, and the hash (each file named by its path under that directory) is the
//! same for both.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::SweepFile;

/// Reading from a run directory's copy instead of the originals.
#[derive(Debug, Clone)]
pub struct CopyOf {
    /// Where the copy is (`<run>/sweep`).
    pub copy_root: PathBuf,
    /// The directory it is a copy of.
    pub original_root: PathBuf,
}

#[derive(Debug)]
pub(super) struct Files {
    read: Vec<SweepFile>,
    legacy: Sha256,
    copy: Option<CopyOf>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Absolute and without `.`/`..` (symbolic links resolved where the path exists).
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(canonical) = path.canonicalize() {
        return canonical;
    }
    let joined =
        if path.is_absolute() { path.to_owned() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The deepest directory holding every one of `files`.
pub fn common_root(files: &[SweepFile]) -> PathBuf {
    let mut dirs = files.iter().map(|f| f.path.parent().unwrap_or(Path::new("/")).to_owned());
    let Some(mut root) = dirs.next() else { return PathBuf::from("/") };
    for dir in dirs {
        while !dir.starts_with(&root) {
            if !root.pop() {
                break;
            }
        }
    }
    root
}

/// sha256 over every file, named by its path under `root`, in reading order.
pub fn source_hash(files: &[SweepFile], root: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"llem-sweep-files-v2\n");
    for f in files {
        let name = f.path.strip_prefix(root).unwrap_or(&f.path);
        hasher.update(name.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(f.text.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Files {
    pub fn new(copy: Option<CopyOf>) -> Self {
        Files { read: Vec::new(), legacy: Sha256::new(), copy }
    }

    /// Where a sweep reference (`base:`, `nodes_file:`) written in `file` points: relative
    /// to that file; in a copy, an absolute reference into the original tree lands in the
    /// copy.
    pub fn resolve(&self, file: &Path, reference: &str) -> PathBuf {
        let target = Path::new(reference);
        match &self.copy {
            Some(c) if target.is_absolute() => {
                let key = target.canonicalize().unwrap_or_else(|_| target.to_owned());
                match key.strip_prefix(&c.original_root) {
                    Ok(rel) => c.copy_root.join(rel),
                    Err(_) => target.to_owned(),
                }
            }
            _ => file.parent().unwrap_or(Path::new("")).join(target),
        }
    }

    /// A path the sweep names for use outside it (an SSH key, known_hosts, an SSH
    /// config): `~/` is the home directory, and a relative path is relative to where the
    /// file naming it is — in the original tree, also when reading a copy.
    pub fn external(&self, file: &Path, reference: &str) -> PathBuf {
        if let (Some(rest), Some(home)) = (reference.strip_prefix("~/"), home()) {
            return home.join(rest);
        }
        let target = Path::new(reference);
        if target.is_absolute() {
            return target.to_owned();
        }
        let mut dir = absolute(file.parent().unwrap_or(Path::new(".")));
        if let Some(c) = &self.copy {
            if let Ok(rel) = dir.strip_prefix(absolute(&c.copy_root)) {
                dir = c.original_root.join(rel);
            }
        }
        absolute(&dir.join(target))
    }

    /// Records a file that was read.
    pub fn record(&mut self, path: &Path, text: &str) {
        self.legacy.update(path.to_string_lossy().as_bytes());
        self.legacy.update([0]);
        self.legacy.update(text.as_bytes());
        self.legacy.update([0]);
        self.read.push(SweepFile { path: absolute(path), text: text.to_owned() });
    }

    /// Every file read, their root, the hash, and the version-1 hash.
    pub fn finish(self) -> (Vec<SweepFile>, PathBuf, String, String) {
        let root = common_root(&self.read);
        let hash = source_hash(&self.read, &root);
        let legacy = self.legacy.finalize().iter().map(|b| format!("{b:02x}")).collect();
        (self.read, root, hash, legacy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> SweepFile {
        SweepFile { path: PathBuf::from(path), text: String::new() }
    }

    #[test]
    fn the_root_holds_every_file() {
        assert_eq!(common_root(&[file("/a/b/s.yaml"), file("/a/base.yaml")]), PathBuf::from("/a"));
        assert_eq!(common_root(&[file("/a/b/s.yaml")]), PathBuf::from("/a/b"));
        assert_eq!(common_root(&[file("/a/b/s.yaml"), file("/c/n.yaml")]), PathBuf::from("/"));
    }

    #[test]
    fn the_hash_does_not_depend_on_where_the_tree_is() {
        let at = |root: &str| {
            vec![
                SweepFile { path: PathBuf::from(format!("{root}/x/s.yaml")), text: "base: ../b.yaml\n".into() },
                SweepFile { path: PathBuf::from(format!("{root}/b.yaml")), text: "model: m\n".into() },
            ]
        };
        let (a, b) = (at("/home/u/sweeps"), at("/runs/r1/sweep"));
        assert_eq!(source_hash(&a, &common_root(&a)), source_hash(&b, &common_root(&b)));
        let mut c = at("/runs/r1/sweep");
        c[1].text.push_str("n_prompts: 2\n");
        assert_ne!(source_hash(&a, &common_root(&a)), source_hash(&c, &common_root(&c)));
    }

    #[test]
    fn references_from_a_copy_stay_in_the_copy_and_outside_paths_in_the_original() {
        let files = Files::new(Some(CopyOf {
            copy_root: PathBuf::from("/runs/r1/sweep"),
            original_root: PathBuf::from("/home/u/sweeps"),
        }));
        let top = Path::new("/runs/r1/sweep/x/s.yaml");
        assert_eq!(files.resolve(top, "../b.yaml"), PathBuf::from("/runs/r1/sweep/x/../b.yaml"));
        assert_eq!(files.resolve(top, "/home/u/sweeps/nodes.yaml"), PathBuf::from("/runs/r1/sweep/nodes.yaml"));
        assert_eq!(files.external(top, "keys/id"), PathBuf::from("/home/u/sweeps/x/keys/id"));
        assert_eq!(files.external(top, "/etc/ssh/k"), PathBuf::from("/etc/ssh/k"));
    }
}
