//! `engine: candle`: real generation in-process.
//!
//! * GGUF (quantized): `general.architecture` picks the model — `gemma3`, `gemma`,
//!   `llama` (also TinyLlama, SmolLM), `qwen2`, `qwen3` run in our batched decoder
//!   (`decoder.rs`); `phi3` in candle-transformers' (one sequence per forward pass).
//! * Hugging Face folders (`config.json`, `*.safetensors`, `tokenizer.json`):
//!   `llama`, `mistral`, `qwen2`, `qwen3`, `gemma`, `gemma3_text` at f32/f16/bf16
//!   (`precision`; `auto` = f32 on CPU, bf16 on GPU), in the same batched decoder.
//! * Tokenizer: `tokenizer.json` beside the model when present, else the GGUF's own
//!   vocabulary.
//! * Generation: greedy or sampled (`temperature`, `top_k`, `top_p`, `seed`), stopping at
//!   end-of-sequence unless `ignore_eos`. Token counts are exact: padding and warmup never
//!   count.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::DType;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_phi3;
use llem_common::spec::{self, ExperimentSpec, Precision};

use super::{Engine, EngineError, Loaded, RequestMetrics};
use crate::clock::Clock;

pub mod decoder;
pub mod prompts;
pub mod tokenizer;

use prompts::Prompt;
use tokenizer::{GgufTokenizer, JsonTokenizer, Tokenize};

/// Architectures read from GGUF, for the error that lists them.
pub const SUPPORTED_GGUF: &[&str] = &["gemma3", "gemma", "llama", "qwen2", "qwen3", "phi3"];

fn fail(context: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| classify(context, &e)
}

/// The one place a candle error becomes a failure kind. candle's errors say "this came
/// from CUDA" by type (`Error::Cuda`, possibly wrapped in context or a backtrace); the
/// driver's code inside is only text (`CUDA_ERROR_OUT_OF_MEMORY`), read here and nowhere
/// else. On the CPU, an allocation that fails aborts the process: the coordinator sees
/// the agent end, and the attempt is retried as a lost connection.
fn classify(context: &str, e: &candle_core::Error) -> EngineError {
    fn from_cuda(e: &candle_core::Error) -> Option<&(dyn std::error::Error + Send + Sync)> {
        match e {
            candle_core::Error::Cuda(inner) => Some(inner.as_ref()),
            candle_core::Error::WithBacktrace { inner, .. }
            | candle_core::Error::Context { inner, .. }
            | candle_core::Error::WithPath { inner, .. } => from_cuda(inner),
            _ => None,
        }
    }
    let message = format!("{context}: {e}");
    match from_cuda(e) {
        Some(cuda) if cuda.to_string().contains("CUDA_ERROR_OUT_OF_MEMORY") => EngineError::OutOfMemory(message),
        _ => EngineError::Failed(message),
    }
}

enum Model {
    Decoder(Box<decoder::Decoder>),
    Phi3(Box<quantized_phi3::ModelWeights>),
}

impl Model {
    fn batches(&self) -> bool {
        matches!(self, Model::Decoder(_))
    }

    /// One sequence at a time: logits of the last position of `ids` placed at `pos`.
    fn forward_one(&mut self, ids: &[u32], pos: usize, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Model::Decoder(m) => {
                if pos == 0 {
                    m.clear();
                }
                let positions: Vec<i64> = (pos..pos + ids.len()).map(|p| p as i64).collect();
                m.forward(&[ids.to_vec()], &[positions])
            }
            Model::Phi3(m) => m.forward(&Tensor::new(ids, device)?.unsqueeze(0)?, pos),
        }
    }
}

/// One generated sequence.
#[derive(Debug, Clone, Default)]
struct Generated {
    tokens: Vec<u32>,
    input_tokens: usize,
    ttft_ms: Option<f64>,
    itl_ms: Vec<f64>,
    request_ms: f64,
}

pub struct CandleEngine<'c> {
    spec: ExperimentSpec,
    clock: &'c dyn Clock,
    base_dir: PathBuf,
    outputs_path: Option<PathBuf>,
    device: Device,
    model: Option<Model>,
    tokenizer: Option<Box<dyn Tokenize>>,
    /// Encoded prompts, truncated to `max_input_tokens`.
    prompts: Vec<(String, Vec<u32>)>,
    warmup_cursor: usize,
    cancel: super::Cancel,
}

impl std::fmt::Debug for CandleEngine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEngine").field("model", &self.spec.model).finish_non_exhaustive()
    }
}

/// Resident memory of this process, in MiB.
pub fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kib| kib / 1024.0)
}

/// The GGUF block types candle 0.9 has CUDA kernels for (dequantise and matmul).
pub const CUDA_GGUF_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Tensors whose block type has no CUDA kernel in candle.
fn cuda_unsupported<'n>(tensors: impl Iterator<Item = (&'n str, GgmlDType)>) -> Vec<(&'n str, GgmlDType)> {
    let mut out: Vec<(&str, GgmlDType)> = tensors.filter(|(_, t)| !CUDA_GGUF_TYPES.contains(t)).collect();
    out.sort_by_key(|(name, _)| *name);
    out
}

fn device_for(spec: &ExperimentSpec) -> Result<Device, EngineError> {
    match spec.device {
        spec::Device::Cpu => Ok(Device::Cpu),
        spec::Device::Cuda(i) => {
            // Without the CUDA libraries candle would panic inside cudarc: ask first.
            let cuda = crate::cuda::status();
            if !cuda.usable {
                return Err(EngineError::BadJob(format!("cannot run on the GPU: {}", cuda.detail)));
            }
            Device::new_cuda(i.unwrap_or(0) as usize).map_err(|e| {
                EngineError::BadJob(format!(
                    "cannot use {}: {e} (GPU runs need llem-agent built with `--features cuda`)",
                    spec.device
                ))
            })
        }
    }
}

impl<'c> CandleEngine<'c> {
    /// `base_dir` resolves relative model and dataset paths; `out_dir` receives
    /// `outputs.jsonl` when `save_outputs`.
    pub fn new(
        spec: &ExperimentSpec,
        clock: &'c dyn Clock,
        base_dir: &Path,
        out_dir: &Path,
    ) -> Result<Self, EngineError> {
        Ok(CandleEngine {
            spec: spec.clone(),
            clock,
            base_dir: base_dir.to_owned(),
            outputs_path: spec.save_outputs.then(|| out_dir.join("outputs.jsonl")),
            device: device_for(spec)?,
            model: None,
            tokenizer: None,
            prompts: Vec::new(),
            warmup_cursor: 0,
            cancel: super::Cancel::default(),
        })
    }

    #[must_use]
    pub fn with_cancel(mut self, cancel: super::Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    fn model_path(&self) -> PathBuf {
        self.base_dir.join(&self.spec.model)
    }

    fn load_gguf(&mut self, path: &Path) -> Result<Loaded, EngineError> {
        let mut file =
            File::open(path).map_err(|e| EngineError::BadJob(format!("cannot open {}: {e}", path.display())))?;
        let ct = gguf_file::Content::read(&mut file).map_err(fail("read the GGUF header"))?;
        let arch =
            ct.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if arch != "phi3" && !decoder::GGUF_ARCHS.contains(&arch.as_str()) {
            return Err(EngineError::BadJob(format!(
                "GGUF architecture `{arch}` is not supported; supported: {}",
                SUPPORTED_GGUF.join(", ")
            )));
        }
        if self.device.is_cuda() {
            let unsupported = cuda_unsupported(ct.tensor_infos.iter().map(|(name, t)| (name.as_str(), t.ggml_dtype)));
            if let Some((name, dtype)) = unsupported.first() {
                // Never a silent fall back to the CPU: that would measure another device.
                return Err(EngineError::BadJob(format!(
                    "candle has no CUDA kernels for the {dtype:?} blocks of tensor `{name}` (and {} more tensors); on CUDA it runs {}",
                    unsupported.len() - 1,
                    CUDA_GGUF_TYPES.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if self.spec.precision != Precision::Auto {
            // A GGUF's weights are what they are; casting them would measure another model.
            return Err(EngineError::BadJob(format!(
                "`precision: {:?}` does not apply to a GGUF file: it runs at its own quantisation; use `precision: auto`",
                self.spec.precision
            )
            .to_lowercase()));
        }
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer: Box<dyn Tokenize> = if beside.exists() {
            let eos: Vec<u32> =
                ct.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()).into_iter().collect();
            Box::new(JsonTokenizer::from_file(&beside, &eos).map_err(|e| EngineError::Failed(e.to_string()))?)
        } else {
            Box::new(GgufTokenizer::from_gguf(&ct).map_err(|e| EngineError::Failed(e.to_string()))?)
        };
        let dev = self.device.clone();
        let (model, params) = match arch.as_str() {
            "phi3" => (
                Model::Phi3(Box::new(
                    quantized_phi3::ModelWeights::from_gguf(false, ct, &mut file, &dev).map_err(fail("load phi3"))?,
                )),
                None,
            ),
            a if decoder::GGUF_ARCHS.contains(&a) => {
                let m = decoder::Decoder::from_gguf(&ct, &mut file, &dev).map_err(fail("load the model"))?;
                let params = m.non_embedding_params;
                (Model::Decoder(Box::new(m)), Some(params))
            }
            other => {
                return Err(EngineError::BadJob(format!(
                    "GGUF architecture `{other}` is not supported; supported: {}",
                    SUPPORTED_GGUF.join(", ")
                )))
            }
        };
        if self.spec.batch_size > 1 && !model.batches() {
            return Err(EngineError::BadJob(format!(
                "batch_size {} needs batched attention, which llem's decoder does not implement for `{arch}`; run it with batch_size: 1",
                self.spec.batch_size
            )));
        }
        self.model = Some(model);
        self.tokenizer = Some(tokenizer);
        Ok(Loaded { memory_mb: rss_mb("VmRSS:"), non_embedding_params: params })
    }

    fn load_hf(&mut self, dir: &Path) -> Result<Loaded, EngineError> {
        let dtype = match self.spec.precision {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::Auto if self.device.is_cpu() => DType::F32,
            Precision::Auto => DType::BF16,
        };
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(EngineError::BadJob(format!("{} has no tokenizer.json", dir.display())));
        }
        let (model, eos) = decoder::Decoder::from_hf(dir, dtype, &self.device).map_err(fail("load the model"))?;
        let tokenizer =
            JsonTokenizer::from_file(&tokenizer_path, &eos).map_err(|e| EngineError::Failed(e.to_string()))?;
        let params = model.non_embedding_params;
        self.model = Some(Model::Decoder(Box::new(model)));
        self.tokenizer = Some(Box::new(tokenizer));
        Ok(Loaded { memory_mb: rss_mb("VmRSS:"), non_embedding_params: Some(params) })
    }

    /// Generates for a batch of prompt indices; one entry per prompt.
    fn generate(&mut self, which: &[usize]) -> Result<Vec<Generated>, EngineError> {
        let (Some(model), Some(tok)) = (self.model.as_mut(), self.tokenizer.as_ref()) else {
            return Err(EngineError::Failed("generate before load".to_owned()));
        };
        let d = &self.spec.decoding;
        let max_new = self.spec.max_output_tokens as usize;
        let stops = if d.ignore_eos { Vec::new() } else { tok.stop_tokens() };
        let sampling = if d.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match (d.top_k, d.top_p) {
                (None, None) => Sampling::All { temperature: d.temperature },
                (Some(k), None) => Sampling::TopK { k: k as usize, temperature: d.temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature: d.temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k: k as usize, p, temperature: d.temperature },
            }
        };
        let mut samplers: Vec<LogitsProcessor> = which
            .iter()
            .map(|&i| LogitsProcessor::from_sampling(d.seed.wrapping_add(i as u64), sampling.clone()))
            .collect();
        let inputs: Vec<&Vec<u32>> = which.iter().map(|&i| &self.prompts[i].1).collect();
        let mut out: Vec<Generated> =
            inputs.iter().map(|ids| Generated { input_tokens: ids.len(), ..Generated::default() }).collect();
        let mut done = vec![false; which.len()];
        let dev = self.device.clone();
        let start = self.clock.now();
        let mut last = vec![start; which.len()];
        let sample_rows = |logits: &Tensor, samplers: &mut [LogitsProcessor]| -> Result<Vec<u32>, EngineError> {
            (0..samplers.len())
                .map(|r| {
                    let row = logits.get(r).map_err(fail("read logits"))?;
                    samplers[r].sample(&row).map_err(fail("sample"))
                })
                .collect()
        };

        if let Model::Decoder(m) = model {
            // Left-pad to the longest prompt; padding has position -1 and is never attended.
            m.clear();
            let longest = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
            let tokens: Vec<Vec<u32>> = inputs
                .iter()
                .map(|ids| std::iter::repeat_n(0, longest - ids.len()).chain(ids.iter().copied()).collect())
                .collect();
            let positions: Vec<Vec<i64>> = inputs
                .iter()
                .map(|ids| std::iter::repeat_n(-1, longest - ids.len()).chain(0..ids.len() as i64).collect())
                .collect();
            let mut logits = m.forward(&tokens, &positions).map_err(fail("prefill"))?;
            for step in 0..max_new {
                self.cancel.check()?;
                let next = sample_rows(&logits, &mut samplers)?;
                let now = self.clock.now();
                for (s, &t) in next.iter().enumerate() {
                    if done[s] {
                        continue;
                    }
                    if step == 0 {
                        out[s].ttft_ms = Some((now - start) * 1000.0);
                    } else {
                        out[s].itl_ms.push((now - last[s]) * 1000.0);
                    }
                    last[s] = now;
                    if stops.contains(&t) {
                        done[s] = true;
                        out[s].request_ms = (now - start) * 1000.0;
                        continue;
                    }
                    out[s].tokens.push(t);
                    if out[s].tokens.len() == max_new {
                        done[s] = true;
                        out[s].request_ms = (now - start) * 1000.0;
                    }
                }
                if done.iter().all(|&x| x) {
                    break;
                }
                let feed: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
                let pos: Vec<Vec<i64>> = inputs.iter().map(|ids| vec![(ids.len() + step) as i64]).collect();
                logits = m.forward(&feed, &pos).map_err(fail("decode"))?;
            }
        } else {
            for (s, ids) in inputs.iter().enumerate() {
                let seq_start = self.clock.now();
                let mut logits = model.forward_one(ids, 0, &dev).map_err(fail("prefill"))?;
                let mut prev = seq_start;
                for step in 0..max_new {
                    let row =
                        if logits.rank() == 2 { logits.get(0).map_err(fail("read logits"))? } else { logits.clone() };
                    let t = samplers[s].sample(&row).map_err(fail("sample"))?;
                    let now = self.clock.now();
                    if step == 0 {
                        out[s].ttft_ms = Some((now - seq_start) * 1000.0);
                    } else {
                        out[s].itl_ms.push((now - prev) * 1000.0);
                    }
                    prev = now;
                    if stops.contains(&t) {
                        break;
                    }
                    out[s].tokens.push(t);
                    if out[s].tokens.len() == max_new {
                        break;
                    }
                    logits = model.forward_one(&[t], ids.len() + step, &dev).map_err(fail("decode"))?;
                }
                out[s].request_ms = (self.clock.now() - seq_start) * 1000.0;
            }
        }
        Ok(out)
    }

    fn batches(&self) -> Vec<Vec<usize>> {
        let b = self.spec.batch_size.max(1) as usize;
        (0..self.prompts.len()).collect::<Vec<_>>().chunks(b).map(<[usize]>::to_vec).collect()
    }

    fn metrics(g: &Generated) -> RequestMetrics {
        RequestMetrics {
            input_tokens: g.input_tokens as u64,
            output_tokens: g.tokens.len() as u64,
            ttft_ms: g.ttft_ms,
            itl_ms: g.itl_ms.clone(),
            request_ms: g.request_ms,
            served: None,
        }
    }
}

impl Engine for CandleEngine<'_> {
    fn load(&mut self) -> Result<Loaded, EngineError> {
        let path = self.model_path();
        if !path.exists() {
            return Err(EngineError::BadJob(format!(
                "model file {} not found (the demo model comes from scripts/fetch-demo-model)",
                path.display()
            )));
        }
        let loaded = if path.is_dir() { self.load_hf(&path)? } else { self.load_gguf(&path)? };
        let tok = self.tokenizer.as_ref().ok_or_else(|| EngineError::Failed("no tokenizer".to_owned()))?;
        let vocab = tok.vocab_size() as u32;
        let raw = prompts::load(&self.spec.dataset, self.spec.n_prompts, &self.base_dir, vocab)
            .map_err(EngineError::Failed)?;
        let max_in = self.spec.max_input_tokens as usize;
        self.prompts = raw
            .into_iter()
            .map(|p| {
                let (text, mut ids) = match p {
                    Prompt::Text(t) => {
                        let ids = tok.encode(&t, true);
                        (t, ids)
                    }
                    Prompt::Ids(ids) => (String::new(), ids),
                };
                ids.truncate(max_in);
                (text, ids)
            })
            .collect();
        Ok(loaded)
    }

    fn warmup_step(&mut self, _step: u32) -> Result<Option<f64>, EngineError> {
        let batches = self.batches();
        if batches.is_empty() {
            return Ok(None);
        }
        let batch = batches[self.warmup_cursor % batches.len()].clone();
        self.warmup_cursor += 1;
        let start = self.clock.now();
        self.generate(&batch)?;
        Ok(Some((self.clock.now() - start) * 1000.0))
    }

    fn measure(&mut self) -> Result<Vec<RequestMetrics>, EngineError> {
        let mut metrics = Vec::with_capacity(self.prompts.len());
        let mut saved = Vec::new();
        for batch in self.batches() {
            let generated = self.generate(&batch)?;
            for (&i, g) in batch.iter().zip(&generated) {
                metrics.push(Self::metrics(g));
                if self.outputs_path.is_some() {
                    let text = self.tokenizer.as_ref().map(|t| t.decode(&g.tokens)).unwrap_or_default();
                    saved.push(serde_json::json!({
                        "prompt": self.prompts[i].0,
                        "output": text,
                        "input_tokens": g.input_tokens,
                        "output_tokens": g.tokens.len(),
                    }));
                }
            }
        }
        if let Some(path) = &self.outputs_path {
            let mut body = Vec::new();
            for row in saved {
                let _ = writeln!(body, "{row}");
            }
            crate::fsutil::write_atomic(path, &body)
                .map_err(|e| EngineError::Failed(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(metrics)
    }

    fn sync(&mut self) {
        if let Err(e) = self.device.synchronize() {
            tracing::warn!("device sync failed: {e}");
        }
    }
}

/// Timing for the engine benchmark: prefill of `ids` plus greedy sampling of the first
/// token, then `n` greedy decode steps. Returns (prefill s, decode s, tokens).
pub fn timed_greedy(engine: &mut CandleEngine<'_>, ids: &[u32], n: usize) -> Result<(f64, f64, Vec<u32>), EngineError> {
    let dev = engine.device.clone();
    let model = engine.model.as_mut().ok_or_else(|| EngineError::Failed("benchmark before load".to_owned()))?;
    let argmax = |logits: &Tensor| -> Result<u32, EngineError> {
        let row = if logits.rank() == 2 { logits.get(0).map_err(fail("read logits"))? } else { logits.clone() };
        row.argmax(0).and_then(|t| t.to_scalar::<u32>()).map_err(fail("argmax"))
    };
    let t0 = std::time::Instant::now();
    let mut token = argmax(&model.forward_one(ids, 0, &dev).map_err(fail("prefill"))?)?;
    let prefill = t0.elapsed().as_secs_f64();
    let mut tokens = vec![token];
    let t1 = std::time::Instant::now();
    for step in 0..n {
        token = argmax(&model.forward_one(&[token], ids.len() + step, &dev).map_err(fail("decode"))?)?;
        tokens.push(token);
    }
    Ok((prefill, t1.elapsed().as_secs_f64(), tokens))
}

/// `b` copies of `ids` as one batch, greedy: seconds of the prefill (the whole batch in
/// one forward pass) and of `n` decode steps (one forward pass of `b` tokens each). For
/// the batched comparison in `scripts/bench-engine`.
pub fn timed_greedy_batch(
    engine: &mut CandleEngine<'_>,
    ids: &[u32],
    b: usize,
    n: usize,
) -> Result<(f64, f64), EngineError> {
    let Some(Model::Decoder(m)) = engine.model.as_mut() else {
        return Err(EngineError::Failed("a batched benchmark needs the batched decoder".to_owned()));
    };
    let argmax = |logits: &Tensor| -> Result<Vec<u32>, EngineError> {
        logits.argmax(candle_core::D::Minus1).and_then(|t| t.to_vec1::<u32>()).map_err(fail("argmax"))
    };
    m.clear();
    let t0 = std::time::Instant::now();
    let positions: Vec<i64> = (0..ids.len() as i64).collect();
    let mut next = argmax(&m.forward(&vec![ids.to_vec(); b], &vec![positions; b]).map_err(fail("prefill"))?)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    for step in 0..n {
        let tokens: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let at = vec![vec![(ids.len() + step) as i64]; b];
        next = argmax(&m.forward(&tokens, &at).map_err(fail("decode"))?)?;
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

impl CandleEngine<'_> {
    /// The generated ids for a batch of prompts (indices into the job's prompts), as one
    /// forward pass per step: used to check that batching changes no output.
    pub fn generate_batch(&mut self, which: &[usize]) -> Result<Vec<Vec<u32>>, EngineError> {
        Ok(self.generate(which)?.into_iter().map(|g| g.tokens).collect())
    }

    /// The job's prompts as encoded (truncated to `max_input_tokens`).
    pub fn prompt_ids(&self) -> Vec<Vec<u32>> {
        self.prompts.iter().map(|p| p.1.clone()).collect()
    }

    /// Encodes text with the loaded tokenizer (BOS added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.as_ref().map(|t| t.encode(text, true)).unwrap_or_default()
    }

    /// Decodes ids with the loaded tokenizer.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.as_ref().map(|t| t.decode(ids)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")")]
    struct DriverOom;

    #[test]
    fn a_cuda_allocation_failure_is_out_of_memory_and_nothing_else_is() {
        let oom = candle_core::Error::Cuda(Box::new(DriverOom)).context("alloc 4 GiB");
        assert!(matches!(classify("load the model", &oom), EngineError::OutOfMemory(_)));
        // The same words outside a CUDA error (a message, a model name) decide nothing.
        let text = candle_core::Error::Msg("tensor `out of memory` CUDA_ERROR_OUT_OF_MEMORY".to_owned());
        assert!(matches!(classify("load the model", &text), EngineError::Failed(_)));
    }

    #[test]
    fn gguf_block_types_without_cuda_kernels_are_named() {
        // The demo model (Q4_K_M: Q4K, Q6K and F32 tensors) runs on CUDA; IQ and Q8K do not.
        let tensors = [("a.weight", GgmlDType::Q4K), ("b.weight", GgmlDType::Q6K), ("n", GgmlDType::F32)];
        assert!(cuda_unsupported(tensors.into_iter()).is_empty());
        let tensors = [("z", GgmlDType::Q8K), ("a", GgmlDType::Q4K), ("m", GgmlDType::Q8_1)];
        assert_eq!(cuda_unsupported(tensors.into_iter()), [("m", GgmlDType::Q8_1), ("z", GgmlDType::Q8K)]);
    }
}
