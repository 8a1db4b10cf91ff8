//! Where this node's CUDA user-space libraries are, the way users have them: on
//! `LD_LIBRARY_PATH`, in the loader's cache (`ldconfig -p`), in a CUDA toolkit, or in a
//! Python environment's `nvidia/*/lib` (what torch and vLLM install). The agent loads them
//! at run time (cudarc's dynamic loading), so one binary starts on every node; `probe`
//! says which were found, and a `cuda` job without them fails saying so, never by a panic.

use std::path::{Path, PathBuf};

pub use llem_common::probe::{CudaLibrary, CudaStatus};

/// What a GPU job of the candle engine loads (CUDA 13).
pub const LIBRARIES: &[(&str, &str)] = &[
    ("libcuda.so.1", "the NVIDIA driver"),
    ("libcublas.so.13", "cuBLAS"),
    ("libcublasLt.so.13", "cuBLASLt"),
    ("libcurand.so.10", "cuRAND"),
    ("libnvrtc.so.13", "NVRTC"),
];

/// Set on the agent's own re-execution, so it happens once.
const REEXEC_ENV: &str = "LLEM_CUDA_LIBRARY_PATH_SET";

/// Directories to search, each with where it came from, in order.
fn search_dirs() -> Vec<(PathBuf, &'static str)> {
    let mut dirs: Vec<(PathBuf, &'static str)> = Vec::new();
    for d in std::env::var("LD_LIBRARY_PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        dirs.push((PathBuf::from(d), "LD_LIBRARY_PATH"));
    }
    for d in ldconfig_dirs() {
        dirs.push((d, "ldconfig"));
    }
    let mut toolkits: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"].iter().filter_map(|v| std::env::var_os(v).map(PathBuf::from)).collect();
    toolkits.push(PathBuf::from("/usr/local/cuda"));
    for t in toolkits {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            dirs.push((t.join(sub), "CUDA toolkit"));
        }
    }
    for site in site_packages() {
        for package in children(&site.join("nvidia")) {
            dirs.push((package.join("lib"), "Python nvidia packages"));
        }
    }
    dirs
}

/// The directories of the loader's cache (`ldconfig -p`), for the libraries we need.
fn ldconfig_dirs() -> Vec<PathBuf> {
    let Ok(out) = std::process::Command::new("ldconfig").arg("-p").output() else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((name, path)) = line.trim().split_once(" => ") else { continue };
        if LIBRARIES.iter().any(|(lib, _)| name.starts_with(lib)) {
            if let Some(dir) = Path::new(path).parent().map(Path::to_path_buf).filter(|d| !dirs.contains(d)) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    out.sort();
    out
}

/// `site-packages`/`dist-packages` of the Python environments users commonly have.
fn site_packages() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> =
        ["VIRTUAL_ENV", "CONDA_PREFIX"].iter().filter_map(|v| std::env::var_os(v).map(PathBuf::from)).collect();
    prefixes.extend(["/usr", "/usr/local", "/opt/conda"].iter().map(PathBuf::from));
    if let Some(h) = &home {
        prefixes.push(h.join(".local"));
        prefixes.extend(children(&h.join(".pyenv").join("versions")));
    }
    let mut sites = Vec::new();
    for prefix in prefixes {
        for lib in children(&prefix.join("lib"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")))
        {
            for name in ["site-packages", "dist-packages"] {
                let site = lib.join(name);
                if site.is_dir() {
                    sites.push(site);
                }
            }
        }
    }
    sites
}

/// The version a library file's real name carries (`libcublas.so.13.1.0.3` → `13.1.0.3`).
fn version_of(path: &Path, name: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let file = real.file_name()?.to_string_lossy().into_owned();
    let stem = name.split(".so").next()?;
    file.strip_prefix(&format!("{stem}.so.")).map(str::to_owned)
}

/// Finds every library; says whether a `cuda` job can run.
pub fn status() -> CudaStatus {
    let built_with_cuda = cfg!(feature = "cuda");
    let dirs = search_dirs();
    let libraries: Vec<CudaLibrary> = LIBRARIES
        .iter()
        .map(|(name, purpose)| {
            let hit = dirs.iter().find(|(d, _)| d.join(name).exists());
            CudaLibrary {
                name: (*name).to_owned(),
                purpose: (*purpose).to_owned(),
                path: hit.map(|(d, _)| d.join(name).display().to_string()),
                version: hit.and_then(|(d, _)| version_of(&d.join(name), name)),
                found_in: hit.map(|(_, from)| (*from).to_owned()),
            }
        })
        .collect();
    let missing: Vec<String> =
        libraries.iter().filter(|l| l.path.is_none()).map(|l| format!("{} ({})", l.name, l.purpose)).collect();
    let (usable, detail) = if !built_with_cuda {
        (
            false,
            "this agent was built without CUDA: scripts/build-agent builds one that runs on CPU and GPU nodes"
                .to_owned(),
        )
    } else if !missing.is_empty() {
        (
            false,
            format!(
                "missing {}: not on LD_LIBRARY_PATH, in the loader's cache, a CUDA toolkit (CUDA_HOME, /usr/local/cuda) or a Python environment's nvidia packages (pip install nvidia-cublas nvidia-curand nvidia-cuda-nvrtc)",
                missing.join(", ")
            ),
        )
    } else {
        (true, "every CUDA library a GPU job loads was found".to_owned())
    };
    CudaStatus { built_with_cuda, libraries, usable, detail }
}

/// The directories of found libraries that the dynamic loader would not search by itself.
fn extra_dirs(status: &CudaStatus) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for l in &status.libraries {
        let outside = matches!(l.found_in.as_deref(), Some("CUDA toolkit" | "Python nvidia packages"));
        if let (true, Some(dir)) = (outside, l.path.as_deref().and_then(|p| Path::new(p).parent())) {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_owned());
            }
        }
    }
    dirs
}

/// A CUDA build found libraries in a toolkit or a Python environment, where the dynamic
/// loader does not look: it runs itself again with them on `LD_LIBRARY_PATH` (the loader
/// reads it only at start). Returns only when nothing needed doing (or the exec failed).
pub fn reexec_with_library_path() {
    if !cfg!(feature = "cuda") || std::env::var_os(REEXEC_ENV).is_some() {
        return;
    }
    let dirs = extra_dirs(&status());
    if dirs.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut path: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    path.extend(std::env::var("LD_LIBRARY_PATH").ok().filter(|p| !p.is_empty()));
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path.join(":"))
        .env(REEXEC_ENV, "1")
        .exec();
    tracing::warn!("cannot run again with the CUDA libraries on LD_LIBRARY_PATH: {err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_real_file_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let real = dir.path().join("libcublas.so.13.1.0.3");
        std::fs::write(&real, b"").expect("write");
        std::os::unix::fs::symlink(&real, dir.path().join("libcublas.so.13")).expect("link");
        assert_eq!(version_of(&dir.path().join("libcublas.so.13"), "libcublas.so.13").as_deref(), Some("13.1.0.3"));
    }

    #[test]
    fn a_cpu_build_says_how_to_get_a_cuda_one() {
        let s = status();
        assert_eq!(s.libraries.len(), LIBRARIES.len());
        if !cfg!(feature = "cuda") {
            assert!(!s.usable && s.detail.contains("scripts/build-agent"), "{s:?}");
        }
    }
}
