//! A server the agent starts: its own process group (so every process it forks is
//! stopped with it), its output in `server.log`, and a stop that always reaps it —
//! SIGTERM to the group, then SIGKILL after a grace period. Dropping it stops it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::workload::EngineError;

/// How long a server has to exit after SIGTERM before the group is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pgid: Pid,
    pub log: PathBuf,
    /// Where this start's output begins in `log` (earlier starts appended before it).
    log_start: u64,
    pub program: String,
    stopped: bool,
}

impl ServerProcess {
    /// Starts `argv` without a shell, in a new process group, output appended to `log`.
    /// `gpus` (e.g. `0,1`; empty for a CPU job) is exported as `CUDA_VISIBLE_DEVICES`.
    /// `dir` is its working directory (relative paths in its arguments resolve there).
    pub fn start(
        argv: &[String],
        env: &BTreeMap<String, String>,
        gpus: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<Self, EngineError> {
        let Some(program) = argv.first().cloned() else {
            return Err(EngineError::BadJob("`server.command` is empty".to_owned()));
        };
        let log_start = std::fs::metadata(log).map_or(0, |m| m.len());
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| EngineError::Failed(format!("cannot open {}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| EngineError::Failed(format!("cannot open {}: {e}", log.display())))?;
        let mut command = Command::new(&program);
        command
            .args(&argv[1..])
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // The GPUs it may use are the ones the job holds, numbered as NVML numbers them (and
        // none for a CPU job, so it cannot run on a GPU another job holds).
        command.env("CUDA_VISIBLE_DEVICES", gpus).env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        stop_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            let what = format!("cannot start the server `{program}`: {e}");
            if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::PermissionDenied {
                EngineError::BadJob(what)
            } else {
                EngineError::Failed(what)
            }
        })?;
        let pgid = Pid::from_raw(child.id() as i32);
        tracing::info!("started the server (pid {}): {}", child.id(), argv.join(" "));
        Ok(ServerProcess { child, pgid, log: log.to_owned(), log_start, program, stopped: false })
    }

    /// The exit status, once the server's main process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines this start wrote to `server.log`.
    pub fn log_tail(&self, n: usize) -> String {
        tail_from(&self.log, self.log_start, n)
    }

    /// Stops the whole group and reaps the server; safe to call more than once.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            let main_gone = self.child.try_wait().ok().flatten().is_some();
            // Signal 0 probes the group: an error means no process of it is left.
            if main_gone && killpg(self.pgid, None).is_err() {
                tracing::info!("the server stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::warn!(
            "the server did not stop within {} s of SIGTERM: killing its process group",
            STOP_GRACE.as_secs()
        );
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks the kernel to send the server SIGTERM if the agent dies first (even by SIGKILL,
/// which runs no cleanup of ours), so a server is never left behind holding a GPU.
#[allow(unsafe_code)]
fn stop_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl
    // system call, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// The last `n` lines of a file after byte `from` (at most its last 64 KiB).
fn tail_from(path: &Path, from: u64, n: usize) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024).max(from)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port no one listens on now (the kernel's pick). Another process may still take it
/// before the server binds: a server that exits saying so is restarted on a new one.
pub fn free_port() -> Result<u16, EngineError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| EngineError::Failed(format!("cannot find a free port: {e}")))
}

/// Whether a server's last words say its port was taken.
pub fn port_was_taken(log_tail: &str) -> bool {
    let t = log_tail.to_ascii_lowercase();
    t.contains("address already in use") || t.contains("errno 98") || t.contains("eaddrinuse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reaps_the_whole_group() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("server.log");
        // The server forks a grandchild that ignores nothing: both must go.
        let argv: Vec<String> =
            ["sh", "-c", "sleep 300 & echo child $!; echo ready; wait"].iter().map(|s| (*s).to_owned()).collect();
        let mut server = ServerProcess::start(&argv, &BTreeMap::new(), "", dir.path(), &log).expect("starts");
        let pgid = server.pgid;
        let start = Instant::now();
        while !tail_from(&log, 0, 5).contains("ready") {
            assert!(start.elapsed() < Duration::from_secs(10), "the script never wrote");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(killpg(pgid, None).is_ok(), "the group is alive");
        server.stop();
        assert!(killpg(pgid, None).is_err(), "a process of the group survived");
        assert!(tail_from(&log, 0, 5).contains("child"));
    }

    #[test]
    fn a_missing_program_is_a_bad_job() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = ServerProcess::start(
            &["/no/such/server".to_owned()],
            &BTreeMap::new(),
            "",
            dir.path(),
            &dir.path().join("l"),
        )
        .expect_err("missing");
        assert_eq!(err.kind(), llem_common::failure::FailureKind::BadJob);
        assert!(port_was_taken("OSError: [Errno 98] Address already in use"));
        assert!(!port_was_taken("ready"));
    }
}
