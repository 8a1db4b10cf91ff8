//! Benchmark: the openai engine's load generator against a fast local fake SSE server
//! (no model: a fixed token rate), and, in the same run, a Python peer (`aiperf`) against
//! the same server. Prints one JSON line; figures go in docs/performance.md.
//!
//!   cargo bench -p llem-agent --bench load_generator -- [--streams 256] [--requests 2048]
//!       [--tokens 64] [--token-ms 20] [--peer aiperf] [--tokenizer DIR]
//!
//! * client CPU per 1,000 tokens: our generator's thread CPU time (getrusage of its thread)
//!   ÷ tokens received; the peer's: CPU of it and every process it ran (RUSAGE_CHILDREN) ÷
//!   tokens the server sent it.
//! * TTFT the client adds: per request, from the moment the server wrote the first event
//!   to the moment the client saw it. Ours on one monotonic clock (the server runs in this
//!   process); the peer's on the wall clock: its `request_start_ns` plus its TTFT, against
//!   the server's write time of the request with the same `X-Request-ID`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Channel};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use llem_agent::workload::openai::client::{Generator, Pattern, Planned};
use llem_common::result::Distribution;
use nix::sys::resource::{getrusage, UsageWho};

#[derive(Default)]
struct ServerStats {
    /// When each request's first event was written, by its `X-Request-ID` (the peer sends
    /// one) or else its prompt (ours are unique): monotonic and wall-clock.
    first_sent: Mutex<Vec<(String, Instant, u128)>>,
    tokens: AtomicU64,
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

/// The response body: the events, stamped when hyper takes the first one to write it
/// to the socket (so the server's own queueing is not counted as the client's).
struct Stamped {
    inner: Channel<Bytes>,
    key: Option<String>,
    stats: Arc<ServerStats>,
}

impl hyper::body::Body for Stamped {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            if let Some(key) = this.key.take() {
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                this.stats.first_sent.lock().unwrap().push((key, Instant::now(), wall));
            }
        }
        polled
    }
}

async fn handle(req: Request<Incoming>, stats: Arc<ServerStats>, tokens: u32, token_ms: u64) -> Response<Stamped> {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = request_id.unwrap_or_else(|| json["prompt"].as_str().unwrap_or("").to_owned());
    let (mut tx, rx) = Channel::<Bytes>::new(4);
    let body = Stamped { inner: rx, key: Some(key), stats: Arc::clone(&stats) };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(token_ms));
        for i in 0..tokens {
            if i > 0 {
                tick.tick().await;
            } else {
                tick.reset();
            }
            let finish = if i + 1 == tokens { "\"length\"" } else { "null" };
            let event = format!("data: {{\"id\":\"cmpl\",\"object\":\"text_completion\",\"created\":0,\"model\":\"fake\",\"choices\":[{{\"text\":\"t{i} \",\"index\":0,\"finish_reason\":{finish}}}]}}\n\n");
            if tx.send_data(Bytes::from(event)).await.is_err() {
                return;
            }
            stats.tokens.fetch_add(1, Ordering::Relaxed);
        }
        let usage = format!("data: {{\"id\":\"cmpl\",\"object\":\"text_completion\",\"created\":0,\"model\":\"fake\",\"choices\":[],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n", tokens + 4);
        let _ = tx.send_data(Bytes::from(usage)).await;
    });
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
}

async fn models(stats: Arc<ServerStats>) -> Response<Stamped> {
    let (mut tx, rx) = Channel::<Bytes>::new(1);
    tokio::spawn(async move {
        let _ = tx
            .send_data(Bytes::from_static(
                br#"{"object":"list","data":[{"id":"fake","object":"model","owned_by":"bench"}]}"#,
            ))
            .await;
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Stamped { inner: rx, key: None, stats })
        .unwrap()
}

/// The fake server on its own one-thread runtime (it gets a core of its own at most).
fn start_server(stats: Arc<ServerStats>, tokens: u32, token_ms: u64) -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let stats = Arc::clone(&stats);
                        async move {
                            if req.uri().path() == "/v1/models" {
                                Ok::<_, std::convert::Infallible>(models(stats).await)
                            } else {
                                Ok(handle(req, stats, tokens, token_ms).await)
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    port
}

fn cpu_s(who: UsageWho) -> f64 {
    let u = getrusage(who).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn first_sent(stats: &ServerStats) -> Vec<(String, Instant, u128)> {
    std::mem::take(&mut *stats.first_sent.lock().unwrap())
}

fn ours(port: u16, streams: u32, requests: u32, stats: &ServerStats) -> serde_json::Value {
    let threads: usize = arg("--client-threads", "1").parse().unwrap();
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap()
    };
    let generator = Generator::new(&format!("http://127.0.0.1:{port}"), 600.0);
    let plans: Vec<Planned> = (0..requests)
        .map(|i| {
            let prompt = format!("req-{i}");
            let body = serde_json::json!({"model": "fake", "prompt": prompt, "max_tokens": 64, "stream": true});
            Planned { index: i, prompt, body: Bytes::from(body.to_string()), offset_s: None }
        })
        .collect();
    let tokens_before = stats.tokens.load(Ordering::Relaxed);
    // One client thread: its own CPU time. Several: the whole process's (server included,
    // so an upper bound).
    let who = if threads <= 1 { UsageWho::RUSAGE_THREAD } else { UsageWho::RUSAGE_SELF };
    let (cpu0, wall0) = (cpu_s(who), Instant::now());
    let t0 = Instant::now();
    let stop: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(|| false);
    let outcomes = rt.block_on(generator.run(
        "/v1/completions",
        plans,
        Pattern::Closed { concurrency: streams, duration_s: None },
        t0,
        stop,
    ));
    let (cpu, wall) = (cpu_s(who) - cpu0, wall0.elapsed().as_secs_f64());
    let received: usize = outcomes.iter().map(|o| o.events.len()).sum();
    let errors = outcomes.iter().filter(|o| o.error.is_some()).count();
    // Added TTFT: the server wrote the first event at `sent`; we saw it at t0 + events[0].
    let server: std::collections::HashMap<String, Instant> =
        first_sent(stats).into_iter().map(|(k, t, _)| (k, t)).collect();
    let added: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| {
            let seen = t0 + Duration::from_secs_f64(o.events.first()?.0);
            let sent = *server.get(&format!("req-{}", o.index))?;
            Some(seen.saturating_duration_since(sent).as_secs_f64() * 1000.0)
        })
        .collect();
    let d = Distribution::of(&added).unwrap();
    serde_json::json!({
        "client": "llem",
        "requests": outcomes.len(), "errors": errors,
        "tokens": received, "server_tokens": stats.tokens.load(Ordering::Relaxed) - tokens_before,
        "wall_s": wall, "cpu_s": cpu,
        "cpu_ms_per_1000_tokens": cpu * 1e6 / received as f64,
        "added_ttft_ms_p50": d.p50, "added_ttft_ms_p99": d.p99,
    })
}

fn peer(port: u16, streams: u32, requests: u32, stats: &ServerStats, tokenizer: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, (0..64).map(|i| format!("{{\"text\": \"req-{i}\"}}\n")).collect::<String>()).unwrap();
    let tokens_before = stats.tokens.load(Ordering::Relaxed);
    let (cpu0, wall0) = (cpu_s(UsageWho::RUSAGE_CHILDREN), Instant::now());
    let out = std::process::Command::new("aiperf")
        .args(["profile", "-m", "fake", "--url", &format!("http://127.0.0.1:{port}"), "--endpoint-type", "completions"])
        .args(["--streaming", "--concurrency", &streams.to_string(), "--request-count", &requests.to_string()])
        .args(["--use-server-token-count", "--tokenizer", tokenizer, "--ui-type", "none", "--no-auto-plot"])
        .arg("--input-file")
        .arg(&prompts)
        .args(["--custom-dataset-type", "single_turn", "--extra-inputs", "max_tokens:64", "--output-artifact-dir"])
        .arg(dir.path().join("out"))
        .output()
        .expect("aiperf (pip install aiperf)");
    let (cpu, wall) = (cpu_s(UsageWho::RUSAGE_CHILDREN) - cpu0, wall0.elapsed().as_secs_f64());
    assert!(out.status.success(), "aiperf failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let tokens = stats.tokens.load(Ordering::Relaxed) - tokens_before;
    let export = walk(&dir.path().join("out"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("profile_export_aiperf.json"))
        .expect("aiperf's export");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export).unwrap()).unwrap();
    let ttft = &report["time_to_first_token"];
    // Added TTFT per request: its start (wall ns) plus its TTFT is when it saw the first
    // event; the server wrote that event at `sent` (wall ns), matched by X-Request-ID.
    let server: std::collections::HashMap<String, u128> =
        first_sent(stats).into_iter().map(|(k, _, wall)| (k, wall)).collect();
    let records = walk(&dir.path().join("out"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("profile_export.jsonl"))
        .expect("records");
    let added: Vec<f64> = std::fs::read_to_string(records)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).ok()?;
            let start = r["metadata"]["request_start_ns"].as_f64()?;
            let ttft_ms = r["metrics"]["time_to_first_token"]["value"].as_f64()?;
            let sent = *server.get(r["metadata"]["x_request_id"].as_str()?)? as f64;
            Some((start + ttft_ms * 1e6 - sent) / 1e6)
        })
        .collect();
    let s = Distribution::of(&added).expect("matched aiperf records");
    serde_json::json!({
        "client": "aiperf", "version": version(),
        "requests": requests, "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
        "cpu_ms_per_1000_tokens": cpu * 1e6 / tokens as f64,
        "ttft_ms_p50": ttft["p50"], "ttft_ms_p99": ttft["p99"],
        "matched_requests": s.n,
        "added_ttft_ms_p50": s.p50, "added_ttft_ms_p99": s.p99,
    })
}

fn version() -> String {
    let out = std::process::Command::new("aiperf")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    out.unwrap_or_default()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn main() {
    let streams: u32 = arg("--streams", "256").parse().unwrap();
    let requests: u32 = arg("--requests", "2048").parse().unwrap();
    let tokens: u32 = arg("--tokens", "64").parse().unwrap();
    let token_ms: u64 = arg("--token-ms", "20").parse().unwrap();
    let stats = Arc::new(ServerStats::default());
    let port = start_server(Arc::clone(&stats), tokens, token_ms);
    let mine = ours(port, streams, requests, &stats);
    let mut line = serde_json::json!({"streams": streams, "requests": requests, "tokens_per_request": tokens, "token_ms": token_ms, "llem": mine});
    if arg("--peer", "") == "aiperf" {
        let other = peer(port, streams, requests, &stats, &arg("--tokenizer", "."));
        let ratio =
            mine["cpu_ms_per_1000_tokens"].as_f64().unwrap() / other["cpu_ms_per_1000_tokens"].as_f64().unwrap();
        line["aiperf"] = other;
        line["cpu_per_token_ratio_llem_over_aiperf"] = ratio.into();
    }
    println!("{line}");
}
