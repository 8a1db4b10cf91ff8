//! One experiment, fully resolved: what the agent runs and what a job id hashes.
//!
//! Sweep files are read into [`raw::RawExperiment`] (every field optional, positions
//! kept) and turned into [`ExperimentSpec`] by [`raw::RawExperiment::validate`], which fills
//! the defaults and checks the rules between fields.
//!
//! **Field order is part of the format.** Every struct here declares its fields in
//! alphabetical order, so the JSON serde writes is already canonical (keys sorted) and a
//! job id can hash it directly; a unit test holds this.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod fields;
pub mod raw;
pub mod server;

pub use server::{Api, Load, Rate, Server, Slo};

/// Inference engine that runs the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Real generation in-process with candle (GGUF or Hugging Face safetensors).
    Candle,
    /// A known CPU load per output token, to check the measurement chain itself.
    Synthetic,
    /// Any external program, measured while it runs.
    Command,
    /// An OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, …) driven by llem's
    /// load generator.
    Openai,
}

impl Engine {
    /// Whether the engine reads the model's files on the node (so they can be checked
    /// before its jobs run there); `synthetic` and `command` take `model` as a label.
    pub fn reads_model_files(self) -> bool {
        matches!(self, Engine::Candle)
    }
}

/// Numeric precision of weights and activations. `auto`: as stored (GGUF's own
/// quantisation; f32 for safetensors on CPU, bf16 on GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Auto,
    F32,
    F16,
    Bf16,
}

/// Where the energy figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// NVML when the job uses a GPU, else RAPL, else none (energy `null`).
    Auto,
    Nvml,
    Rapl,
    None,
}

/// The device a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// Any free GPU of the node (`cuda`), or a given one (`cuda:N`).
    Cuda(Option<u32>),
}

impl Device {
    pub fn uses_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(Device::Cuda(Some(n))),
                _ => Err(format!("unknown device `{s}`")),
            },
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dataset {
    /// The prompt set shipped with llem.
    Builtin,
    /// A JSON Lines file with `{"prompt": ...}` per line.
    Path(String),
    /// Random token ids of a fixed length (reproducible from `seed`).
    Synthetic { input_len: u32, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoding {
    pub ignore_eos: bool,
    pub seed: u64,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub cache_ttl_s: f64,
    /// 0 skips the baseline: adjusted energy is then `null`.
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Coefficient of variation of the last `window` latencies that ends warmup.
    pub cv: f64,
    pub max_prompts: u32,
    /// A fixed number of warmup prompts; when set, `cv`/`window` are not used.
    pub prompts: Option<u32>,
    pub window: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalFloor {
    pub delta_c: f64,
    pub max_s: f64,
    pub min_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub baseline: Baseline,
    pub energy: EnergySource,
    pub sample_hz: f64,
    pub thermal_floor: ThermalFloor,
    pub warmup: Warmup,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticLoad {
    pub ms_per_token: f64,
}

/// One fully resolved experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// `engine: openai`: the endpoint the requests use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    pub batch_size: u32,
    /// For `engine: command`: the program and its arguments, run without a shell.
    pub command: Option<Vec<String>>,
    pub command_warmup: Option<Vec<String>>,
    pub dataset: Dataset,
    pub decoding: Decoding,
    pub device: Device,
    pub engine: Engine,
    /// GPUs of one node the job takes at once (tensor parallelism); unset means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// `engine: openai`: the load pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    pub max_input_tokens: u32,
    pub max_output_tokens: u32,
    pub measurement: Measurement,
    pub model: String,
    pub n_prompts: u32,
    pub precision: Precision,
    /// Labels the node must carry (e.g. `gpu: H100`).
    pub requires: BTreeMap<String, String>,
    pub save_outputs: bool,
    /// `engine: openai`: the server to start or attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    pub synthetic: SyntheticLoad,
}

impl ExperimentSpec {
    /// How many GPUs the job holds at once (0 on the CPU).
    pub fn gpu_count(&self) -> u32 {
        if self.device.uses_gpu() {
            self.gpus.unwrap_or(1)
        } else {
            0
        }
    }
}

/// sha256 of an experiment's canonical JSON: the identity of a configuration.
///
/// **Stable ids.** The canonical JSON is what serde writes. A field added to
/// [`ExperimentSpec`] (or to a section) after this format was fixed must be left out of
/// it when unset — `#[serde(default, skip_serializing_if = …)]` — so every existing sweep
/// keeps its ids and resume after an upgrade reruns nothing. The fields of the first
/// format (in [`CANONICAL_V1_KEYS`]) keep writing `null` when unset, as they always did.
/// docs/sweep-format.md states the rule; tests pin known ids and the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecHash(pub [u8; 32]);

impl std::hash::Hash for SpecHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already a cryptographic hash: its first 8 bytes are as good as any digest of it.
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Hashes a [`SpecHash`] by taking its first bytes (no second hashing).
#[derive(Debug, Default, Clone, Copy)]
pub struct SpecHasher(u64);

impl std::hash::Hasher for SpecHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by spec hashes.
pub type SpecHashMap<V> = std::collections::HashMap<SpecHash, V, std::hash::BuildHasherDefault<SpecHasher>>;

impl SpecHash {
    /// The short config id: 16 hex digits (64 bits; collisions are checked on the full
    /// hash when a plan is built).
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl ExperimentSpec {
    /// Hashes the canonical JSON form (keys sorted, defaults filled).
    pub fn hash(&self) -> SpecHash {
        let mut canonical = Vec::with_capacity(1024);
        canonical.extend_from_slice(b"llem-experiment-v1\n");
        // Serialising these types cannot fail. One buffer, one hash update: many tiny
        // updates cost more than the serialising.
        let _ = serde_json::to_writer(&mut canonical, self);
        SpecHash(Sha256::digest(&canonical).into())
    }

    /// The spec as JSON (for reports, `plan --json` and field look-ups).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Every key the canonical JSON of a default spec holds, dotted, as fixed by the first
/// format. A new field must not appear here when unset (see [`SpecHash`]).
pub const CANONICAL_V1_KEYS: &[&str] = &[
    "batch_size",
    "command",
    "command_warmup",
    "dataset",
    "decoding",
    "decoding.ignore_eos",
    "decoding.seed",
    "decoding.temperature",
    "decoding.top_k",
    "decoding.top_p",
    "device",
    "engine",
    "max_input_tokens",
    "max_output_tokens",
    "measurement",
    "measurement.baseline",
    "measurement.baseline.cache_ttl_s",
    "measurement.baseline.duration_s",
    "measurement.energy",
    "measurement.sample_hz",
    "measurement.thermal_floor",
    "measurement.thermal_floor.delta_c",
    "measurement.thermal_floor.max_s",
    "measurement.thermal_floor.min_s",
    "measurement.warmup",
    "measurement.warmup.cv",
    "measurement.warmup.max_prompts",
    "measurement.warmup.prompts",
    "measurement.warmup.window",
    "model",
    "n_prompts",
    "precision",
    "requires",
    "save_outputs",
    "synthetic",
    "synthetic.ms_per_token",
];

/// A job's id: its configuration's short hash plus its cycle (`3fa1…-c2`), so the same
/// sweep always yields the same ids and adding cycles keeps the old ones.
pub fn job_id(hash: &SpecHash, cycle: u32) -> String {
    format!("{}-c{cycle}", hash.short())
}

/// Reads one experiment from YAML text in the sweep-file field names (`llem-agent run
/// --job FILE`). On failure, every problem and the source to show them in.
pub fn experiment_from_yaml(
    name: &str,
    text: &str,
) -> Result<ExperimentSpec, (crate::yaml::Sources, Vec<crate::diag::Diagnostic>)> {
    let mut sources = crate::yaml::Sources::default();
    let id = sources.add(name, text);
    let node = match crate::yaml::parse(id, text) {
        Ok(node) => node,
        Err(e) => return Err((sources, vec![crate::diag::Diagnostic::at(e.span, e.message)])),
    };
    let raw: raw::RawExperiment = match crate::de::from_node(&node, "") {
        Ok(raw) => raw,
        Err(errors) => return Err((sources, errors)),
    };
    raw.validate(node.span).map_err(|errors| (sources, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ExperimentSpec {
        raw::RawExperiment::default()
            .with_model("m.gguf")
            .validate(crate::yaml::Span::default())
            .expect("defaults are valid")
    }

    #[test]
    fn serialisation_is_canonical() {
        // The derive writes fields in declaration order; declaring them alphabetically
        // makes that the sorted order job ids rely on. serde_json::Value sorts keys.
        let spec = sample();
        let direct = serde_json::to_string(&spec).expect("json");
        let sorted = serde_json::to_string(&spec.to_json()).expect("json");
        assert_eq!(direct, sorted);
    }

    #[test]
    fn hash_changes_with_any_value() {
        let a = sample();
        let mut b = a.clone();
        b.decoding.temperature = 0.5;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(job_id(&a.hash(), 2), format!("{}-c2", a.hash().short()));
        assert_eq!(a.hash().short().len(), 16);
    }

    fn dotted_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.push(key.clone());
                dotted_keys(v, &key, out);
            }
        }
    }

    #[test]
    fn a_field_added_later_is_left_out_of_the_canonical_form_when_unset() {
        // Fails when a new field serialises while unset: that would change every job id
        // of every existing sweep (docs/sweep-format.md, "Job ids").
        let mut keys = Vec::new();
        dotted_keys(&sample().to_json(), "", &mut keys);
        keys.sort();
        assert_eq!(keys, CANONICAL_V1_KEYS, "the canonical form of an unset spec changed: job ids would change");
    }

    #[test]
    fn known_ids_are_pinned() {
        // The canonical text of a default spec, and its id, as every earlier release wrote them.
        let spec = sample();
        assert_eq!(
            serde_json::to_string(&spec).expect("json"),
            r#"{"batch_size":1,"command":null,"command_warmup":null,"dataset":"builtin","decoding":{"ignore_eos":false,"seed":0,"temperature":0.0,"top_k":null,"top_p":null},"device":"cpu","engine":"candle","max_input_tokens":512,"max_output_tokens":64,"measurement":{"baseline":{"cache_ttl_s":3600.0,"duration_s":10.0},"energy":"auto","sample_hz":10.0,"thermal_floor":{"delta_c":1.0,"max_s":60.0,"min_s":0.0},"warmup":{"cv":0.05,"max_prompts":30,"prompts":null,"window":5}},"model":"m.gguf","n_prompts":10,"precision":"auto","requires":{},"save_outputs":false,"synthetic":{"ms_per_token":1.0}}"#
        );
        assert_eq!(job_id(&spec.hash(), 1), "6640c7a4ed94a047-c1");
    }

    #[test]
    fn devices_round_trip() {
        for text in ["cpu", "cuda", "cuda:3"] {
            let device: Device = text.parse().expect("valid");
            assert_eq!(device.to_string(), text);
        }
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn json_round_trip() {
        let spec = sample();
        let back: ExperimentSpec = serde_json::from_value(spec.to_json()).expect("round trip");
        assert_eq!(back, spec);
    }
}
