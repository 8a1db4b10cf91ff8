//! The openai engine against llama-cpp-python's real OpenAI server on the demo model
//! (started by the agent, and attached to), with token counts checked against the
//! server's own non-streamed `usage`; and its faults against a scripted fake server
//! (tests/fixtures/fake_openai.py).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llem_tests::{first_run_dir, llem_in, parquet_rows, repo_root};

fn demo_model() -> PathBuf {
    let path = repo_root().join("models").join("gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-demo-model (scripts/test does)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).expect("port").port()
}

/// One HTTP/1.0 exchange: status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned())))
}

/// llama-cpp-python's server on the demo model, killed when dropped.
struct LlamaServer {
    child: Child,
    port: u16,
    /// Answers already asked for, by prompt (greedy: the same prompt, the same answer).
    asked: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl LlamaServer {
    fn start() -> LlamaServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(demo_model())
            .args(["--model_alias", "gemma-3-270m", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--interrupt_requests", "False", "--n_ctx", "2048", "--n_threads", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m llama_cpp.server (scripts/test installs llama-cpp-python[server])");
        let server = LlamaServer { child, port, asked: Default::default() };
        let start = Instant::now();
        while http(port, "GET", "/v1/models", "").map(|(s, _)| s) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(120), "llama-cpp-python never answered");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// `usage` of a non-streamed greedy completion of `prompt`.
    fn usage(&self, prompt: &str, max_tokens: u32) -> (u64, u64) {
        if let Some(known) = self.asked.lock().expect("lock").get(prompt) {
            return *known;
        }
        let body = serde_json::json!({"model": "gemma-3-270m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0});
        let (status, text) = http(self.port, "POST", "/v1/completions", &body.to_string()).expect("answer");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let usage = (
            v["usage"]["prompt_tokens"].as_u64().expect("prompt"),
            v["usage"]["completion_tokens"].as_u64().expect("completion"),
        );
        self.asked.lock().expect("lock").insert(prompt.to_owned(), usage);
        usage
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attempt_dirs(run: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = llem_tests::files_under(run)
        .into_iter()
        .filter(|p| p.ends_with("result.json"))
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Checks one server job's files: a row per request with exact counts, each request's
/// tokens as the server counts them without streaming, the serving figures, server.log.
fn check_attempt(attempt: &Path, server: &LlamaServer, max_tokens: u32, requests: usize) {
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(attempt.join("result.json")).expect("result")).expect("json");
    let rows = parquet_rows(&attempt.join("requests.parquet"));
    assert_eq!(rows.len(), requests, "a row per measured request");
    let mut total_out = 0;
    for row in &rows {
        assert_eq!(row["status"], 200, "{row}");
        assert!(row["error"].is_null(), "{row}");
        assert_eq!(row["token_count_method"], "one_per_event");
        let out = row["output_tokens"].as_u64().expect("output tokens");
        let events = row["token_events_ms"].as_array().expect("events");
        assert_eq!(events.len() as u64, out, "one event per token: {row}");
        assert!(row["tokens_per_event"].as_array().expect("per event").iter().all(|n| n == 1));
        assert!((row["ttft_ms"].as_f64().expect("ttft") - events[0].as_f64().expect("first")).abs() < 1e-6);
        let (prompt_tokens, completion_tokens) = server.usage(row["prompt"].as_str().expect("prompt"), max_tokens);
        assert_eq!(out, completion_tokens, "streamed tokens differ from the server's own count for {}", row["prompt"]);
        assert_eq!(row["input_tokens"].as_u64(), Some(prompt_tokens), "{row}");
        assert!(row["energy_j"].is_null(), "no sensor here: energy is null, never 0");
        total_out += out;
    }
    assert_eq!(result["tokens"]["output"].as_u64(), Some(total_out));
    let serving = &result["serving"];
    assert_eq!(serving["requests"].as_u64(), Some(requests as u64));
    assert_eq!(serving["errors"].as_u64(), Some(0));
    assert_eq!(serving["token_count_method"], "one_per_event");
    assert_eq!(serving["server"], "me", "llama-cpp-python names itself `me`");
    for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        let d = &serving[metric];
        assert!(d["p50"].as_f64().expect(metric) <= d["p99"].as_f64().expect(metric), "{metric}: {d}");
    }
    assert!(serving["goodput_requests_per_s"].is_number(), "the sweep gives an SLO");
    let steady = &serving["steady_state"];
    assert!(steady["end_s"].as_f64().expect("steady state") > steady["start_s"].as_f64().expect("start"));
    assert!(steady["energy_j"].is_null() && steady["j_per_output_token"].is_null(), "{steady}");
    assert!(serving["energy_per_request_j"].is_null());
}

/// How many requests waited for another: sent while it was in flight, first token after
/// its last. Panics if two requests in flight together both had tokens at once (the server
/// runs one at a time).
fn queued_requests(rows: &[serde_json::Value]) -> usize {
    let secs = |row: &serde_json::Value, key: &str| row[key].as_f64().unwrap_or_else(|| panic!("{key}: {row}"));
    // (sent, first token, last token, done), seconds on the window's clock.
    let spans: Vec<(f64, f64, f64, f64)> = rows
        .iter()
        .map(|row| {
            let sent = secs(row, "sent_s");
            let events = row["token_events_ms"].as_array().expect("events");
            let last = events.last().and_then(|e| e.as_f64()).expect("a token");
            (sent, sent + secs(row, "ttft_ms") / 1e3, sent + last / 1e3, sent + secs(row, "e2el_ms") / 1e3)
        })
        .collect();
    // 1 ms of slack: the times are rounded through the Parquet file's f64 seconds.
    let waited_for = |i: usize, j: usize| spans[i].1 + 1e-3 >= spans[j].2;
    let mut queued = 0;
    for i in 0..spans.len() {
        let mut waited = false;
        for j in (0..spans.len()).filter(|&j| j != i) {
            let overlap = spans[i].0 < spans[j].3 && spans[j].0 < spans[i].3;
            if overlap {
                assert!(
                    waited_for(i, j) || waited_for(j, i),
                    "requests {i} and {j} were in flight together and both had tokens at once: {:?} {:?}",
                    spans[i],
                    spans[j]
                );
                waited |= waited_for(i, j);
            }
        }
        queued += usize::from(waited);
    }
    queued
}

fn server_sweep(server: &str, requests: u32) -> String {
    format!(
        "name: server\nmodel: gemma-3-270m\nengine: openai\nn_prompts: 4\nmax_output_tokens: 12\ndecoding: {{temperature: 0, seed: 0}}\n{server}\nload: {{requests: {requests}, slo: {{ttft_ms: 60000}}}}\nmeasurement: {{baseline: {{duration_s: 0}}, warmup: {{prompts: 1}}, thermal_floor: {{max_s: 0}}}}\nsweep:\n  load.concurrency: [1, 2]\nexecution: {{cycles: 1}}\n"
    )
}

#[test]
fn a_server_the_agent_starts_is_measured_with_exact_token_counts_and_reaped() {
    let _heavy = llem_tests::heavy_cpu();
    let dir = tempfile::tempdir().expect("tmp");
    let server = format!(
        "server:\n  command: [python3, -m, llama_cpp.server, --model, {:?}, --model_alias, \"{{model}}\", --host, 127.0.0.1, --port, \"{{port}}\"]\n  options: {{interrupt_requests: \"False\", n_ctx: 2048, n_threads: 2}}\n  ready_timeout_s: 120",
        demo_model().display().to_string()
    );
    std::fs::write(dir.path().join("sweep.yaml"), server_sweep(&server, 5)).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("llem run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run = first_run_dir(dir.path()).expect("a run");
    let attempts = attempt_dirs(&run);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let reference = LlamaServer::start();
    for attempt in &attempts {
        check_attempt(attempt, &reference, 12, 5);
        // The agent's server wrote its log into the attempt, and is gone.
        let log = std::fs::read_to_string(attempt.join("server.log")).expect("server.log");
        let pid: u32 = log
            .split("Started server process [")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in server.log:\n{log}"));
        assert!(!pid_alive(pid), "the server {pid} outlived its job");
    }
    // Concurrency 2 on a server that runs one request at a time queues the second: a
    // request sent while another is in flight gets its first token only after the other's
    // last, so its TTFT holds the wait. Checked as an order within each job (one clock),
    // not as TTFT against another job's, which a busy machine can turn round.
    for attempt in &attempts {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(attempt.join("result.json")).expect("r")).expect("j");
        let concurrency = r["spec"]["load"]["concurrency"].as_u64().expect("concurrency");
        let queued = queued_requests(&parquet_rows(&attempt.join("requests.parquet")));
        if concurrency == 1 {
            assert_eq!(queued, 0, "one stream never has two requests in flight");
        } else {
            assert!(queued >= 3, "of 5 requests on 2 streams, all but the first served wait: {queued}");
        }
    }
    let report = llem_in(dir.path(), &["report", run.to_str().expect("utf-8")]).output().expect("report");
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    // The server plots: the throughput–latency curve with both TTFT markers, labelled
    // ticks on both axes and a legend; J per token against load reads "not measured".
    let html = std::fs::read_to_string(run.join("report").join("index.html")).expect("index.html");
    assert!(html.contains("id=\"plot-throughput-latency\"") && html.contains("id=\"plot-energy-vs-load\""));
    let curve = std::fs::read_to_string(run.join("report").join("plot-throughput-latency.svg")).expect("svg");
    for part in ["class=\"tick-x\"", "class=\"tick-y\"", "class=\"legend\"", "TTFT p50", "TTFT p99"] {
        assert!(curve.contains(part), "the curve lacks {part}");
    }
    let energy = std::fs::read_to_string(run.join("report").join("plot-energy-vs-load.svg")).expect("svg");
    assert!(energy.contains("not measured") && !energy.contains(">0 J"), "energy is never drawn as 0");
}

#[test]
fn an_attached_server_is_measured_and_left_running() {
    let _heavy = llem_tests::heavy_cpu();
    let dir = tempfile::tempdir().expect("tmp");
    let server = LlamaServer::start();
    let sweep = server_sweep(&format!("server: {{url: \"http://127.0.0.1:{}\"}}", server.port), 4);
    std::fs::write(dir.path().join("sweep.yaml"), sweep).expect("sweep");
    let out = llem_in(dir.path(), &["run", "sweep.yaml"]).output().expect("llem run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let attempts = attempt_dirs(&first_run_dir(dir.path()).expect("a run"));
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        check_attempt(attempt, &server, 12, 4);
        assert!(!attempt.join("server.log").exists(), "an attached server is not ours to log");
    }
    assert_eq!(
        http(server.port, "GET", "/v1/models", "").map(|(s, _)| s),
        Some(200),
        "an attached server keeps running"
    );
}
