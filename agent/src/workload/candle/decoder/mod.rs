//! One batched decoder for the Gemma, Llama and Qwen families, from GGUF (quantized) or a
//! Hugging Face folder (safetensors at f32/f16/bf16).
//!
//! candle-transformers' models take one sequence length per batch with no padding mask
//! (and its quantized Gemma 3 uses SiLU where Gemma and llama.cpp use GELU). This decoder
//! follows llama.cpp's graphs and takes left-padded batches: every sequence has its own
//! positions (RoPE) and attention runs per sequence over its real keys, so a prompt's
//! output is the same alone or in a batch, to the bit.
//!
//! Per layer: RMSNorm → Q/K/V (+ bias: Qwen2) → per-head RMSNorm of Q and K (Qwen3,
//! Gemma 3) → RoPE → attention → output projection (→ RMSNorm: Gemma 3) → residual;
//! RMSNorm → act(gate) · up → down (→ RMSNorm: Gemma 3) → residual. Gemma scales
//! embeddings by √hidden and uses GELU; Gemma 3 alternates sliding-window layers (RoPE base
//! 10 000) with a global one every 6th (base from the file).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};

mod weights;

use weights::q5_0_as_q8_0;
use weights::{md, Embedding, Gguf, HfConfig, HfWeights, Weights};

/// Positions RoPE tables cover; longer sequences are refused.
pub const MAX_POSITIONS: usize = 8192;

/// Architectures this decoder reads (GGUF `general.architecture` / HF `model_type`).
pub const GGUF_ARCHS: &[&str] = &["gemma3", "gemma", "llama", "qwen2", "qwen3"];
pub const HF_TYPES: &[&str] = &["gemma3_text", "gemma", "llama", "mistral", "qwen2", "qwen3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Gelu,
    Silu,
}

/// How RoPE pairs dimensions: halves (NEOX / Hugging Face) or adjacent pairs (llama.cpp's
/// layout for `llama` GGUFs, whose Q/K weights were permuted on conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    Halves,
    Interleaved,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub hidden: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_layer: usize,
    pub eps: f64,
    pub vocab: usize,
    pub act: Act,
    pub rope: RopeLayout,
    pub embed_scale: bool,
    pub rope_base: f32,
    /// Gemma 3: (window, every n-th layer is global, RoPE base of the local layers).
    pub sliding: Option<(usize, usize, f32)>,
    pub attn_scale: f64,
    /// Compute dtype (f32 for GGUF; the weights' dtype for safetensors).
    pub dtype: DType,
}

impl Config {
    fn family(arch: &str, rope: RopeLayout) -> (Act, bool, RopeLayout) {
        match arch {
            "gemma3" | "gemma3_text" | "gemma" => (Act::Gelu, true, RopeLayout::Halves),
            _ => (Act::Silu, false, rope),
        }
    }
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
    }
}

#[derive(Debug)]
struct Linear {
    w: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug)]
struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    attn_norm: Norm,
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    post_ffn_norm: Option<Norm>,
    gate: Linear,
    up: Linear,
    down: Linear,
    sliding: bool,
    cache: Option<(Tensor, Tensor)>,
}

#[derive(Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: usize, base: f32, dtype: DType, dev: &Device) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32)).collect();
        let inv = Tensor::new(inv.as_slice(), dev)?.reshape((1, head_dim / 2))?;
        let t = Tensor::arange(0u32, MAX_POSITIONS as u32, dev)?.to_dtype(DType::F32)?.reshape((MAX_POSITIONS, 1))?;
        let freqs = t.matmul(&inv)?;
        Ok(Rope { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    fn apply(&self, x: &Tensor, positions: &Tensor, layout: RopeLayout) -> Result<Tensor> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
        match layout {
            RopeLayout::Halves => candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin),
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin),
        }
    }
}

/// The model and the state of one batch being generated.
#[derive(Debug)]
pub struct Decoder {
    pub cfg: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    output: Linear,
    rope_global: Rope,
    rope_local: Option<Rope>,
    /// Position of every cached key, per sequence (-1: padding).
    key_pos: Vec<Vec<i64>>,
    device: Device,
    /// Parameters of the layers (everything but the embedding and output head), for the
    /// FLOPs estimate.
    pub non_embedding_params: u64,
}

impl Decoder {
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        dev: &Device,
    ) -> Result<Self> {
        let arch = md(ct, "general.architecture")?.to_string()?.clone();
        if !GGUF_ARCHS.contains(&arch.as_str()) {
            candle_core::bail!("GGUF architecture `{arch}` is not handled by the batched decoder");
        }
        let get = |k: &str| md(ct, &format!("{arch}.{k}"));
        let hidden = get("embedding_length")?.to_u32()? as usize;
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let head_dim = get("attention.key_length").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(hidden / n_head);
        let (act, embed_scale, rope) =
            Config::family(&arch, if arch == "llama" { RopeLayout::Interleaved } else { RopeLayout::Halves });
        let sliding = if arch == "gemma3" {
            Some((
                get("attention.sliding_window")?.to_u32()? as usize,
                get("attention.sliding_window_type").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(6),
                get("rope.local_freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0),
            ))
        } else {
            None
        };
        let cfg = Config {
            arch: arch.clone(),
            hidden,
            n_head,
            n_kv_head: get("attention.head_count_kv").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(n_head),
            head_dim,
            n_layer: get("block_count")?.to_u32()? as usize,
            eps: f64::from(get("attention.layer_norm_rms_epsilon")?.to_f32()?),
            vocab: 0,
            act,
            rope,
            embed_scale,
            rope_base: get("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(if arch == "gemma3" {
                1_000_000.0
            } else {
                10_000.0
            }),
            sliding,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            dtype: DType::F32,
        };
        let mut w = Gguf { ct, r, dev: dev.clone() };
        Self::build(cfg, &mut w, dev)
    }

    /// A Hugging Face folder: `config.json` and `*.safetensors`, at `dtype`. candle's CPU
    /// backend has no bf16 matmul: there, weights are rounded to bf16 and the model
    /// computes in f32.
    pub fn from_hf(dir: &Path, storage: DType, dev: &Device) -> Result<(Self, Vec<u32>)> {
        let dtype = if storage == DType::BF16 && dev.is_cpu() { DType::F32 } else { storage };
        let text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| candle_core::Error::Msg(format!("failed to read {}/config.json: {e}", dir.display())))?;
        let hf: HfConfig =
            serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))?;
        if !HF_TYPES.contains(&hf.model_type.as_str()) {
            candle_core::bail!("model_type `{}` is not supported; supported: {}", hf.model_type, HF_TYPES.join(", "));
        }
        let mut tensors = HashMap::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            candle_core::bail!("no *.safetensors in {}", dir.display());
        }
        for f in files {
            tensors.extend(candle_core::safetensors::load(&f, dev)?);
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads);
        let gemma3 = hf.model_type == "gemma3_text";
        let (act, embed_scale, rope) = Config::family(&hf.model_type, RopeLayout::Halves);
        let cfg = Config {
            arch: hf.model_type.clone(),
            hidden: hf.hidden_size,
            n_head: hf.num_attention_heads,
            n_kv_head: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            n_layer: hf.num_hidden_layers,
            eps: hf.rms_norm_eps,
            vocab: 0,
            act,
            rope,
            embed_scale,
            rope_base: hf.rope_theta.unwrap_or(10_000.0),
            sliding: if gemma3 {
                Some((
                    hf.sliding_window.unwrap_or(512),
                    hf.sliding_window_pattern.unwrap_or(6),
                    hf.rope_local_base_freq.unwrap_or(10_000.0),
                ))
            } else {
                None
            },
            attn_scale: 1.0 / hf.query_pre_attn_scalar.unwrap_or(head_dim as f64).sqrt(),
            dtype,
        };
        let eos: Vec<u32> = match &hf.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
            _ => Vec::new(),
        };
        let mut w = HfWeights { tensors, storage, dtype, gemma_norms: hf.model_type.starts_with("gemma"), gemma3 };
        Ok((Self::build(cfg, &mut w, dev)?, eos))
    }

    fn build(mut cfg: Config, w: &mut impl Weights, dev: &Device) -> Result<Self> {
        let plus_one = w.norm_plus_one();
        let eps = cfg.eps;
        let norm = |w: &mut dyn FnMut(&str) -> Result<Option<Tensor>>, name: &str| -> Result<Option<Norm>> {
            match w(name)? {
                Some(t) => Ok(Some(Norm { weight: if plus_one { (t + 1.0)? } else { t }, eps })),
                None => Ok(None),
            }
        };
        let embed = w.embedding()?;
        cfg.vocab = embed.rows()?;
        let mut params = 0u64;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut lin = |w: &mut dyn Weights, role: &str| -> Result<Linear> {
                let (m, n) = w
                    .matrix(&format!("{p}.{role}.weight"))?
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {p}.{role}.weight")))?;
                params += n;
                Ok(Linear { w: m, bias: w.vector(&format!("{p}.{role}.bias"))? })
            };
            let (wq, wk, wv, wo) = (lin(w, "attn_q")?, lin(w, "attn_k")?, lin(w, "attn_v")?, lin(w, "attn_output")?);
            let (gate, up, down) = (lin(w, "ffn_gate")?, lin(w, "ffn_up")?, lin(w, "ffn_down")?);
            let mut v = |name: &str| w.vector(&format!("{p}.{name}.weight"));
            let required = |n: Option<Norm>, name: &str| {
                n.ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {p}.{name}.weight")))
            };
            let attn_norm = required(norm(&mut v, "attn_norm")?, "attn_norm")?;
            let ffn_norm = required(norm(&mut v, "ffn_norm")?, "ffn_norm")?;
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                q_norm: norm(&mut v, "attn_q_norm")?,
                k_norm: norm(&mut v, "attn_k_norm")?,
                attn_norm,
                post_attn_norm: norm(&mut v, "post_attention_norm")?,
                ffn_norm,
                post_ffn_norm: norm(&mut v, "post_ffw_norm")?,
                gate,
                up,
                down,
                sliding: cfg.sliding.is_some_and(|(_, every, _)| (i + 1) % every != 0),
                cache: None,
            });
        }
        let output = match w.matrix("output.weight")? {
            Some((m, _)) => Linear { w: m, bias: None },
            // Tied: the output head is the embedding table.
            None => match &embed {
                Embedding::Dense(t) => Linear { w: QMatMul::Tensor(t.clone()), bias: None },
                Embedding::Quantized { dtype, bytes, width, .. } => {
                    let q = qtensor_from_ggml(*dtype, bytes, vec![cfg.vocab, *width], dev)?;
                    Linear { w: QMatMul::from_qtensor(q5_0_as_q8_0(q, dev)?)?, bias: None }
                }
            },
        };
        let mut v = |name: &str| w.vector(name);
        let out_norm = norm(&mut v, "output_norm.weight")?
            .ok_or_else(|| candle_core::Error::Msg("missing output_norm.weight".to_owned()))?;
        Ok(Decoder {
            rope_global: Rope::new(cfg.head_dim, cfg.rope_base, cfg.dtype, dev)?,
            rope_local: cfg.sliding.map(|(_, _, base)| Rope::new(cfg.head_dim, base, cfg.dtype, dev)).transpose()?,
            norm: out_norm,
            embed,
            layers,
            output,
            key_pos: Vec::new(),
            device: dev.clone(),
            non_embedding_params: params,
            cfg,
        })
    }

    /// Forgets the cached keys and values (a new batch starts).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.cache = None;
        }
        self.key_pos.clear();
    }

    /// Additive attention mask `[b, 1, t, keys]`: 0 where query `i` may see key `j`.
    fn mask(&self, positions: &[Vec<i64>], window: Option<usize>) -> Result<Tensor> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let keys = self.key_pos.first().map_or(0, Vec::len);
        let cached = keys - t;
        let mut m = vec![f32::NEG_INFINITY; b * t * keys];
        for s in 0..b {
            for (i, &qp) in positions[s].iter().enumerate() {
                let row = &mut m[(s * t + i) * keys..(s * t + i + 1) * keys];
                if qp < 0 {
                    // A padding query sees itself only, so softmax stays finite.
                    row[cached + i] = 0.0;
                    continue;
                }
                for (j, &kp) in self.key_pos[s].iter().enumerate() {
                    // llama.cpp's sliding window: a key is visible while qp − kp < window.
                    if kp >= 0 && kp <= qp && window.is_none_or(|w| qp - kp < w as i64) {
                        row[j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, keys), &self.device)?.to_dtype(self.cfg.dtype)
    }

    /// Runs `tokens` (`[b][t]`, left-padded) at `positions` (`-1` for padding) and returns
    /// the logits of each sequence's last position, `[b, vocab]` in f32.
    pub fn forward(&mut self, tokens: &[Vec<u32>], positions: &[Vec<i64>]) -> Result<Tensor> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if positions.iter().flatten().any(|&p| p >= MAX_POSITIONS as i64) {
            candle_core::bail!("sequence longer than {MAX_POSITIONS} tokens");
        }
        if self.key_pos.is_empty() {
            self.key_pos = vec![Vec::new(); b];
        }
        for (kp, p) in self.key_pos.iter_mut().zip(positions) {
            kp.extend_from_slice(p);
        }
        let c = self.cfg.clone();
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let pos: Vec<u32> = positions.iter().flatten().map(|&p| p.max(0) as u32).collect();
        let pos = Tensor::from_vec(pos, (b, t), &self.device)?;
        let mask_global = self.mask(positions, None)?;
        let mask_local = c.sliding.map(|(w, _, _)| self.mask(positions, Some(w))).transpose()?;

        let mut x = self.embed.lookup(&ids, &self.device)?.to_dtype(c.dtype)?.reshape((b, t, c.hidden))?;
        if c.embed_scale {
            x = (x * (c.hidden as f64).sqrt())?;
        }
        for layer in &mut self.layers {
            let (rope, mask) = match (layer.sliding, &self.rope_local, &mask_local) {
                (true, Some(r), Some(m)) => (r, m),
                _ => (&self.rope_global, &mask_global),
            };
            let h = layer.attn_norm.forward(&x)?;
            let mut q = layer.wq.forward(&h)?.reshape((b, t, c.n_head, c.head_dim))?.transpose(1, 2)?;
            let mut k = layer.wk.forward(&h)?.reshape((b, t, c.n_kv_head, c.head_dim))?.transpose(1, 2)?;
            let v = layer.wv.forward(&h)?.reshape((b, t, c.n_kv_head, c.head_dim))?.transpose(1, 2)?.contiguous()?;
            if let Some(n) = &layer.q_norm {
                q = n.forward(&q)?;
            }
            if let Some(n) = &layer.k_norm {
                k = n.forward(&k)?;
            }
            let q = rope.apply(&q, &pos, c.rope)?;
            let k = rope.apply(&k, &pos, c.rope)?;
            let (k, v) = match &layer.cache {
                Some((kc, vc)) => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
                None => (k, v),
            };
            layer.cache = Some((k.clone(), v.clone()));
            let rep = c.n_head / c.n_kv_head;
            let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
            let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
            // Attention one sequence at a time, over its real queries and keys only: the
            // same shapes as running it alone, so batching changes no number.
            let keys = k.dim(2)?;
            let mut per_seq = Vec::with_capacity(b);
            for (s, p) in positions.iter().enumerate() {
                let pad_q = p.iter().take_while(|&&x| x < 0).count();
                let pad_k = self.key_pos[s].iter().take_while(|&&x| x < 0).count();
                let (tq, tk) = (t - pad_q, keys - pad_k);
                let zeros = |rows: usize| Tensor::zeros((1, c.n_head, rows, c.head_dim), c.dtype, &self.device);
                if tq == 0 {
                    per_seq.push(zeros(t)?);
                    continue;
                }
                let qs = q.narrow(0, s, 1)?.narrow(2, pad_q, tq)?.contiguous()?;
                let ks = k.narrow(0, s, 1)?.narrow(2, pad_k, tk)?.contiguous()?;
                let vs = v.narrow(0, s, 1)?.narrow(2, pad_k, tk)?.contiguous()?;
                let ms = mask.narrow(0, s, 1)?.narrow(2, pad_q, tq)?.narrow(3, pad_k, tk)?.contiguous()?;
                let scores = (qs.matmul(&ks.t()?)? * c.attn_scale)?.broadcast_add(&ms)?;
                let out = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&vs)?;
                per_seq.push(if pad_q > 0 { Tensor::cat(&[&zeros(pad_q)?, &out], 2)? } else { out });
            }
            let attn = Tensor::cat(&per_seq, 0)?.transpose(1, 2)?.reshape((b, t, c.n_head * c.head_dim))?;
            let mut attn = layer.wo.forward(&attn)?;
            if let Some(n) = &layer.post_attn_norm {
                attn = n.forward(&attn)?;
            }
            x = (x + attn)?;
            let h = layer.ffn_norm.forward(&x)?;
            let gate = layer.gate.forward(&h)?;
            let gate = match c.act {
                Act::Gelu => gate.gelu()?,
                Act::Silu => candle_nn::ops::silu(&gate)?,
            };
            let mut ff = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            if let Some(n) = &layer.post_ffn_norm {
                ff = n.forward(&ff)?;
            }
            x = (x + ff)?;
        }
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = self.norm.forward(&last)?;
        self.output.forward(&last)?.to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests;
