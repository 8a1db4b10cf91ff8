//! The openai engine's faults, each against the scripted fake server
//! (tests/fixtures/fake_openai.py) through the real agent binary: a server that is not
//! there, exits, never gets ready, dies mid-window, cuts a stream, finds its port taken,
//! or does not serve the model asked for; and Ctrl-C, which must leave no server behind.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llem_tests::{binary, parquet_rows, repo_root};

fn fake() -> String {
    repo_root().join("tests").join("fixtures").join("fake_openai.py").display().to_string()
}

struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    /// A job whose server is the fake in `mode`, under `load` (a YAML map).
    fn new(mode: &str, load: &str) -> Job {
        let load = if load.is_empty() { "{concurrency: 2, requests: 6}" } else { load };
        let dir = tempfile::tempdir().expect("tmp");
        let pids = dir.path().join("pids");
        let marker = dir.path().join("marker");
        let yaml = format!(
            "model: fake-model\nengine: openai\nn_prompts: 3\nmax_output_tokens: 8\nserver:\n  command: [python3, {:?}, --port, \"{{port}}\", --mode, {mode}, --pid-file, {:?}, --marker, {:?}]\n  ready_timeout_s: 20\nload: {load}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 1}}, thermal_floor: {{max_s: 0}}}}\n",
            fake(),
            pids.display().to_string(),
            marker.display().to_string(),
        );
        std::fs::write(dir.path().join("job.yaml"), yaml).expect("job");
        Job { dir }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(binary("llem-agent"));
        cmd.args(["run", "--job", "job.yaml", "--out", "out", "--state-dir", "state"])
            .current_dir(self.dir.path())
            .env("LLEM_POWERCAP_ROOT", self.dir.path().join("no-powercap"))
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self) -> Output {
        self.command().output().expect("llem-agent run")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn server_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether the CPU lock is free (another process can take it at once).
    fn lock_is_free(&self) -> bool {
        let lock = self.dir.path().join("state").join("locks").join("cpu.lock");
        Command::new("python3")
            .arg("-c")
            .arg("import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
            .arg(lock)
            .status()
            .expect("python3")
            .success()
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn result(job: &Job) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(job.out().join("result.json")).expect("result")).expect("json")
}

#[test]
fn a_server_command_that_does_not_exist_fails_the_job_as_bad() {
    let job = Job::new("ok", "");
    let yaml = std::fs::read_to_string(job.dir.path().join("job.yaml"))
        .expect("job")
        .replace("[python3, ", "[/no/such/server, ");
    std::fs::write(job.dir.path().join("job.yaml"), yaml).expect("job");
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot start the server `/no/such/server`"), "{}", stderr(&out));
}

#[test]
fn a_server_that_exits_before_ready_fails_with_its_last_words() {
    let job = Job::new("exit-early", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("exited") && err.contains("before it was ready"), "{err}");
    assert!(err.contains("cannot load the model weights (scripted)"), "the last lines of server.log: {err}");
    assert!(job.lock_is_free());
}

#[test]
fn a_server_never_ready_fails_after_ready_timeout() {
    let job = Job::new("never-ready", "");
    let yaml = std::fs::read_to_string(job.dir.path().join("job.yaml"))
        .expect("job")
        .replace("ready_timeout_s: 20", "ready_timeout_s: 5");
    std::fs::write(job.dir.path().join("job.yaml"), yaml).expect("job");
    let start = Instant::now();
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("was not ready within 5 s"), "{}", stderr(&out));
    // 5 s is long enough for the scripted server to be listening on a busy machine, so
    // what it last said is its 503, not a refused connection.
    assert!(stderr(&out).contains("/health answered 503"), "{}", stderr(&out));
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "the timeout was not kept: {took:?}");
    assert!(job.server_pids().iter().all(|&p| !alive(p)), "the server was not stopped");
}

#[test]
fn a_server_that_answers_503_while_loading_is_waited_for() {
    // Several tokens per event, a usage chunk: counts come from usage, per-event counts
    // from the log-probabilities, ITL per token from both.
    let job = Job::new("loading", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = result(&job);
    assert_eq!(r["serving"]["token_count_method"], "usage");
    assert_eq!(r["tokens"]["output"], 6 * 8);
    let itl = r["serving"]["itl_ms"]["n"].as_u64().expect("itl");
    let per_token = r["serving"]["itl_per_token_ms"]["n"].as_u64().expect("per token");
    assert!(per_token > itl, "events carry several tokens: {per_token} per-token gaps vs {itl} gaps");
    for row in parquet_rows(&job.out().join("requests.parquet")) {
        let per_event: u64 =
            row["tokens_per_event"].as_array().expect("known").iter().map(|n| n.as_u64().expect("n")).sum();
        assert_eq!(Some(per_event), row["output_tokens"].as_u64(), "{row}");
    }
    assert!(job.server_pids().iter().all(|&p| !alive(p)));
}

#[test]
fn a_stream_cut_mid_response_is_an_error_and_its_tokens_do_not_count() {
    let job = Job::new("cut", "{concurrency: 1, requests: 6, max_error_rate: 0.5}");
    let out = job.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = result(&job);
    assert_eq!(r["serving"]["errors"], 1);
    assert!(r["warnings"].as_array().expect("w").iter().any(|w| w["code"] == "request_errors"));
    let rows = parquet_rows(&job.out().join("requests.parquet"));
    let cut: Vec<&serde_json::Value> = rows.iter().filter(|r| !r["error"].is_null()).collect();
    assert_eq!(cut.len(), 1);
    assert!(cut[0]["error"].as_str().expect("e").contains("in the middle of an event"), "{}", cut[0]);
    assert!(cut[0]["output_tokens"].is_null(), "partial tokens are not a complete count");
    assert_eq!(r["tokens"]["output"], 5 * 8, "only the complete requests' tokens");
}

#[test]
fn too_many_failed_requests_fail_the_job() {
    let job = Job::new("cut", "{concurrency: 1, requests: 6, max_error_rate: 0.1}");
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("1 of 6 requests failed, more than load.max_error_rate"), "{}", stderr(&out));
}

#[test]
fn a_server_that_dies_mid_window_fails_the_job_and_frees_the_lock() {
    let job = Job::new("die", "{concurrency: 1, requests: 6, max_error_rate: 1.0}");
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the server exited"), "{}", stderr(&out));
    assert!(job.lock_is_free(), "the lock is released");
    assert!(job.server_pids().iter().all(|&p| !alive(p)));
}

#[test]
fn a_taken_port_gets_another() {
    let job = Job::new("port-taken", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(job.server_pids().len(), 2, "started twice");
    let log = std::fs::read_to_string(job.out().join("server.log")).expect("log");
    assert!(log.contains("Address already in use") && log.contains("listening"), "{log}");
}

#[test]
fn a_wrong_model_name_names_the_models_the_server_offers() {
    let job = Job::new("wrong-model", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("model `fake-model`") && err.contains("it serves: served-model"), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
}

/// Waits until the job's server has answered `posts` requests (its log says so).
fn wait_for_load(job: &Job, log: &std::path::Path, posts: usize) -> Vec<u32> {
    let start = Instant::now();
    while job.server_pids().is_empty()
        || std::fs::read_to_string(log).unwrap_or_default().matches("POST").count() < posts
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no load reached the server");
        std::thread::sleep(Duration::from_millis(50));
    }
    job.server_pids()
}

fn assert_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "{what} outlived Ctrl-C: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_stops_the_job_and_leaves_no_server() {
    // A closed loop and an open one (whose schedule would run for minutes): Ctrl-C ends
    // both at once.
    for load in ["{concurrency: 4, requests: 100000}", "{request_rate: 200, requests: 100000}"] {
        let job = Job::new("ok", load);
        let mut child =
            Reaped::new(job.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("agent"), false);
        let pids = wait_for_load(&job, &job.out().join("server.log"), 20);
        let asked = Instant::now();
        nix_kill(child.0.id(), "INT");
        let status = child.0.wait().expect("wait");
        assert_eq!(status.code(), Some(130), "{load}: interrupted");
        assert!(asked.elapsed() < Duration::from_secs(20), "{load}: Ctrl-C took {:?}", asked.elapsed());
        assert_gone(&pids, "the server");
        assert!(job.lock_is_free());
    }
}

#[test]
fn ctrl_c_at_the_coordinator_stops_the_remote_job_and_its_server() {
    // As a terminal does: SIGINT to the whole process group, the local agent included.
    use std::os::unix::process::CommandExt as _;
    let job = Job::new("ok", "{concurrency: 4, requests: 100000}");
    let yaml = std::fs::read_to_string(job.dir.path().join("job.yaml")).expect("job");
    std::fs::write(job.dir.path().join("sweep.yaml"), format!("name: interrupted\n{yaml}")).expect("sweep");
    let mut child = Reaped::new(
        llem_tests::llem_in(job.dir.path(), &["run", "sweep.yaml"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llem run"),
        true,
    );
    let start = Instant::now();
    let run = loop {
        if let Some(run) = llem_tests::first_run_dir(job.dir.path()) {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "llem made no run directory");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = loop {
        assert!(start.elapsed() < Duration::from_secs(60), "no server.log appeared");
        let found = llem_tests::files_under(&run).into_iter().find(|p| p.ends_with("server.log"));
        let outbox = llem_tests::files_under(&job.dir.path().join("agent-state"))
            .into_iter()
            .find(|p| p.ends_with("server.log"));
        if let Some(log) = found.or(outbox) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pids = wait_for_load(&job, &log, 20);
    let group = child.0.id();
    let ok = Command::new("kill").args(["-INT", "--", &format!("-{group}")]).status().expect("kill").success();
    assert!(ok);
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "interrupted");
    assert_gone(&pids, "the server");
}

#[test]
fn sigkill_of_the_agent_still_stops_its_server() {
    // The agent gets no chance to clean up; the kernel's parent-death signal stops it.
    let job = Job::new("ok", "{concurrency: 2, requests: 100000}");
    let mut child =
        Reaped::new(job.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("agent"), false);
    let start = Instant::now();
    while job.server_pids().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "the server never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = job.server_pids();
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "the server outlived its agent: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child that is killed (with its process group, for one started in its own) when a
/// failed assertion ends the test first: a long-running job and its server never outlive it.
struct Reaped(std::process::Child, bool);

impl Reaped {
    fn new(child: std::process::Child, own_group: bool) -> Reaped {
        Reaped(child, own_group)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if self.1 {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn nix_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("kill").success();
    assert!(ok);
}

#[test]
fn an_open_loop_keeps_its_schedule_and_chat_streams_count_exactly() {
    // 20 arrivals at 40/s (Poisson, seeded) on the chat API: every request is sent near its
    // time (the fake answers in ~15 ms), and the role-only first delta is no token.
    let job = Job::new("ok", "{request_rate: 40, requests: 20, seed: 3}");
    let yaml = std::fs::read_to_string(job.dir.path().join("job.yaml")).expect("job") + "api: chat\n";
    std::fs::write(job.dir.path().join("job.yaml"), yaml).expect("job");
    let out = job.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = result(&job);
    assert_eq!(r["tokens"]["output"], 20 * 8);
    assert_eq!(r["serving"]["token_count_method"], "usage");
    let lag = &r["serving"]["send_lag_ms"];
    assert_eq!(lag["n"], 20);
    assert!(lag["p50"].as_f64().expect("lag") < 50.0, "{lag}");
    let rows = parquet_rows(&job.out().join("requests.parquet"));
    let scheduled: Vec<f64> = rows.iter().map(|r| r["scheduled_s"].as_f64().expect("open loop")).collect();
    assert!(scheduled.windows(2).all(|w| w[0] <= w[1]), "{scheduled:?}");
    assert!(scheduled[19] > 0.1 && scheduled[19] < 3.0, "20 arrivals at 40/s: {scheduled:?}");
    for row in &rows {
        assert_eq!(
            row["tokens_per_event"].as_array().expect("known").iter().map(|n| n.as_u64().expect("n")).sum::<u64>(),
            8
        );
    }
}
