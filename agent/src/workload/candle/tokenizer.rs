//! Tokenizers: `tokenizer.json` beside the model when present (Hugging Face `tokenizers`),
//! otherwise built from the GGUF's own vocabulary (`tokenizer.ggml.*`).
//!
//! The GGUF path implements SentencePiece-style BPE (`tokenizer.ggml.model = llama`) the
//! way llama.cpp does, so ids agree with llama.cpp token for token (checked against
//! vectors made by llama.cpp in `tests/fixtures/tokenizer-gemma3.json`):
//!
//! 1. user-defined tokens (and control tokens, when parsing specials) are cut out of the
//!    text first, longest first;
//! 2. each remaining piece gets `▁` for spaces (and a leading `▁` when
//!    `add_space_prefix`), is split into characters, and adjacent symbols are merged,
//!    highest vocabulary score first (ties: leftmost), while the merge is a token;
//! 3. a symbol that is not a token falls back to its bytes (`<0xAB>` tokens).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file;

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the GGUF has no `{0}` (it carries no vocabulary llem can use)")]
    Missing(&'static str),
    #[error("tokenizer.ggml.model `{0}` is not supported: llem reads `llama` (SentencePiece) vocabularies from GGUF, or a tokenizer.json beside the model")]
    Model(String),
    #[error("tokenizer.json: {0}")]
    Json(String),
}

/// Text ↔ token ids.
pub trait Tokenize: Send {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;
    fn decode(&self, ids: &[u32]) -> String;
    /// Tokens that end a sequence (EOS and end-of-turn markers).
    fn stop_tokens(&self) -> Vec<u32>;
    fn vocab_size(&self) -> usize;
}

/// A SentencePiece-BPE vocabulary read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    /// User-defined and control tokens, longest text first.
    specials: Vec<u32>,
    bytes: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &'static str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

impl GgufTokenizer {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, TokenizerError> {
        let model = meta(ct, "tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if model != "llama" {
            return Err(TokenizerError::Model(model));
        }
        let list = |key: &'static str| -> Result<&Vec<gguf_file::Value>, TokenizerError> {
            meta(ct, key).and_then(|v| v.to_vec().ok()).ok_or(TokenizerError::Missing(key))
        };
        let tokens: Vec<String> =
            list("tokenizer.ggml.tokens")?.iter().map(|v| v.to_string().cloned().unwrap_or_default()).collect();
        let scores: Vec<f32> = match list("tokenizer.ggml.scores") {
            Ok(s) => s.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
            Err(_) => vec![0.0; tokens.len()],
        };
        let types: Vec<i32> = match list("tokenizer.ggml.token_type") {
            Ok(t) => t.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let id = |key: &'static str| meta(ct, key).and_then(|v| v.to_u32().ok());
        let flag = |key: &'static str, default: bool| meta(ct, key).and_then(|v| v.to_bool().ok()).unwrap_or(default);
        Ok(Self::new(
            tokens,
            scores,
            types,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            flag("tokenizer.ggml.add_bos_token", true),
            flag("tokenizer.ggml.add_space_prefix", true),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        add_space_prefix: bool,
    ) -> Self {
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let mut bytes = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            if types.get(i) == Some(&TYPE_BYTE) {
                if let Some(b) =
                    t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    bytes[b as usize] = Some(i as u32);
                }
            }
        }
        let mut specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| matches!(types.get(i as usize), Some(&TYPE_CONTROL | &TYPE_USER_DEFINED | &TYPE_UNKNOWN)))
            .filter(|&i| !tokens[i as usize].is_empty())
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        GgufTokenizer { tokens, scores, types, ids, specials, bytes, bos, eos, add_bos, add_space_prefix }
    }

    /// Splits text at special tokens. Only user-defined tokens are cut unless
    /// `parse_special` (then control tokens too), as llama.cpp does.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &special in &self.specials {
            let ty = self.types[special as usize];
            if !parse_special && ty != TYPE_USER_DEFINED {
                continue;
            }
            let needle = self.tokens[special as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(special));
                    rest = &rest[at + needle.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Encodes with control tokens in the text recognised as such.
    pub fn encode_with_specials(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    self.spm(&s.replace(' ', "\u{2581}"), &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    /// SentencePiece BPE over one piece of text (spaces already escaped).
    fn spm<'t>(&self, text: &'t str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, ch) in text.char_indices() {
            let i = symbols.len() as isize;
            symbols.push(Symbol { start, len: ch.len_utf8(), prev: i - 1, next: i + 1 });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<&'t str, (isize, isize)> = HashMap::new();
        let try_add = |left: isize,
                       right: isize,
                       symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<&'t str, (isize, isize)>| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
            let piece = &text[l.start..l.start + l.len + r.len];
            let Some(&id) = self.ids.get(piece) else { return };
            queue.push(Bigram { left, right, score: self.scores[id as usize], size: piece.len() });
            rev.insert(piece, (left, right));
        };
        for i in 1..symbols.len() as isize {
            try_add(i - 1, i, &symbols, &mut queue, &mut rev_merge);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left as usize, bigram.right as usize);
            if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != bigram.size {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if symbols[r].next >= 0 {
                let n = symbols[r].next as usize;
                symbols[n].prev = bigram.left;
            }
            let prev = symbols[l].prev;
            let next = symbols[l].next;
            try_add(prev, bigram.left, &symbols, &mut queue, &mut rev_merge);
            try_add(bigram.left, next, &symbols, &mut queue, &mut rev_merge);
        }
        let mut i: isize = 0;
        while i >= 0 {
            self.resegment(text, &symbols, i as usize, &rev_merge, out);
            i = symbols[i as usize].next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        i: usize,
        rev: &HashMap<&str, (isize, isize)>,
        out: &mut Vec<u32>,
    ) {
        let s = &symbols[i];
        let piece = &text[s.start..s.start + s.len];
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        match rev.get(piece) {
            Some(&(l, r)) => {
                self.resegment(text, symbols, l as usize, rev, out);
                self.resegment(text, symbols, r as usize, rev, out);
            }
            None => {
                for b in piece.bytes() {
                    // A vocabulary without byte tokens maps unknown bytes to <unk> (0).
                    out.push(self.bytes[b as usize].unwrap_or(0));
                }
            }
        }
    }
}

impl Tokenize for GgufTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with_specials(text, add_bos, false)
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for &id in ids {
            let Some(text) = self.tokens.get(id as usize) else { continue };
            match self.types.get(id as usize) {
                Some(&TYPE_BYTE) => {
                    if let Some(b) = self.bytes.iter().position(|b| *b == Some(id)) {
                        bytes.push(b as u8);
                    }
                }
                Some(&TYPE_CONTROL) => {}
                _ => bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn stop_tokens(&self) -> Vec<u32> {
        let mut stops: Vec<u32> = self.eos.into_iter().collect();
        for name in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end|>"] {
            if let Some(&id) = self.ids.get(name) {
                if !stops.contains(&id) {
                    stops.push(id);
                }
            }
        }
        stops
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

#[derive(Debug, PartialEq)]
struct Bigram {
    left: isize,
    right: isize,
    score: f32,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on ties the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A Hugging Face `tokenizer.json`.
pub struct JsonTokenizer {
    inner: tokenizers::Tokenizer,
    stops: Vec<u32>,
}

impl std::fmt::Debug for JsonTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonTokenizer").field("stops", &self.stops).finish_non_exhaustive()
    }
}

impl JsonTokenizer {
    pub fn from_file(path: &std::path::Path, eos: &[u32]) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Json(e.to_string()))?;
        let mut stops = eos.to_vec();
        for name in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "</s>", "<eos>"] {
            if let Some(id) = inner.token_to_id(name) {
                if !stops.contains(&id) {
                    stops.push(id);
                }
            }
        }
        Ok(JsonTokenizer { inner, stops })
    }
}

impl Tokenize for JsonTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.inner.encode(text, add_bos).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }
    fn stop_tokens(&self) -> Vec<u32> {
        self.stops.clone()
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: merges follow scores, unknown characters fall back to bytes.
    fn toy() -> GgufTokenizer {
        let entries: Vec<(&str, f32, i32)> = vec![
            ("<unk>", 0.0, TYPE_UNKNOWN),
            ("<bos>", 0.0, TYPE_CONTROL),
            ("<eos>", 0.0, TYPE_CONTROL),
            ("<turn>", 0.0, TYPE_USER_DEFINED),
            ("<0xC3>", 0.0, TYPE_BYTE),
            ("<0xA9>", 0.0, TYPE_BYTE),
            ("\u{2581}", -1.0, 1),
            ("a", -1.0, 1),
            ("b", -1.0, 1),
            ("ab", -2.0, 1),
            ("\u{2581}ab", -3.0, 1),
            ("ba", -0.5, 1),
        ];
        GgufTokenizer::new(
            entries.iter().map(|e| e.0.to_owned()).collect(),
            entries.iter().map(|e| e.1).collect(),
            entries.iter().map(|e| e.2).collect(),
            Some(1),
            Some(2),
            true,
            false,
        )
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let t = toy();
        // "aba": "ba" (-0.5) beats "ab" (-2).
        assert_eq!(t.encode("aba", false), vec![7, 11]);
        // " ab" → ▁ab; é has no token → its two bytes.
        assert_eq!(t.encode(" abé", true), vec![1, 10, 4, 5]);
        assert_eq!(t.decode(&[1, 10, 4, 5]), " abé");
        // user-defined tokens are cut out even without parsing specials.
        assert_eq!(t.encode("a<turn>b", false), vec![7, 3, 8]);
        // control tokens only when parsing specials.
        assert_eq!(t.encode_with_specials("<eos>", false, true), vec![2]);
        assert_ne!(t.encode("<eos>", false), vec![2]);
        assert_eq!(t.stop_tokens(), vec![2]);
    }
}
