//! A real Slurm cluster of one node for the tests: munged, slurmctld and slurmd started
//! from a config written into a temp dir (no systemd), with fake GPUs as gres (character
//! devices, the only part faked: this machine has no GPU). Stopped by pid when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the daemons may take to report the node idle.
const READY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct SlurmCluster {
    pub conf: PathBuf,
    pub root: PathBuf,
    pub node: String,
    daemons: Vec<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn daemon(program: &str, args: &[&str], log: &Path, conf: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new(program)
        .args(args)
        .env("SLURM_CONF", conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!("cannot start {program} ({e}): scripts/test installs slurmctld, slurmd, slurm-client and munge")
        })
}

impl SlurmCluster {
    /// Starts a cluster under `root` whose one node has `cpus` CPUs and `gpus` fake GPUs.
    pub fn start(root: &Path, cpus: u32, gpus: u32) -> Result<SlurmCluster, String> {
        let io = |e: std::io::Error| e.to_string();
        let root = root.join("slurm");
        for d in ["munge-key", "munge-sock", "state", "spool", "log", "dev"] {
            std::fs::create_dir_all(root.join(d)).map_err(io)?;
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root.join("munge-key"), std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        std::fs::set_permissions(root.join("munge-sock"), std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        let key = root.join("munge-key/munge.key");
        let mut random = vec![0u8; 1024];
        {
            use std::io::Read as _;
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).map_err(io)?;
        }
        std::fs::write(&key, &random).map_err(io)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).map_err(io)?;
        for g in 0..gpus {
            let dev = root.join(format!("dev/gpu{g}"));
            // A character device like /dev/null: Slurm needs a file per GPU.
            let made = Command::new("mknod").arg(&dev).args(["c", "1", "3"]).status().map_err(io)?;
            if !made.success() {
                return Err(format!("mknod {} failed (the Slurm tests need root)", dev.display()));
            }
        }
        let node =
            String::from_utf8_lossy(&Command::new("hostname").arg("-s").output().map_err(io)?.stdout).trim().to_owned();
        let r = root.display();
        let socket = format!("{r}/munge-sock/munge.socket");
        let gres = if gpus > 0 { format!(" Gres=gpu:{gpus}") } else { String::new() };
        let conf = root.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=llemtest\nSlurmctldHost={node}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
                 AuthType=auth/munge\nAuthInfo=socket={socket}\nCredType=cred/munge\n\
                 StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n\
                 SlurmctldPidFile={r}/slurmctld.pid\nSlurmdPidFile={r}/slurmd.pid\n\
                 SlurmctldLogFile={r}/log/slurmctld.log\nSlurmdLogFile={r}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nGresTypes=gpu\n\
                 MailProg=/bin/true\nSlurmdParameters=config_overrides\nSlurmUser=root\n\
                 ReturnToService=2\nKillWait=5\nInactiveLimit=0\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000{gres} State=UNKNOWN\n\
                 PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port()
            ),
        )
        .map_err(io)?;
        if gpus > 0 {
            std::fs::write(
                root.join("gres.conf"),
                format!("NodeName={node} Name=gpu File={r}/dev/gpu[0-{}]\n", gpus - 1),
            )
            .map_err(io)?;
        }
        let mut cluster = SlurmCluster { conf: conf.clone(), root: root.clone(), node, daemons: Vec::new() };
        let key_arg = format!("--key-file={}", key.display());
        let socket_arg = format!("--socket={socket}");
        let pid_arg = format!("--pid-file={r}/munged.pid");
        let log_arg = format!("--log-file={r}/log/munged.log");
        let seed_arg = format!("--seed-file={r}/munge.seed");
        cluster.daemons.push(daemon(
            "munged",
            &["-F", &key_arg, &socket_arg, &pid_arg, &log_arg, &seed_arg],
            &root.join("log/munged.out"),
            &conf,
        )?);
        cluster.wait_for(|| Path::new(&socket).exists(), "munged's socket")?;
        let conf_arg = conf.display().to_string();
        cluster.daemons.push(daemon("slurmctld", &["-D", "-f", &conf_arg], &root.join("log/slurmctld.out"), &conf)?);
        cluster.daemons.push(daemon("slurmd", &["-D", "-f", &conf_arg], &root.join("log/slurmd.out"), &conf)?);
        cluster.wait_for(|| cluster.sinfo_states().iter().any(|s| s == "idle"), "the node to be idle (sinfo)")?;
        Ok(cluster)
    }

    /// Polls `ready` until it holds, up to a deadline (daemons start in their own time).
    fn wait_for(&self, ready: impl Fn() -> bool, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_WAIT;
        while !ready() {
            if Instant::now() > deadline {
                return Err(format!(
                    "waited {} s for {what}; logs in {}",
                    READY_WAIT.as_secs(),
                    self.root.join("log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// A Slurm client command against this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn sinfo_states(&self) -> Vec<String> {
        self.command("sinfo")
            .args(["--noheader", "--format=%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Every job and step Slurm lists (`squeue --steps` too), one per line.
    pub fn listed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for args in [&["--noheader", "--format=%i %j %T"][..], &["--noheader", "--steps", "--format=%i %j"][..]] {
            if let Ok(o) = self.command("squeue").args(args).output() {
                out.extend(String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_owned()));
            }
        }
        out
    }

    /// Polls until Slurm lists nothing (a cancelled job takes its time to leave).
    pub fn wait_until_empty(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.listed();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Jobs of a failed test first, then the daemons (the node's last).
        let _ = self.command("scancel").arg("--partition=gpu").status();
        for child in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}
