//! `llem run` end to end with the real binaries, and the crash test: a sweep killed with
//! SIGKILL at random moments, then resumed, ends with every job's result exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llem_tests::{first_run_dir, llem_in};

const SWEEP: &str = "name: crash\nmodel: synthetic\nengine: synthetic\nn_prompts: 2\nmax_output_tokens: 40\nmeasurement: {baseline: {duration_s: 0}, warmup: {prompts: 1}, thermal_floor: {max_s: 0}}\nsweep:\n  synthetic.ms_per_token: [1, 2]\n  batch_size: [1, 2]\nexecution: {cycles: 2, order: interleaved}\n";
const JOBS: usize = 8;

fn journal_lines(run: Option<PathBuf>) -> usize {
    run.and_then(|r| std::fs::read_to_string(r.join("journal.jsonl")).ok()).map_or(0, |t| t.lines().count())
}

fn stray_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")) {
                found.push(p);
            }
        }
    }
    found
}

/// Checks a completed run: each job finished exactly once, results.parquet has a row per
/// job, no temp files remain.
fn check_complete(run: &Path) {
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    for line in journal.lines().skip(1) {
        let r: serde_json::Value = serde_json::from_str(line).expect("journal line");
        if r["event"] == "finished" {
            *finished.entry(r["job"].as_str().expect("job").to_owned()).or_default() += 1;
        }
    }
    assert_eq!(finished.len(), JOBS, "{finished:?}");
    assert!(finished.values().all(|&n| n == 1), "a job finished twice: {finished:?}");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); ids = t.column('job_id').to_pylist(); print(len(ids), len(set(ids)))")
        .arg(run.join("results.parquet"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{JOBS} {JOBS}"));
    let stray = stray_temp_files(run);
    assert!(stray.is_empty(), "temp files left: {stray:?}");
}

#[test]
fn a_sweep_runs_to_results_and_status() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("sweep.yaml"), SWEEP).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("llem run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("run dir");
    check_complete(&run);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 of 8 jobs finished") && stdout.contains("not measured"), "{stdout}");
    for f in [
        "sweep/sweep.yaml",
        "plan.json",
        "probe/local.json",
        "report/summary.md",
        "report/summary.csv",
        "report/index.html",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    // results.parquet opens unchanged in pandas, polars and DuckDB too.
    let readers = "import sys, pandas, polars, duckdb\np = sys.argv[1]\nprint(len(pandas.read_parquet(p)), polars.read_parquet(p).height, duckdb.sql(f\"select count(*) from read_parquet('{p}')\").fetchall()[0][0], polars.read_parquet(p)['synthetic_ms_per_token'].sum())";
    let out =
        Command::new("python3").arg("-c").arg(readers).arg(run.join("results.parquet")).output().expect("python3");
    assert!(
        out.status.success(),
        "pandas/polars/duckdb (scripts/test installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "8 8 8 12.0");
    // The report says where the jobs ran, from the node's probe.
    let index = std::fs::read_to_string(run.join("report").join("index.html")).expect("index.html");
    let probe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("probe").join("local.json")).expect("probe")).expect("json");
    let host = probe["node"]["hostname"].as_str().expect("hostname");
    assert!(index.contains("<h2>Nodes</h2>") && index.contains(host), "the report names the node {host}");
    let status = llem_in(dir.path(), &["status", "--json", run.to_str().expect("utf8")]).output().expect("status");
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(s["counts"]["finished"], 8);
    // The agents' outbox is empty: every result was acknowledged.
    let outbox = dir.path().join("agent-state").join("outbox");
    assert_eq!(std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn resume_refuses_a_changed_sweep() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("sweep.yaml"), SWEEP).expect("sweep");
    assert_eq!(llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("run").status.code(), Some(0));
    let run = first_run_dir(dir.path()).expect("run dir");
    std::fs::write(dir.path().join("sweep.yaml"), SWEEP.replace("cycles: 2", "cycles: 3")).expect("edit");
    let out = llem_in(dir.path(), &["resume", run.to_str().expect("utf8")]).output().expect("resume");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-changed-sweep"));
    // Allowed: only the new third cycle runs.
    let out = llem_in(dir.path(), &["resume", "--allow-changed-sweep", run.to_str().expect("utf8")])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("12 of 12 jobs finished"));
    // The changed sweep is the run's now: kept beside the first copy, and named in the journal.
    let kept = std::fs::read_to_string(run.join("sweep-2").join("sweep.yaml")).expect("the changed sweep is kept");
    assert!(kept.contains("cycles: 3"));
    assert!(std::fs::read_to_string(run.join("sweep").join("sweep.yaml")).expect("first copy").contains("cycles: 2"));
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert_eq!(journal.matches("\"sweep_changed\"").count(), 1, "{journal}");
    // The originals now match the run's sweep: resume goes on without asking.
    let out = llem_in(dir.path(), &["resume", run.to_str().expect("utf8")]).output().expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killed_at_random_moments_then_resumed_every_result_exactly_once() {
    // LLEM_KILL_TRIALS=20 runs the full set; CI runs fewer.
    let trials: u64 = std::env::var("LLEM_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let mut seed = 0x5eed_u64;
    for trial in 0..trials {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("sweep.yaml"), SWEEP).expect("sweep");
        // Kill once the journal has k lines (k spans "before the first dispatch" to
        // "after the last finish"), plus a random few milliseconds into whatever follows.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let k = (seed >> 33) as usize % (2 * JOBS + 2);
        let extra_ms = (seed >> 20) % 40;
        let mut child = llem_in(dir.path(), &["run", "sweep.yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run");
        let deadline = Instant::now() + Duration::from_secs(60);
        while journal_lines(first_run_dir(dir.path())) < k
            && child.try_wait().expect("wait").is_none()
            && Instant::now() < deadline
        {
            // Polls every millisecond: fine enough for "k lines", without spinning a core
            // away from the tests running beside this one.
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        // SIGKILL: no chance to clean up.
        let _ = child.kill();
        let _ = child.wait();
        match first_run_dir(dir.path()) {
            Some(run) if run.join("journal.jsonl").exists() => {
                let out = llem_in(dir.path(), &["resume", run.to_str().expect("utf8")]).output().expect("resume");
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "trial {trial} (k {k}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                check_complete(&run);
            }
            // Killed before the run directory existed: a fresh run completes.
            _ => {
                let _ = std::fs::remove_dir_all(dir.path().join("runs"));
                assert_eq!(llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("run").status.code(), Some(0));
                check_complete(&first_run_dir(dir.path()).expect("run dir"));
            }
        }
    }
}

/// Renders `index.html` in headless Chromium and returns what the page recorded about
/// each plot after layout: id, size, marks drawn, "not measured" notes.
fn rendered_plots(index: &Path) -> Vec<serde_json::Value> {
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", index.display()))
        .output()
        .expect("chromium (scripts/test installs Debian's chromium)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("data-plots=\"").expect("the page's script recorded its plots") + "data-plots=\"".len();
    let end = start + dom[start..].find('"').expect("attribute end");
    let json = dom[start..end].replace("&quot;", "\"").replace("&amp;", "&");
    serde_json::from_str::<Vec<serde_json::Value>>(&json).expect("plots JSON")
}

#[test]
fn the_report_renders_its_plots_in_chromium() {
    // With a (fake) energy sensor every plot has marks.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("sweep.yaml"), SWEEP.replace("n_prompts: 2", "n_prompts: 10")).expect("sweep");
    let rapl = crate::agent::FakeRapl::start(30.0, 1e6);
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).env("LLEM_POWERCAP_ROOT", &rapl.root).output().expect("run");
    drop(rapl);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("run dir");
    let plots = rendered_plots(&run.join("report").join("index.html"));
    let ids: Vec<&str> = plots.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, vec!["j-per-token", "tokens-per-s", "energy-latency", "power-timeseries"]);
    for p in &plots {
        assert!(p["width"].as_u64() > Some(100) && p["height"].as_u64() > Some(100), "{p}");
        assert!(p["marks"].as_u64() > Some(0), "nothing drawn: {p}");
        assert_eq!(p["notMeasured"], 0, "{p}");
    }

    // Without one, energy plots say "not measured" and draw no bars.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("sweep.yaml"), SWEEP).expect("sweep");
    assert_eq!(llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("run").status.code(), Some(0));
    let run = first_run_dir(dir.path()).expect("run dir");
    let plots = rendered_plots(&run.join("report").join("index.html"));
    let energy = plots.iter().find(|p| p["id"] == "j-per-token").expect("energy plot");
    assert_eq!((energy["marks"].as_u64(), energy["notMeasured"].as_u64()), (Some(0), Some(1)));
    let summary = std::fs::read_to_string(run.join("report").join("summary.md")).expect("summary");
    assert!(summary.contains("not measured") && !summary.contains("| 0.0000"), "{summary}");
}

#[test]
fn ctrl_c_cancels_cleanly_exits_130_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("go");
    let marker = format!("llem-interrupt-marker-{}", std::process::id());
    // Each job waits for the flag file: it is running, not finished, when interrupted.
    let sweep = format!(
        "name: int\nmodel: waiter\nengine: command\ncommand: [python3, -c, \"import os,sys,time\\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\", {:?}, {marker}]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\nsweep: {{n_prompts: [1, 2]}}\nexecution: {{cycles: 1}}\n",
        flag.display().to_string()
    );
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let child =
        llem_in(dir.path(), &["run", "sweep.yaml"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    let dispatched = |d: &Path| {
        first_run_dir(d)
            .and_then(|r| std::fs::read_to_string(r.join("journal.jsonl")).ok())
            .is_some_and(|t| t.contains("\"dispatched\""))
    };
    while !dispatched(dir.path()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The program is running once the agent started it.
    while !Command::new("pgrep").args(["-f", &marker]).output().expect("pgrep").status.success()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    let out = child.wait_with_output().expect("llem exits");
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("run dir");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(journal.contains("\"interrupted\"") && journal.contains("\"cancelled\""), "{journal}");
    assert!(!journal.contains("\"finished\""), "no partial result counted");
    // No orphan keeps running, and the device lock is free again.
    assert!(
        !Command::new("pgrep").args(["-f", &marker]).output().expect("pgrep").status.success(),
        "the program survived"
    );
    std::fs::write(&flag, "").expect("flag");
    let out = llem_in(dir.path(), &["resume", run.to_str().expect("utf8")]).output().expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 of 2 jobs finished"));
}

#[test]
fn failed_jobs_are_retried_then_kept_failed_until_retry_failed() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("works");
    let sweep = format!(
        "name: flaky\nmodel: flaky\nengine: command\ncommand: [python3, -c, \"import os,sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 3)\", {:?}]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\nexecution: {{cycles: 1, retries: 1}}\n",
        flag.display().to_string()
    );
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "a failed job makes the run fail: {}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("run dir");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert_eq!(journal.matches("\"dispatched\"").count(), 2, "one retry, with a new attempt number: {journal}");
    assert!(journal.contains("\"attempt\":2"));
    // Resuming keeps the failure (nothing to run)…
    std::fs::write(&flag, "").expect("flag");
    let out = llem_in(dir.path(), &["resume", run.to_str().expect("utf8")]).output().expect("resume");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 of 1 jobs finished"));
    // …until asked to retry it.
    let out = llem_in(dir.path(), &["resume", "--retry-failed", run.to_str().expect("utf8")]).output().expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
    assert!(journal.contains("\"finished\",\"job\"") && journal.contains("\"attempt\":3"), "{journal}");
}

/// An agent that speaks the protocol but sends files named to escape the run directory,
/// then a manifest whose checksum is wrong; asked again, it sends the result alone.
const ROGUE_AGENT: &str = r#"#!/usr/bin/env python3
import json, struct, sys, hashlib, base64
inp, out = sys.stdin.buffer, sys.stdout.buffer
def read():
    head = inp.read(4)
    if len(head) < 4:
        sys.exit(0)
    return json.loads(inp.read(struct.unpack(">I", head)[0]))
def send(msg):
    body = json.dumps(msg).encode()
    out.write(struct.pack(">I", len(body)) + body)
    out.flush()
hello = read()
send({"type": "hello", "protocol": hello["protocol"], "version": hello["version"], "host": "rogue"})
send({"type": "outbox_resent", "count": 0})
result = json.load(open(sys.argv[1]))
while True:
    msg = read()
    if msg["type"] == "probe":
        send({"type": "probed", "report": {"node": result["node"], "energy_sources": []}})
    elif msg["type"] == "run":
        data = b"escaped"
        for name in ["../../x", "/tmp/llem-rogue-abs", ".hidden"]:
            send({"type": "artifact_chunk", "id": msg["id"], "name": name, "offset": 0, "base64": base64.b64encode(data).decode()})
        send({"type": "artifact_chunk", "id": msg["id"], "name": "timeseries.parquet", "offset": 0, "base64": base64.b64encode(data).decode()})
        result["job_id"] = msg["id"]["job_id"]
        result["spec"] = msg["spec"]
        wrong = [{"name": "timeseries.parquet", "bytes": len(data), "sha256": "0" * 64}]
        send({"type": "finished", "id": msg["id"], "result": result, "artifacts": wrong})
    elif msg["type"] == "resend":
        send({"type": "finished", "id": msg["id"], "result": result, "artifacts": []})
    elif msg["type"] == "shutdown":
        sys.exit(0)
"#;

/// Writes the rogue agent into `dir`; returns its path.
pub(crate) fn rogue_agent(dir: &Path) -> PathBuf {
    let rogue = dir.join("rogue-agent");
    let fixture = llem_tests::repo_root().join("tests").join("fixtures").join("result-v1.json");
    std::fs::write(&rogue, ROGUE_AGENT.replace("sys.argv[1]", &format!("{:?}", fixture.display().to_string())))
        .expect("rogue");
    assert!(Command::new("chmod").arg("+x").arg(&rogue).status().expect("chmod").success());
    rogue
}

/// After a run with the rogue agent: nothing escaped, and each attempt kept only its result.
pub(crate) fn assert_only_results_stored(run: &Path) {
    assert!(!run.join("jobs").join("x").exists() && !run.join("x").exists());
    assert!(!Path::new("/tmp/llem-rogue-abs").exists());
    for entry in std::fs::read_dir(run.join("jobs")).expect("jobs").flatten() {
        let files: Vec<String> = std::fs::read_dir(entry.path().join("attempt-1"))
            .expect("attempt")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec!["result.json".to_owned()], "only the result was stored");
    }
}

#[test]
fn artifacts_cannot_escape_the_run_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let rogue = rogue_agent(dir.path());
    let sweep = SWEEP.replace("cycles: 2", "cycles: 1").replace("batch_size: [1, 2]", "batch_size: [1]");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"])
        .env("LLEM_AGENT", &rogue)
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("refused artifact \"../../x\""), "{stderr}");
    assert!(stderr.contains("is corrupt"), "a wrong checksum is refused: {stderr}");
    assert_only_results_stored(&first_run_dir(dir.path()).expect("run dir"));
}

#[test]
fn a_job_of_two_gpus_holds_both_and_its_program_sees_them() {
    // No GPU here: `energy: none` measures nothing (null), but the scheduling, the locks and
    // CUDA_VISIBLE_DEVICES are real. The one-GPU job of the same sweep runs on either GPU.
    let dir = tempfile::tempdir().expect("tmp");
    let sweep = "name: gpus\nmodel: label\nengine: command\ndevice: cuda\ncommand: [python3, -c, \"import os; open(os.environ['LLEM_JOB_DIR'] + '/visible.txt', 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\"]\nmeasurement: {energy: none, baseline: {duration_s: 0}, warmup: {prompts: 0}, thermal_floor: {max_s: 0}}\nsweep:\n  gpus: [1, 2]\nexecution: {cycles: 2}\n";
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("llem run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("run dir");
    let mut seen = Vec::new();
    for job in std::fs::read_dir(run.join("jobs")).expect("jobs").flatten() {
        let attempt = job.path().join("attempt-1");
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(attempt.join("result.json")).expect("result")).expect("json");
        let visible = std::fs::read_to_string(attempt.join("visible.txt")).expect("visible.txt");
        let gpus = result["spec"]["gpus"].as_u64().unwrap_or(1);
        match gpus {
            2 => {
                assert_eq!(visible, "0,1");
                assert_eq!(result["node"]["device"], "cuda:0,1");
            }
            _ => assert!(visible == "0" || visible == "1", "{visible}"),
        }
        seen.push(gpus);
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 1, 2, 2]);
    let parquet = Command::new("python3")
        .arg("-c")
        .arg("import sys, pyarrow.parquet as pq; print(sorted(pq.read_table(sys.argv[1]).column('gpus').to_pylist()))")
        .arg(run.join("results.parquet"))
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&parquet.stdout).trim(),
        "[1, 1, 2, 2]",
        "{}",
        String::from_utf8_lossy(&parquet.stderr)
    );
}
