//! Reaching agents over SSH, through the OpenSSH client users already have configured.
//!
//! Delegating to `ssh` gives exactly the semantics users expect from `~/.ssh/config`
//! (Host aliases, HostName, User, Port, IdentityFile, ProxyJump), ssh-agent and hardware
//! keys; `ControlMaster` keeps one connection per node, reused by every agent session.
//! Host keys are checked strictly (`StrictHostKeyChecking=yes`, or `accept-new` when the
//! user asks); a changed key is always refused. The remote command is a fixed string
//! built from constants (the agent's path and `serve --stdio`): no user string ever
//! reaches the remote shell, and jobs travel inside the protocol.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};

use crate::sweep::{NodeSpec, Transport};

/// Seconds to wait for a connection before calling a node unreachable.
pub const CONNECT_TIMEOUT_S: u32 = 10;
/// Keepalive: a node that misses 3 probes 5 s apart is gone.
pub const KEEPALIVE_INTERVAL_S: u32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;
/// Seconds between reconnection tries after a node's connection drops; a node still
/// unreachable after the last is lost for the rest of the run (about 15 s plus the
/// connection timeouts).
pub const RECONNECT_BACKOFF_S: [f64; 4] = [1.0, 2.0, 4.0, 8.0];

/// Why ssh could not reach a node.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node's host key is unknown or changed: retrying cannot help.
    #[error("{0}")]
    HostKey(String),
    /// Anything else (refused, timed out, authentication): may pass.
    #[error("{0}")]
    Unreachable(String),
}

/// The short content hash that names an agent build on the nodes. Computed once per
/// process and binary: the agent is ~100 MB, and every node asks.
fn build_hash(agent: &Path) -> Result<String> {
    static HASHES: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut known = HASHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, hash)) = known.iter().find(|(p, _)| p == agent) {
        return Ok(hash.clone());
    }
    let mut file = std::fs::File::open(agent).with_context(|| format!("read {}", agent.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).with_context(|| format!("read {}", agent.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash: String = hasher.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect();
    known.push((agent.to_owned(), hash.clone()));
    Ok(hash)
}

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub name: String,
    host: String,
    port: u16,
    user: Option<String>,
    identity: Option<String>,
    known_hosts: Option<String>,
    control_dir: PathBuf,
    accept_new: bool,
}

fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_owned(),
    }
}

impl SshTarget {
    pub fn for_node(node: &NodeSpec, control_dir: &Path, accept_new: bool) -> Option<SshTarget> {
        let Transport::Ssh { host, port, user, identity_file, known_hosts } = &node.transport else { return None };
        Some(SshTarget {
            name: node.name.clone(),
            host: host.clone(),
            port: *port,
            user: user.clone(),
            identity: identity_file.as_deref().map(expand_home),
            known_hosts: known_hosts.as_deref().map(expand_home),
            control_dir: control_dir.to_owned(),
            accept_new,
        })
    }

    /// `ssh` with every option set; the remote command follows `--`.
    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-T");
        let strict = if self.accept_new { "accept-new" } else { "yes" };
        for o in [
            "BatchMode=yes".to_owned(),
            format!("StrictHostKeyChecking={strict}"),
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
            format!("ServerAliveInterval={KEEPALIVE_INTERVAL_S}"),
            format!("ServerAliveCountMax={KEEPALIVE_COUNT}"),
            "ControlMaster=auto".to_owned(),
            format!("ControlPath={}/%C", self.control_dir.display()),
            "ControlPersist=120".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ] {
            c.arg("-o").arg(o);
        }
        if let Some(k) = &self.known_hosts {
            c.arg("-o").arg(format!("UserKnownHostsFile={k}"));
        }
        c.arg("-p").arg(self.port.to_string());
        if let Some(i) = &self.identity {
            c.arg("-i").arg(i);
        }
        if let Some(u) = &self.user {
            c.arg("-l").arg(u);
        }
        c.arg(&self.host).arg("--");
        c
    }

    /// Runs a fixed remote command (our constants only), optionally feeding stdin.
    fn run(&self, remote: &str, stdin: Option<&[u8]>) -> Result<Output> {
        std::fs::create_dir_all(&self.control_dir)?;
        let mut c = self.ssh();
        c.arg(remote)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("start ssh (is the OpenSSH client installed?)")?;
        if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(bytes).context("send to ssh")?;
        }
        let out = child.wait_with_output().context("wait for ssh")?;
        if out.status.code() == Some(255) {
            return Err(self.connection_error(&String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(out)
    }

    /// Turns ssh's complaint into a message that says what to do.
    fn connection_error(&self, stderr: &str) -> ConnectError {
        let known = self.known_hosts.clone().unwrap_or_else(|| "~/.ssh/known_hosts".to_owned());
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            return ConnectError::HostKey(format!(
                "the host key of {} ({}:{}) has changed: refused (it may be a man-in-the-middle). If the change is expected, remove the old key with `ssh-keygen -R '[{}]:{}' -f {known}` and check the new one",
                self.name, self.host, self.port, self.host, self.port
            ));
        }
        if stderr.contains("Host key verification failed") || stderr.contains("No ED25519 host key is known") {
            return ConnectError::HostKey(format!(
                "the host key of {} ({}:{}) is not in {known}: refused. Its fingerprint is {}. If that is the host, add it (ssh-keyscan -p {} {} >> {known}) or run again with --accept-new-host-keys",
                self.name,
                self.host,
                self.port,
                self.fingerprint().unwrap_or_else(|| "unknown (ssh-keyscan failed)".to_owned()),
                self.port,
                self.host
            ));
        }
        ConnectError::Unreachable(format!(
            "cannot reach {} ({}:{}): {}",
            self.name,
            self.host,
            self.port,
            stderr.trim()
        ))
    }

    /// The server's host key fingerprint, as ssh-keyscan sees it.
    fn fingerprint(&self) -> Option<String> {
        let scan = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", "-p", &self.port.to_string(), &self.host])
            .output()
            .ok()?;
        let mut keygen =
            Command::new("ssh-keygen").args(["-lf", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
        keygen.stdin.take()?.write_all(&scan.stdout).ok()?;
        let out = keygen.wait_with_output().ok()?;
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(str::to_owned)
    }

    /// Makes sure the node runs exactly our agent: the binary is stored under a path that
    /// names its version and content hash, uploaded when missing (temp file, chmod,
    /// rename). Returns the remote path.
    pub fn deploy(&self, local_agent: &Path) -> Result<String> {
        let hash = build_hash(local_agent)?;
        let path = format!("~/.cache/llem/bin/llem-agent-{}-{hash}", env!("CARGO_PKG_VERSION"));
        let check = self.run(&format!("test -x {path} && {path} --version"), None)?;
        if check.status.success() {
            return Ok(path);
        }
        let arch = self.run("uname -m", None)?;
        let remote_arch = String::from_utf8_lossy(&arch.stdout).trim().to_owned();
        if remote_arch != std::env::consts::ARCH {
            bail!(
                "{} is {remote_arch}, this llem-agent is {}: install llem-agent for {remote_arch} there",
                self.name,
                std::env::consts::ARCH
            );
        }
        let bytes = std::fs::read(local_agent).with_context(|| format!("read {}", local_agent.display()))?;
        let upload = self.run(
            // The temp name carries the remote shell's pid: two coordinators deploying
            // the same build at once never share (or rename away) each other's temp file.
            &format!("mkdir -p ~/.cache/llem/bin && cat > {path}.tmp.$$ && chmod 755 {path}.tmp.$$ && mv {path}.tmp.$$ {path} && {path} --version"),
            Some(&bytes),
        )?;
        if !upload.status.success() {
            bail!("failed to install llem-agent on {}: {}", self.name, String::from_utf8_lossy(&upload.stderr).trim());
        }
        Ok(path)
    }

    /// The agent session: `ssh … -- <agent> serve --stdio`.
    pub fn agent_command(&self, remote_agent: &str) -> Command {
        let mut c = self.ssh();
        c.arg(format!("{remote_agent} serve --stdio"));
        c
    }

    /// Round-trip time of a command over the shared connection.
    pub fn round_trip(&self) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        let out = self.run("true", None)?;
        if !out.status.success() {
            bail!("`true` failed on {}", self.name);
        }
        Ok(start.elapsed())
    }

    /// Tries to reach the node again after its connection dropped: a try after each delay
    /// of [`RECONNECT_BACKOFF_S`]. A fresh master connection replaces the dead one (ssh
    /// removes a stale control socket itself). Err: the last reason, once every try
    /// failed, or at once when the host key is refused (waiting cannot fix that).
    pub fn reconnect(&self) -> std::result::Result<(), String> {
        let mut last = String::new();
        for delay in RECONNECT_BACKOFF_S {
            std::thread::sleep(std::time::Duration::from_secs_f64(delay));
            match self.round_trip() {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = format!("{e:#}");
                    if matches!(e.downcast_ref::<ConnectError>(), Some(ConnectError::HostKey(_))) {
                        break;
                    }
                    tracing::info!("{} still unreachable: {last}", self.name);
                }
            }
        }
        Err(last)
    }

    /// `llem-agent probe --json` on the node.
    pub fn probe(&self, remote_agent: &str) -> Result<serde_json::Value> {
        let out = self.run(&format!("{remote_agent} probe --json"), None)?;
        if !out.status.success() {
            bail!("probe failed on {}: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).context("read the probe")
    }

    /// Closes the shared connection.
    pub fn close(&self) {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            &format!("ControlPath={}/%C", self.control_dir.display()),
            "-O",
            "exit",
            "-p",
            &self.port.to_string(),
        ]);
        if let Some(u) = &self.user {
            c.arg("-l").arg(u);
        }
        let _ = c.arg(&self.host).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
