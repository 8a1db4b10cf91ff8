//! The dotted field paths a sweep may name (`batch_size`, `decoding.temperature`, …):
//! for `sweep:` keys, `include:`/`exclude:` entries, `execution.monotone`, and "did you
//! mean" hints. A unit test checks this list against the spec's real shape.

/// What kind of value a field holds (monotone chains need ordered numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Other,
    /// A section (`decoding`, `measurement.warmup`, …): a map of further fields.
    Section,
}

/// Every path, in the order the docs list them.
pub const FIELDS: &[(&str, Kind)] = &[
    ("model", Kind::Other),
    ("engine", Kind::Other),
    ("device", Kind::Other),
    ("precision", Kind::Other),
    ("batch_size", Kind::Number),
    ("n_prompts", Kind::Number),
    ("max_input_tokens", Kind::Number),
    ("max_output_tokens", Kind::Number),
    ("dataset", Kind::Other),
    ("save_outputs", Kind::Other),
    ("decoding", Kind::Section),
    ("decoding.temperature", Kind::Number),
    ("decoding.top_k", Kind::Number),
    ("decoding.top_p", Kind::Number),
    ("decoding.seed", Kind::Number),
    ("decoding.ignore_eos", Kind::Other),
    ("measurement", Kind::Section),
    ("measurement.energy", Kind::Other),
    ("measurement.sample_hz", Kind::Number),
    ("measurement.baseline", Kind::Section),
    ("measurement.baseline.duration_s", Kind::Number),
    ("measurement.baseline.cache_ttl_s", Kind::Number),
    ("measurement.warmup", Kind::Section),
    ("measurement.warmup.prompts", Kind::Number),
    ("measurement.warmup.cv", Kind::Number),
    ("measurement.warmup.window", Kind::Number),
    ("measurement.warmup.max_prompts", Kind::Number),
    ("measurement.thermal_floor", Kind::Section),
    ("measurement.thermal_floor.min_s", Kind::Number),
    ("measurement.thermal_floor.max_s", Kind::Number),
    ("measurement.thermal_floor.delta_c", Kind::Number),
    ("synthetic", Kind::Section),
    ("synthetic.ms_per_token", Kind::Number),
    ("command", Kind::Other),
    ("command_warmup", Kind::Other),
    ("requires", Kind::Section),
];

/// The kind of a path, or `None` when no such field exists. `requires.<label>` is any
/// label name.
pub fn kind(path: &str) -> Option<Kind> {
    if let Some(label) = path.strip_prefix("requires.") {
        return (!label.is_empty() && !label.contains('.')).then_some(Kind::Other);
    }
    FIELDS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

/// All paths, for suggestions.
pub fn names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(p, _)| *p)
}

/// Looks a path up in the JSON form of a spec (`decoding.temperature` →
/// `spec["decoding"]["temperature"]`).
pub fn lookup<'v>(json: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(json, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::raw::RawExperiment;

    fn leaf_paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_object() && k != "requires" && k != "dataset" {
                    out.push(path.clone());
                    leaf_paths(&path, v, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn registry_matches_the_spec() {
        let spec = RawExperiment::default().with_model("m").validate(Default::default()).expect("valid");
        let mut actual = Vec::new();
        leaf_paths("", &spec.to_json(), &mut actual);
        actual.sort();
        let mut listed: Vec<String> = names().map(str::to_owned).collect();
        listed.sort();
        assert_eq!(actual, listed);
        for (path, kind) in FIELDS {
            let value = lookup(&spec.to_json(), path).cloned().expect("path exists");
            match kind {
                Kind::Number => assert!(value.is_number() || value.is_null(), "{path}"),
                Kind::Section => assert!(value.is_object(), "{path}"),
                Kind::Other => {}
            }
        }
    }

    #[test]
    fn labels_are_paths() {
        assert_eq!(kind("requires.gpu"), Some(Kind::Other));
        assert_eq!(kind("requires."), None);
        assert_eq!(kind("batch_size"), Some(Kind::Number));
        assert_eq!(kind("batchsize"), None);
    }
}
