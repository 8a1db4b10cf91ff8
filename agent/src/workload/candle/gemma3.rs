//! Gemma 3 (text) from a quantized GGUF, with real batching.
//!
//! candle-transformers' `quantized_gemma3` runs one sequence length per batch, with no
//! padding mask, and its MLP uses SiLU where Gemma (and llama.cpp) use GELU. This version
//! follows llama.cpp's graph and takes left-padded batches: every sequence has its own
//! positions (RoPE) and its own attention mask, so a prompt's greedy output is the same
//! whether it runs alone or in a batch.
//!
//! Per layer: RMSNorm → Q/K/V → per-head RMSNorm of Q and K → RoPE (NEOX layout; base
//! 10 000 on sliding-window layers, 1 000 000 on global ones: every 6th layer is global) →
//! attention (1/√head_dim; sliding layers see the last `sliding_window` positions) →
//! output projection → RMSNorm → residual; RMSNorm → GELU(gate) · up → down → RMSNorm →
//! residual. Embeddings are scaled by √hidden; the output head is tied to them.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

/// Positions RoPE tables cover; longer sequences are refused.
pub const MAX_POSITIONS: usize = 8192;

#[derive(Debug, Clone)]
pub struct Config {
    pub hidden: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_layer: usize,
    pub eps: f64,
    pub sliding_window: usize,
    pub sliding_pattern: usize,
    pub rope_global: f32,
    pub rope_local: f32,
    pub vocab: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_to_q8_0_is_exact() {
        // Random-ish Q5_0 blocks: scale 0.5 (f16 0x3800), arbitrary high bits and nibbles.
        let mut raw = Vec::new();
        for b in 0..4u8 {
            raw.extend_from_slice(&[0x00, 0x38]);
            raw.extend_from_slice(&[0xA5 ^ b, 0x3C, 0x0F ^ b, 0xF0]);
            raw.extend((0..16u8).map(|i| i.wrapping_mul(37).wrapping_add(b * 11)));
        }
        let dev = Device::Cpu;
        let q5 = qtensor_from_ggml(GgmlDType::Q5_0, &raw, vec![2, 64], &dev).expect("q5_0");
        let q8 = q5_0_as_q8_0(qtensor_from_ggml(GgmlDType::Q5_0, &raw, vec![2, 64], &dev).expect("q5_0"), &dev)
            .expect("q8_0");
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        let a: Vec<f32> = q5.dequantize(&dev).expect("a").flatten_all().expect("f").to_vec1().expect("v");
        let b: Vec<f32> = q8.dequantize(&dev).expect("b").flatten_all().expect("f").to_vec1().expect("v");
        assert_eq!(a, b);
        assert!(a.iter().any(|v| *v != 0.0));
    }
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    eps: f64,
}

impl Norm {
    fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        name: &str,
        eps: f64,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Norm { weight: ct.tensor(r, name, dev)?.dequantize(dev)?, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
    }
}

#[derive(Debug)]
struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    q_norm: Norm,
    k_norm: Norm,
    attn_norm: Norm,
    post_attn_norm: Norm,
    ffn_norm: Norm,
    post_ffn_norm: Norm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    sliding: bool,
    cache: Option<(Tensor, Tensor)>,
}

/// The embedding table kept quantized: rows are dequantized when looked up, as
/// llama.cpp's `get_rows` does (the f32 table of a 262k-token vocabulary is 670 MB).
#[derive(Debug)]
struct QuantizedRows {
    dtype: GgmlDType,
    bytes: Vec<u8>,
    row_bytes: usize,
    width: usize,
}

impl QuantizedRows {
    fn new(t: &QTensor) -> Result<Self> {
        let (rows, width) = t.shape().dims2()?;
        let dtype = t.dtype();
        let row_bytes = width / dtype.block_size() * dtype.type_size();
        let bytes = t.data()?.into_owned();
        if bytes.len() != rows * row_bytes {
            candle_core::bail!("unexpected embedding layout: {} bytes for {rows} × {width} {dtype:?}", bytes.len());
        }
        Ok(QuantizedRows { dtype, bytes, row_bytes, width })
    }

    fn rows(&self) -> usize {
        self.bytes.len() / self.row_bytes
    }

    fn lookup(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        let rows: Vec<Tensor> = ids
            .iter()
            .map(|&id| {
                let at = id as usize * self.row_bytes;
                let raw = self
                    .bytes
                    .get(at..at + self.row_bytes)
                    .ok_or_else(|| candle_core::Error::Msg(format!("token id {id} out of range")))?;
                qtensor_from_ggml(self.dtype, raw, vec![1, self.width], dev)?.dequantize(dev)
            })
            .collect::<Result<_>>()?;
        Tensor::cat(&rows, 0)
    }
}

#[derive(Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: usize, base: f32, dev: &Device) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32)).collect();
        let inv = Tensor::new(inv.as_slice(), dev)?.reshape((1, head_dim / 2))?;
        let t = Tensor::arange(0u32, MAX_POSITIONS as u32, dev)?.to_dtype(DType::F32)?.reshape((MAX_POSITIONS, 1))?;
        let freqs = t.matmul(&inv)?;
        Ok(Rope { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// cos/sin for a `[b, t]` grid of positions, as `[b, t, head_dim / 2]`.
    fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
        Ok((cos, sin))
    }
}

/// The model and the state of one batch being generated.
#[derive(Debug)]
pub struct Gemma3 {
    pub cfg: Config,
    embed: QuantizedRows,
    layers: Vec<Layer>,
    norm: Norm,
    output: QMatMul,
    rope_local: Rope,
    rope_global: Rope,
    /// Position of every cached key, per sequence (-1: padding).
    key_pos: Vec<Vec<i64>>,
    device: Device,
    pub non_embedding_params: u64,
}

/// Q5_0 weights rewritten as Q8_0, exactly: a Q5_0 block holds `d · (q − 16)` with
/// `q ∈ 0..32`, which Q8_0 stores as the same scale `d` and the int8 `q − 16`. candle has
/// SIMD kernels for Q8_0 but only a scalar loop for Q5_0 (which small Gemma models use
/// for every 640-wide matrix), so this keeps the numbers and gains the speed.
pub fn q5_0_as_q8_0(t: QTensor, dev: &Device) -> Result<QTensor> {
    if t.dtype() != GgmlDType::Q5_0 {
        return Ok(t);
    }
    let dims = t.shape().dims().to_vec();
    let src = t.data()?;
    let mut out = Vec::with_capacity(src.len() / 22 * 34);
    for block in src.chunks_exact(22) {
        out.extend_from_slice(&block[..2]);
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        let qs = &block[6..22];
        let mut values = [0i8; 32];
        for j in 0..16 {
            let hi0 = (((qh >> j) << 4) & 0x10) as u8;
            let hi1 = ((qh >> (j + 12)) & 0x10) as u8;
            values[j] = ((qs[j] & 0x0F) | hi0) as i8 - 16;
            values[j + 16] = ((qs[j] >> 4) | hi1) as i8 - 16;
        }
        out.extend(values.iter().map(|&v| v as u8));
    }
    qtensor_from_ggml(GgmlDType::Q8_0, &out, dims, dev)
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no `{key}`")))
}

impl Gemma3 {
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        dev: &Device,
    ) -> Result<Self> {
        let arch = "gemma3";
        let get = |k: &str| md(ct, &format!("{arch}.{k}"));
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let cfg = Config {
            hidden: get("embedding_length")?.to_u32()? as usize,
            n_head,
            n_kv_head: get("attention.head_count_kv")?.to_u32()? as usize,
            head_dim: get("attention.key_length")?.to_u32()? as usize,
            n_layer: get("block_count")?.to_u32()? as usize,
            eps: f64::from(get("attention.layer_norm_rms_epsilon")?.to_f32()?),
            sliding_window: get("attention.sliding_window")?.to_u32()? as usize,
            sliding_pattern: get("attention.sliding_window_type").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(6),
            rope_global: get("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(1_000_000.0),
            rope_local: get("rope.local_freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0),
            vocab: 0,
        };
        let embed_q = ct.tensor(r, "token_embd.weight", dev)?;
        let embed = QuantizedRows::new(&embed_q)?;
        let vocab = embed.rows();
        let output = match ct.tensor(r, "output.weight", dev) {
            Ok(t) => QMatMul::from_qtensor(q5_0_as_q8_0(t, dev)?)?,
            Err(_) => QMatMul::from_qtensor(q5_0_as_q8_0(embed_q, dev)?)?,
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut params: u64 = 0;
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut q = |name: &str| -> Result<QMatMul> {
                let t = ct.tensor(r, &format!("{p}.{name}.weight"), dev)?;
                params += t.shape().elem_count() as u64;
                QMatMul::from_qtensor(q5_0_as_q8_0(t, dev)?)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (gate, up, down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            let mut n = |name: &str| Norm::load(ct, r, &format!("{p}.{name}.weight"), cfg.eps, dev);
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                q_norm: n("attn_q_norm")?,
                k_norm: n("attn_k_norm")?,
                attn_norm: n("attn_norm")?,
                post_attn_norm: n("post_attention_norm")?,
                ffn_norm: n("ffn_norm")?,
                post_ffn_norm: n("post_ffw_norm")?,
                gate,
                up,
                down,
                sliding: (i + 1) % cfg.sliding_pattern != 0,
                cache: None,
            });
        }
        Ok(Gemma3 {
            norm: Norm::load(ct, r, "output_norm.weight", cfg.eps, dev)?,
            rope_local: Rope::new(cfg.head_dim, cfg.rope_local, dev)?,
            rope_global: Rope::new(cfg.head_dim, cfg.rope_global, dev)?,
            cfg: Config { vocab, ..cfg },
            embed,
            layers,
            output,
            key_pos: Vec::new(),
            device: dev.clone(),
            non_embedding_params: params,
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
    fn mask(&self, positions: &[Vec<i64>], sliding: bool) -> Result<Tensor> {
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
                    let visible = kp >= 0 && kp <= qp && (!sliding || qp - kp < self.cfg.sliding_window as i64);
                    if visible {
                        row[j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, keys), &self.device)
    }

    /// Runs `tokens` (`[b][t]`, left-padded) at `positions` (`-1` for padding) and returns
    /// the logits of each sequence's last position, `[b, vocab]`.
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
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let pos: Vec<u32> = positions.iter().flatten().map(|&p| p.max(0) as u32).collect();
        let pos = Tensor::from_vec(pos, (b, t), &self.device)?;
        let (cos_l, sin_l) = self.rope_local.at(&pos)?;
        let (cos_g, sin_g) = self.rope_global.at(&pos)?;
        let mask_l = self.mask(positions, true)?;
        let mask_g = self.mask(positions, false)?;

        let mut x = (self.embed.lookup(&ids, &self.device)?.reshape((b, t, self.cfg.hidden))?
            * (self.cfg.hidden as f64).sqrt())?;
        let c = self.cfg.clone();
        for layer in &mut self.layers {
            let (cos, sin, mask) = if layer.sliding { (&cos_l, &sin_l, &mask_l) } else { (&cos_g, &sin_g, &mask_g) };
            let h = layer.attn_norm.forward(&x)?;
            let q = layer.wq.forward(&h)?.reshape((b, t, c.n_head, c.head_dim))?.transpose(1, 2)?;
            let k = layer.wk.forward(&h)?.reshape((b, t, c.n_kv_head, c.head_dim))?.transpose(1, 2)?;
            let v = layer.wv.forward(&h)?.reshape((b, t, c.n_kv_head, c.head_dim))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope(&layer.q_norm.forward(&q)?.contiguous()?, cos, sin)?;
            let k = candle_nn::rotary_emb::rope(&layer.k_norm.forward(&k)?.contiguous()?, cos, sin)?;
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
            for (s, pos) in positions.iter().enumerate() {
                let pad_q = pos.iter().take_while(|&&p| p < 0).count();
                let pad_k = self.key_pos[s].iter().take_while(|&&p| p < 0).count();
                let (tq, tk) = (t - pad_q, keys - pad_k);
                let zeros = |rows: usize| Tensor::zeros((1, c.n_head, rows, c.head_dim), DType::F32, &self.device);
                if tq == 0 {
                    per_seq.push(zeros(t)?);
                    continue;
                }
                let qs = q.narrow(0, s, 1)?.narrow(2, pad_q, tq)?.contiguous()?;
                let ks = k.narrow(0, s, 1)?.narrow(2, pad_k, tk)?.contiguous()?;
                let vs = v.narrow(0, s, 1)?.narrow(2, pad_k, tk)?.contiguous()?;
                let ms = mask.narrow(0, s, 1)?.narrow(2, pad_q, tq)?.narrow(3, pad_k, tk)?.contiguous()?;
                let scores = (qs.matmul(&ks.t()?)? * (1.0 / (c.head_dim as f64).sqrt()))?.broadcast_add(&ms)?;
                let out = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&vs)?;
                per_seq.push(if pad_q > 0 { Tensor::cat(&[&zeros(pad_q)?, &out], 2)? } else { out });
            }
            let attn = Tensor::cat(&per_seq, 0)?;
            let attn = attn.transpose(1, 2)?.reshape((b, t, c.n_head * c.head_dim))?;
            let attn = layer.post_attn_norm.forward(&layer.wo.forward(&attn)?)?;
            x = (x + attn)?;
            let h = layer.ffn_norm.forward(&x)?;
            let ff = (layer.gate.forward(&h)?.gelu()? * layer.up.forward(&h)?)?;
            let ff = layer.post_ffn_norm.forward(&layer.down.forward(&ff)?)?;
            x = (x + ff)?;
        }
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = self.norm.forward(&last)?;
        self.output.forward(&last)?.to_dtype(DType::F32)
    }
}
