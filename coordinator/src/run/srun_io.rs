//! The protocol over `srun -u`, made as fast as over a pipe.
//!
//! srun and slurmstepd carry a step's stdin, stdout and stderr over TCP in messages of at
//! most 1 KiB, with Nagle's rule on: a message waits while an earlier one is
//! unacknowledged, and the receiving kernel delays its acknowledgement by 40 ms unless it
//! has data of its own to send. Measured here: a frame over 1 KiB, or two frames in a
//! row (an `ack` then the next `run`, a `phase` then the next), cost ~44 ms each way, and
//! a no-op job 88 ms. Two fixes, both on the coordinator's side, since slurmstepd runs as
//! root on the node and cannot be touched:
//!
//! * **srun → slurmstepd:** `TCP_NODELAY` on srun's sockets, set from here through a
//!   duplicate of each (`pidfd_getfd(2)`, Linux 5.6; srun is our child, so we may). What we
//!   send then goes out at once, whatever is unacknowledged.
//! * **slurmstepd → srun:** whenever the agent's stdout or stderr runs dry with nothing
//!   more to read, and the message is not one the dispatcher answers at once, we send a
//!   [`NUDGE`] (an empty frame the agent skips). srun sends it at once, and the
//!   acknowledgement riding on it releases whatever slurmstepd held back.
//!
//! If the sockets cannot be reached (an older kernel, a ptrace policy that forbids it),
//! the session works as before, only slower: it is logged once.

use std::io::Write as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};

use llem_common::protocol::NUDGE;

/// What a reader thread writes a nudge through (shared with the session's sends).
pub type NudgeInput = Arc<Mutex<Option<std::io::BufWriter<std::process::ChildStdin>>>>;

/// Sends a nudge unless a frame is being sent right now (its data carries the
/// acknowledgement anyway).
pub fn nudge(input: &NudgeInput) {
    if let Ok(mut guard) = input.try_lock() {
        if let Some(w) = guard.as_mut() {
            let _ = w.write_all(&NUDGE).and_then(|()| w.flush());
        }
    }
}

/// Sets `TCP_NODELAY` on every TCP socket of process `pid` (srun); returns how many.
pub fn set_nodelay(pid: u32) -> Result<usize, String> {
    let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let mut set = 0;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("cannot list srun's files: {e}"))?;
    for entry in fds.flatten() {
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        let theirs = pidfd_getfd(&pidfd, fd).map_err(|e| format!("pidfd_getfd: {e}"))?;
        // Our duplicate shares the socket: the option holds for srun's descriptor too.
        // Not TCP (a Unix socket): refused, and nothing changes.
        if std::net::TcpStream::from(theirs).set_nodelay(true).is_ok() {
            set += 1;
        }
    }
    Ok(set)
}

#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: a plain syscall with no pointers; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    owned(fd)
}

#[allow(unsafe_code)]
fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: as above; `pidfd` is a live pidfd for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    owned(fd)
}

#[allow(unsafe_code)]
fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor owned by no one.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies srun's stderr (the agent's log) to `log`, nudging each time it runs dry: a log
/// line the agent writes holds back its next frame until acknowledged.
pub fn relay_stderr(stderr: std::process::ChildStderr, mut log: std::fs::File, input: NudgeInput) {
    use std::io::Read as _;
    let mut reader = std::io::BufReader::new(stderr);
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let _ = log.write_all(&buf[..n]);
                if !llem_common::protocol::readable_now(reader.get_ref()) {
                    nudge(&input);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_childs_tcp_sockets_get_nodelay_and_others_are_left_alone() {
        // A child holding a TCP connection (and its pipes): ours to reach.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                &format!("import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); sys.stdin.read()"),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let (accepted, _) = listener.accept().expect("accept");
        let set = super::set_nodelay(child.id()).expect("reachable");
        drop(child.stdin.take());
        let _ = child.wait();
        drop(accepted);
        assert_eq!(set, 1, "one TCP socket, and no other descriptor");
    }
}
