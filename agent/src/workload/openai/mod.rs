//! `engine: openai`: an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp,
//! llama-cpp-python, trtllm-serve) measured under load.
//!
//! *Load* starts the server (`server.command`, its own process group, output in
//! `server.log`) or attaches to one (`server.url`) and waits until it answers `/health`
//! (or `GET /v1/models` where there is no health endpoint). *Warmup* sends single
//! requests; *measure* runs the load pattern with the tokio load generator. Dropping the
//! engine stops the server it started. Metric definitions: docs/engines.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use llem_common::result::TokenCountMethod;
use llem_common::spec::{Api, ExperimentSpec, Load, Server};

use super::candle::prompts::{self, Prompt};
use super::{Cancel, Engine, EngineError, Loaded, RequestMetrics, ServedRequest};
use crate::clock::Clock;

pub mod client;
pub mod process;
pub mod schedule;
pub mod sse;

use client::{Generator, Outcome, Pattern, Planned};
use process::ServerProcess;

/// How often readiness is polled while the server loads.
const READY_POLL: Duration = Duration::from_millis(200);
/// Attempts at starting a server whose port was taken by someone else meanwhile.
const PORT_ATTEMPTS: u32 = 3;
/// Lines of `server.log` quoted in errors.
const LOG_LINES: usize = 15;
/// After failed requests, how long a server that is exiting has to be seen gone.
const SERVER_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Servers known to stream exactly one token per event, by the `owned_by` their
/// `/v1/models` reports. llama-cpp-python sends no streamed `usage`; its one-token
/// events are checked against its non-streamed `usage` by the end-to-end tests.
fn streams_one_token_per_event(owned_by: Option<&str>) -> bool {
    matches!(owned_by, Some("me"))
}

pub struct OpenaiEngine<'c> {
    spec: ExperimentSpec,
    server: Server,
    load: Load,
    api: Api,
    clock: &'c dyn Clock,
    base_dir: PathBuf,
    work_dir: PathBuf,
    cancel: Cancel,
    runtime: tokio::runtime::Runtime,
    process: Option<ServerProcess>,
    generator: Option<Generator>,
    /// `owned_by` of the server's first model.
    owned_by: Option<String>,
    offered: Vec<String>,
    prompts: Vec<serde_json::Value>,
    /// The job's GPUs (`0,1`): `{gpus}` and `CUDA_VISIBLE_DEVICES`.
    gpus: String,
    /// Prompt lengths by the server's own tokenizer, for servers whose stream gives none.
    prompt_tokens: std::collections::HashMap<String, u64>,
    /// Some request of the measured window failed (the server may have died).
    requests_failed: bool,
}

impl std::fmt::Debug for OpenaiEngine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenaiEngine")
            .field("server", &self.server)
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl<'c> OpenaiEngine<'c> {
    pub fn new(
        spec: &ExperimentSpec,
        clock: &'c dyn Clock,
        base_dir: &Path,
        work_dir: &Path,
        gpus: &str,
        cancel: Cancel,
    ) -> Result<Self, EngineError> {
        let (Some(server), Some(load)) = (spec.server.clone(), spec.load.clone()) else {
            return Err(EngineError::BadJob("`engine: openai` needs `server` and `load`".to_owned()));
        };
        // Synthetic prompts are token ids, which the completions API takes as they are.
        let prompts = prompts::load(&spec.dataset, spec.n_prompts, base_dir, 32_000)
            .map_err(EngineError::BadJob)?
            .into_iter()
            .map(|p| match p {
                Prompt::Text(t) => serde_json::Value::String(t),
                Prompt::Ids(ids) => serde_json::json!(ids),
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Failed(format!("cannot start the load generator's runtime: {e}")))?;
        Ok(OpenaiEngine {
            api: spec.api.unwrap_or(Api::Completions),
            spec: spec.clone(),
            server,
            load,
            clock,
            base_dir: base_dir.to_owned(),
            work_dir: work_dir.to_owned(),
            cancel,
            runtime,
            process: None,
            generator: None,
            owned_by: None,
            offered: Vec::new(),
            prompts,
            gpus: gpus.to_owned(),
            prompt_tokens: std::collections::HashMap::new(),
            requests_failed: false,
        })
    }

    fn path(&self) -> &'static str {
        match self.api {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }

    /// The request body for a prompt: streamed, with the usage chunk asked for, and the
    /// job's decoding settings.
    fn body(&self, prompt: &serde_json::Value) -> Bytes {
        let d = &self.spec.decoding;
        let mut body = serde_json::json!({
            "model": self.spec.model,
            "max_tokens": self.spec.max_output_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": d.temperature,
            "seed": d.seed,
        });
        match self.api {
            Api::Completions => body["prompt"] = prompt.clone(),
            Api::Chat => {
                let content = prompt.as_str().map_or_else(|| prompt.to_string(), str::to_owned);
                body["messages"] = serde_json::json!([{"role": "user", "content": content}]);
            }
        }
        if let Some(p) = d.top_p {
            body["top_p"] = p.into();
        }
        if let Some(k) = d.top_k {
            body["top_k"] = k.into();
        }
        if d.ignore_eos {
            body["ignore_eos"] = true.into();
        }
        Bytes::from(body.to_string())
    }

    fn generator(&self) -> Result<&Generator, EngineError> {
        self.generator.as_ref().ok_or_else(|| EngineError::Failed("the server is not started".to_owned()))
    }

    fn log_tail(&self) -> String {
        self.process.as_ref().map_or_else(String::new, |p| p.log_tail(LOG_LINES))
    }

    fn start_and_wait(&mut self) -> Result<String, EngineError> {
        if let Some(url) = &self.server.url {
            let base = url.clone();
            self.wait_ready(&base)?;
            return Ok(base);
        }
        let log = self.work_dir.join("server.log");
        let gpus = self.gpus.clone();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = process::free_port()?;
            let argv = self
                .server
                .argv(port, &self.spec.model, &gpus)
                .ok_or_else(|| EngineError::BadJob("`server.command` is not set".to_owned()))?;
            self.process = Some(ServerProcess::start(&argv, &self.server.env, &gpus, &self.base_dir, &log)?);
            let base = format!("http://127.0.0.1:{port}");
            match self.wait_ready(&base) {
                Ok(()) => return Ok(base),
                Err(e) if attempt < PORT_ATTEMPTS && process::port_was_taken(&self.log_tail()) => {
                    tracing::warn!("port {port} was taken before the server bound it: trying another ({e})");
                    self.process = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Failed("the server could not find a free port".to_owned()))
    }

    /// Polls until the server answers: `/health` 200, or `GET /v1/models` 200 where
    /// `/health` does not exist. Fails when the server exits or `ready_timeout_s` passes.
    fn wait_ready(&mut self, base: &str) -> Result<(), EngineError> {
        let generator = Generator::new(base, self.load.timeout_s);
        let deadline = Instant::now() + Duration::from_secs_f64(self.server.ready_timeout_s);
        let mut health = true;
        let mut last = String::from("no answer yet");
        loop {
            self.cancel.check()?;
            if let Some(status) = self.process.as_mut().and_then(ServerProcess::exited) {
                return Err(EngineError::Failed(format!(
                    "the server exited ({status}) before it was ready; the last lines of server.log:\n{}",
                    self.log_tail()
                )));
            }
            let probe = Duration::from_secs(2);
            if health {
                match self.runtime.block_on(generator.get("/health", probe)) {
                    Ok((200, _)) => break,
                    Ok((404, _)) => health = false,
                    Ok((status, body)) => last = format!("/health answered {status} {}", body.trim()),
                    Err(e) => last = e,
                }
            }
            if !health {
                match self.runtime.block_on(generator.get("/v1/models", probe)) {
                    Ok((200, _)) => break,
                    Ok((status, body)) => last = format!("/v1/models answered {status} {}", body.trim()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Failed(format!(
                    "the server was not ready within {} s (server.ready_timeout_s); last: {last}; the last lines of server.log:\n{}",
                    self.server.ready_timeout_s,
                    self.log_tail()
                )));
            }
            std::thread::sleep(READY_POLL);
        }
        // What it serves, for token counting and for a clear error on a wrong name.
        if let Ok((200, body)) = self.runtime.block_on(generator.get("/v1/models", Duration::from_secs(10))) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let models = json.get("data").and_then(|d| d.as_array()).cloned().unwrap_or_default();
            self.offered = models.iter().filter_map(|m| m.get("id")?.as_str().map(str::to_owned)).collect();
            self.owned_by = models.first().and_then(|m| m.get("owned_by")?.as_str().map(str::to_owned));
        }
        self.generator = Some(generator);
        Ok(())
    }

    fn plan(&self, index: u32, offset_s: Option<f64>) -> Planned {
        let prompt = &self.prompts[index as usize % self.prompts.len()];
        Planned {
            index,
            prompt: prompt.as_str().map_or_else(|| prompt.to_string(), str::to_owned),
            body: self.body(prompt),
            offset_s,
        }
    }

    /// llama-cpp-python streams no usage: its prompt lengths come from its own tokenizer
    /// (`/extras/tokenize/count`, which counts as its `usage.prompt_tokens` does).
    fn count_prompts(&mut self) -> Result<(), EngineError> {
        // A chat request adds the chat template around the prompt: the raw text's count
        // would be too low, so chat prompts stay uncounted (null) rather than wrong.
        if !streams_one_token_per_event(self.owned_by.as_deref()) || self.api == Api::Chat {
            return Ok(());
        }
        let distinct: std::collections::BTreeSet<String> =
            self.prompts.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect();
        for prompt in distinct {
            let body = serde_json::json!({"input": prompt}).to_string();
            let answer =
                self.runtime.block_on(self.generator()?.post("/extras/tokenize/count", body, Duration::from_secs(30)));
            if let Ok((200, text)) = answer {
                if let Some(n) =
                    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("count")?.as_u64())
                {
                    self.prompt_tokens.insert(prompt, n);
                }
            }
        }
        Ok(())
    }

    /// Counts an outcome's tokens exactly, or says it cannot.
    fn count(&self, o: &Outcome, prompt: &str) -> (Option<u64>, Option<u64>, TokenCountMethod) {
        if let Some((prompt, completion)) = o.usage {
            return (prompt, Some(completion), TokenCountMethod::Usage);
        }
        if let Some((prompt, predicted)) = o.timings {
            return (prompt, Some(predicted), TokenCountMethod::ServerTimings);
        }
        if streams_one_token_per_event(self.owned_by.as_deref()) {
            let exact: Option<u64> = o.events.iter().map(|(_, n)| n.map(u64::from)).sum();
            let input = self.prompt_tokens.get(prompt).copied();
            return (input, Some(exact.unwrap_or(o.events.len() as u64)), TokenCountMethod::OnePerEvent);
        }
        (None, None, TokenCountMethod::Unknown)
    }

    fn to_metrics(&self, o: Outcome, prompt: String, clock0: f64) -> RequestMetrics {
        let (input, output, method) = self.count(&o, &prompt);
        let at = |s: f64| clock0 + s;
        let failed = o.error.is_some();
        let events: Vec<(f64, Option<u32>)> = {
            let known_one_each = method == TokenCountMethod::OnePerEvent || output == Some(o.events.len() as u64);
            o.events.iter().map(|&(t, n)| (at(t), n.or(known_one_each.then_some(1)))).collect()
        };
        let ttft_ms = o.events.first().map(|(t, _)| (t - o.sent_s) * 1000.0);
        let itl_ms = o.events.windows(2).map(|w| (w[1].0 - w[0].0) * 1000.0).collect();
        RequestMetrics {
            // A failed request's partial tokens are not counted as complete.
            input_tokens: if failed { 0 } else { input.unwrap_or(0) },
            output_tokens: if failed { 0 } else { output.unwrap_or(0) },
            ttft_ms,
            itl_ms,
            request_ms: (o.end_s - o.sent_s) * 1000.0,
            served: Some(Box::new(ServedRequest {
                index: o.index,
                prompt,
                scheduled: o.scheduled_s.map(at),
                sent: at(o.sent_s),
                end: at(o.end_s),
                events,
                input_tokens: input,
                output_tokens: output,
                method,
                status: o.status,
                error: o.error,
            })),
        }
    }

    /// The server's exit as an error, if it exited. `grace`: how long to wait for an exit
    /// that is under way (a dying server closes its sockets, failing the requests, a moment
    /// before the kernel reports it gone).
    fn server_gone(&mut self, grace: Duration) -> Option<EngineError> {
        let until = Instant::now() + grace;
        let status = loop {
            let process = self.process.as_mut()?;
            match process.exited() {
                Some(status) => break status,
                None if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                None => return None,
            }
        };
        Some(EngineError::Failed(format!(
            "the server exited ({status}) while it was measured; the last lines of server.log:\n{}",
            self.log_tail()
        )))
    }
}

impl Engine for OpenaiEngine<'_> {
    fn load(&mut self) -> Result<Loaded, EngineError> {
        let base = self.start_and_wait()?;
        self.count_prompts()?;
        tracing::info!(
            "the server at {base} is ready; it serves [{}] (owned by {})",
            self.offered.join(", "),
            self.owned_by.as_deref().unwrap_or("?")
        );
        Ok(Loaded::default())
    }

    fn server_name(&self) -> Option<String> {
        self.owned_by.clone()
    }

    fn after_window(&mut self) -> Result<(), EngineError> {
        let grace = if self.requests_failed { SERVER_EXIT_GRACE } else { Duration::ZERO };
        self.server_gone(grace).map_or(Ok(()), Err)
    }

    fn warmup_step(&mut self, step: u32) -> Result<Option<f64>, EngineError> {
        self.cancel.check()?;
        let plan = self.plan(step, None);
        let generator = self.generator()?.clone();
        let (path, cancel) = (self.path(), self.cancel.clone());
        // A warmup request may take up to `load.timeout_s`: Ctrl-C must not wait for it.
        let outcome = self.runtime.block_on(async move {
            let mut watch = tokio::time::interval(Duration::from_millis(50));
            let request = generator.stream(path, &plan, Instant::now());
            tokio::pin!(request);
            loop {
                tokio::select! {
                    outcome = &mut request => return Some(outcome),
                    _ = watch.tick() => if cancel.is_requested() { return None },
                }
            }
        });
        let Some(outcome) = outcome else { return Err(EngineError::Cancelled) };
        if let Some(error) = &outcome.error {
            if let Some(gone) = self.server_gone(SERVER_EXIT_GRACE) {
                return Err(gone);
            }
            let client_error = outcome.status.is_some_and(|s| (400..500).contains(&s));
            if step == 0 && client_error {
                return Err(EngineError::BadJob(format!(
                    "the server refused the first warmup request for model `{}` ({error}); it serves: {}",
                    self.spec.model,
                    if self.offered.is_empty() { "no model it names".to_owned() } else { self.offered.join(", ") }
                )));
            }
            return Err(EngineError::Failed(format!("a warmup request failed: {error}")));
        }
        Ok(Some((outcome.end_s - outcome.sent_s) * 1000.0))
    }

    fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError> {
        let load = self.load.clone();
        let (pattern, plans) = match (load.concurrency, load.request_rate) {
            (_, Some(rate)) => {
                // Validation pairs an infinite rate with `requests`, never with only a duration.
                let count = load.requests;
                let offsets =
                    schedule::arrivals(rate.0, load.burstiness.unwrap_or(1.0), load.seed, count, load.duration_s);
                let plans: Vec<Planned> =
                    offsets.iter().enumerate().map(|(i, &t)| self.plan(i as u32, Some(t))).collect();
                (Pattern::Open, plans)
            }
            (concurrency, None) => {
                let n = load.requests.unwrap_or(self.spec.n_prompts);
                let plans: Vec<Planned> = (0..n).map(|i| self.plan(i, None)).collect();
                (Pattern::Closed { concurrency: concurrency.unwrap_or(1), duration_s: load.duration_s }, plans)
            }
        };
        let prompts: Vec<String> = plans.iter().map(|p: &Planned| p.prompt.clone()).collect();
        let cancel = self.cancel.clone();
        let stop: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || cancel.is_requested());
        let (t0, clock0) = (Instant::now(), self.clock.now());
        let outcomes = self.runtime.block_on(self.generator()?.run(self.path(), plans, pattern, t0, stop));
        self.cancel.check()?;
        if let Some(gone) = self.server_gone(Duration::ZERO) {
            return Err(gone);
        }
        // Whether the server may have died with them is decided after the window closes
        // (`after_window`), so waiting for its exit does not lengthen the window.
        self.requests_failed = outcomes.iter().any(|o| o.error.is_some());
        let requests: Vec<RequestMetrics> = outcomes
            .into_iter()
            .map(|o| {
                let prompt = prompts.get(o.index as usize % prompts.len().max(1)).cloned().unwrap_or_default();
                self.to_metrics(o, prompt, clock0)
            })
            .collect();
        let failed: Vec<&RequestMetrics> = requests.iter().filter(|r| r.failed()).collect();
        let share = failed.len() as f64 / requests.len().max(1) as f64;
        if share > load.max_error_rate {
            let first = failed.first().and_then(|r| r.served.as_ref()?.error.clone()).unwrap_or_default();
            return Err(EngineError::Failed(format!(
                "{} of {} requests failed, more than load.max_error_rate ({} %); the first: {first}",
                failed.len(),
                requests.len(),
                load.max_error_rate * 100.0
            )));
        }
        Ok(requests)
    }
}
