//! Where the decoder's weights come from: a GGUF file (quantized matrices, the embedding
//! table kept quantized) or a Hugging Face folder (safetensors, cast to the storage
//! type), behind one trait the decoder builds from.

use std::collections::HashMap;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

/// The embedding table: quantized rows dequantized on lookup (as llama.cpp's `get_rows`;
/// a 262k-token f32 table would be 670 MB), or a dense tensor.
#[derive(Debug)]
pub(super) enum Embedding {
    Quantized { dtype: GgmlDType, bytes: Vec<u8>, row_bytes: usize, width: usize },
    Dense(Tensor),
}

impl Embedding {
    pub(super) fn quantized(t: &QTensor) -> Result<Self> {
        let (rows, width) = t.shape().dims2()?;
        let dtype = t.dtype();
        let row_bytes = width / dtype.block_size() * dtype.type_size();
        let bytes = t.data()?.into_owned();
        if bytes.len() != rows * row_bytes {
            candle_core::bail!("unexpected embedding layout: {} bytes for {rows} × {width} {dtype:?}", bytes.len());
        }
        Ok(Embedding::Quantized { dtype, bytes, row_bytes, width })
    }

    pub(super) fn rows(&self) -> Result<usize> {
        match self {
            Embedding::Quantized { bytes, row_bytes, .. } => Ok(bytes.len() / row_bytes),
            Embedding::Dense(t) => t.dim(0),
        }
    }

    pub(super) fn lookup(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.index_select(&Tensor::new(ids, dev)?, 0),
            Embedding::Quantized { dtype, bytes, row_bytes, width } => {
                let rows: Vec<Tensor> = ids
                    .iter()
                    .map(|&id| {
                        let at = id as usize * row_bytes;
                        let raw = bytes
                            .get(at..at + row_bytes)
                            .ok_or_else(|| candle_core::Error::Msg(format!("token id {id} out of range")))?;
                        qtensor_from_ggml(*dtype, raw, vec![1, *width], dev)?.dequantize(dev)
                    })
                    .collect::<Result<_>>()?;
                Tensor::cat(&rows, 0)
            }
        }
    }
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

/// Where weights come from, by the llama.cpp-style role names used below.
pub(super) trait Weights {
    fn matrix(&mut self, name: &str) -> Result<Option<(QMatMul, u64)>>;
    fn vector(&mut self, name: &str) -> Result<Option<Tensor>>;
    fn embedding(&mut self) -> Result<Embedding>;
    /// Whether norms are stored as `w` with the layer computing `(1 + w)` (Hugging Face
    /// Gemma); llama.cpp bakes the 1 in on conversion.
    fn norm_plus_one(&self) -> bool;
}

pub(super) struct Gguf<'a, R> {
    pub(super) ct: &'a gguf_file::Content,
    pub(super) r: &'a mut R,
    pub(super) dev: Device,
}

impl<R: std::io::Read + std::io::Seek> Weights for Gguf<'_, R> {
    fn matrix(&mut self, name: &str) -> Result<Option<(QMatMul, u64)>> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let t = self.ct.tensor(self.r, name, &self.dev)?;
        let n = t.shape().elem_count() as u64;
        Ok(Some((QMatMul::from_qtensor(q5_0_as_q8_0(t, &self.dev)?)?, n)))
    }
    fn vector(&mut self, name: &str) -> Result<Option<Tensor>> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(self.ct.tensor(self.r, name, &self.dev)?.dequantize(&self.dev)?))
    }
    fn embedding(&mut self) -> Result<Embedding> {
        Embedding::quantized(&self.ct.tensor(self.r, "token_embd.weight", &self.dev)?)
    }
    fn norm_plus_one(&self) -> bool {
        false
    }
}

/// Hugging Face tensors, addressed by llama.cpp role names.
pub(super) struct HfWeights {
    pub(super) tensors: HashMap<String, Tensor>,
    /// The precision weights are rounded to.
    pub(super) storage: DType,
    /// The precision the model computes in (f32 where the CPU has no kernel for `storage`).
    pub(super) dtype: DType,
    pub(super) gemma_norms: bool,
    /// Gemma 3 names its norms differently from Llama.
    pub(super) gemma3: bool,
}

impl HfWeights {
    pub(super) fn cast(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(self.storage)?.to_dtype(self.dtype)
    }

    pub(super) fn hf_name(&self, name: &str) -> String {
        let Some(rest) = name.strip_prefix("blk.") else {
            return match name {
                "output_norm.weight" => "model.norm.weight".to_owned(),
                "output.weight" => "lm_head.weight".to_owned(),
                other => other.to_owned(),
            };
        };
        let (layer, role) = rest.split_once('.').unwrap_or((rest, ""));
        let hf = match role {
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "attn_q_norm.weight" => "self_attn.q_norm.weight",
            "attn_k_norm.weight" => "self_attn.k_norm.weight",
            "attn_norm.weight" => "input_layernorm.weight",
            "post_attention_norm.weight" if self.gemma3 => "post_attention_layernorm.weight",
            "ffn_norm.weight" if self.gemma3 => "pre_feedforward_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return format!("unmapped.{name}"),
        };
        format!("model.layers.{layer}.{hf}")
    }
}

impl Weights for HfWeights {
    fn matrix(&mut self, name: &str) -> Result<Option<(QMatMul, u64)>> {
        let Some(t) = self.tensors.get(&self.hf_name(name)) else { return Ok(None) };
        let n = t.elem_count() as u64;
        Ok(Some((QMatMul::Tensor(self.cast(t)?), n)))
    }
    fn vector(&mut self, name: &str) -> Result<Option<Tensor>> {
        self.tensors.get(&self.hf_name(name)).map(|t| self.cast(t)).transpose()
    }
    fn embedding(&mut self) -> Result<Embedding> {
        let t = self
            .tensors
            .get("model.embed_tokens.weight")
            .ok_or_else(|| candle_core::Error::Msg("no model.embed_tokens.weight".to_owned()))?;
        Ok(Embedding::Dense(self.cast(t)?))
    }
    fn norm_plus_one(&self) -> bool {
        self.gemma_norms
    }
}

pub(super) fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no `{key}`")))
}

/// The subset of a Hugging Face `config.json` the decoder needs.
#[derive(Debug, Deserialize)]
pub(super) struct HfConfig {
    pub(super) model_type: String,
    pub(super) hidden_size: usize,
    pub(super) num_attention_heads: usize,
    pub(super) num_key_value_heads: Option<usize>,
    pub(super) num_hidden_layers: usize,
    pub(super) rms_norm_eps: f64,
    pub(super) rope_theta: Option<f32>,
    pub(super) head_dim: Option<usize>,
    pub(super) query_pre_attn_scalar: Option<f64>,
    pub(super) sliding_window: Option<usize>,
    pub(super) sliding_window_pattern: Option<usize>,
    pub(super) rope_local_base_freq: Option<f32>,
    pub(super) eos_token_id: Option<serde_json::Value>,
}
