//! The experiment as written in a file: every field optional, every value with its place.
//!
//! Stage one of reading: [`crate::de::from_node`] fills these structs (types, unknown
//! keys, enum names). Stage two: [`RawExperiment::validate`] fills defaults and checks
//! ranges and the rules between fields, giving an [`ExperimentSpec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::server::{Api, RawLoad, RawServer};
use super::{
    Baseline, Dataset, Decoding, Device, EnergySource, Engine, ExperimentSpec, Measurement, Precision, SyntheticLoad,
    ThermalFloor, Warmup,
};
use crate::de::Spanned;
use crate::diag::Diagnostic;
use crate::yaml::Span;

type S<T> = Option<Spanned<T>>;

/// Defaults for every field but `model`, in one place (the docs quote them).
pub mod defaults {
    pub const ENGINE: &str = "candle";
    pub const DEVICE: &str = "cpu";
    pub const BATCH_SIZE: u32 = 1;
    pub const N_PROMPTS: u32 = 10;
    pub const MAX_INPUT_TOKENS: u32 = 512;
    pub const MAX_OUTPUT_TOKENS: u32 = 64;
    pub const SAMPLE_HZ: f64 = 10.0;
    pub const BASELINE_DURATION_S: f64 = 10.0;
    pub const BASELINE_CACHE_TTL_S: f64 = 3600.0;
    pub const WARMUP_CV: f64 = 0.05;
    pub const WARMUP_WINDOW: u32 = 5;
    pub const WARMUP_MAX_PROMPTS: u32 = 30;
    pub const THERMAL_MIN_S: f64 = 0.0;
    pub const THERMAL_MAX_S: f64 = 60.0;
    pub const THERMAL_DELTA_C: f64 = 1.0;
    pub const SYNTHETIC_MS_PER_TOKEN: f64 = 1.0;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecoding {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: S<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_eos: S<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBaseline {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ttl_s: S<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarmup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cv: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompts: S<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThermalFloor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_s: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_s: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_c: S<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeasurement {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: S<EnergySource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_hz: S<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<RawBaseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<RawWarmup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thermal_floor: Option<RawThermalFloor>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSynthetic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms_per_token: S<f64>,
}

/// `dataset:` as written: `builtin`, `{path: file.jsonl}` or
/// `{synthetic: {input_len, seed}}` (serde's external tagging, no `untagged`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawDataset {
    Builtin,
    Path(String),
    Synthetic { input_len: Spanned<u32>, seed: Option<u64> },
}

/// One experiment as written. Field names are the sweep-file contract.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: S<Engine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: S<Precision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_prompts: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: S<RawDataset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_outputs: S<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoding: Option<RawDecoding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<RawMeasurement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<RawSynthetic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: S<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_warmup: S<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: S<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: S<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<RawServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<RawLoad>,
}

/// `over(a, b)`: fields set in `b` win, recursively for sections.
trait Overlay {
    fn overlay(&mut self, top: &Self);
}

impl<T: Clone> Overlay for Option<Spanned<T>> {
    fn overlay(&mut self, top: &Self) {
        if top.is_some() {
            self.clone_from(top);
        }
    }
}

macro_rules! overlay_struct {
    ($ty:ty { $($leaf:ident),* } sections { $($section:ident),* }) => {
        impl Overlay for $ty {
            fn overlay(&mut self, top: &Self) {
                $( self.$leaf.overlay(&top.$leaf); )*
                $( match (&mut self.$section, &top.$section) {
                    (_, None) => {}
                    (None, Some(t)) => self.$section = Some(t.clone()),
                    (Some(b), Some(t)) => b.overlay(t),
                } )*
            }
        }
    };
}

overlay_struct!(RawDecoding { temperature, top_k, top_p, seed, ignore_eos } sections {});
overlay_struct!(RawBaseline { duration_s, cache_ttl_s } sections {});
overlay_struct!(RawWarmup { prompts, cv, window, max_prompts } sections {});
overlay_struct!(RawThermalFloor { min_s, max_s, delta_c } sections {});
overlay_struct!(RawMeasurement { energy, sample_hz } sections { baseline, warmup, thermal_floor });
overlay_struct!(RawSynthetic { ms_per_token } sections {});

impl RawExperiment {
    /// Lays `top` over `self`: every field `top` sets replaces the one here, sections merge
    /// field by field, `requires` merges label by label.
    pub fn overlay(&mut self, top: &RawExperiment) {
        self.model.overlay(&top.model);
        self.engine.overlay(&top.engine);
        self.device.overlay(&top.device);
        self.precision.overlay(&top.precision);
        self.batch_size.overlay(&top.batch_size);
        self.n_prompts.overlay(&top.n_prompts);
        self.max_input_tokens.overlay(&top.max_input_tokens);
        self.max_output_tokens.overlay(&top.max_output_tokens);
        self.dataset.overlay(&top.dataset);
        self.save_outputs.overlay(&top.save_outputs);
        self.command.overlay(&top.command);
        self.command_warmup.overlay(&top.command_warmup);
        self.gpus.overlay(&top.gpus);
        self.api.overlay(&top.api);
        if let Some(t) = &top.server {
            self.server.get_or_insert_with(RawServer::default).overlay(t);
        }
        if let Some(t) = &top.load {
            self.load.get_or_insert_with(RawLoad::default).overlay(t);
        }
        overlay_section(&mut self.decoding, &top.decoding);
        overlay_section(&mut self.measurement, &top.measurement);
        overlay_section(&mut self.synthetic, &top.synthetic);
        if let Some(labels) = &top.requires {
            let mine = self.requires.get_or_insert_with(BTreeMap::new);
            for (k, v) in labels {
                mine.insert(k.clone(), v.clone());
            }
        }
    }

    /// Sets `model` (for tests and programmatic use).
    #[must_use]
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = Some(Spanned::new(Span::default(), model.to_owned()));
        self
    }

    /// Fills defaults and checks every rule. `whole` is where the experiment as a whole
    /// was written (for "missing field" and rules between fields).
    pub fn validate(&self, whole: Span) -> Result<ExperimentSpec, Vec<Diagnostic>> {
        let mut v = Checker { errors: Vec::new(), whole };
        let spec = v.experiment(self);
        if v.errors.is_empty() {
            Ok(spec)
        } else {
            Err(v.errors)
        }
    }
}

fn overlay_section<T: Overlay + Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
    match (mine.as_mut(), theirs) {
        (_, None) => {}
        (None, Some(t)) => *mine = Some(t.clone()),
        (Some(b), Some(t)) => b.overlay(t),
    }
}

pub(super) struct Checker {
    errors: Vec<Diagnostic>,
    whole: Span,
}

impl Checker {
    pub(super) fn span_of<T>(&self, field: &S<T>) -> Span {
        field.as_ref().map_or(self.whole, |f| f.span)
    }

    pub(super) fn fail(&mut self, span: Span, message: String, help: Option<&str>) {
        self.errors.push(Diagnostic::at(span, message).with_help_opt(help.map(str::to_owned)));
    }

    /// A number field with a lower bound (inclusive or not) and optional upper bound.
    pub(super) fn number(
        &mut self,
        name: &str,
        field: &S<f64>,
        default: f64,
        min: f64,
        min_inclusive: bool,
        max: Option<f64>,
    ) -> f64 {
        let value = field.as_ref().map_or(default, |f| f.value);
        let span = self.span_of(field);
        if !value.is_finite() {
            self.fail(span, format!("`{name}` must be a finite number, found {value}"), None);
        } else if (min_inclusive && value < min) || (!min_inclusive && value <= min) {
            let rel = if min_inclusive { "≥" } else { ">" };
            self.fail(span, format!("`{name}` must be {rel} {min}, found {value}"), None);
        } else if let Some(max) = max.filter(|m| value > *m) {
            self.fail(span, format!("`{name}` must be ≤ {max}, found {value}"), None);
        }
        value
    }

    pub(super) fn count(&mut self, name: &str, field: &S<u32>, default: u32, min: u32) -> u32 {
        let value = field.as_ref().map_or(default, |f| f.value);
        if value < min {
            let span = self.span_of(field);
            self.fail(span, format!("`{name}` must be at least {min}, found {value}"), None);
        }
        value
    }

    fn experiment(&mut self, raw: &RawExperiment) -> ExperimentSpec {
        let model = match &raw.model {
            Some(m) if m.value.trim().is_empty() => {
                self.fail(m.span, "`model` is empty".to_owned(), Some("give a GGUF file, a model folder, or a name"));
                String::new()
            }
            Some(m) => m.value.clone(),
            None => {
                self.fail(
                    self.whole,
                    "missing field `model`".to_owned(),
                    Some("every experiment needs `model:` (a GGUF file, a Hugging Face folder, or a label for synthetic/command jobs)"),
                );
                String::new()
            }
        };
        let engine = raw.engine.as_ref().map_or(Engine::Candle, |e| e.value);
        let device = match &raw.device {
            None => Device::Cpu,
            Some(d) => d.value.parse().unwrap_or_else(|message: String| {
                self.fail(d.span, message, Some("expected `cpu`, `cuda` (any GPU) or `cuda:N` (GPU N)"));
                Device::Cpu
            }),
        };
        let batch_size = self.count("batch_size", &raw.batch_size, defaults::BATCH_SIZE, 1);
        let n_prompts = self.count("n_prompts", &raw.n_prompts, defaults::N_PROMPTS, 1);
        let max_input_tokens = self.count("max_input_tokens", &raw.max_input_tokens, defaults::MAX_INPUT_TOKENS, 1);
        let max_output_tokens = self.count("max_output_tokens", &raw.max_output_tokens, defaults::MAX_OUTPUT_TOKENS, 1);
        let dataset = match raw.dataset.as_ref().map(|d| &d.value) {
            None | Some(RawDataset::Builtin) => Dataset::Builtin,
            Some(RawDataset::Path(p)) => {
                if p.trim().is_empty() {
                    let span = self.span_of(&raw.dataset);
                    self.fail(span, "`dataset.path` is empty".to_owned(), None);
                }
                Dataset::Path(p.clone())
            }
            Some(RawDataset::Synthetic { input_len, seed }) => {
                if input_len.value == 0 {
                    self.fail(
                        input_len.span,
                        "`dataset.synthetic.input_len` must be at least 1, found 0".to_owned(),
                        None,
                    );
                }
                Dataset::Synthetic { input_len: input_len.value, seed: seed.unwrap_or(0) }
            }
        };
        let decoding = self.decoding(raw.decoding.as_ref().unwrap_or(&RawDecoding::default()));
        let measurement = self.measurement(raw.measurement.as_ref().unwrap_or(&RawMeasurement::default()));
        let synthetic_raw = raw.synthetic.clone().unwrap_or_default();
        let synthetic = SyntheticLoad {
            ms_per_token: self.number(
                "synthetic.ms_per_token",
                &synthetic_raw.ms_per_token,
                defaults::SYNTHETIC_MS_PER_TOKEN,
                0.0,
                true,
                None,
            ),
        };
        let command = self.argv("command", &raw.command);
        let command_warmup = self.argv("command_warmup", &raw.command_warmup);
        match (engine, &command) {
            (Engine::Command, None) => {
                let span = self.span_of(&raw.engine);
                self.fail(span, "`engine: command` needs `command: [program, args...]`".to_owned(), None);
            }
            (Engine::Candle | Engine::Synthetic | Engine::Openai, Some(_)) => {
                let span = self.span_of(&raw.command);
                self.fail(
                    span,
                    "`command` is only used with `engine: command`".to_owned(),
                    Some("set `engine: command`, or remove `command`"),
                );
            }
            _ => {}
        }
        if command_warmup.is_some() && engine != Engine::Command {
            let span = self.span_of(&raw.command_warmup);
            self.fail(span, "`command_warmup` is only used with `engine: command`".to_owned(), None);
        }
        let (api, server, load) = self.openai(raw, engine, n_prompts);
        let gpus = self.gpus(raw, device, engine);
        let requires = raw.requires.iter().flatten().map(|(k, v)| (k.clone(), v.value.clone())).collect();
        ExperimentSpec {
            api,
            batch_size,
            command,
            command_warmup,
            dataset,
            decoding,
            device,
            engine,
            gpus,
            load,
            max_input_tokens,
            max_output_tokens,
            measurement,
            model,
            n_prompts,
            precision: raw.precision.as_ref().map_or(Precision::Auto, |p| p.value),
            requires,
            save_outputs: raw.save_outputs.as_ref().is_some_and(|s| s.value),
            server,
            synthetic,
        }
    }

    pub(super) fn argv(&mut self, name: &str, field: &S<Vec<String>>) -> Option<Vec<String>> {
        let f = field.as_ref()?;
        if f.value.is_empty() || f.value[0].trim().is_empty() {
            self.fail(
                f.span,
                format!("`{name}` needs at least a program name"),
                Some("write it as a list: `[python3, load.py, --steps, 100]`"),
            );
        }
        Some(f.value.clone())
    }

    /// `gpus: N` (several GPUs of one node for one job): `None` when unset or 1, so a
    /// single-GPU job keeps its id.
    fn gpus(&mut self, raw: &RawExperiment, device: Device, engine: Engine) -> Option<u32> {
        let g = raw.gpus.as_ref()?;
        let n = self.count("gpus", &raw.gpus, 1, 1);
        if n > 1 && engine == Engine::Candle {
            self.fail(
                g.span,
                format!("the candle engine runs on one GPU; `gpus: {n}` needs an engine that shards the model"),
                Some("use `engine: openai` with a server that does tensor parallelism (e.g. vLLM's --tensor-parallel-size)"),
            );
        }
        if n > 1 && device != Device::Cuda(None) {
            self.fail(
                g.span,
                format!("`gpus: {n}` needs `device: cuda`, found `device: {device}`"),
                Some("the scheduler picks the GPUs of a several-GPU job; it cannot be pinned to one GPU"),
            );
        }
        (n > 1).then_some(n)
    }

    fn decoding(&mut self, raw: &RawDecoding) -> Decoding {
        let temperature = self.number("decoding.temperature", &raw.temperature, 0.0, 0.0, true, None);
        let top_p = raw.top_p.as_ref().map(|_| self.number("decoding.top_p", &raw.top_p, 1.0, 0.0, false, Some(1.0)));
        let top_k = raw.top_k.as_ref().map(|_| self.count("decoding.top_k", &raw.top_k, 1, 1));
        Decoding {
            ignore_eos: raw.ignore_eos.as_ref().is_some_and(|s| s.value),
            seed: raw.seed.as_ref().map_or(0, |s| s.value),
            temperature,
            top_k,
            top_p,
        }
    }

    fn measurement(&mut self, raw: &RawMeasurement) -> Measurement {
        let sample_hz =
            self.number("measurement.sample_hz", &raw.sample_hz, defaults::SAMPLE_HZ, 0.0, false, Some(1000.0));
        let b = raw.baseline.clone().unwrap_or_default();
        let baseline = Baseline {
            cache_ttl_s: self.number(
                "measurement.baseline.cache_ttl_s",
                &b.cache_ttl_s,
                defaults::BASELINE_CACHE_TTL_S,
                0.0,
                true,
                None,
            ),
            duration_s: self.number(
                "measurement.baseline.duration_s",
                &b.duration_s,
                defaults::BASELINE_DURATION_S,
                0.0,
                true,
                None,
            ),
        };
        let w = raw.warmup.clone().unwrap_or_default();
        let window = self.count("measurement.warmup.window", &w.window, defaults::WARMUP_WINDOW, 2);
        let max_prompts = self.count("measurement.warmup.max_prompts", &w.max_prompts, defaults::WARMUP_MAX_PROMPTS, 1);
        let prompts = w.prompts.as_ref().map(|p| p.value);
        if prompts.is_none() && max_prompts < window {
            let span = self.span_of(&w.max_prompts);
            self.fail(
                span,
                format!("`measurement.warmup.max_prompts` ({max_prompts}) is smaller than `window` ({window}): warmup could never converge"),
                Some("raise `max_prompts`, lower `window`, or set a fixed `prompts:` count"),
            );
        }
        let warmup = Warmup {
            cv: self.number("measurement.warmup.cv", &w.cv, defaults::WARMUP_CV, 0.0, false, Some(1.0)),
            max_prompts,
            prompts,
            window,
        };
        let t = raw.thermal_floor.clone().unwrap_or_default();
        let min_s = self.number("measurement.thermal_floor.min_s", &t.min_s, defaults::THERMAL_MIN_S, 0.0, true, None);
        let max_s = self.number("measurement.thermal_floor.max_s", &t.max_s, defaults::THERMAL_MAX_S, 0.0, true, None);
        if max_s < min_s {
            let span = self.span_of(&t.max_s);
            self.fail(span, format!("`measurement.thermal_floor.max_s` ({max_s}) is below `min_s` ({min_s})"), None);
        }
        let thermal_floor = ThermalFloor {
            delta_c: self.number(
                "measurement.thermal_floor.delta_c",
                &t.delta_c,
                defaults::THERMAL_DELTA_C,
                0.0,
                false,
                None,
            ),
            max_s,
            min_s,
        };
        Measurement {
            baseline,
            energy: raw.energy.as_ref().map_or(EnergySource::Auto, |e| e.value),
            sample_hz,
            thermal_floor,
            warmup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::de::from_node;
    use crate::yaml::{parse, SourceId};

    fn raw(text: &str) -> RawExperiment {
        from_node(&parse(SourceId(0), text).expect("yaml"), "").expect("decodes")
    }

    #[test]
    fn defaults_fill_everything_but_model() {
        let spec = raw("model: m\n").validate(Span::default()).expect("valid");
        assert_eq!(spec.engine, Engine::Candle);
        assert_eq!(spec.device, Device::Cpu);
        assert_eq!(spec.batch_size, defaults::BATCH_SIZE);
        assert_eq!(spec.measurement.sample_hz, defaults::SAMPLE_HZ);
        assert_eq!(defaults::ENGINE, "candle");
        assert_eq!(defaults::DEVICE, "cpu");
        let errors = raw("batch_size: 2\n").validate(Span::default()).expect_err("no model");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "missing field `model`");
    }

    #[test]
    fn rules_between_fields() {
        let errors = raw(
            "model: m\nengine: command\nmeasurement: {warmup: {window: 10, max_prompts: 3}, thermal_floor: {min_s: 5, max_s: 1}}\ndevice: gpu0\n",
        )
        .validate(Span::default())
        .expect_err("invalid");
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("needs `command")));
        assert!(messages.iter().any(|m| m.contains("warmup could never converge")));
        assert!(messages.iter().any(|m| m.contains("below `min_s`")));
        assert!(messages.iter().any(|m| m.contains("unknown device `gpu0`")));
    }

    #[test]
    fn overlay_merges_sections_field_by_field() {
        let mut base = raw("model: a\ndecoding: {temperature: 0.5, top_k: 40}\nrequires: {gpu: H100}\n");
        base.overlay(&raw("decoding: {top_k: 10}\nrequires: {zone: b}\n"));
        let spec = base.validate(Span::default()).expect("valid");
        assert_eq!(spec.decoding.temperature, 0.5);
        assert_eq!(spec.decoding.top_k, Some(10));
        assert_eq!(spec.requires.len(), 2);
    }

    #[test]
    fn ranges() {
        let errors =
            raw("model: m\nbatch_size: 0\ndecoding: {top_p: 1.5, temperature: -1}\nmeasurement: {sample_hz: .inf}\n")
                .validate(Span::default())
                .expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
    }
}
