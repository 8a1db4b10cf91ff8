//! The load generator: tokio and hyper, one connection per request in flight (the pool
//! has no cap, so a concurrency of 500 holds 500 connections), each response read as a
//! stream of server-sent events with every token-bearing event's arrival time.
//!
//! Requests are never retried: a failed request is a measured error. Each has a deadline
//! (`load.timeout_s`) from sending to its last byte.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::sse::{interpret, Chunk, EventReader};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub index: u32,
    pub prompt: String,
    pub body: Bytes,
    /// Open loop: when to send it, from the start of the run.
    pub offset_s: Option<f64>,
}

/// What happened to one request. Times are from the run's start (`Instant` given to
/// [`Generator::run`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub index: u32,
    pub scheduled_s: Option<f64>,
    pub sent_s: f64,
    pub end_s: f64,
    /// Each token-bearing event: arrival time and its exact token count when the event
    /// said it (log-probabilities).
    pub events: Vec<(f64, Option<u32>)>,
    pub usage: Option<(Option<u64>, u64)>,
    pub timings: Option<(Option<u64>, u64)>,
    pub finish_reason: Option<String>,
    pub status: Option<u16>,
    /// Why the request failed; `None` when it completed.
    pub error: Option<String>,
}

/// How requests are released.
#[derive(Debug, Clone, Copy)]
pub enum Pattern {
    /// Keep this many in flight; stop starting new ones after `duration_s` if given.
    Closed { concurrency: u32, duration_s: Option<f64> },
    /// Send each at its `offset_s`.
    Open,
}

/// A client bound to one server.
#[derive(Debug, Clone)]
pub struct Generator {
    client: HttpClient,
    base: String,
    timeout: Duration,
}

impl Generator {
    /// `base`: `http://host:port`. Connections are opened on demand, kept for reuse, and
    /// never capped.
    pub fn new(base: &str, timeout_s: f64) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Generator { client, base: base.trim_end_matches('/').to_owned(), timeout: Duration::from_secs_f64(timeout_s) }
    }

    /// `GET path`: status and body (up to 64 KiB), within `timeout`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String), String> {
        let uri = format!("{}{path}", self.base);
        let req = Request::get(&uri).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| describe(&e))?;
            let status = resp.status().as_u16();
            let body = read_limited(resp.into_body(), 64 * 1024).await;
            Ok((status, body))
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// `POST path` with a JSON body: status and body (up to 64 KiB), within `timeout`.
    pub async fn post(&self, path: &str, body: String, timeout: Duration) -> Result<(u16, String), String> {
        let uri = format!("{}{path}", self.base);
        let req = Request::post(&uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| describe(&e))?;
            let status = resp.status().as_u16();
            Ok((status, read_limited(resp.into_body(), 64 * 1024).await))
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// Sends one streamed request and reads it to the end.
    pub async fn stream(&self, path: &str, planned: &Planned, t0: Instant) -> Outcome {
        let since = |t: Instant| t.duration_since(t0).as_secs_f64();
        let mut out = Outcome { index: planned.index, ..Outcome::default() };
        let uri = format!("{}{path}", self.base);
        let req = match Request::post(&uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "text/event-stream")
            .body(Full::new(planned.body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        let sent = Instant::now();
        out.sent_s = since(sent);
        let deadline = tokio::time::Instant::from_std(sent + self.timeout);
        let result = tokio::time::timeout_at(deadline, read_stream(&self.client, req, &mut out, t0)).await;
        out.end_s = since(Instant::now());
        match result {
            Err(_) => {
                out.error =
                    Some(format!("no complete answer within {:.0} s (load.timeout_s)", self.timeout.as_secs_f64()))
            }
            Ok(Err(e)) => out.error = Some(e),
            Ok(Ok(())) => {}
        }
        out
    }

    /// Runs every planned request in `pattern`; returns the outcomes by index. Stops
    /// starting requests when `stop` is set (those in flight are dropped, closing their
    /// connections).
    pub async fn run(
        &self,
        path: &str,
        plans: Vec<Planned>,
        pattern: Pattern,
        t0: Instant,
        stop: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Vec<Outcome> {
        let plans = Arc::new(plans);
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::with_capacity(plans.len())));
        let mut tasks = tokio::task::JoinSet::new();
        match pattern {
            Pattern::Closed { concurrency, duration_s } => {
                let next = Arc::new(AtomicU32::new(0));
                let until = duration_s.map(|d| t0 + Duration::from_secs_f64(d));
                for _ in 0..concurrency {
                    let (me, plans, next, outcomes, path, stop) = (
                        self.clone(),
                        Arc::clone(&plans),
                        Arc::clone(&next),
                        Arc::clone(&outcomes),
                        path.to_owned(),
                        Arc::clone(&stop),
                    );
                    tasks.spawn(async move {
                        loop {
                            if stop() || until.is_some_and(|u| Instant::now() >= u) {
                                break;
                            }
                            let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                            // With a duration, prompts repeat until it ends.
                            let Some(plan) =
                                (if until.is_some() { plans.get(i % plans.len().max(1)) } else { plans.get(i) })
                            else {
                                break;
                            };
                            let mut plan = plan.clone();
                            plan.index = i as u32;
                            let outcome = me.stream(&path, &plan, t0).await;
                            lock(&outcomes).push(outcome);
                        }
                    });
                }
            }
            Pattern::Open => {
                for plan in plans.iter().cloned() {
                    let (me, outcomes, path, stop) =
                        (self.clone(), Arc::clone(&outcomes), path.to_owned(), Arc::clone(&stop));
                    tasks.spawn(async move {
                        let offset = Duration::from_secs_f64(plan.offset_s.unwrap_or(0.0));
                        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + offset)).await;
                        if stop() {
                            return;
                        }
                        let mut outcome = me.stream(&path, &plan, t0).await;
                        outcome.scheduled_s = plan.offset_s;
                        lock(&outcomes).push(outcome);
                    });
                }
            }
        }
        // Watch for a stop while requests run: dropping the tasks closes their streams.
        // One interval for the whole run: a sleep made anew on every pass would be reset by
        // each finishing task and, with tasks ending often, never fire.
        let watch_stop = Arc::clone(&stop);
        let mut watch = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                _ = watch.tick() => {}
            }
            if watch_stop() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
        let mut all = std::mem::take(&mut *lock(&outcomes));
        all.sort_by_key(|o| o.index);
        all
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_limited(mut body: hyper::body::Incoming, limit: usize) -> String {
    let mut bytes = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() >= limit {
                bytes.truncate(limit);
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn read_stream(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    out: &mut Outcome,
    t0: Instant,
) -> Result<(), String> {
    let resp = client.request(req).await.map_err(|e| format!("the request failed: {}", describe(&e)))?;
    let status = resp.status();
    out.status = Some(status.as_u16());
    if !status.is_success() {
        let body = read_limited(resp.into_body(), 4096).await;
        return Err(format!("HTTP {}: {}", status.as_u16(), body.trim()));
    }
    let mut body = resp.into_body();
    let mut reader = EventReader::default();
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the stream was cut: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        let at = Instant::now().duration_since(t0).as_secs_f64();
        for event in reader.feed(&data) {
            for chunk in interpret(&event)? {
                match chunk {
                    Chunk::Text { tokens, finish_reason, .. } => {
                        out.events.push((at, tokens));
                        if finish_reason.is_some() {
                            out.finish_reason = finish_reason;
                        }
                    }
                    Chunk::Empty { finish_reason } => {
                        if finish_reason.is_some() {
                            out.finish_reason = finish_reason;
                        }
                    }
                    Chunk::Usage { prompt_tokens, completion_tokens } => {
                        out.usage = Some((prompt_tokens, completion_tokens))
                    }
                    Chunk::Timings { prompt_n, predicted_n } => out.timings = Some((prompt_n, predicted_n)),
                    Chunk::Error(message) => return Err(format!("the server reported an error mid-stream: {message}")),
                    Chunk::Done => done = true,
                }
            }
        }
    }
    // Complete means: a reason to stop (`stop`, `length`) and no event cut in half. A
    // stream closed without a reason was cut short (llama-cpp-python's
    // `interrupt_requests` ends streams that way). `[DONE]` is not required: some servers
    // (older TGI) end the stream after the last chunk without it.
    if reader.has_partial() {
        return Err("the stream ended in the middle of an event: the response is incomplete".to_owned());
    }
    if out.finish_reason.is_none() {
        let what = if done { "with `[DONE]` but" } else { "before `data: [DONE]` and" };
        return Err(format!("the stream ended {what} without a finish_reason: the response is incomplete"));
    }
    Ok(())
}
