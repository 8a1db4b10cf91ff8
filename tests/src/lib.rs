//! Helpers for llem's end-to-end tests: find the real binaries, run them, compare output.

pub mod slurm;
pub mod tiny_models;

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
    if let Some(agent) = agent_override().filter(|_| name == "llem-agent") {
        return agent;
    }
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

/// `LLEM_TEST_AGENT`: the agent every test runs instead of the one built beside the tests
/// (scripts/test runs the suite a second time with the CUDA agent, so the one binary that
/// is deployed to every node passes the CPU tests too).
fn agent_override() -> Option<PathBuf> {
    // Absolute: tests run the agent from their own temp dirs.
    let path = PathBuf::from(std::env::var_os("LLEM_TEST_AGENT").filter(|v| !v.is_empty())?);
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

/// The coordinator, using the agent under test.
pub fn coordinator() -> Command {
    let mut cmd = Command::new(binary("llem"));
    if let Some(agent) = agent_override() {
        cmd.env("LLEM_AGENT", agent);
    }
    cmd
}

/// Runs the coordinator with `args` in `cwd`.
pub fn llem(cwd: &Path, args: &[&str]) -> Output {
    coordinator()
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("failed to start llem: {e}"))
}

/// The coordinator in `dir`, with its own agent state and no RAPL (so energy is `null`
/// and the test does not depend on the host's sensors).
pub fn llem_in(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = coordinator();
    cmd.args(args)
        .current_dir(dir)
        .env("LLEM_STATE_DIR", dir.join("agent-state"))
        .env("LLEM_POWERCAP_ROOT", dir.join("no-powercap"))
        .env_remove("RUST_LOG");
    cmd
}

/// The run directory `llem run` made under `dir/runs`, if any.
pub fn first_run_dir(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("runs")).ok()?.flatten().map(|e| e.path()).find(|p| p.is_dir())
}

/// Every file below `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A Parquet file's rows as JSON, read back by pyarrow.
///
/// # Panics
/// When pyarrow cannot read it.
pub fn parquet_rows(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys, json, pyarrow.parquet as pq; print(json.dumps(pq.read_table(sys.argv[1]).to_pylist()))")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(out.status.success(), "pyarrow cannot read {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("pyarrow's rows: {e}"))
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

/// A real OpenSSH server for one simulated node: its own address (127.0.0.N), port, host
/// key and agent state directory (via `SetEnv LLEM_STATE_DIR`), authorising one test
/// client key. Killed on drop.
#[derive(Debug)]
pub struct Sshd {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    child: std::process::Child,
}

impl Sshd {
    /// Starts `sshd -D` for node `n` (address 127.0.0.(n+2)) under `root`, authorising
    /// `client_key.pub` found there (see [`client_key`]).
    ///
    /// # Panics
    /// When sshd is missing (scripts/test installs openssh-server) or does not start.
    pub fn start(root: &Path, n: u8) -> Sshd {
        let host = format!("127.0.0.{}", n + 2);
        let port = std::net::TcpListener::bind((host.as_str(), 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        Self::start_at(root, n, host, port, None)
    }

    /// Starts node `n`'s sshd inside `netns`, behind a link the test can cut.
    ///
    /// # Panics
    /// As [`Sshd::start`].
    pub fn start_in(root: &Path, n: u8, netns: &Netns) -> Sshd {
        Self::start_at(root, n, netns.node_ip.clone(), 2222, Some(&netns.name))
    }

    /// Starts node `n`'s sshd inside `netns` on the namespace's own loopback
    /// (`127.0.0.3:port`), which nothing outside the namespace can reach: only a jump
    /// host inside it can.
    ///
    /// # Panics
    /// As [`Sshd::start`].
    pub fn start_hidden_in(root: &Path, n: u8, netns: &Netns, port: u16) -> Sshd {
        Self::start_at(root, n, "127.0.0.3".to_owned(), port, Some(&netns.name))
    }

    fn start_at(root: &Path, n: u8, host: String, port: u16, netns: Option<&str>) -> Sshd {
        let dir = root.join(format!("node{n}"));
        std::fs::create_dir_all(dir.join("state")).expect("node dir");
        // Each node has its own home: its `~/.cache/llem/bin` is its own, as on a cluster.
        std::fs::create_dir_all(dir.join("home")).expect("node home");
        let key = dir.join("host_key");
        keygen(&key);
        let config = format!(
            "Port {port}\nListenAddress {host}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSetEnv LLEM_STATE_DIR={} LLEM_POWERCAP_ROOT={} HOME={}\nClientAliveInterval 5\nClientAliveCountMax 3\nLogLevel ERROR\n",
            key.display(),
            root.join("client_key.pub").display(),
            dir.join("sshd.pid").display(),
            dir.join("state").display(),
            dir.join("no-powercap").display(),
            dir.join("home").display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("config");
        std::fs::create_dir_all("/run/sshd").ok();
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd (scripts/test installs openssh-server)");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, sshd]);
                c
            }
            None => Command::new(sshd),
        };
        let child = command
            .arg("-D")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            // Its session processes would inherit the test's stdout and hold the pipe of
            // whoever reads the test output open until they end.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sshd");
        // Ready when it accepts connections (one on a namespace's own loopback cannot be
        // reached from here: it is ready once it wrote its pid file, after listening).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let hidden = netns.is_some() && host.starts_with("127.");
        let ready = || {
            if hidden {
                dir.join("sshd.pid").exists()
            } else {
                std::net::TcpStream::connect((host.as_str(), port)).is_ok()
            }
        };
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "sshd on {host}:{port} did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Sshd { dir, host, port, child }
    }

    /// The `known_hosts` line for this server.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.dir.join("host_key.pub")).expect("host key");
        let mut parts = public.split_whitespace();
        format!("[{}]:{} {} {}\n", self.host, self.port, parts.next().unwrap_or(""), parts.next().unwrap_or(""))
    }

    /// Kills the server and every process of its sessions (the node goes away).
    pub fn kill_node(&mut self) {
        // The per-connection servers first (children of the listener; they do not carry
        // the session environment), so no connection outlives the node.
        let listener = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1));
            if ppid == Some(listener.as_str()) {
                let _ = Command::new("kill").arg("-KILL").arg(entry.file_name()).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_sessions();
    }

    /// Kills what runs in this node's sessions (agents and their children); the server
    /// stays up, so a new connection works.
    pub fn kill_sessions(&self) {
        for pid in self.session_processes() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }

    /// The processes running in this node's sessions: those whose environment carries
    /// the node's `LLEM_STATE_DIR` (set by its sshd).
    pub fn session_processes(&self) -> Vec<u32> {
        let marker = format!("LLEM_STATE_DIR={}", self.dir.join("state").display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).split('\0').any(|v| v == marker) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_node();
    }
}

/// A network namespace joined to this one by a veth pair: a node behind a link that a
/// test can take down and bring up again (a network partition). Removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The link's end in this namespace.
    veth: String,
    /// The node's address, inside the namespace.
    pub node_ip: String,
}

impl Netns {
    /// Creates namespace number `tag` of this test process.
    ///
    /// # Errors
    /// Why namespaces are not permitted here (not root, no `ip`, no CAP_NET_ADMIN).
    pub fn create(tag: u8) -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("llem-{pid}-{tag}");
        let veth = format!("lv{}t{tag}", pid % 10_000_000);
        let peer = format!("{veth}p");
        let subnet = format!("10.231.{}", (pid as usize * 7 + usize::from(tag)) % 250);
        let ns = Netns { name: name.clone(), veth: veth.clone(), node_ip: format!("{subnet}.2") };
        let steps: [&[&str]; 8] = [
            &["netns", "add", &name],
            &["-n", &name, "link", "set", "lo", "up"],
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &name],
            &["addr", "add", &format!("{subnet}.1/30"), "dev", &veth],
            &["link", "set", &veth, "up"],
            &["-n", &name, "addr", "add", &format!("{subnet}.2/30"), "dev", &peer],
            &["-n", &name, "link", "set", &peer, "up"],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
            if !out.status.success() {
                return Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(ns)
    }

    /// Takes the link down (packets are dropped, nothing is reset) or brings it up.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let status = Command::new("ip").args(["link", "set", &self.veth, state]).status().expect("ip");
        assert!(status.success(), "ip link set {} {state}", self.veth);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Makes the test client key `root/client_key` (and `.pub`).
///
/// # Panics
/// When ssh-keygen is missing.
pub fn client_key(root: &Path) -> PathBuf {
    let key = root.join("client_key");
    if !key.exists() {
        keygen(&key);
    }
    key
}

/// Writes a new ed25519 key pair at `path` and `path.pub`.
///
/// # Panics
/// When ssh-keygen is missing or fails.
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// Tests that keep both cores busy for long (real model servers) share the CPU with each
/// other, never with a test whose ground truth needs a thread on time (the fake RAPL
/// counter's writer: a 100 ms stall reads as a 10 % error in a second of power).
static CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that loads the CPU heavily for long.
pub fn heavy_cpu() -> std::sync::RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by a test that needs a thread of its own to run on time.
pub fn quiet_cpu() -> std::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
