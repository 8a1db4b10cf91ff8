//! The Slurm transport: the coordinator (on a login node) holds one allocation
//! (`salloc --no-shell`) and runs each agent session as a job step in it: `srun --jobid J
//! --exact -N1 -n1 -w HOST --gres=gpu:1 -u <agent> serve --stdio`. `--exact` and the
//! step's own GPU keep steps from serialising or sharing a GPU; `-u` makes srun pass the
//! protocol's frames through unbuffered. Slurm sets the step's `CUDA_VISIBLE_DEVICES`; the
//! agent is told (`LLEM_SLURM_STEP`) to measure the GPUs its step was given.
//!
//! The agent binary must be where every node sees it (a shared filesystem): `agent:` in
//! the sweep, else the coordinator's own agent. Every argument reaches salloc/srun as
//! one argument: no shell is involved.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llem_common::protocol::SLURM_STEP_ENV as STEP_ENV;

use super::connect::{agent_binary, ConnectError, Connector, Incoming, OpenRequest, Session};
use super::session::ChildSession;
use crate::sweep::{SlurmAllocation, SlurmNode};

/// How long a released allocation may take to leave `squeue`.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// A granted allocation: its job id and its hosts, in Slurm's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub job_id: String,
    pub hosts: Vec<String>,
}

/// A run's allocation, asked for when the first session opens and released when the run
/// ends; shared by the connectors of its nodes.
#[derive(Debug)]
pub struct Allocation {
    working_dir: PathBuf,
    /// The job name: `llem-<run id>`, so that `llem resume` finds an allocation an earlier
    /// run of the directory left behind even if it died before journaling the job id.
    name: String,
    state: Mutex<AllocationState>,
}

#[derive(Debug)]
enum AllocationState {
    NotAsked,
    Granted(Granted),
    Refused(String),
    /// Released (or never needed) at the run's end: a session still opening then must
    /// not make a new allocation, which nobody would release.
    Closed,
}

/// The job name of a run's allocation.
pub fn job_name(run_id: &str) -> String {
    format!("llem-{run_id}")
}

impl Allocation {
    /// The allocation of run `run_id` (`None`: a command that is not a run, such as
    /// `llem nodes check`).
    pub fn new(working_dir: &Path, run_id: Option<&str>) -> Self {
        let name = run_id.map_or_else(|| format!("llem-check-{}", std::process::id()), job_name);
        Allocation { working_dir: working_dir.to_owned(), name, state: Mutex::new(AllocationState::NotAsked) }
    }

    /// The allocation, asking Slurm for it the first time (salloc waits while it pends);
    /// and whether this call was that first time.
    pub fn granted(&self, spec: &SlurmAllocation) -> Result<(Granted, bool), ConnectError> {
        // Held while salloc waits: every other session waits for the same allocation, and
        // `release` cannot slip in between a grant and its record.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = matches!(*state, AllocationState::NotAsked);
        if new {
            *state = match self.request(spec) {
                Ok(g) => AllocationState::Granted(g),
                Err(why) => AllocationState::Refused(why),
            };
        }
        match &*state {
            AllocationState::Granted(g) => Ok((g.clone(), new)),
            AllocationState::Refused(why) => Err(ConnectError::Refused(why.clone())),
            AllocationState::Closed => Err(ConnectError::Refused("the run is over: no new allocation".to_owned())),
            AllocationState::NotAsked => unreachable!("set above"),
        }
    }

    fn request(&self, spec: &SlurmAllocation) -> Result<Granted, String> {
        let name = &self.name;
        let mut salloc = Command::new("salloc")
            .args(salloc_args(spec, name))
            .current_dir(&self.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run salloc ({e}): is this a Slurm login node?"))?;
        // Read as it comes: an allocation that pends is said at once, not after the wait.
        let mut said = String::new();
        if let Some(stderr) = salloc.stderr.take() {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("queued and waiting") {
                    tracing::warn!("{}: waiting until Slurm grants it", line.trim_start_matches("salloc: "));
                }
                said.push_str(&line);
                said.push('\n');
            }
        }
        let _ = salloc.wait();
        let Some(job_id) = granted_job_id(&said) else {
            return Err(format!("salloc did not grant an allocation: {}", last_line(&said)));
        };
        match hosts_of(&job_id) {
            Ok(hosts) => Ok(Granted { job_id, hosts }),
            Err(e) => {
                cancel(&job_id);
                Err(e)
            }
        }
    }

    /// Cancels the allocation (its steps have ended or are told to) and waits until Slurm
    /// no longer lists it.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let AllocationState::Granted(g) = std::mem::replace(&mut *state, AllocationState::Closed) {
            cancel(&g.job_id);
            let deadline = Instant::now() + RELEASE_WAIT;
            while Instant::now() < deadline && is_listed(&g.job_id) {
                std::thread::sleep(Duration::from_millis(200));
            }
            tracing::info!("Slurm allocation {} released", g.job_id);
        }
    }
}

/// salloc's arguments for `spec`: one task per slot on every node (the CPU slot and one
/// per GPU), so that concurrent steps fit.
pub fn salloc_args(spec: &SlurmAllocation, name: &str) -> Vec<String> {
    let mut a = vec![
        "--no-shell".to_owned(),
        format!("--job-name={name}"),
        format!("--nodes={}", spec.nodes),
        format!("--ntasks-per-node={}", spec.gpus_per_node + 1),
    ];
    if spec.gpus_per_node > 0 {
        a.push(format!("--gres=gpu:{}", spec.gpus_per_node));
    }
    let opt = |a: &mut Vec<String>, flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{flag}={v}"));
        }
    };
    opt(&mut a, "partition", &spec.partition);
    opt(&mut a, "time", &spec.time);
    opt(&mut a, "account", &spec.account);
    opt(&mut a, "qos", &spec.qos);
    opt(&mut a, "constraint", &spec.constraint);
    opt(&mut a, "reservation", &spec.reservation);
    a.extend(spec.extra.iter().cloned());
    a
}

/// srun's arguments for one agent session on `host`: a step of its own with one task, the
/// slot's GPU or none.
pub fn srun_args(job_id: &str, host: &str, gpu: Option<u32>, agent: &Path) -> Vec<String> {
    let mut a = step_args(job_id, host, gpu);
    a.push(agent.display().to_string());
    a.extend(["serve".to_owned(), "--stdio".to_owned()]);
    a
}

/// srun's options for a step of one task on `host`, with one GPU or none.
fn step_args(job_id: &str, host: &str, gpu: Option<u32>) -> Vec<String> {
    vec![
        format!("--jobid={job_id}"),
        "--exact".to_owned(),
        "--nodes=1".to_owned(),
        "--ntasks=1".to_owned(),
        format!("--nodelist={host}"),
        format!("--gres={}", if gpu.is_some() { "gpu:1" } else { "none" }),
        "--unbuffered".to_owned(),
        "--quiet".to_owned(),
        "--job-name=llem-agent".to_owned(),
        format!("--export=ALL,{STEP_ENV}=1"),
    ]
}

/// The job id in salloc's "Granted job allocation 1234".
pub fn granted_job_id(said: &str) -> Option<String> {
    let rest = said.split("Granted job allocation ").nth(1)?;
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!id.is_empty()).then_some(id)
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(it said nothing)").trim()
}

/// The hosts of a granted job, expanded from its node list.
fn hosts_of(job_id: &str) -> Result<Vec<String>, String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--format=%N", &format!("--jobs={job_id}")])
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    let list = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if list.is_empty() {
        return Err(format!("Slurm lists no nodes for allocation {job_id}"));
    }
    let out = Command::new("scontrol")
        .args(["show", "hostnames", &list])
        .output()
        .map_err(|e| format!("cannot run scontrol: {e}"))?;
    let hosts: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    if hosts.is_empty() {
        return Err(format!("scontrol could not expand the node list {list:?} of allocation {job_id}"));
    }
    Ok(hosts)
}

fn cancel(job_id: &str) {
    if let Err(e) = Command::new("scancel").arg(job_id).status() {
        tracing::warn!("cannot run scancel {job_id}: {e}");
    }
}

/// Whether Slurm lists the job as pending or running (an ended job is not listed).
fn is_listed(job_id: &str) -> bool {
    Command::new("squeue")
        .args(["--noheader", "--format=%i", &format!("--jobs={job_id}")])
        .output()
        .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
        .unwrap_or(false)
}

/// Cancels what an earlier run of this run directory left in Slurm: the allocations its
/// journal records and any job of ours with its name, that are still listed. Waits until
/// they are gone; returns their ids.
pub fn release_leftovers(run_id: &str, recorded: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = recorded.iter().filter(|id| is_listed(id)).cloned().collect();
    let by_name = Command::new("squeue")
        .args(["--me", "--noheader", "--format=%i", &format!("--name={}", job_name(run_id))])
        .output();
    if let Ok(out) = by_name {
        ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
    }
    ids.sort();
    ids.dedup();
    for id in &ids {
        cancel(id);
    }
    let deadline = Instant::now() + RELEASE_WAIT;
    while Instant::now() < deadline && ids.iter().any(|id| is_listed(id)) {
        std::thread::sleep(Duration::from_millis(200));
    }
    ids
}

/// Why an allocation that Slurm no longer lists ended, in words, from `scontrol` (which
/// remembers an ended job for `MinJobAge`, 300 s by default).
fn why_ended(job_id: &str) -> String {
    let shown = Command::new("scontrol")
        .args(["--oneliner", "show", "job", job_id])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ended_in_words(job_id, &shown)
}

/// The words for an ended job, from its `scontrol --oneliner show job` line.
pub fn ended_in_words(job_id: &str, shown: &str) -> String {
    let field = |name: &str| {
        shown.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
    };
    let what = match field("JobState") {
        "TIMEOUT" => format!("it reached its time limit ({})", field("TimeLimit")),
        "PREEMPTED" => "it was pre-empted".to_owned(),
        "CANCELLED" => "it was cancelled (scancel)".to_owned(),
        "NODE_FAIL" => "a node of it failed".to_owned(),
        "DEADLINE" => "it reached its deadline".to_owned(),
        "" => "Slurm no longer knows why".to_owned(),
        state => format!("its state is {state}"),
    };
    format!("Slurm allocation {job_id} has ended: {what}")
}

/// Why a node of a live allocation cannot be used (down, drained, failing), or `None`.
fn node_unusable(host: &str) -> Option<String> {
    let out = Command::new("sinfo").args(["--noheader", "--format=%T|%E", &format!("--nodes={host}")]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_owned();
    let (state, reason) = line.split_once('|').unwrap_or((&line, ""));
    let bad = ["down", "drain", "fail", "maint", "not_responding", "inval"];
    let state = state.trim_end_matches(['*', '~', '#', '!', '%', '$', '@', '^', '-']);
    bad.iter().any(|b| state.contains(b)).then(|| format!("Slurm node {host} is {state} ({reason})"))
}

/// Node `index` of the run's allocation.
#[derive(Debug)]
pub struct SlurmConnector {
    node: SlurmNode,
    allocation: std::sync::Arc<Allocation>,
    working_dir: PathBuf,
}

impl SlurmConnector {
    pub fn new(node: &SlurmNode, options: &super::ConnectOptions) -> Self {
        SlurmConnector {
            node: node.clone(),
            allocation: std::sync::Arc::clone(&options.slurm),
            working_dir: options.working_dir.clone(),
        }
    }

    fn agent(&self) -> PathBuf {
        self.node.allocation.agent.clone().unwrap_or_else(agent_binary)
    }

    /// The allocation's job id and this node's host in it; the job id too when this call
    /// made the allocation.
    fn host(&self) -> Result<(String, String, Option<Granted>), ConnectError> {
        let (g, new) = self.allocation.granted(&self.node.allocation)?;
        let host = g.hosts.get(self.node.index as usize).cloned().ok_or_else(|| {
            ConnectError::Refused(format!(
                "allocation {} has {} node(s); this sweep asked for {}",
                g.job_id,
                g.hosts.len(),
                self.node.allocation.nodes
            ))
        })?;
        Ok((g.job_id.clone(), host, new.then_some(g)))
    }
}

impl Connector for SlurmConnector {
    fn deploy(&self) -> Result<String, ConnectError> {
        let agent = self.agent();
        if !agent.is_file() {
            return Err(ConnectError::Refused(format!(
                "the agent {} does not exist: Slurm nodes run it from a filesystem they share with this one (`agent:` in `nodes: {{slurm: …}}`)",
                agent.display()
            )));
        }
        Ok(agent.display().to_string())
    }

    fn open(&self, request: OpenRequest) -> Result<Box<dyn Session>, ConnectError> {
        let agent = PathBuf::from(self.deploy()?);
        let (job_id, host, new) = self.host()?;
        if let Some(g) = new {
            // Journaled before any step starts in it.
            let _ = request.events.send(Incoming::Allocated { id: g.job_id, hosts: g.hosts });
        }
        let mut command = Command::new("srun");
        command.args(srun_args(&job_id, &host, request.gpu, &agent));
        if self.working_dir.is_dir() {
            command.current_dir(&self.working_dir);
        }
        Ok(Box::new(ChildSession::start_over_srun(command, &request)?))
    }

    fn reconnect(&self) -> Result<(), ConnectError> {
        let (job_id, host, _) = self.host()?;
        if !is_listed(&job_id) {
            return Err(ConnectError::Ended(why_ended(&job_id)));
        }
        match node_unusable(&host) {
            Some(why) => Err(ConnectError::Refused(why)),
            None => Ok(()),
        }
    }

    /// A no-op step (`true`) on this node of the allocation, timed: what every session
    /// costs to start, the floor of a job's overhead here.
    fn round_trip(&self) -> Result<Duration, ConnectError> {
        let (job_id, host, _) = self.host()?;
        let started = Instant::now();
        let out = Command::new("srun")
            .args(step_args(&job_id, &host, None))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ConnectError::Refused(format!("cannot run srun: {e}")))?;
        if !out.status.success() {
            return Err(ConnectError::Unreachable(format!(
                "a no-op step on {host} failed: {}",
                last_line(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        Ok(started.elapsed())
    }

    fn close(&self) {
        self.allocation.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SlurmAllocation {
        SlurmAllocation {
            partition: Some("gpu".into()),
            nodes: 2,
            gpus_per_node: 4,
            time: Some("04:00:00".into()),
            account: None,
            qos: None,
            constraint: Some("h100".into()),
            reservation: None,
            extra: vec!["--exclusive".into()],
            agent: None,
        }
    }

    #[test]
    fn salloc_asks_for_every_slot_as_a_task_and_the_gpus_as_gres() {
        assert_eq!(
            salloc_args(&spec(), "llem-1"),
            [
                "--no-shell",
                "--job-name=llem-1",
                "--nodes=2",
                "--ntasks-per-node=5",
                "--gres=gpu:4",
                "--partition=gpu",
                "--time=04:00:00",
                "--constraint=h100",
                "--exclusive"
            ]
        );
    }

    #[test]
    fn a_step_has_one_task_and_its_slots_gpu_or_none() {
        let a = srun_args("42", "gpu-a", Some(1), Path::new("/shared/llem-agent"));
        assert!(a.contains(&"--gres=gpu:1".to_owned()) && a.contains(&"--exact".to_owned()), "{a:?}");
        assert_eq!(a[a.len() - 3..], ["/shared/llem-agent", "serve", "--stdio"]);
        assert!(srun_args("42", "gpu-a", None, Path::new("a")).contains(&"--gres=none".to_owned()));
    }

    #[test]
    fn an_ended_allocation_says_why_in_words() {
        let line = "JobId=7 JobName=llem-x JobState=TIMEOUT Reason=TimeLimit TimeLimit=00:01:00 NodeList=vm";
        assert_eq!(ended_in_words("7", line), "Slurm allocation 7 has ended: it reached its time limit (00:01:00)");
        assert!(ended_in_words("7", "JobId=7 JobState=PREEMPTED").ends_with("it was pre-empted"));
        assert!(ended_in_words("7", "").ends_with("Slurm no longer knows why"));
    }

    #[test]
    fn the_job_id_comes_from_sallocs_words() {
        assert_eq!(granted_job_id("salloc: Granted job allocation 1234\n").as_deref(), Some("1234"));
        assert_eq!(granted_job_id("salloc: error: Invalid partition name specified"), None);
    }
}
