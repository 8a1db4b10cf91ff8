//! Writes a model with deterministic random weights, for checking the candle engine where
//! no real model can be fetched (a GPU machine without network). Its tokens mean nothing;
//! its shapes, block types and cost per token are those of a real model of that size.
//!
//!   llem-tiny-model gguf llama model.gguf --hidden 1024 --layers 8 --quant q4k
//!   llem-tiny-model hf llama model-dir/

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::quantized::GgmlDType;
use clap::{Parser, ValueEnum};
use llem_tests::tiny_models::{write_gguf, write_hf, Dims};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One GGUF file (matrices quantized with --quant).
    Gguf,
    /// A Hugging Face folder: f32 model.safetensors, config.json, tokenizer.json.
    Hf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Quant {
    F32,
    F16,
    Q4_0,
    Q8_0,
    Q4k,
    Q6k,
}

#[derive(Debug, Parser)]
#[command(about = "Write a model with deterministic random weights (llama, qwen2, qwen3, gemma3 layouts)")]
struct Args {
    format: Format,
    /// Architecture: llama, qwen2, qwen3 or gemma3 (GGUF); llama, qwen2, qwen3 or gemma3_text (hf).
    arch: String,
    /// The file (gguf) or folder (hf) to write.
    out: PathBuf,
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads; the head size is hidden / heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Feed-forward width (default 4 × hidden).
    #[arg(long)]
    ffn: Option<usize>,
    #[arg(long, default_value_t = 320)]
    vocab: usize,
    /// Block type of the GGUF's matrices (k-quants need hidden and ffn to be multiples of 256).
    #[arg(long, value_enum, default_value_t = Quant::Q8_0)]
    quant: Quant,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.heads == 0 || a.hidden % a.heads != 0 || a.kv_heads == 0 || a.heads % a.kv_heads != 0 || a.vocab < 300 {
        eprintln!("error: hidden must divide into heads, heads into kv-heads, and the vocabulary needs ≥ 300 tokens");
        return ExitCode::from(2);
    }
    let d = Dims {
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: a.hidden / a.heads,
        ffn: a.ffn.unwrap_or(4 * a.hidden),
        layers: a.layers,
        vocab: a.vocab,
    };
    let quant = match a.quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 => GgmlDType::F16,
        Quant::Q4_0 => GgmlDType::Q4_0,
        Quant::Q8_0 => GgmlDType::Q8_0,
        Quant::Q4k => GgmlDType::Q4K,
        Quant::Q6k => GgmlDType::Q6K,
    };
    let written = match a.format {
        Format::Gguf => write_gguf(&a.out, &a.arch, &d, quant),
        Format::Hf => write_hf(&a.out, &a.arch, &d),
    };
    match written {
        Ok(()) => {
            eprintln!("wrote {} ({} {:?}, {} non-embedding parameters)", a.out.display(), a.arch, d, d.layer_params());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", a.out.display());
            ExitCode::from(1)
        }
    }
}
