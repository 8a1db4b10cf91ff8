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
    ("gpus", Kind::Number),
    ("api", Kind::Other),
    ("server", Kind::Section),
    ("server.command", Kind::Other),
    ("server.url", Kind::Other),
    ("server.options", Kind::Section),
    ("server.env", Kind::Section),
    ("server.ready_timeout_s", Kind::Number),
    ("load", Kind::Section),
    ("load.concurrency", Kind::Number),
    ("load.request_rate", Kind::Number),
    ("load.burstiness", Kind::Number),
    ("load.requests", Kind::Number),
    ("load.duration_s", Kind::Number),
    ("load.seed", Kind::Number),
    ("load.timeout_s", Kind::Number),
    ("load.max_error_rate", Kind::Number),
    ("load.slo", Kind::Section),
    ("load.slo.ttft_ms", Kind::Number),
    ("load.slo.tpot_ms", Kind::Number),
];

/// The kind of a path, or `None` when no such field exists. `requires.<label>` is any
/// label name.
pub fn kind(path: &str) -> Option<Kind> {
    if let Some(label) = path.strip_prefix("requires.") {
        return (!label.is_empty() && !label.contains('.')).then_some(Kind::Other);
    }
    // A server's own flags (`server.options.max-num-seqs`) are any name; they may be
    // numbers, so they may be monotone.
    if let Some(name) = path.strip_prefix("server.options.") {
        return (!name.is_empty() && !name.contains('.')).then_some(Kind::Number);
    }
    if let Some(name) = path.strip_prefix("server.env.") {
        return (!name.is_empty() && !name.contains('.')).then_some(Kind::Other);
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
                if v.is_object() && !matches!(k.as_str(), "requires" | "dataset" | "options" | "env") {
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
        // A default spec leaves the openai fields out; an openai spec with every field set
        // has them all.
        let spec = RawExperiment::default().with_model("m").validate(Default::default()).expect("valid");
        let text = "model: m\nengine: openai\ngpus: 2\ndevice: cuda\nserver: {command: [s, \"{port}\"]}\nload: {request_rate: 2, duration_s: 3, slo: {ttft_ms: 1, tpot_ms: 1}}\n";
        let node = crate::yaml::parse(crate::yaml::SourceId(0), text).expect("yaml");
        let openai: RawExperiment = crate::de::from_node(&node, "").expect("decodes");
        let openai = openai.validate(Default::default()).expect("valid");
        let mut json = spec.to_json();
        for (k, v) in openai.to_json().as_object().into_iter().flatten() {
            json[k] = v.clone();
        }
        let mut actual = Vec::new();
        leaf_paths("", &json, &mut actual);
        actual.sort();
        actual.dedup();
        let mut listed: Vec<String> = names().map(str::to_owned).collect();
        listed.sort();
        assert_eq!(actual, listed);
        for (path, kind) in FIELDS {
            let value = lookup(&json, path).cloned().expect("path exists");
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
