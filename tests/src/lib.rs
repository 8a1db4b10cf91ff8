//! Helpers for llem's end-to-end tests: find the real binaries, run them, compare output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// This crate's folder (`tests/`), where the malformed corpus lives.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary built from this workspace (`llem`, `llem-agent`), next to the test executable.
///
/// # Panics
/// When the binary was not built: `scripts/test` builds them before running tests
/// (`cargo build --workspace --bins`), since cargo only builds a package's binaries for
/// that package's own tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test does)",
        path.display()
    );
    path
}

/// Runs the coordinator with `args` in `cwd`.
pub fn llem(cwd: &Path, args: &[&str]) -> Output {
    Command::new(binary("llem"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("failed to start llem: {e}"))
}

/// Compares `actual` with the snapshot file at `path`; with `LLEM_BLESS=1` rewrites it.
///
/// # Panics
/// When they differ (showing both), or when the snapshot is missing and not blessing.
pub fn assert_snapshot(path: &Path, actual: &str) {
    if std::env::var_os("LLEM_BLESS").is_some() {
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("failed to read snapshot {} ({e}); run with LLEM_BLESS=1 to create it", path.display())
    });
    assert!(
        expected == actual,
        "snapshot {} differs (LLEM_BLESS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
