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
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::connect::{agent_binary, ConnectError, ConnectOptions, Connector, OpenRequest, Session};
use super::deploy::{self, KEEP_BUILDS};
use super::session::ChildSession;
use crate::sweep::SshNode;

/// Seconds to wait for a connection before calling a node unreachable.
pub const CONNECT_TIMEOUT_S: u32 = 10;
/// Keepalive: a node that misses 3 probes 5 s apart is gone.
pub const KEEPALIVE_INTERVAL_S: u32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;
/// Seconds between reconnection tries after a node's connection drops; a node still
/// unreachable after the last is lost for the rest of the run (about 15 s plus the
/// connection timeouts).
pub const RECONNECT_BACKOFF_S: [f64; 4] = [1.0, 2.0, 4.0, 8.0];
/// Where builds live on a node.
const BIN_DIR: &str = "~/.cache/llem/bin";
/// How long a remote command may take (the connection timeout and keepalives bound a
/// dead network; this bounds a node that hangs).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// How long an upload of the agent may take.
const UPLOAD_LIMIT: Duration = Duration::from_secs(600);

/// A path as an ssh `-o` value: quoted (it may hold spaces), `%` doubled (ssh expands
/// `%` sequences there), then `suffix` (ssh's own `%` sequences, kept).
fn option_path(path: &Path, suffix: &str) -> String {
    format!("\"{}{suffix}\"", path.display().to_string().replace('%', "%%"))
}

/// Everything a pipe gives, read in a thread.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub name: String,
    node: SshNode,
    control_dir: PathBuf,
    accept_new: bool,
}

impl SshTarget {
    pub fn new(name: &str, node: &SshNode, control_dir: &Path, accept_new: bool) -> SshTarget {
        SshTarget { name: name.to_owned(), node: node.clone(), control_dir: control_dir.to_owned(), accept_new }
    }

    /// The node as messages name it: `host`, or `host:port` when the sweep sets a port.
    fn address(&self) -> String {
        match self.node.port {
            Some(p) => format!("{}:{p}", self.node.host),
            None => self.node.host.clone(),
        }
    }

    /// The options every ssh call shares: only what the sweep sets, so an alias's
    /// `Port`, `User`, `ProxyJump` … from the SSH configuration apply.
    fn base(&self) -> Command {
        let mut c = Command::new("ssh");
        if let Some(config) = &self.node.ssh_config {
            c.arg("-F").arg(config);
        }
        c.arg("-o").arg(format!("ControlPath={}", option_path(&self.control_dir, "/%C")));
        if let Some(p) = self.node.port {
            c.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.node.user {
            c.arg("-l").arg(u);
        }
        c
    }

    /// `ssh` with every option set; the remote command follows `--`.
    fn ssh(&self) -> Command {
        let mut c = self.base();
        c.arg("-T");
        let strict = if self.accept_new { "accept-new" } else { "yes" };
        for o in [
            "BatchMode=yes".to_owned(),
            format!("StrictHostKeyChecking={strict}"),
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
            format!("ServerAliveInterval={KEEPALIVE_INTERVAL_S}"),
            format!("ServerAliveCountMax={KEEPALIVE_COUNT}"),
            "ControlMaster=auto".to_owned(),
            "ControlPersist=120".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ] {
            c.arg("-o").arg(o);
        }
        if let Some(k) = &self.node.known_hosts {
            c.arg("-o").arg(format!("UserKnownHostsFile={}", option_path(k, "")));
        }
        if let Some(i) = &self.node.identity_file {
            c.arg("-i").arg(i);
        }
        c.arg(&self.node.host).arg("--");
        c
    }

    /// Runs a fixed remote command (our constants only), optionally feeding stdin. One
    /// that has not finished by `limit` (a hung file system on the node, say) is killed
    /// and the node counts as unreachable: a slot is never left opening for ever.
    fn run_within(&self, remote: &str, stdin: Option<&[u8]>, limit: Duration) -> Result<Output, ConnectError> {
        let unreachable = |e: std::io::Error, what: &str| ConnectError::Unreachable(format!("{what}: {e}"));
        std::fs::create_dir_all(&self.control_dir)
            .map_err(|e| unreachable(e, "cannot create the control directory"))?;
        let mut c = self.ssh();
        c.arg(remote)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| ConnectError::Refused(format!("cannot start ssh (is the OpenSSH client installed?): {e}")))?;
        // Fed and read from threads, so the deadline holds whatever ssh does.
        let (input, bytes) = (child.stdin.take(), stdin.map(<[u8]>::to_vec));
        let feeder = std::thread::spawn(move || {
            if let (Some(bytes), Some(mut input)) = (bytes, input) {
                // A write that fails means ssh ended: its status and stderr say why.
                let _ = input.write_all(&bytes);
            }
        });
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            match child.try_wait().map_err(|e| unreachable(e, "cannot wait for ssh"))? {
                Some(status) => break status,
                None if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let secs = limit.as_secs();
                    return Err(ConnectError::Unreachable(format!("`{remote}` on {} took over {secs} s", self.name)));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let _ = feeder.join();
        let out =
            Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
        if out.status.code() == Some(255) {
            return Err(self.connection_error(&String::from_utf8_lossy(&out.stderr)));
        }
        Ok(out)
    }

    /// [`SshTarget::run_within`] for a short command.
    fn run(&self, remote: &str, stdin: Option<&[u8]>) -> Result<Output, ConnectError> {
        self.run_within(remote, stdin, COMMAND_LIMIT)
    }

    /// `ssh -G`: the host name and port ssh will use for this node, its configuration
    /// applied.
    fn resolved(&self) -> Option<(String, String)> {
        let mut c = self.base();
        let out = c.arg("-G").arg(&self.node.host).stderr(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()));
        Some((value("hostname ")?, value("port ")?))
    }

    /// Turns ssh's complaint into a message that says what to do.
    fn connection_error(&self, stderr: &str) -> ConnectError {
        let known =
            self.node.known_hosts.as_ref().map_or_else(|| "~/.ssh/known_hosts".to_owned(), |k| k.display().to_string());
        let (host, port) = self.resolved().unwrap_or_else(|| (self.node.host.clone(), "22".to_owned()));
        let key = if port == "22" { host.clone() } else { format!("[{host}]:{port}") };
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            return ConnectError::Refused(format!(
                "the host key of {} ({}) has changed: refused (it may be a man-in-the-middle). If the change is expected, remove the old key with `ssh-keygen -R '{key}' -f {known}` and check the new one",
                self.name,
                self.address()
            ));
        }
        if stderr.contains("Host key verification failed") || stderr.contains("No ED25519 host key is known") {
            return ConnectError::Refused(format!(
                "the host key of {} ({}) is not in {known}: refused. Its fingerprint is {}. If that is the host, add it (ssh-keyscan -p {port} {host} >> {known}) or run again with --accept-new-host-keys",
                self.name,
                self.address(),
                fingerprint(&host, &port).unwrap_or_else(|| "unknown (ssh-keyscan failed)".to_owned()),
            ));
        }
        ConnectError::Unreachable(format!("cannot reach {} ({}): {}", self.name, self.address(), stderr.trim()))
    }

    /// Makes sure the node runs exactly our agent: the binary is stored under a path that
    /// names its version and content hash, uploaded when missing (stripped, compressed
    /// where the node has gzip; temp file, chmod, rename), and older builds are pruned.
    /// Returns the remote path.
    pub fn deploy(&self, local_agent: &Path) -> Result<String, ConnectError> {
        let payload = deploy::payload(local_agent).map_err(|e| ConnectError::Refused(e.to_string()))?;
        let path = format!("{BIN_DIR}/{}", payload.name);
        // Touched, as builds are kept newest first; older ones are pruned on every deploy.
        let prune = format!("{path} prune-builds --keep {KEEP_BUILDS}");
        let check = self.run(&format!("test -x {path} && touch {path} && {path} --version && {prune}"), None)?;
        if check.status.success() {
            return Ok(path);
        }
        let info = self.run("uname -m; command -v gzip || true", None)?;
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        let mut lines = info.lines();
        let remote_arch = lines.next().unwrap_or_default().trim().to_owned();
        if remote_arch != std::env::consts::ARCH {
            return Err(ConnectError::Refused(format!(
                "{} is {remote_arch}, this llem-agent is {}: install llem-agent for {remote_arch} there",
                self.name,
                std::env::consts::ARCH
            )));
        }
        let gzip = lines.next().is_some_and(|l| !l.trim().is_empty());
        let (unpack, bytes) = if gzip { ("gzip -dc", &payload.gzip) } else { ("cat", &payload.stripped) };
        // The temp name carries the remote shell's pid: two coordinators deploying the
        // same build at once never share (or rename away) each other's temp file.
        let install = format!(
            "mkdir -p {BIN_DIR} && {unpack} > {path}.tmp.$$ && chmod 755 {path}.tmp.$$ && mv {path}.tmp.$$ {path} && {path} --version && {prune}"
        );
        let upload = self.run_within(&install, Some(bytes), UPLOAD_LIMIT)?;
        if !upload.status.success() {
            return Err(ConnectError::Refused(format!(
                "cannot install llem-agent on {}: {}",
                self.name,
                String::from_utf8_lossy(&upload.stderr).trim()
            )));
        }
        tracing::info!("installed {} on {} ({} bytes sent)", payload.name, self.name, bytes.len());
        Ok(path)
    }

    /// The agent session: `ssh … -- <agent> serve --stdio`.
    pub fn agent_command(&self, remote_agent: &str) -> Command {
        let mut c = self.ssh();
        c.arg(format!("{remote_agent} serve --stdio"));
        c
    }

    /// Round-trip time of a command over the shared connection.
    pub fn round_trip(&self) -> Result<Duration, ConnectError> {
        let start = std::time::Instant::now();
        let out = self.run("true", None)?;
        if !out.status.success() {
            return Err(ConnectError::Unreachable(format!("`true` failed on {}", self.name)));
        }
        Ok(start.elapsed())
    }

    /// Tries to reach the node again after its connection dropped: a try after each delay
    /// of [`RECONNECT_BACKOFF_S`]. A fresh master connection replaces the dead one (ssh
    /// removes a stale control socket itself). Err: the last reason, once every try
    /// failed, or at once when retrying cannot help (a refused host key).
    pub fn reconnect(&self) -> Result<(), ConnectError> {
        let mut last = ConnectError::Unreachable(format!("{} did not answer", self.name));
        for delay in RECONNECT_BACKOFF_S {
            std::thread::sleep(Duration::from_secs_f64(delay));
            match self.round_trip() {
                Ok(_) => return Ok(()),
                Err(e) if e.is_final() => return Err(e),
                Err(e) => {
                    tracing::info!("{} still unreachable: {e}", self.name);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Closes the shared connection.
    pub fn close(&self) {
        let mut c = self.base();
        let _ = c.args(["-O", "exit"]).arg(&self.node.host).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A host key's fingerprint, as ssh-keyscan sees it.
fn fingerprint(host: &str, port: &str) -> Option<String> {
    let scan = Command::new("ssh-keyscan").args(["-t", "ed25519", "-p", port, host]).output().ok()?;
    let mut keygen =
        Command::new("ssh-keygen").args(["-lf", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
    keygen.stdin.take()?.write_all(&scan.stdout).ok()?;
    let out = keygen.wait_with_output().ok()?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(str::to_owned)
}

/// The SSH transport: sessions are `ssh` children over one master connection per node.
#[derive(Debug)]
pub struct SshConnector {
    target: SshTarget,
    /// The deployed agent's path, once checked (cleared when the node comes back: it may
    /// have been reinstalled meanwhile). The lock makes the slots of a node deploy once.
    deployed: Mutex<Option<String>>,
}

impl SshConnector {
    pub fn new(name: &str, node: &SshNode, options: &ConnectOptions) -> Self {
        let target = SshTarget::new(name, node, &options.control_dir, options.accept_new_host_keys);
        SshConnector { target, deployed: Mutex::new(None) }
    }
}

impl Connector for SshConnector {
    fn deploy(&self) -> Result<String, ConnectError> {
        let mut deployed = self.deployed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(path) = deployed.as_ref() {
            return Ok(path.clone());
        }
        let path = self.target.deploy(&agent_binary())?;
        *deployed = Some(path.clone());
        Ok(path)
    }

    fn open(&self, request: OpenRequest) -> Result<Box<dyn Session>, ConnectError> {
        let remote = self.deploy()?;
        Ok(Box::new(ChildSession::start(self.target.agent_command(&remote), &request)?))
    }

    fn reconnect(&self) -> Result<(), ConnectError> {
        *self.deployed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.target.reconnect()
    }

    fn round_trip(&self) -> Result<Duration, ConnectError> {
        self.target.round_trip()
    }

    fn close(&self) {
        self.target.close();
    }
}
