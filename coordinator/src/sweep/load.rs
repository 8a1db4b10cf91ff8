//! Reading a sweep file: the `base:` chain, the split of top-level keys into sweep keys
//! and experiment fields, the `sweep:` grid, `include:`/`exclude:` entries and nodes.
//! Every problem is collected; nothing stops at the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llem_common::de::{from_node, Spanned};
use llem_common::diag::{did_you_mean, Diagnostic};
use llem_common::spec::fields::{self, Kind};
use llem_common::spec::raw::RawExperiment;
use llem_common::yaml::{self, Node, SourceId, Sources, Span, Value};

use super::files::{CopyOf, Files};
use super::raw::{RawExecution, RawMeta, SWEEP_KEYS};
use super::{Axis, Exclude, Execution, NodeSpec, Order, Patch, Sweep, SweepError};

/// Default number of repetitions of every configuration.
pub const DEFAULT_CYCLES: u32 = 3;
/// Default number of retries of a crashed job.
pub const DEFAULT_RETRIES: u32 = 1;

/// Reads and validates the sweep at `path`.
pub fn load(path: &Path) -> Result<Sweep, SweepError> {
    load_with(path, None)
}

/// Reads a run directory's copy of a sweep: `top` in the copy at `copy.copy_root`.
/// References between the files stay in the copy; paths for use outside the sweep (SSH
/// keys, known_hosts) mean what they meant beside the originals.
pub fn load_copy(top: &Path, copy: CopyOf) -> Result<Sweep, SweepError> {
    load_with(top, Some(copy))
}

fn load_with(path: &Path, copy: Option<CopyOf>) -> Result<Sweep, SweepError> {
    let mut loader =
        Loader { sources: Sources::default(), errors: Vec::new(), warnings: Vec::new(), files: Files::new(copy) };
    let mut chain = Vec::new();
    let layer = loader.layer(path, &mut chain, None);
    let Some(layer) = layer else {
        return Err(SweepError { sources: loader.sources, diagnostics: loader.errors });
    };
    let execution = loader.execution(&layer.execution, &layer.axes);
    let nodes = layer.nodes.unwrap_or_else(|| vec![NodeSpec::local()]);
    let name = match &layer.name {
        Some(n) => {
            if n.value.is_empty() || !n.value.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                loader.errors.push(
                    Diagnostic::at(n.span, format!("`name` {:?} cannot name a run directory", n.value))
                        .with_help("use letters, digits, `.`, `_` and `-`"),
                );
            }
            n.value.clone()
        }
        None => path.file_stem().map_or_else(|| "sweep".to_owned(), |s| s.to_string_lossy().into_owned()),
    };
    if !loader.errors.is_empty() {
        return Err(SweepError { sources: loader.sources, diagnostics: loader.errors });
    }
    let (files, root, source_hash, legacy_source_hash) = loader.files.finish();
    Ok(Sweep {
        name,
        path: path.to_owned(),
        sources: loader.sources,
        files,
        root,
        source_hash,
        legacy_source_hash,
        fixed: layer.fixed,
        fixed_span: layer.fixed_span,
        axes: layer.axes,
        includes: layer.includes.unwrap_or_default(),
        excludes: layer.excludes.unwrap_or_default(),
        execution,
        nodes,
        warnings: loader.warnings,
    })
}

/// What one file contributes, after its `base:` was merged underneath.
struct Layer {
    name: Option<Spanned<String>>,
    fixed: RawExperiment,
    fixed_span: Span,
    axes: Vec<Axis>,
    includes: Option<Vec<Patch>>,
    excludes: Option<Vec<Exclude>>,
    execution: RawExecution,
    nodes: Option<Vec<NodeSpec>>,
}

pub(super) struct Loader {
    pub(super) sources: Sources,
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
    pub(super) files: Files,
}

fn map_node(span: Span, entries: Vec<(Node, Node)>) -> Node {
    Node::new(span, Value::Map(entries))
}

/// `decoding.temperature: v` → `{decoding: {temperature: v}}`, keys placed at `key_span`.
fn nest(path: &str, value: Node, key_span: Span) -> Node {
    path.rsplit('.').fold(value, |inner, segment| {
        let key = Node::new(key_span, Value::Scalar { text: segment.to_owned(), quoted: false });
        map_node(key_span, vec![(key, inner)])
    })
}

/// Deep-merges `add` into `into` (both maps); a leaf set twice is reported.
fn merge_into(into: &mut Node, add: Node, errors: &mut Vec<Diagnostic>) {
    let (Value::Map(target), Value::Map(entries)) = (&mut into.value, add.value) else {
        return;
    };
    for (key, value) in entries {
        let name = key.as_scalar().unwrap_or_default().to_owned();
        match target.iter_mut().find(|(k, _)| k.as_scalar() == Some(name.as_str())) {
            Some((_, existing)) if existing.as_map().is_some() && value.as_map().is_some() => {
                merge_into(existing, value, errors);
            }
            Some(_) => errors.push(Diagnostic::at(key.span, format!("`{name}` is set twice in this entry"))),
            None => target.push((key, value)),
        }
    }
}

/// Writes a value compactly for tables: `4`, `[a, b]`, `{temperature: 0.7}`.
fn compact(node: &Node) -> String {
    match &node.value {
        Value::Null => "null".to_owned(),
        Value::Scalar { text, .. } => text.clone(),
        Value::Seq(items) => format!("[{}]", items.iter().map(compact).collect::<Vec<_>>().join(", ")),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries.iter().map(|(k, v)| format!("{}: {}", compact(k), compact(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn unknown_path(path: &str, span: Span) -> Diagnostic {
    let help =
        did_you_mean(path, fields::names()).unwrap_or_else(|| "see docs/sweep-format.md for the fields".to_owned());
    Diagnostic::at(span, format!("unknown field `{path}`")).with_help(help)
}

impl Loader {
    pub(super) fn read(&mut self, path: &Path, from: Option<Span>) -> Option<(SourceId, Node)> {
        let text = match std::fs::read(path).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(err)) => {
                // Found by fuzzing (fuzz/): this error had no position. It points at the
                // first byte that is not UTF-8, in the file shown with it replaced.
                let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
                let valid = std::str::from_utf8(valid).unwrap_or_default();
                let line = valid.matches('\n').count() + 1;
                let col = valid.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
                let lossy = String::from_utf8_lossy(err.as_bytes()).into_owned();
                let source = self.sources.add(path.display().to_string(), lossy.as_str());
                let span = Span { source, line: line as u32, col: col as u32, len: 1 };
                self.errors.push(
                    Diagnostic::at(span, "this file is not UTF-8 text".to_owned())
                        .with_help("save it as UTF-8 (YAML files are)"),
                );
                return None;
            }
            Err(err) => {
                let message = format!("cannot read `{}`: {err}", path.display());
                self.errors.push(match from {
                    Some(span) => Diagnostic::at(span, message),
                    None => Diagnostic::nowhere(message),
                });
                return None;
            }
        };
        self.files.record(path, &text);
        let id = self.sources.add(path.display().to_string(), text.as_str());
        match yaml::parse(id, &text) {
            Ok(node) => Some((id, node)),
            Err(err) => {
                self.errors.push(Diagnostic::at(err.span, err.message));
                None
            }
        }
    }

    fn layer(&mut self, path: &Path, chain: &mut Vec<PathBuf>, from: Option<Span>) -> Option<Layer> {
        let (id, root) = self.read(path, from)?;
        let Some(entries) = root.as_map() else {
            let message = if root.value == Value::Null {
                "the sweep file is empty: it needs at least `model:`".to_owned()
            } else {
                format!("a sweep file must be a map of `key: value` entries, found {}", root.value.describe())
            };
            self.errors.push(Diagnostic::at(Span { source: id, line: 1, col: 1, len: 1 }, message));
            return None;
        };
        let top_fields: Vec<&str> = fields::names().filter(|n| !n.contains('.')).collect();
        let (mut meta, mut experiment) = (Vec::new(), Vec::new());
        let (mut sweep, mut include, mut exclude, mut nodes) = (None, None, None, None);
        for (key, value) in entries {
            let name = key.as_scalar().unwrap_or_default();
            match name {
                "sweep" => sweep = Some(value),
                "include" => include = Some(value),
                "exclude" => exclude = Some(value),
                "nodes" => nodes = Some(value),
                _ if SWEEP_KEYS.contains(&name) => meta.push((key.clone(), value.clone())),
                _ if top_fields.contains(&name) => experiment.push((key.clone(), value.clone())),
                _ => {
                    let help = did_you_mean(name, SWEEP_KEYS.iter().copied().chain(top_fields.iter().copied()))
                        .unwrap_or_else(|| "see docs/sweep-format.md for the keys a sweep file takes".to_owned());
                    self.errors.push(Diagnostic::at(key.span, format!("unknown field `{name}`")).with_help(help));
                }
            }
        }
        let meta: RawMeta = self.decode(&map_node(root.span, meta), "").unwrap_or_default();
        let fixed: RawExperiment = self.decode(&map_node(root.span, experiment), "").unwrap_or_default();

        let mut layer = Layer {
            name: meta.name,
            fixed,
            fixed_span: root.span,
            axes: sweep.map(|s| self.axes(s)).unwrap_or_default(),
            includes: include.map(|n| self.includes(n)),
            excludes: exclude.map(|n| self.excludes(n)),
            execution: meta.execution.unwrap_or_default(),
            nodes: None,
        };
        layer.nodes = self.nodes(path, nodes, meta.nodes_file.as_ref());

        let Some(base) = meta.base else {
            return Some(layer);
        };
        let base_path = self.files.resolve(path, &base.value);
        let canonical = base_path.canonicalize().unwrap_or_else(|_| base_path.clone());
        chain.push(path.canonicalize().unwrap_or_else(|_| path.to_owned()));
        if chain.contains(&canonical) {
            let names: Vec<String> = chain
                .iter()
                .chain(std::iter::once(&canonical))
                .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |f| f.to_string_lossy().into_owned()))
                .collect();
            self.errors.push(
                Diagnostic::at(base.span, format!("`base:` forms a cycle: {}", names.join(" → ")))
                    .with_help("a sweep's base chain must end in a file without `base:`"),
            );
            return None;
        }
        let below = self.layer(&base_path, chain, Some(base.span));
        chain.pop();
        let mut merged = below?;
        merged.fixed.overlay(&layer.fixed);
        merged.fixed_span = layer.fixed_span;
        for axis in layer.axes {
            match merged.axes.iter_mut().find(|a| a.path == axis.path) {
                Some(existing) => *existing = axis,
                None => merged.axes.push(axis),
            }
        }
        merged.name = layer.name.or(merged.name);
        merged.includes = layer.includes.or(merged.includes);
        merged.excludes = layer.excludes.or(merged.excludes);
        merged.nodes = layer.nodes.or(merged.nodes);
        merged.execution.overlay(&layer.execution);
        Some(merged)
    }

    pub(super) fn decode<T: serde::de::DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        match from_node(node, path) {
            Ok(v) => Some(v),
            Err(mut errors) => {
                self.errors.append(&mut errors);
                None
            }
        }
    }

    /// A partial experiment from `path: value` pairs (dotted keys allowed).
    fn patch(&mut self, span: Span, pairs: &[(Node, Node)]) -> Option<Patch> {
        let mut combined = map_node(span, Vec::new());
        let mut display = Vec::new();
        let before = self.errors.len();
        for (key, value) in pairs {
            let Some(path) = key.as_scalar() else {
                self.errors.push(Diagnostic::at(key.span, "a key must be a field name"));
                continue;
            };
            if fields::kind(path).is_none() {
                self.errors.push(unknown_path(path, key.span));
                continue;
            }
            display.push((path.to_owned(), compact(value)));
            merge_into(&mut combined, nest(path, value.clone(), key.span), &mut self.errors);
        }
        self.decode::<RawExperiment>(&combined, "")?;
        if self.errors.len() > before {
            return None;
        }
        Some(Patch { fields: combined, span, display })
    }

    fn axes(&mut self, node: &Node) -> Vec<Axis> {
        let Some(entries) = node.as_map() else {
            self.errors.push(Diagnostic::at(
                node.span,
                format!("`sweep` must be a map of field → list of values, found {}", node.value.describe()),
            ));
            return Vec::new();
        };
        let mut axes: Vec<Axis> = Vec::new();
        for (key, value) in entries {
            let path = key.as_scalar().unwrap_or_default();
            if fields::kind(path).is_none() {
                self.errors.push(unknown_path(path, key.span));
                continue;
            }
            if let Some(other) = axes
                .iter()
                .find(|a| path.starts_with(&format!("{}.", a.path)) || a.path.starts_with(&format!("{path}.")))
            {
                self.errors.push(
                    Diagnostic::at(key.span, format!("`sweep.{path}` overlaps `sweep.{}`", other.path))
                        .with_help("sweep a section or its fields, not both"),
                );
                continue;
            }
            let items: Vec<&Node> = match &value.value {
                Value::Seq(items) if items.is_empty() => {
                    self.errors.push(
                        Diagnostic::at(value.span, format!("`sweep.{path}` has no values"))
                            .with_help("give at least one value, or remove the key"),
                    );
                    continue;
                }
                Value::Seq(items) => items.iter().collect(),
                _ => vec![value],
            };
            let mut values: Vec<Patch> = Vec::new();
            // Canonical JSON text (maps sorted), hashed: comparing each value with every
            // earlier one cost O(n²), 20 % of `llem run`'s CPU on an 8,000-value axis.
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            for item in items {
                let Some(patch) = self.patch(item.span, &[(key.clone(), item.clone())]) else {
                    continue;
                };
                let json = serde_json::to_value(patch.raw()).unwrap_or_default().to_string();
                if !seen.insert(json) {
                    self.errors.push(Diagnostic::at(
                        item.span,
                        format!("`{}` is listed twice in `sweep.{path}`", compact(item)),
                    ));
                    continue;
                }
                values.push(patch);
            }
            axes.push(Axis { path: path.to_owned(), span: key.span, values });
        }
        axes
    }

    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> Vec<&'n Node> {
        match &node.value {
            Value::Seq(items) if !items.is_empty() => items.iter().collect(),
            Value::Seq(_) => {
                self.errors.push(
                    Diagnostic::at(node.span, format!("`{what}` is an empty list"))
                        .with_help(format!("remove `{what}`, or add entries")),
                );
                Vec::new()
            }
            _ => {
                self.errors.push(Diagnostic::at(
                    node.span,
                    format!("`{what}` must be a list of maps (`- {{field: value}}`), found {}", node.value.describe()),
                ));
                Vec::new()
            }
        }
    }

    fn includes(&mut self, node: &Node) -> Vec<Patch> {
        let mut out = Vec::new();
        for entry in self.entries(node, "include") {
            match entry.as_map() {
                Some([]) => self.errors.push(Diagnostic::at(
                    entry.span,
                    "an `include` entry is empty: give the fields of the point to add",
                )),
                None => self.errors.push(Diagnostic::at(
                    entry.span,
                    format!("an `include` entry must be a map of fields, found {}", entry.value.describe()),
                )),
                Some(pairs) => out.extend(self.patch(entry.span, pairs)),
            }
        }
        out
    }

    fn excludes(&mut self, node: &Node) -> Vec<Exclude> {
        let mut out = Vec::new();
        for entry in self.entries(node, "exclude") {
            let Some(pairs @ [_, ..]) = entry.as_map() else {
                self.errors.push(Diagnostic::at(
                    entry.span,
                    format!("an `exclude` entry must be a map of fields, found {}", entry.value.describe()),
                ));
                continue;
            };
            let mut matches = Vec::new();
            for (key, value) in pairs {
                let path = key.as_scalar().unwrap_or_default();
                if fields::kind(path).is_none() {
                    self.errors.push(unknown_path(path, key.span));
                    continue;
                }
                // The value is read exactly as a sweep value would be, so `4` and `4.0`
                // compare as the resolved spec holds them.
                let Some(patch) = self.patch(value.span, &[(key.clone(), value.clone())]) else {
                    continue;
                };
                let json = serde_json::to_value(patch.raw()).unwrap_or_default();
                matches.push((path.to_owned(), fields::lookup(&json, path).cloned().unwrap_or_default()));
            }
            out.push(Exclude { span: entry.span, matches });
        }
        out
    }

    fn execution(&mut self, raw: &RawExecution, axes: &[Axis]) -> Execution {
        let cycles = raw.cycles.as_ref().map_or(DEFAULT_CYCLES, |c| c.value);
        if let Some(c) = raw.cycles.as_ref().filter(|c| c.value == 0) {
            self.errors.push(
                Diagnostic::at(c.span, "`execution.cycles` must be at least 1")
                    .with_help("3 or more cycles give confidence intervals"),
            );
        }
        let mut seconds = |name: &str, field: &Option<Spanned<f64>>| {
            let value = field.as_ref().map_or(0.0, |f| f.value);
            if let Some(f) = field.as_ref().filter(|f| !f.value.is_finite() || f.value < 0.0) {
                self.errors.push(Diagnostic::at(
                    f.span,
                    format!("`execution.{name}` must be a number of seconds ≥ 0, found {}", f.value),
                ));
            }
            value
        };
        let gap_s = seconds("gap_s", &raw.gap_s);
        let cycle_gap_s = seconds("cycle_gap_s", &raw.cycle_gap_s);
        let mut monotone: Vec<String> = Vec::new();
        for name in raw.monotone.iter().flat_map(|m| m.value.iter()) {
            match fields::kind(&name.value) {
                None => self.errors.push(unknown_path(&name.value, name.span)),
                Some(Kind::Number) if monotone.contains(&name.value) => {
                    self.errors.push(Diagnostic::at(
                        name.span,
                        format!("`{}` is listed twice in `execution.monotone`", name.value),
                    ));
                }
                Some(Kind::Number) => {
                    if !axes.iter().any(|a| a.path == name.value) {
                        self.warnings.push(
                            Diagnostic::at(
                                name.span,
                                format!(
                                    "`execution.monotone` names `{}`, which is not swept: it has no effect",
                                    name.value
                                ),
                            )
                            .with_help(format!("add `{}` under `sweep:`, or remove it here", name.value)),
                        );
                    }
                    monotone.push(name.value.clone());
                }
                Some(_) => self.errors.push(
                    Diagnostic::at(name.span, format!("`{}` is not a number, so it cannot be monotone", name.value))
                        .with_help("monotone fields are numbers whose larger values cost more, like `batch_size`"),
                ),
            }
        }
        Execution {
            cycles,
            order: raw.order.as_ref().map_or(Order::Interleaved, |o| o.value),
            seed: raw.seed.as_ref().map_or(0, |s| s.value),
            gap_s,
            cycle_gap_s,
            retries: raw.retries.as_ref().map_or(DEFAULT_RETRIES, |r| r.value),
            monotone,
        }
    }
}

/// The labels of nodes, for "no node can run this" messages.
pub fn describe_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "no labels".to_owned();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}
