//! The Slurm transport against a real slurmctld/slurmd (started here, one node with two
//! fake GPUs as gres): every agent session is a job step of one allocation.

use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use llem_tests::slurm::SlurmCluster;
use llem_tests::{first_run_dir, llem_in};

pub(crate) fn cluster(dir: &std::path::Path) -> SlurmCluster {
    // Never a silent skip: without Slurm the test fails, saying why.
    SlurmCluster::start(dir, 8, 2).unwrap_or_else(|why| panic!("cannot start the test Slurm cluster: {why}"))
}

pub(crate) const STEP_JOBS: &str = "name: steps\nmodel: label\nengine: command\ndevice: cuda\n\
    command: [python3, -c, \"import os, time; open(os.environ['LLEM_JOB_DIR'] + '/step.txt', 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset') + ' ' + os.environ.get('SLURM_STEP_ID', 'none')); time.sleep(0.5)\"]\n\
    measurement: {energy: none, baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\n\
    sweep:\n  n_prompts: [1, 2, 3, 4, 5, 6]\nexecution: {cycles: 1}\n\
    nodes:\n  slurm: {partition: gpu, nodes: 1, gpus_per_node: 2, time: \"10\"}\n";

#[test]
fn a_sweep_runs_as_steps_of_one_allocation_one_gpu_each() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    std::fs::write(dir.path().join("sweep.yaml"), STEP_JOBS).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).env("SLURM_CONF", &slurm.conf).output().expect("llem run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("6 of 6 jobs finished")
            || String::from_utf8_lossy(&out.stdout).contains("6 of 6 jobs finished"),
        "{stderr}"
    );
    let run = first_run_dir(dir.path()).expect("run dir");
    let mut gpus = Vec::new();
    let mut steps = std::collections::BTreeSet::new();
    let mut results = 0;
    for job in std::fs::read_dir(run.join("jobs")).expect("jobs").flatten() {
        let attempts: Vec<_> = std::fs::read_dir(job.path()).expect("attempts").flatten().collect();
        assert_eq!(attempts.len(), 1, "one attempt per job: {attempts:?}");
        let attempt = attempts[0].path();
        assert!(attempt.join("result.json").is_file(), "{}", attempt.display());
        results += 1;
        let seen = std::fs::read_to_string(attempt.join("step.txt")).expect("step.txt");
        let (visible, step) = seen.split_once(' ').expect("two words");
        assert_ne!(step, "none", "the job ran inside a Slurm step");
        gpus.push(visible.to_owned());
        steps.insert(step.to_owned());
    }
    assert_eq!(results, 6);
    gpus.sort();
    gpus.dedup();
    assert_eq!(gpus, ["0", "1"], "each step had its own GPU, and both were used");
    assert!(steps.len() >= 2, "sessions on the two GPUs are two steps: {steps:?}");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "the allocation and its steps are gone: {left:?}");
}

/// Kills a coordinator a failed assertion left running (with its process group).
pub(crate) struct Coordinator(pub(crate) Option<std::process::Child>);

impl Coordinator {
    pub(crate) fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
    }
}

#[test]
fn ctrl_c_stops_the_steps_releases_the_allocation_and_exits_130() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    let sweep = STEP_JOBS
        .replace("time.sleep(0.5)", "open(os.environ['LLEM_JOB_DIR'] + '/started', 'w').close(); time.sleep(600)");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    // As a terminal does: SIGINT to the whole process group (srun included).
    let mut llem = Coordinator(Some(
        llem_in(dir.path(), &["run", "sweep.yaml"])
            .env("SLURM_CONF", &slurm.conf)
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llem run"),
    ));
    let start = std::time::Instant::now();
    loop {
        // A running job's folder is in the agent's state dir until its result is sent.
        let started = llem_tests::files_under(dir.path()).iter().filter(|p| p.ends_with("started")).count();
        if started == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "two jobs did not start on the two GPUs: {started}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(slurm.listed().iter().any(|l| l.contains("llem-agent")), "the agents run as steps: {:?}", slurm.listed());
    let group = llem.child().id();
    let sent = std::process::Command::new("kill").args(["-INT", "--", &format!("-{group}")]).status().expect("kill");
    assert!(sent.success());
    let status = llem.child().wait().expect("wait");
    assert_eq!(status.code(), Some(130), "interrupted");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "nothing of ours is left in squeue: {left:?}");
}

#[test]
fn steps_killed_by_scancel_mid_job_are_started_again_and_their_jobs_retried() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    let sweep = STEP_JOBS
        .replace("time.sleep(0.5)", "open(os.environ['LLEM_JOB_DIR'] + '/started', 'w').close(); time.sleep(2)");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let mut llem = Coordinator(Some(
        llem_in(dir.path(), &["run", "sweep.yaml"])
            .env("SLURM_CONF", &slurm.conf)
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("llem run"),
    ));
    let start = std::time::Instant::now();
    while !llem_tests::files_under(dir.path()).iter().any(|p| p.ends_with("started")) {
        assert!(start.elapsed() < Duration::from_secs(60), "no job started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `scancel JOB.STEP` kills each agent step at once (SIGKILL), mid-job.
    let steps: Vec<String> = slurm
        .listed()
        .iter()
        .filter(|l| l.ends_with("llem-agent"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(!steps.is_empty(), "{:?}", slurm.listed());
    let cancelled = slurm.command("scancel").args(&steps).status().expect("scancel");
    assert!(cancelled.success());
    let out = llem.0.take().expect("running").wait_with_output().expect("llem run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run = first_run_dir(dir.path()).expect("run dir");
    let mut results = 0;
    for job in std::fs::read_dir(run.join("jobs")).expect("jobs").flatten() {
        let attempts: Vec<_> = std::fs::read_dir(job.path()).expect("attempts").flatten().map(|e| e.path()).collect();
        results += attempts.iter().filter(|a| a.join("result.json").is_file()).count();
    }
    assert_eq!(results, 6, "every job has exactly one result\n{stderr}");
    // A lost attempt leaves no folder in the run: the progress says what happened.
    assert!(stderr.contains("failed (connection lost)") && stderr.contains("attempt 2 on"), "{stderr}");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "{left:?}");
}
