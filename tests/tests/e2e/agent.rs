//! `llem-agent probe` and `llem-agent run` through the real binary: energy against a fake
//! RAPL tree driven at a known wattage, the honest null without a sensor, the Parquet
//! schema as pyarrow reads it, and the device lock between two agents.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use llem_tests::binary;

/// A job file in a fresh directory.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new(yaml: &str) -> Job {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("job.yaml"), yaml).expect("write job");
        Job { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, out: &str) -> Command {
        self.command_for("job.yaml", out)
    }

    fn command_for(&self, job_file: &str, out: &str) -> Command {
        let mut cmd = Command::new(binary("llem-agent"));
        cmd.arg("run")
            .arg("--job")
            .arg(self.path(job_file))
            .arg("--out")
            .arg(self.path(out))
            .arg("--state-dir")
            .arg(self.path("state"))
            .env("LLEM_POWERCAP_ROOT", self.path("no-powercap"))
            .env_remove("RUST_LOG");
        cmd
    }

    fn result(&self, out: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path(out).join("result.json")).expect("result.json");
        serde_json::from_str(&text).expect("result.json is JSON")
    }
}

/// A powercap tree whose package counter a thread advances at `watts`, wrapping at
/// `range_j`, until dropped.
pub(crate) struct FakeRapl {
    pub(crate) root: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    /// No model server runs while the counter must be written on time.
    _quiet: std::sync::RwLockWriteGuard<'static, ()>,
}

impl FakeRapl {
    pub(crate) fn start(watts: f64, range_j: f64) -> FakeRapl {
        Self::start_at(watts, range_j, range_j * 0.9)
    }

    /// Starts the counter at `start_j`, so it first wraps after `(range_j - start_j) / watts`
    /// seconds.
    pub(crate) fn start_at(watts: f64, range_j: f64, start_j: f64) -> FakeRapl {
        let quiet = llem_tests::quiet_cpu();
        // In memory (tmpfs), as the kernel's sysfs is: on disk, a counter update (a write
        // and a rename) could wait for the filesystem's journal behind the parallel tests'
        // I/O, and a writer late by 200 ms read as a second 20 % low.
        let dir = tempfile::Builder::new()
            .prefix("llem-powercap-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("powercap dir");
        let root = dir.path();
        let zone = root.join("intel-rapl:0");
        std::fs::create_dir_all(zone.join("intel-rapl:0:0")).expect("zone");
        std::fs::write(zone.join("name"), "package-0\n").expect("name");
        let range_uj = (range_j * 1e6) as u64;
        std::fs::write(zone.join("max_energy_range_uj"), format!("{range_uj}\n")).expect("range");
        // A sub-zone that must not be added to the package.
        std::fs::write(zone.join("intel-rapl:0:0").join("energy_uj"), "0\n").expect("subzone");
        let write = move |zone: &Path, uj: u64| {
            let tmp = zone.join(".energy_uj.tmp");
            std::fs::write(&tmp, format!("{uj}\n")).expect("write counter");
            std::fs::rename(&tmp, zone.join("energy_uj")).expect("rename counter");
        };
        let start_uj = (start_j * 1e6) as u64;
        write(&zone, start_uj);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // Real RAPL never lags; this writer must not either when the parallel tests
            // keep both cores busy (a 150 ms stall reads as a 7 % error over 2 s). Real-time
            // priority needs root: best effort, as the tests usually run as root here.
            if let Some(tid) =
                std::fs::read_link("/proc/thread-self").ok().and_then(|l| l.file_name().map(ToOwned::to_owned))
            {
                let _ = Command::new("chrt").args(["-f", "-p", "10"]).arg(tid).output();
            }
            let t0 = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let uj = start_uj as f64 + watts * t0.elapsed().as_secs_f64() * 1e6;
                write(&zone, (uj as u64) % range_uj);
                // The counter's update period (real RAPL updates about every 1 ms; each
                // update here creates a file, and 1,000 a second slowed the whole disk).
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FakeRapl { root: root.to_owned(), stop, thread: Some(thread), _dir: dir, _quiet: quiet }
    }
}

impl Drop for FakeRapl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SYNTHETIC: &str = "model: synthetic\nengine: synthetic\nsynthetic: {ms_per_token: 2}\n";

#[test]
fn rapl_energy_matches_the_known_wattage_through_wraps() {
    let watts = 40.0;
    let job = Job::new(&format!(
        "{SYNTHETIC}n_prompts: 20\nmax_output_tokens: 100\nmeasurement: {{baseline: {{duration_s: 2}}, warmup: {{prompts: 1}}, thermal_floor: {{max_s: 0}}}}\n"
    ));
    // Wraps 4 s after the counter starts (in the window when the machine is idle, in the
    // baseline when it is busy: either way the sum goes through a wrap), then every 30 s.
    // The period must be far longer than any stall of the reader: an agent descheduled
    // for longer than one period cannot tell one wrap from two (a 2.5 s period read
    // 60 % low in a loaded CI run), and real RAPL counters wrap every tens of minutes.
    let range_j = 30.0 * watts;
    let rapl = FakeRapl::start_at(watts, range_j, range_j - 4.0 * watts);
    let out = job.command("out").env("LLEM_POWERCAP_ROOT", &rapl.root).output().expect("run agent");
    drop(rapl);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = job.result("out");
    let e = &r["energy"];
    let duration = r["duration_s"].as_f64().expect("duration");
    assert!(duration > 3.0, "window {duration} s");
    assert_eq!(e["source"], "rapl");
    let truth = watts * duration;
    let total = e["total_j"].as_f64().expect("energy measured");
    eprintln!(
        "rapl: measured {total:.3} J over {duration:.3} s, truth {truth:.3} J ({:+.3} %)",
        (total - truth) / truth * 100.0
    );
    assert!((total - truth).abs() / truth < 0.01, "measured {total} J, truth {truth} J");
    let baseline = e["baseline_w"].as_f64().expect("baseline");
    assert!((baseline - watts).abs() / watts < 0.01, "baseline {baseline} W");
    let integrated = e["integrated_j"].as_f64().expect("integrated");
    assert!((integrated - truth).abs() / truth < 0.01, "integrated {integrated} J");
    assert_eq!(r["tokens"]["output"], 2000);
    let per_token = e["j_per_output_token"].as_f64().expect("per token");
    assert!((per_token - total / 2000.0).abs() < 1e-9);
}

#[test]
fn without_a_sensor_energy_is_null_never_zero() {
    let job = Job::new(&format!(
        "{SYNTHETIC}n_prompts: 3\nmax_output_tokens: 10\nmeasurement: {{thermal_floor: {{max_s: 0}}}}\n"
    ));
    let out = job.command("out").output().expect("run agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = job.result("out");
    for field in ["total_j", "baseline_w", "adjusted_j", "counter_j", "integrated_j", "j_per_output_token"] {
        assert!(r["energy"][field].is_null(), "{field} = {}", r["energy"][field]);
    }
    let codes: Vec<&str> =
        r["warnings"].as_array().expect("warnings").iter().filter_map(|w| w["code"].as_str()).collect();
    assert!(codes.contains(&"no_energy_sensor"), "{codes:?}");
    assert_eq!(r["schema_version"], llem_common::result::SCHEMA_VERSION);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_energy_sensor"));
}

#[test]
fn a_missing_explicit_sensor_is_an_error_naming_why() {
    for (source, why) in [("nvml", "NVML unavailable"), ("rapl", "RAPL unavailable")] {
        let job = Job::new(&format!("{SYNTHETIC}measurement: {{energy: {source}}}\n"));
        let out = job.command("out").output().expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("error: cannot open the energy sensor: {why}")), "{stderr}");
        assert!(!job.path("out").join("result.json").exists());
    }
}

#[test]
fn a_bad_job_file_is_bad_input() {
    let job = Job::new("model: m\nbatch_sise: 2\n");
    let out = job.command("out").output().expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("job.yaml:2:1") && stderr.contains("did you mean `batch_size`?"), "{stderr}");
}

const PYARROW_CHECK: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
expected = pa.schema([("timestamp_s", pa.float64()), ("gpu_index", pa.int32()), ("power_w", pa.float32()),
    ("temperature_c", pa.float32()), ("memory_used_mb", pa.float32()), ("memory_total_mb", pa.float32()),
    ("sm_utilisation_pct", pa.float32()), ("throttle_reasons", pa.int64())])
print(json.dumps({"equal": t.schema.equals(expected), "schema": str(t.schema), "rows": t.num_rows,
    "columns": {n: t.column(n).to_pylist() for n in t.column_names}}))
"#;

fn pyarrow_read(path: &Path) -> serde_json::Value {
    let out = Command::new("python3").arg("-c").arg(PYARROW_CHECK).arg(path).output().expect("python3");
    assert!(
        out.status.success(),
        "pyarrow could not read {} (is pyarrow installed? scripts/test installs it): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

#[test]
fn timeseries_parquet_has_the_exact_schema() {
    let watts = 25.0;
    let job = Job::new(&format!(
        "{SYNTHETIC}n_prompts: 10\nmax_output_tokens: 120\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 0}}, thermal_floor: {{max_s: 0}}}}\n"
    ));
    let rapl = FakeRapl::start(watts, 1e6);
    let out = job.command("out").env("LLEM_POWERCAP_ROOT", &rapl.root).output().expect("run agent");
    drop(rapl);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = pyarrow_read(&job.path("out").join("timeseries.parquet"));
    assert_eq!(table["equal"], true, "{}", table["schema"]);
    let r = job.result("out");
    assert_eq!(table["rows"], r["sampling"]["timeseries_rows"]);
    let rows = table["rows"].as_u64().expect("rows");
    assert!(rows >= 2, "one row per second of a {} s window", r["duration_s"]);
    let c = &table["columns"];
    assert!(c["gpu_index"].as_array().expect("gpu_index").iter().all(|v| v == -1), "the host CPU is -1");
    for (i, p) in c["power_w"].as_array().expect("power").iter().enumerate() {
        let p = p.as_f64().unwrap_or_else(|| panic!("power of second {i} is null"));
        assert!((p - watts).abs() / watts < 0.05, "second {i}: {p} W");
    }
    for unknown in ["temperature_c", "memory_used_mb", "sm_utilisation_pct", "throttle_reasons"] {
        assert!(
            c[unknown].as_array().expect("column").iter().all(serde_json::Value::is_null),
            "{unknown} must be null"
        );
    }
    let ts: Vec<f64> = c["timestamp_s"].as_array().expect("ts").iter().filter_map(serde_json::Value::as_f64).collect();
    assert!(ts.windows(2).all(|w| w[1] - w[0] == 1.0), "{ts:?}");
}

/// Lines of a child's stderr, as they come.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return;
        }
    }
    panic!("never saw {needle:?} in:\n{}", seen.join("\n"));
}

#[test]
fn a_second_job_on_the_same_device_waits_and_says_so() {
    // Job A holds the CPU's lock inside `cat FIFO` until the test writes to the FIFO:
    // the test decides when A finishes, no timing involved.
    let a = Job::new("");
    let fifo = a.path("release");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    std::fs::write(
        a.path("job.yaml"),
        format!(
            "model: holder\nengine: command\ncommand: [cat, {}]\nmeasurement: {{baseline: {{duration_s: 0}}, thermal_floor: {{max_s: 0}}}}\n",
            fifo.display()
        ),
    )
    .expect("job a");
    let b_job =
        format!("{SYNTHETIC}n_prompts: 2\nmax_output_tokens: 5\nmeasurement: {{thermal_floor: {{max_s: 0}}}}\n");
    std::fs::write(a.path("job-b.yaml"), b_job).expect("job b");

    let mut first = a.command("out-a").stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("agent a");
    let a_lines = stderr_lines(&mut first);
    let mut seen_a = Vec::new();
    wait_for(&a_lines, "lock on cpu acquired", &mut seen_a);

    let mut second =
        a.command_for("job-b.yaml", "out-b").stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("agent b");
    let b_lines = stderr_lines(&mut second);
    let mut seen_b = Vec::new();
    wait_for(&b_lines, "waiting for the lock on cpu", &mut seen_b);
    assert!(seen_b.last().is_some_and(|l| l.contains("job ")), "names the holder: {seen_b:?}");

    // Release A, then both finish.
    std::fs::OpenOptions::new().write(true).open(&fifo).expect("open fifo").write_all(b"done\n").expect("write fifo");
    assert!(first.wait().expect("a exits").success());
    assert!(second.wait().expect("b exits").success());
    let (ra, rb) = (a.result("out-a"), a.result("out-b"));
    let a_end = ra["finished_at"].as_str().expect("a end");
    let b_start = rb["started_at"].as_str().expect("b start");
    assert!(b_start >= a_end, "B measured ({b_start}) before A finished ({a_end})");
}

#[test]
fn probe_reports_sources_and_reasons() {
    let out = Command::new(binary("llem-agent"))
        .args(["probe", "--json"])
        .env("LLEM_POWERCAP_ROOT", "/nonexistent-powercap")
        .output()
        .expect("probe");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sources = report["energy_sources"].as_array().expect("sources");
    let names: Vec<&str> = sources.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["nvml", "rapl", "none"]);
    let rapl = &sources[1];
    assert_eq!(rapl["available"], false);
    assert!(rapl["detail"].as_str().expect("detail").contains("/nonexistent-powercap"));
    assert!(report["node"]["cpu_cores"].as_u64().expect("cores") >= 1);
    assert_eq!(report["node"]["agent_version"], env!("CARGO_PKG_VERSION"));
}

/// `llem-agent serve --stdio` against a fake RAPL tree, hello said, running one synthetic
/// job of `n_prompts` × 100 tokens. Dropped, it is continued (a test may have stopped it)
/// and killed, so a failed assertion leaves no agent behind.
struct ServedAgent {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl ServedAgent {
    fn run_synthetic(job: &Job, rapl: &FakeRapl, run: &str, n_prompts: u32) -> ServedAgent {
        use llem_common::protocol::{write_frame, AttemptId, Hello, ToAgent};
        let mut child = Command::new(binary("llem-agent"))
            .args(["serve", "--stdio", "--state-dir"])
            .arg(job.path("state"))
            .env("LLEM_POWERCAP_ROOT", &rapl.root)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent");
        let mut input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        write_frame(&mut input, &ToAgent::Hello(Hello::new("test").for_run(run))).expect("hello");
        let spec = llem_common::spec::experiment_from_yaml(
            "job",
            &format!("{SYNTHETIC}n_prompts: {n_prompts}\nmax_output_tokens: 100\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 0}}, thermal_floor: {{max_s: 0}}}}\n"),
        )
        .unwrap_or_else(|(_, d)| panic!("{d:?}"));
        let id = AttemptId { job_id: "0123456789abcdef-c1".into(), attempt: 1 };
        write_frame(&mut input, &ToAgent::Run { id, spec: Box::new(spec), gpus: Vec::new() }).expect("run");
        ServedAgent { child, input, output }
    }

    fn next(&mut self) -> Option<llem_common::protocol::FromAgent> {
        llem_common::protocol::read_frame(&mut self.output).expect("a frame")
    }

    fn signal(&self, sig: &str) {
        let sent = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success(), "kill {sig}");
    }

    fn shutdown(mut self) {
        let _ = llem_common::protocol::write_frame(&mut self.input, &llem_common::protocol::ToAgent::Shutdown);
        let _ = self.child.wait();
    }
}

impl Drop for ServedAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_served_job_reports_live_power_about_once_a_second() {
    use llem_common::protocol::FromAgent;
    let watts = 35.0;
    let job = Job::new("");
    let rapl = FakeRapl::start(watts, 1e6);
    let mut agent = ServedAgent::run_synthetic(&job, &rapl, "live-power", 18);
    let mut samples = Vec::new();
    let duration = loop {
        match agent.next() {
            Some(FromAgent::Sample { power_w, .. }) => samples.push(power_w),
            Some(FromAgent::Finished { result, .. }) => break result.duration_s,
            Some(FromAgent::Failed { message, .. }) => panic!("the job failed: {message}"),
            Some(_) => {}
            None => panic!("the agent ended before the job did"),
        }
    };
    drop(rapl);
    agent.shutdown();
    eprintln!("{} live samples over a {duration:.2} s window: {samples:?}", samples.len());
    assert!(samples.len() >= 2 && samples.len() as f64 <= duration + 1.0, "{} samples in {duration} s", samples.len());
    for w in &samples {
        let w = w.expect("a sensor exists: power is measured, never null");
        assert!((w - watts).abs() / watts < 0.1, "live power {w} W, truth {watts} W");
    }
}

#[test]
fn gpu_check_stops_at_the_first_gpu_step_on_a_machine_without_one() {
    // This machine has no GPU: the prepared device check runs its probe, then stops with a
    // clear message and exit 3 instead of failing somewhere later.
    let out = tempfile::tempdir().expect("tmp");
    let run = Command::new(llem_tests::repo_root().join("scripts").join("gpu-check"))
        .arg(out.path())
        .env("LLEM_AGENT", binary("llem-agent"))
        .output()
        .expect("scripts/gpu-check");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("stopping before the first GPU step") && stderr.contains("NVML"), "{stderr}");
    let probe = std::fs::read_to_string(out.path().join("probe.txt")).expect("probe.txt");
    assert!(probe.contains("cuda"), "the probe says whether CUDA is usable:\n{probe}");
}

#[test]
fn gpu_check_rehearses_every_step_on_the_cpu() {
    // Both cores for long: never beside a test whose fake counter must be written on time.
    let _heavy = llem_tests::heavy_cpu();
    // The device check gets one short try on a GPU machine: its plumbing (models written
    // here, every job, the server, the sweep, the table) is proven on the CPU first.
    let out = tempfile::tempdir().expect("tmp");
    let bin_dir = binary("llem").parent().expect("target dir").to_owned();
    let run = Command::new(llem_tests::repo_root().join("scripts").join("gpu-check"))
        .arg("--rehearse")
        .arg(out.path())
        .env("LLEM_BIN_DIR", &bin_dir)
        .env("LLEM_AGENT", binary("llem-agent"))
        .env("LLEM_POWERCAP_ROOT", out.path().join("no-powercap"))
        .env_remove("RUST_LOG")
        .output()
        .expect("scripts/gpu-check --rehearse");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let summary = std::fs::read_to_string(out.path().join("summary.tsv")).expect("summary.tsv");
    let rows: Vec<Vec<&str>> = summary.lines().map(|l| l.split('\t').collect()).collect();
    let steps: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        steps,
        ["probe", "sampler", "F2", "candle tokens", "candle b1", "candle b8", "candle bf16", "server", "sweep"]
    );
    for r in &rows {
        let expected = if r[0] == "F2" { "skipped" } else { "ok" };
        assert_eq!(r[1], expected, "{r:?}");
    }
    assert!(summary.contains("3 of 3 prompts give the same greedy tokens"), "{summary}");
    assert!(summary.contains("2 of 2 jobs finished"), "{summary}");
    assert!(stdout.contains("gpu-check · rehearsal on the CPU"), "the table is printed:\n{stdout}");
}

#[test]
fn the_cuda_agent_starts_without_cuda_and_runs_cpu_jobs() {
    // scripts/test builds the CUDA agent (scripts/build-agent) and names it here. This
    // machine has no CUDA at all: the binary must start, say why GPU jobs cannot run, and
    // run CPU jobs through `llem run` like the CPU build.
    let Some(agent) = std::env::var_os("LLEM_CUDA_AGENT") else {
        eprintln!("SKIPPED: LLEM_CUDA_AGENT is not set (scripts/test builds the CUDA agent and sets it)");
        return;
    };
    let probe = Command::new(&agent).args(["probe", "--json"]).output().expect("the CUDA agent starts");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let report: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("probe json");
    assert_eq!(report["cuda"]["built_with_cuda"], true);
    assert_eq!(report["cuda"]["usable"], false, "no CUDA here");
    assert!(report["cuda"]["detail"].as_str().expect("detail").contains("libcuda.so.1"), "{}", report["cuda"]);
    let dir = tempfile::tempdir().expect("tmp");
    let sweep = format!("name: cuda-agent-cpu\n{SYNTHETIC}n_prompts: 2\nmax_output_tokens: 8\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 1}}, thermal_floor: {{max_s: 0}}}}\nsweep:\n  batch_size: [1, 2]\nexecution: {{cycles: 1}}\n");
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out =
        llem_tests::llem_in(dir.path(), &["run", "sweep.yaml"]).env("LLEM_AGENT", &agent).output().expect("llem run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("2 of 2 jobs finished"), "{said}");
}

#[test]
fn a_served_agent_stops_when_its_coordinator_falls_silent_and_not_before() {
    use llem_common::protocol::{write_frame, Hello, ToAgent};
    let job = Job::new("");
    let log = job.path("agent.log");
    let mut agent = Command::new(binary("llem-agent"))
        .args(["serve", "--stdio", "--state-dir"])
        .arg(job.path("state"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("agent");
    let mut input = agent.stdin.take().expect("stdin");
    // A heartbeat every 0.2 s promised: silence of 1.2 s means the coordinator is gone.
    let hello = Hello::new("test").for_run("heartbeat").with_heartbeat(0.2);
    write_frame(&mut input, &ToAgent::Hello(hello)).expect("hello");
    let beating = Instant::now();
    let mut last_beat = Instant::now();
    while beating.elapsed() < Duration::from_secs(3) {
        // Taken before the write: the agent cannot hear a beat before it is written, so
        // its 1.2 s of silence cannot end before `last_beat` + 1.2 s, however late this
        // thread wakes.
        last_beat = Instant::now();
        write_frame(&mut input, &ToAgent::Heartbeat).expect("the agent is still there");
        assert!(agent.try_wait().expect("wait").is_none(), "the agent left while heartbeats came");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Silence, with its input still open (as a Slurm step's is when srun is killed).
    let status = loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            break status;
        }
        assert!(last_beat.elapsed() < Duration::from_secs(20), "the agent never noticed the silence");
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = last_beat.elapsed();
    drop(input);
    assert!(status.success(), "{status:?}");
    assert!(waited >= Duration::from_millis(1200), "it left {waited:?} after the last heartbeat, before the limit");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("no word from the coordinator for 1 s"), "{said}");
}

#[test]
fn a_sampler_stalled_past_a_counter_wrap_is_reported_never_silent() {
    use llem_common::protocol::{FromAgent, Phase};
    // 40 W into a 100 J counter: it wraps every 2.5 s.
    let (watts, range_j) = (40.0, 100.0);
    let job = Job::new("");
    let rapl = FakeRapl::start_at(watts, range_j, 0.0);
    let mut agent = ServedAgent::run_synthetic(&job, &rapl, "stall", 40);
    let (mut measuring, mut stalled) = (false, false);
    let result = loop {
        match agent.next() {
            Some(FromAgent::Phase { phase: Phase::Measuring, .. }) => measuring = true,
            // Live power comes from the sampler once the window is open (no baseline here).
            Some(FromAgent::Sample { .. }) if measuring && !stalled => {
                // The whole agent stopped for three wrap periods, as a node too loaded to
                // schedule it (or suspended) stops it; the counter goes on. The wait is the
                // stall itself, not a synchronisation.
                agent.signal("-STOP");
                let resumed = Instant::now() + Duration::from_secs_f64(3.0 * range_j / watts);
                while Instant::now() < resumed {
                    std::thread::sleep(Duration::from_millis(100));
                }
                agent.signal("-CONT");
                stalled = true;
            }
            Some(FromAgent::Finished { result, .. }) => break result,
            Some(FromAgent::Failed { message, .. }) => panic!("the job failed: {message}"),
            Some(_) => {}
            None => panic!("the agent ended before the job did"),
        }
    };
    drop(rapl);
    agent.shutdown();
    let gap = result.warnings.iter().find(|w| w.code == "counter_gap");
    let gap = gap.unwrap_or_else(|| {
        panic!(
            "a counter_gap warning: {:?}; energy {:?}; {:.2} s; stalled {stalled}",
            result.warnings, result.energy, result.duration_s
        )
    });
    assert!(gap.message.contains("went unread for"), "{}", gap.message);
    eprintln!("{}: energy {:?} J over {:.2} s", gap.message, result.energy.total_j, result.duration_s);
}
