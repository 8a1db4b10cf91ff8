//! Cluster faults against real OpenSSH servers: a node that goes away, a session that
//! drops, a partitioned link, a coordinator killed after a job finished remotely, and
//! cancellation that leaves nothing running on the node.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use llem_tests::{Netns, Sshd};

use crate::cluster::{journal, nodes_yaml, setup, JOBS};

/// A running coordinator whose stderr lines the test can wait for.
struct Coordinator {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Coordinator {
    fn start(dir: &Path, args: &[&str]) -> Coordinator {
        let mut child = llem_tests::coordinator()
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("llem");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Coordinator { child, lines, seen: Vec::new() }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("llem never said {needle:?}; it said:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success(), "kill {signal}");
    }

    /// Waits for the exit; returns the status and everything it wrote to stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("llem exits");
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

/// Polls `done` (another process's files or processes: there is no event to wait on).
fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_dir(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("runs")).expect("runs").flatten().next().expect("run").path()
}

/// The run's identity on the nodes (its outbox's name), from the journal's header.
fn run_id(run: &Path) -> String {
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    let header: serde_json::Value = serde_json::from_str(journal.lines().next().expect("header")).expect("json");
    header["run_id"].as_str().expect("run_id").to_owned()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The job id in a "[k/n] <job> attempt a on <slot>" progress line.
fn job_of(line: &str) -> String {
    line.split_whitespace().nth(1).expect("job id").to_owned()
}

fn write_sweep(dir: &Path, jobs: &str, nodes: &[Sshd]) {
    let kh = dir.join("known_hosts");
    std::fs::write(&kh, nodes.iter().map(Sshd::known_hosts_line).collect::<String>()).expect("known_hosts");
    std::fs::write(dir.join("sweep.yaml"), format!("{jobs}{}", nodes_yaml(dir, nodes, &kh))).expect("sweep");
}

/// 4 × `cycles` jobs of 0.6 to 2.4 s, retried twice.
fn slow_jobs(cycles: u32) -> String {
    JOBS.replace("max_output_tokens: 30", "max_output_tokens: 300")
        .replace("{cycles: 3}", &format!("{{cycles: {cycles}, retries: 2}}"))
}

#[test]
fn a_node_lost_mid_sweep_leaves_the_rest_to_finish() {
    let (dir, mut nodes) = setup(3);
    write_sweep(dir.path(), &slow_jobs(3), &nodes);
    let mut llem = Coordinator::start(dir.path(), &["run", "sweep.yaml"]);
    // Once node 2 has started a job, take it away (server, agent and all).
    llem.wait_for("on n2/cpu");
    nodes[1].kill_node();
    llem.wait_for("connection to node n2 lost");
    let (status, stderr) = llem.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let j = journal(dir.path());
    assert_eq!(count(&j, "\"finished\""), 12, "{j}");
    assert!(j.contains("connection to n2/cpu lost"), "the lost attempt is journaled: {j}");
}

#[test]
fn a_dropped_session_reconnects_and_the_job_runs_again() {
    let (dir, nodes) = setup(1);
    write_sweep(dir.path(), &slow_jobs(1), &nodes);
    let mut llem = Coordinator::start(dir.path(), &["run", "sweep.yaml"]);
    let line = llem.wait_for("attempt 1 on n1/cpu");
    let job = job_of(&line);
    // The agent dies mid-job; the server stays: the node comes back at once.
    poll_until("the agent", || !nodes[0].session_processes().is_empty());
    nodes[0].kill_sessions();
    llem.wait_for("connection to node n1 lost");
    llem.wait_for("node n1 is back");
    let (status, stderr) = llem.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let j = journal(dir.path());
    assert_eq!(count(&j, "\"finished\""), 4, "every job finished once: {j}");
    assert!(
        j.contains(&format!("\"event\":\"finished\",\"job\":\"{job}\",\"attempt\":2")),
        "the lost attempt ran again with a new number: {j}"
    );
}

#[test]
fn a_partitioned_node_reconnects_and_nothing_is_lost_or_repeated() {
    let netns = match Netns::create(1) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are not permitted here ({why}); the partition test needs them");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    llem_tests::client_key(dir.path());
    let nodes = vec![Sshd::start_in(dir.path(), 0, &netns)];
    write_sweep(dir.path(), &slow_jobs(1), &nodes);
    let mut llem = Coordinator::start(dir.path(), &["run", "sweep.yaml"]);
    let job = job_of(&llem.wait_for("attempt 1 on n1/cpu"));
    // Wait until the node has the job (the `run` message could still be on the wire,
    // and would then be lost with the connection): its outbox directory appears when it
    // starts.
    let run_name = run_id(&run_dir(dir.path()));
    let started = nodes[0].dir.join("state/outbox").join(run_name).join(&job).join("attempt-1");
    poll_until("the node to start the job", || started.exists());
    // Link down mid-job: packets vanish, nothing is reset; the keepalives notice.
    netns.link(false);
    llem.wait_for("connection to node n1 lost");
    netns.link(true);
    llem.wait_for("node n1 is back");
    let (status, stderr) = llem.finish();
    eprintln!("{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let j = journal(dir.path());
    let finished: Vec<&str> = j.lines().filter(|l| l.contains("\"finished\"")).collect();
    let jobs: std::collections::BTreeSet<String> = finished
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["job"].as_str().map(str::to_owned))
        .collect();
    assert_eq!((finished.len(), jobs.len()), (4, 4), "each job finished exactly once: {j}");
    // The job cut off finished on the node during the partition (it takes 0.6 s, the
    // keepalives 15 s): its result came from the outbox, and it never ran again.
    assert!(stderr.contains("collected 1 finished attempt(s) from n1/cpu"), "{stderr}");
    assert!(j.contains(&format!("\"event\":\"finished\",\"job\":\"{job}\",\"attempt\":1")), "{j}");
    assert_eq!(count(&j, &format!("\"event\":\"dispatched\",\"job\":\"{job}\"")), 1, "{j}");
    drop(nodes);
}

#[test]
fn a_result_finished_while_the_coordinator_died_is_collected_on_resume() {
    let (dir, nodes) = setup(1);
    write_sweep(dir.path(), &slow_jobs(1), &nodes);
    let mut llem = Coordinator::start(dir.path(), &["run", "sweep.yaml"]);
    let job = job_of(&llem.wait_for("attempt 1 on n1/cpu"));
    // Freeze the coordinator mid-job, let the job finish on the node, then kill it: the
    // result exists only in the node's outbox.
    llem.signal("-STOP");
    let run_name = run_id(&run_dir(dir.path()));
    let outbox = nodes[0].dir.join("state/outbox").join(run_name).join(&job).join("attempt-1");
    poll_until("the result in the outbox", || outbox.join("result.json").exists());
    llem.signal("-KILL");
    let _ = llem.finish();
    let run = run_dir(dir.path());
    let before = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(!before.contains("\"finished\""), "nothing was journaled before the kill: {before}");

    let out = llem_tests::coordinator()
        .args(["resume", run.to_str().expect("utf8")])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let j = journal(dir.path());
    assert_eq!(count(&j, "\"finished\""), 4, "{j}");
    assert!(j.contains(&format!("\"event\":\"finished\",\"job\":\"{job}\",\"attempt\":1")), "{j}");
    assert_eq!(count(&j, &format!("\"event\":\"dispatched\",\"job\":\"{job}\"")), 1, "never re-run: {j}");
    assert!(run.join("jobs").join(&job).join("attempt-1/timeseries.parquet").exists(), "its files came too");
    assert!(!outbox.exists(), "acknowledged, so the node forgot it");
}

/// A remote job that runs until `flag` exists; its command line carries `marker`.
fn waiting_jobs(flag: &Path, marker: &str) -> String {
    format!(
        "name: int\nmodel: waiter\nengine: command\ncommand: [python3, -c, \"import os,sys,time\\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\", {:?}, {marker}]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\nsweep: {{n_prompts: [1, 2]}}\nexecution: {{cycles: 1}}\n",
        flag.display().to_string()
    )
}

fn running(marker: &str) -> bool {
    Command::new("pgrep").args(["-f", marker]).output().expect("pgrep").status.success()
}

/// A one-node run whose first job is running its program on the node: (files, node,
/// program marker, the flag that lets it finish, llem).
fn remote_program_running(tag: &str) -> (tempfile::TempDir, Vec<Sshd>, String, PathBuf, Coordinator) {
    let (dir, nodes) = setup(1);
    let flag = dir.path().join("go");
    let marker = format!("llem-remote-{tag}-{}", std::process::id());
    write_sweep(dir.path(), &waiting_jobs(&flag, &marker), &nodes);
    let mut llem = Coordinator::start(dir.path(), &["run", "sweep.yaml"]);
    llem.wait_for("attempt 1 on n1/cpu");
    poll_until("the remote program", || running(&marker));
    (dir, nodes, marker, flag, llem)
}

#[test]
fn ctrl_c_stops_the_remote_job_and_frees_the_node() {
    let (dir, nodes, marker, flag, llem) = remote_program_running("cancel");
    llem.signal("-INT");
    let (status, stderr) = llem.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    // By the time llem exits, the node runs nothing of ours.
    assert!(!running(&marker), "the remote program survived");
    assert_eq!(nodes[0].session_processes(), Vec::<u32>::new(), "an agent survived");
    let j = journal(dir.path());
    assert!(j.contains("\"cancelled\"") && !j.contains("\"finished\""), "{j}");
    // The device lock is free: the rest runs.
    std::fs::write(&flag, "").expect("flag");
    let run = run_dir(dir.path());
    let out = llem_tests::coordinator()
        .args(["resume", run.to_str().expect("utf8")])
        .current_dir(dir.path())
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 of 2 jobs finished"));
}

#[test]
fn a_coordinator_that_vanishes_leaves_no_orphan_on_the_node() {
    let (_dir, nodes, marker, _flag, llem) = remote_program_running("orphan");
    // No goodbye: the channel just closes. The agent stops the job and exits.
    llem.signal("-KILL");
    let _ = llem.finish();
    poll_until("the remote program to be stopped", || !running(&marker));
    poll_until("the agent to exit", || nodes[0].session_processes().is_empty());
}
