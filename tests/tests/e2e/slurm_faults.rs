//! The Slurm transport when things go wrong outside llem: a coordinator killed outright,
//! an allocation that reaches its time limit; and `llem nodes check` of a Slurm sweep.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use llem_tests::{first_run_dir, llem_in};

use super::slurm::{cluster, Coordinator, STEP_JOBS};

/// Per job of a run directory: how many attempts have a result.
fn results_per_job(run: &Path) -> Vec<usize> {
    std::fs::read_dir(run.join("jobs"))
        .map(|jobs| {
            jobs.flatten()
                .map(|job| {
                    std::fs::read_dir(job.path())
                        .map(|a| a.flatten().filter(|a| a.path().join("result.json").is_file()).count())
                        .unwrap_or(0)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `llem resume RUN` against the cluster; it must exit 0. Returns its stderr.
fn resume(dir: &Path, slurm: &llem_tests::slurm::SlurmCluster, run: &Path) -> String {
    let out = llem_in(dir, &["resume", &run.display().to_string()])
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .expect("llem resume");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

fn wait_for(what: &str, within: Duration, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < within, "waited {} s for {what}", within.as_secs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_coordinators_steps_stop_by_themselves_and_resume_runs_each_job_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    let sweep = STEP_JOBS
        .replace("time.sleep(0.5)", "open(os.environ['LLEM_JOB_DIR'] + '/started', 'w').close(); time.sleep(2)");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let mut llem = Coordinator(Some(
        llem_in(dir.path(), &["run", "sweep.yaml"])
            .env("SLURM_CONF", &slurm.conf)
            // Agents give up after six missed heartbeats: 3 s here.
            .env("LLEM_HEARTBEAT_S", "0.5")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llem run"),
    ));
    wait_for("a job to start", Duration::from_secs(60), || {
        llem_tests::files_under(dir.path()).iter().any(|p| p.ends_with("started"))
    });
    // SIGKILL to the coordinator's whole group, srun included: Slurm then leaves the
    // steps' tasks running with their input open. Only the heartbeat can stop them.
    let group = llem.child().id();
    let killed = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
    assert!(killed.expect("kill").success());
    let _ = llem.child().wait();
    llem.0 = None;
    let steps = || slurm.listed().into_iter().filter(|l| l.ends_with("llem-agent")).collect::<Vec<_>>();
    wait_for("the agent steps to stop by themselves", Duration::from_secs(30), || steps().is_empty());
    let left = slurm.listed();
    assert!(left.iter().any(|l| l.contains("llem-steps")), "the allocation stays: {left:?}");

    let run = first_run_dir(dir.path()).expect("run dir");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(journal.contains(r#""event":"allocated""#), "the allocation is journaled: {journal}");
    let stderr = resume(dir.path(), &slurm, &run);
    assert!(stderr.contains("which an earlier run of this directory left behind"), "{stderr}");
    let per_job = results_per_job(&run);
    assert_eq!(per_job, vec![1; 6], "every job has exactly one result\n{stderr}");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "no step or allocation of ours is left: {left:?}");
}

#[test]
fn an_allocation_that_reaches_its_time_limit_stops_the_run_and_resume_finishes_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    // 8 jobs of 25 s on two GPUs take 100 s; Slurm ends a 1-minute allocation 60 to 90 s
    // in (it checks limits every 30 s). What is left then takes at most 50 s: a second
    // 1-minute allocation holds it.
    let sweep = STEP_JOBS
        .replace("time.sleep(0.5)", "time.sleep(25)")
        .replace("n_prompts: [1, 2, 3, 4, 5, 6]", "n_prompts: [1, 2, 3, 4, 5, 6, 7, 8]")
        .replace("time: \"10\"", "time: \"1\"");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).env("SLURM_CONF", &slurm.conf).output().expect("llem run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has ended: it reached its time limit (00:01:00)"), "{stderr}");
    assert!(stderr.contains("No job was failed for it: `llem resume"), "{stderr}");
    let run = first_run_dir(dir.path()).expect("run dir");
    let done = results_per_job(&run).iter().sum::<usize>();
    assert!((2..8).contains(&done), "some jobs finished before the limit, not all: {done}");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(journal.contains(r#""event":"stopped""#), "{journal}");
    assert!(!journal.contains(r#""retryable":false"#), "no job is failed for good: {journal}");

    let stderr = resume(dir.path(), &slurm, &run);
    assert_eq!(results_per_job(&run), vec![1; 8], "every job has exactly one result\n{stderr}");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn nodes_check_shows_the_partition_the_gpus_and_that_the_agent_runs_in_a_step() {
    let dir = tempfile::tempdir().expect("tmp");
    let slurm = cluster(dir.path());
    std::fs::write(dir.path().join("sweep.yaml"), STEP_JOBS).expect("sweep");
    let out = llem_in(dir.path(), &["nodes", "check", "sweep.yaml"])
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .expect("llem nodes check");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("slurm-0")).unwrap_or_else(|| panic!("a row: {stdout}"));
    assert!(row.contains(" yes ") && row.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
    assert!(stdout.contains("slurm partition gpu:"), "{stdout}");
    let node = stdout.lines().find(|l| l.trim_start().starts_with(&slurm.node)).expect("the node under the table");
    assert!(node.contains("gres gpu:2") && node.contains("cpus 8"), "{stdout}");

    let out = llem_in(dir.path(), &["nodes", "check", "sweep.yaml", "--json"])
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .expect("llem nodes check --json");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rtt = rows[0]["rtt_ms"].as_f64().expect("a round trip");
    assert!(rtt > 0.0, "a no-op step was timed: {rtt}");
    assert_eq!(rows[0]["slurm"]["nodes"][0]["gres"], "gpu:2", "{rows}");
    assert!(rows[0]["probe"]["node"]["hostname"].is_string(), "the agent probed its node: {rows}");

    // A partition that does not exist: the row says so, and so does the exit code.
    std::fs::write(dir.path().join("bad.yaml"), STEP_JOBS.replace("partition: gpu", "partition: nope")).expect("sweep");
    let out = llem_in(dir.path(), &["nodes", "check", "bad.yaml"])
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .expect("llem nodes check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("salloc did not grant an allocation") && stdout.contains("nope"), "{stdout}");
    let left = slurm.wait_until_empty(Duration::from_secs(30));
    assert!(left.is_empty(), "the check released its allocation: {left:?}");
}
