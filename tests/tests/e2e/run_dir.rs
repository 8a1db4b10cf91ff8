//! The run directory holds everything: `report`, `status` and `resume` work from another
//! directory after the sweep's files moved; files larger than a frame arrive intact; a
//! model missing on the node is one clear failure; bad input exits 2 with a sentence.

use std::path::{Path, PathBuf};
use std::process::Command;

fn llem(cwd: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    llem_tests::coordinator()
        .args(args)
        .current_dir(cwd)
        .env("LLEM_STATE_DIR", state.join("agent-state"))
        .env("LLEM_POWERCAP_ROOT", state.join("no-powercap"))
        .env_remove("RUST_LOG")
        .output()
        .expect("llem")
}

fn run_dir(runs: &Path) -> PathBuf {
    std::fs::read_dir(runs).expect("runs").flatten().map(|e| e.path()).find(|p| p.is_dir()).expect("a run dir")
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn report_status_and_resume_work_from_elsewhere_after_the_files_moved() {
    let root = tempfile::tempdir().expect("tmp");
    let project = root.path().join("project");
    std::fs::create_dir_all(project.join("sweeps/cpu")).expect("dirs");
    let flag = root.path().join("second-job-may-pass");
    // The second configuration fails until the flag exists: resume has work left.
    std::fs::write(
        project.join("sweeps/base.yaml"),
        format!(
            "model: flaky\nengine: command\ncommand: [python3, -c, \"import os,sys; sys.exit(0 if sys.argv[2] == '1' or os.path.exists(sys.argv[1]) else 3)\", {:?}, \"1\"]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\nexecution: {{cycles: 1, retries: 0}}\n",
            flag.display().to_string()
        ),
    )
    .expect("base");
    std::fs::write(project.join("sweeps/nodes.yaml"), "local\n").expect("nodes");
    let top = format!(
        "name: moved\nbase: ../base.yaml\nnodes_file: ../nodes.yaml\ninclude:\n  - {{command: [python3, -c, \"import os,sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 3)\", {:?}]}}\n",
        flag.display().to_string()
    );
    std::fs::write(project.join("sweeps/cpu/s.yaml"), top).expect("top");
    let out = llem(&project, root.path(), &["run", "sweeps/cpu/s.yaml"]);
    assert_eq!(out.status.code(), Some(1), "one job fails: {}", text(&out).1);
    let run = run_dir(&project.join("runs"));
    for copy in ["sweep/cpu/s.yaml", "sweep/base.yaml", "sweep/nodes.yaml"] {
        assert!(run.join(copy).is_file(), "{copy} kept in the run directory");
    }
    // The originals go away, and everything is done from somewhere else.
    std::fs::rename(project.join("sweeps"), root.path().join("moved-away")).expect("move");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let run_arg = run.to_str().expect("utf8");
    let out = llem(&elsewhere, root.path(), &["report", run_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(text(&out).0.contains("1 finished jobs"), "{}", text(&out).0);
    let out = llem(&elsewhere, root.path(), &["status", "--json", run_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((status["counts"]["finished"].as_u64(), status["counts"]["failed"].as_u64()), (Some(1), Some(1)));
    std::fs::write(&flag, "").expect("flag");
    let out = llem(&elsewhere, root.path(), &["resume", "--retry-failed", run_arg]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("2 of 2 jobs finished"), "{stdout}");
    assert!(!elsewhere.join("runs").exists(), "nothing was written where resume ran");
}

#[test]
fn a_file_larger_than_a_frame_arrives_intact() {
    let dir = tempfile::tempdir().expect("tmp");
    // 20 MiB of incompressible bytes, written into the attempt's directory by the job.
    let size = 20 * 1024 * 1024;
    let write = format!(
        "import os,random; r = random.Random(7); open(os.path.join(os.environ['LLEM_JOB_DIR'], 'outputs.bin'), 'wb').write(r.randbytes({size}))"
    );
    let sweep = format!(
        "name: big\nmodel: writer\nengine: command\ncommand: [python3, -c, {write:?}]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\nexecution: {{cycles: 1}}\n"
    );
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem(dir.path(), dir.path(), &["run", "sweep.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let run = run_dir(&dir.path().join("runs"));
    let job = std::fs::read_dir(run.join("jobs")).expect("jobs").flatten().next().expect("job").path();
    let stored = job.join("attempt-1").join("outputs.bin");
    let check = format!(
        "import hashlib,random,sys; r = random.Random(7); want = hashlib.sha256(r.randbytes({size})).hexdigest(); got = hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest(); print(want == got)"
    );
    let same = Command::new("python3").arg("-c").arg(check).arg(&stored).output().expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&same.stdout).trim(),
        "True",
        "{} differs from what the job wrote",
        stored.display()
    );
    assert_eq!(std::fs::metadata(&stored).expect("stored").len(), size as u64);
    let outbox = dir.path().join("agent-state").join("outbox");
    assert_eq!(std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0), 0, "acknowledged, so the agent let go");
}

#[test]
fn a_model_missing_on_the_node_fails_its_jobs_before_they_start() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("sweep.yaml"),
        "name: nomodel\nmodel: models/not-here.gguf\nsweep: {batch_size: [1, 2]}\nexecution: {cycles: 1}\n",
    )
    .expect("sweep");
    let plan = llem(dir.path(), dir.path(), &["plan", "--json", "sweep.yaml"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan json");
    let kinds: Vec<&str> =
        plan["graph"]["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["kind"].as_str()).collect();
    assert!(kinds.contains(&"probe") && kinds.contains(&"prepare"), "{kinds:?}");
    let out = llem(dir.path(), dir.path(), &["run", "sweep.yaml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("models/not-here.gguf is not usable on node local"), "{stderr}");
    let run = run_dir(&dir.path().join("runs"));
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(!journal.contains("\"dispatched\""), "no job started: {journal}");
    assert_eq!(journal.matches("\"kind\":\"bad_job\"").count(), 2, "{journal}");
    let prepared: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("prepare").join("local.json")).expect("prepare")).expect("json");
    assert_eq!(prepared["models/not-here.gguf"]["status"], "unavailable");
    assert!(run.join("probe").join("local.json").is_file());
}

#[test]
fn bad_input_exits_2_with_a_sentence() {
    let dir = tempfile::tempdir().expect("tmp");
    for args in [&["resume", "/no/such/dir"][..], &["status", "/no/such/dir"], &["report", "/no/such/dir"]] {
        let out = llem(dir.path(), dir.path(), args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: /no/such/dir is not a run directory"), "{args:?}: {stderr}");
        assert!(!stderr.contains("failed to"), "{stderr}");
    }
    // A directory with a journal that is not one.
    std::fs::write(dir.path().join("journal.jsonl"), "not json\n").expect("write");
    let out = llem(dir.path(), dir.path(), &["status", dir.path().to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(text(&out).1.contains("cannot be read"), "{}", text(&out).1);
}

#[test]
fn resume_goes_on_with_its_copy_when_only_some_files_moved() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("base.yaml"),
        "model: synthetic\nengine: synthetic\nn_prompts: 1\nmax_output_tokens: 2\nmeasurement: {baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\nexecution: {cycles: 1}\n",
    )
    .expect("base");
    std::fs::write(dir.path().join("s.yaml"), "name: partial\nbase: base.yaml\nsweep: {batch_size: [1, 2]}\n")
        .expect("top");
    let out = llem(dir.path(), dir.path(), &["run", "s.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    // The top file stays; its base goes.
    std::fs::rename(dir.path().join("base.yaml"), dir.path().join("base.yaml.away")).expect("move");
    let run = run_dir(&dir.path().join("runs"));
    let out = llem(dir.path(), dir.path(), &["resume", run.to_str().expect("utf8")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("going on with the run's own copy"), "{stderr}");
    assert!(stdout.contains("2 of 2 jobs finished"), "{stdout}");
}
