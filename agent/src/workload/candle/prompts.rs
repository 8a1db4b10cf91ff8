//! Where prompts come from: the built-in set, a JSON Lines file, or synthetic token ids.

use std::path::Path;

use llem_common::spec::Dataset;

/// The prompt set written for llem (`agent/data/prompts.jsonl`), shipped in the binary.
pub const BUILTIN: &str = include_str!("../../../data/prompts.jsonl");

/// A prompt as text, or as token ids (synthetic).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

fn from_jsonl(text: &str, origin: &str) -> Result<Vec<Prompt>, String> {
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{origin}:{}: not JSON: {e}", i + 1))?;
        let prompt = value
            .get("prompt")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("{origin}:{}: needs a \"prompt\" string", i + 1))?;
        prompts.push(Prompt::Text(prompt.to_owned()));
    }
    if prompts.is_empty() {
        return Err(format!("{origin} holds no prompts"));
    }
    Ok(prompts)
}

/// Deterministic pseudo-random ids in `[low, high)` (SplitMix64; fixed forever).
fn synthetic(n: u32, len: u32, seed: u64, low: u32, high: u32) -> Vec<Prompt> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let span = u64::from(high.saturating_sub(low).max(1));
    (0..n).map(|_| Prompt::Ids((0..len).map(|_| low + (next() % span) as u32).collect())).collect()
}

/// `n` prompts from `dataset` (the set repeats when shorter). Relative paths resolve
/// against `base` (the job's directory). `vocab` bounds synthetic ids.
pub fn load(dataset: &Dataset, n: u32, base: &Path, vocab: u32) -> Result<Vec<Prompt>, String> {
    let set = match dataset {
        Dataset::Builtin => from_jsonl(BUILTIN, "the builtin prompt set")?,
        Dataset::Path(p) => {
            let path = base.join(p);
            let text = std::fs::read_to_string(&path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
            from_jsonl(&text, &path.display().to_string())?
        }
        // Ids above the control range, below the vocabulary's end.
        Dataset::Synthetic { input_len, seed } => {
            return Ok(synthetic(n, *input_len, *seed, 256.min(vocab / 2), vocab))
        }
    };
    Ok(set.iter().cycle().take(n as usize).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_set_is_large_and_varied() {
        let prompts = from_jsonl(BUILTIN, "builtin").expect("valid");
        assert!(prompts.len() >= 100, "{}", prompts.len());
        let unique: std::collections::HashSet<String> =
            prompts.iter().map(|p| if let Prompt::Text(t) = p { t.clone() } else { String::new() }).collect();
        assert_eq!(unique.len(), prompts.len(), "no duplicates");
    }

    #[test]
    fn cycles_and_synthesises() {
        let p = load(&Dataset::Builtin, 250, Path::new("."), 1000).expect("builtin");
        assert_eq!(p.len(), 250);
        let n = from_jsonl(BUILTIN, "b").expect("ok").len();
        assert_eq!(p[0], p[n], "the set repeats");
        let s = load(&Dataset::Synthetic { input_len: 7, seed: 3 }, 2, Path::new("."), 1000).expect("synthetic");
        assert_eq!(s, load(&Dataset::Synthetic { input_len: 7, seed: 3 }, 2, Path::new("."), 1000).expect("again"));
        let Prompt::Ids(ids) = &s[0] else { panic!("ids") };
        assert_eq!(ids.len(), 7);
        assert!(ids.iter().all(|&i| (256..1000).contains(&i)));
        let err = from_jsonl("{\"text\": 1}\n", "f.jsonl").expect_err("no prompt");
        assert_eq!(err, "f.jsonl:1: needs a \"prompt\" string");
    }
}
