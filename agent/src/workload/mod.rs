//! Engines: what runs the prompts while the agent measures.
//!
//! * `synthetic` — a known CPU load, to check the measurement chain itself.
//! * `command` — any external program, measured while it runs.
//! * `candle` — real generation in-process (its own issue).

use llem_common::failure::FailureKind;
use llem_common::spec::{Engine as EngineKind, ExperimentSpec};

use crate::clock::Clock;

pub mod candle;
pub mod command;
pub mod openai;
pub mod synthetic;

/// What loading left behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub memory_mb: Option<f64>,
    /// For the FLOPs estimate (PaLM: 2 × N × tokens); `None` when unknown.
    pub non_embedding_params: Option<u64>,
}

/// One request's figures. Token counts are exact; padding never counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestMetrics {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft_ms: Option<f64>,
    /// Gaps between consecutive output tokens.
    pub itl_ms: Vec<f64>,
    pub request_ms: f64,
    /// A request to a server (`engine: openai`): its timeline, for the load metrics,
    /// the steady state and per-request energy.
    pub served: Option<Box<ServedRequest>>,
}

impl RequestMetrics {
    /// Whether it failed (a server request that got no complete answer).
    pub fn failed(&self) -> bool {
        self.served.as_ref().is_some_and(|s| s.error.is_some())
    }
}

/// One request to a server. Times are the engine clock's seconds (the meter's too).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServedRequest {
    pub index: u32,
    pub prompt: String,
    /// Open loop: when it was due.
    pub scheduled: Option<f64>,
    pub sent: f64,
    pub end: f64,
    /// Each token-bearing event: when it arrived and how many tokens it carried (when
    /// known exactly).
    pub events: Vec<(f64, Option<u32>)>,
    /// Exact counts, by [`ServedRequest::method`]; `None` when not known.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub method: llem_common::result::TokenCountMethod,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A request to stop the running job, shared with the engine, which checks it between
/// tokens (and kills an external program).
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn request(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancellation was requested.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_requested() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Why an engine failed. The variant is the failure's kind, decided here where the
/// engine knows it, and carried to the coordinator as a [`FailureKind`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cancelled")]
    Cancelled,
    /// The device or host ran out of memory (the larger values of a monotone field are
    /// skipped rather than run).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The job cannot run as written: an unsupported model, settings that do not apply,
    /// a missing file. Running it again cannot help.
    #[error("{0}")]
    BadJob(String),
    /// Anything else that went wrong while it ran.
    #[error("{0}")]
    Failed(String),
}

impl EngineError {
    pub fn kind(&self) -> FailureKind {
        match self {
            EngineError::Cancelled => FailureKind::Cancelled,
            EngineError::OutOfMemory(_) => FailureKind::OutOfMemory,
            EngineError::BadJob(_) => FailureKind::BadJob,
            EngineError::Failed(_) => FailureKind::EngineError,
        }
    }
}

/// An engine as the measurement sequence drives it.
pub trait Engine {
    /// Loads the model (or checks the program exists).
    fn load(&mut self) -> Result<Loaded, EngineError>;
    /// One warmup step; returns its latency in ms, or `None` when this engine has no
    /// (more) warmup to do.
    fn warmup_step(&mut self, step: u32) -> Result<Option<f64>, EngineError>;
    /// The measured workload: every prompt of the job.
    fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError>;
    /// Waits until the device has finished all queued work (GPU engines).
    fn sync(&mut self) {}
    /// Once the measured window is closed: whether what it measured stands (a server engine
    /// checks that its server did not die during it). Time spent here is outside the window.
    fn after_window(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
    /// A server engine: the server as it names itself (`/v1/models` `owned_by`).
    fn server_name(&self) -> Option<String> {
        None
    }
}

/// The engine a spec asks for.
/// `base_dir` resolves relative paths in the spec (model, dataset); `work_dir` is the
/// job's output directory.
/// `gpus` are the GPUs the job holds (exported as `CUDA_VISIBLE_DEVICES` to the programs
/// an engine starts).
pub fn for_spec<'c>(
    spec: &ExperimentSpec,
    clock: &'c dyn Clock,
    base_dir: &std::path::Path,
    work_dir: &std::path::Path,
    gpus: &[u32],
    cancel: Cancel,
) -> Result<Box<dyn Engine + 'c>, EngineError> {
    if gpus.len() > 1 && spec.engine == EngineKind::Candle {
        return Err(EngineError::BadJob(format!(
            "the candle engine runs on one GPU; this job asks for {} (`gpus:`): use `engine: openai` with a server that shards the model",
            gpus.len()
        )));
    }
    let visible = gpu_list(gpus);
    match spec.engine {
        EngineKind::Synthetic => Ok(Box::new(synthetic::Synthetic::new(spec, clock).with_cancel(cancel))),
        EngineKind::Command => {
            Ok(Box::new(command::CommandEngine::new(spec, work_dir)?.with_gpus(&visible).with_cancel(cancel)))
        }
        EngineKind::Openai => {
            Ok(Box::new(openai::OpenaiEngine::new(spec, clock, base_dir, work_dir, &visible, cancel)?))
        }
        EngineKind::Candle => {
            Ok(Box::new(candle::CandleEngine::new(spec, clock, base_dir, work_dir)?.with_cancel(cancel)))
        }
    }
}

/// `[0, 2]` → `0,2`, as `CUDA_VISIBLE_DEVICES` and `{gpus}` write it.
pub fn gpu_list(gpus: &[u32]) -> String {
    gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
