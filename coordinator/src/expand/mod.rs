//! Expansion: a sweep → the list of configurations (points) and jobs in execution order.
//!
//! Points are kept compact (which axis value each one took, or which include entry) and
//! their specs are rebuilt on demand, so a million-point sweep plans in little memory.
//! Every point is still fully validated and hashed once here.

use std::collections::{BTreeMap, HashMap, HashSet};

use llem_common::diag::Diagnostic;
use llem_common::spec::{fields, raw::RawExperiment};
use llem_common::spec::{job_id, Device, ExperimentSpec, SpecHash, SpecHashMap};
use llem_common::yaml::Span;

use crate::sweep::{Order, Sweep};

/// Where a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `n`-th surviving combination of the grid; its axis value indices are stored
    /// in [`Expansion::grid_indices`].
    Grid(u32),
    /// The `n`-th `include:` entry.
    Include(u32),
}

/// One configuration.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub origin: Origin,
    pub hash: SpecHash,
    /// Index into [`Expansion::placements`]: the nodes that may run it.
    pub placement: u32,
    /// Index into [`Expansion::models`].
    pub model: u32,
}

/// One run of a configuration in one cycle (cycles count from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub point: u32,
    pub cycle: u32,
}

/// A model as jobs name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    /// Whether its engine reads model files on the node: then a `prepare` task checks
    /// them there before its jobs run.
    pub reads_files: bool,
}

/// Counts for `plan --summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub grid: u64,
    pub excluded: u64,
    pub included: u64,
    pub configurations: u64,
    pub cycles: u32,
    pub jobs: u64,
}

#[derive(Debug)]
pub struct Expansion {
    pub points: Vec<Point>,
    /// Axis value indices of grid points, `axes.len()` per point.
    pub grid_indices: Vec<u32>,
    pub jobs: Vec<Job>,
    /// Distinct sets of eligible node indices.
    pub placements: Vec<Vec<u16>>,
    /// Distinct models, in order of first use.
    pub models: Vec<ModelRef>,
    pub counts: Counts,
    pub warnings: Vec<Diagnostic>,
}

/// More distinct errors than this and the rest are summarised.
const MAX_ERRORS: usize = 50;

impl Expansion {
    /// The axis value indices of a grid point.
    pub fn indices(&self, n_axes: usize, point: &Point) -> &[u32] {
        match point.origin {
            Origin::Grid(g) => &self.grid_indices[g as usize * n_axes..(g as usize + 1) * n_axes],
            Origin::Include(_) => &[],
        }
    }

    pub fn job_id(&self, job: &Job) -> String {
        job_id(&self.points[job.point as usize].hash, job.cycle)
    }
}

/// The raw fields of a point: the fixed ones with its patches laid over.
pub fn point_raw(sweep: &Sweep, expansion: &Expansion, point: &Point) -> RawExperiment {
    let mut raw = sweep.fixed.clone();
    match point.origin {
        Origin::Grid(_) => {
            for (axis, &i) in sweep.axes.iter().zip(expansion.indices(sweep.axes.len(), point)) {
                raw.overlay(&axis.values[i as usize].raw());
            }
        }
        Origin::Include(i) => raw.overlay(&sweep.includes[i as usize].raw()),
    }
    raw
}

/// The resolved spec of a point (it validated during expansion).
pub fn point_spec(sweep: &Sweep, expansion: &Expansion, point: &Point) -> ExperimentSpec {
    point_raw(sweep, expansion, point).validate(sweep.fixed_span).unwrap_or_else(|_| unreachable_spec())
}

#[allow(clippy::panic)]
fn unreachable_spec() -> ExperimentSpec {
    panic!("a point that validated during expansion no longer validates")
}

/// The swept values of a point, for tables: `[("batch_size", "4"), …]`.
pub fn point_display<'s>(sweep: &'s Sweep, expansion: &Expansion, point: &Point) -> Vec<&'s (String, String)> {
    match point.origin {
        Origin::Grid(_) => sweep
            .axes
            .iter()
            .zip(expansion.indices(sweep.axes.len(), point))
            .flat_map(|(axis, &i)| axis.values[i as usize].display.iter())
            .collect(),
        Origin::Include(i) => sweep.includes[i as usize].display.iter().collect(),
    }
}

/// Expands a sweep. Errors are every distinct problem found in any point.
pub fn expand(sweep: &Sweep) -> Result<Expansion, Vec<Diagnostic>> {
    let mut errors: Vec<Diagnostic> = Vec::new();
    let mut seen_errors: HashSet<Diagnostic> = HashSet::new();
    let mut more_errors = 0usize;
    let mut record = |errs: Vec<Diagnostic>, errors: &mut Vec<Diagnostic>| {
        for e in errs {
            if seen_errors.insert(e.clone()) {
                if errors.len() < MAX_ERRORS {
                    errors.push(e);
                } else {
                    more_errors += 1;
                }
            }
        }
    };

    let n_axes = sweep.axes.len();
    let radices: Vec<u32> = sweep.axes.iter().map(|a| a.values.len() as u32).collect();
    let grid: u64 = radices.iter().map(|&r| u64::from(r)).product();
    let mut placer = Placer::new(sweep);
    let mut points: Vec<Point> = Vec::with_capacity(usize::try_from(grid).unwrap_or(0).min(1 << 24));
    let mut grid_indices: Vec<u32> = Vec::with_capacity(points.capacity() * n_axes);
    let mut hashes: SpecHashMap<u32> = SpecHashMap::with_capacity_and_hasher(points.capacity(), Default::default());
    let mut exclude_hits = vec![0u64; sweep.excludes.len()];
    let mut excluded = 0u64;
    let mut models: Vec<ModelRef> = Vec::new();
    let mut model_of = |spec: &ExperimentSpec| -> u32 {
        let model = ModelRef { name: spec.model.clone(), reads_files: spec.engine.reads_model_files() };
        match models.iter().position(|m| *m == model) {
            Some(i) => i as u32,
            None => {
                models.push(model);
                (models.len() - 1) as u32
            }
        }
    };

    if radices.iter().all(|&r| r > 0) {
        // Points are evaluated (overlay, validate, hash) in parallel batches and merged in
        // grid order, so the result is the same as a sequential pass.
        let mut start = 0u64;
        while start < grid {
            let end = (start + BATCH).min(grid);
            for (n, outcome) in (start..end).zip(evaluate_grid(sweep, &radices, start, end)) {
                let (spec, hash, requires_span) = match outcome {
                    Outcome::Invalid(errs) => {
                        record(errs, &mut errors);
                        continue;
                    }
                    Outcome::Excluded(e) => {
                        exclude_hits[e] += 1;
                        excluded += 1;
                        continue;
                    }
                    Outcome::Valid(spec, hash, span) => (spec, hash, span),
                };
                let idx = decode(n, &radices);
                if let Some(&first) = hashes.get(&hash) {
                    let at = sweep.axes.first().map_or(sweep.fixed_span, |a| a.span);
                    let other = describe(sweep, &grid_indices, n_axes, &points[first as usize]);
                    let this = describe_idx(sweep, &idx);
                    let message = format!("grid points {this} and {other} are the same experiment");
                    let help = "two values of a `sweep:` key resolve to the same setting";
                    record(vec![Diagnostic::at(at, message).with_help(help)], &mut errors);
                    continue;
                }
                match placer.place(&spec, requires_span) {
                    Ok(p) => {
                        hashes.insert(hash, points.len() as u32);
                        grid_indices.extend_from_slice(&idx);
                        let origin = Origin::Grid(points.len() as u32);
                        points.push(Point { origin, hash, placement: p, model: model_of(&spec) });
                    }
                    Err(e) => record(vec![e], &mut errors),
                }
            }
            start = end;
        }
    }
    // A sweep with axes but no grid (all excluded) still runs its includes.
    let grid_points = points.len();

    for (i, include) in sweep.includes.iter().enumerate() {
        let mut raw = sweep.fixed.clone();
        raw.overlay(&include.raw());
        match raw.validate(include.span) {
            Err(errs) => record(errs, &mut errors),
            Ok(spec) => {
                let hash = spec.hash();
                if let Some(&first) = hashes.get(&hash) {
                    let other = describe(sweep, &grid_indices, n_axes, &points[first as usize]);
                    record(
                        vec![Diagnostic::at(include.span, format!("this `include` entry repeats grid point {other}"))
                            .with_help("remove the entry: that experiment is already planned")],
                        &mut errors,
                    );
                    continue;
                }
                match placer.place(&spec, span_of_requires(&raw, include.span)) {
                    Ok(p) => {
                        hashes.insert(hash, points.len() as u32);
                        let origin = Origin::Include(i as u32);
                        points.push(Point { origin, hash, placement: p, model: model_of(&spec) });
                    }
                    Err(e) => record(vec![e], &mut errors),
                }
            }
        }
    }

    if more_errors > 0 {
        errors.push(Diagnostic::nowhere(format!("… and {more_errors} more distinct problems like these")));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = Vec::new();
    for (e, hits) in sweep.excludes.iter().zip(&exclude_hits) {
        if *hits == 0 {
            warnings.push(
                Diagnostic::at(e.span, "this `exclude` entry matches no point of the grid")
                    .with_help("check its values against `sweep:`"),
            );
        }
    }
    if points.is_empty() {
        return Err(vec![Diagnostic::at(
            sweep.fixed_span,
            "the sweep has no experiments left: every grid point is excluded",
        )]);
    }
    let jobs = order_jobs(points.len() as u32, sweep.execution.cycles, sweep.execution.order, sweep.execution.seed);
    let counts = Counts {
        grid: if n_axes == 0 { 1 } else { grid },
        excluded,
        included: (points.len() - grid_points) as u64,
        configurations: points.len() as u64,
        cycles: sweep.execution.cycles,
        jobs: jobs.len() as u64,
    };
    Ok(Expansion { points, grid_indices, jobs, placements: placer.sets, models, counts, warnings })
}

fn span_of_requires(raw: &RawExperiment, fallback: Span) -> Span {
    raw.requires.as_ref().and_then(|r| r.values().next()).map_or(fallback, |v| v.span)
}

fn describe_idx(sweep: &Sweep, idx: &[u32]) -> String {
    let parts: Vec<String> = sweep
        .axes
        .iter()
        .zip(idx)
        .flat_map(|(a, &i)| a.values[i as usize].display.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    format!("({})", parts.join(" "))
}

fn describe(sweep: &Sweep, grid_indices: &[u32], n_axes: usize, point: &Point) -> String {
    match point.origin {
        Origin::Grid(g) => describe_idx(sweep, &grid_indices[g as usize * n_axes..(g as usize + 1) * n_axes]),
        Origin::Include(i) => {
            let span = sweep.includes[i as usize].span;
            format!("`include` entry at line {}", span.line)
        }
    }
}

/// The first exclude entry that matches `spec`, if any.
fn excluded_by(sweep: &Sweep, spec: &ExperimentSpec) -> Option<usize> {
    let json = spec.to_json();
    sweep.excludes.iter().position(|e| {
        e.matches.iter().all(|(path, want)| fields::lookup(&json, path).is_some_and(|have| json_matches(have, want)))
    })
}

/// `want` matches `have` when equal (numbers by value); in maps, the keys `want` names
/// must match and `null` in `want` matches anything.
pub fn json_matches(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (have, want) {
        (J::Number(a), J::Number(b)) => a.as_f64() == b.as_f64(),
        (J::Object(a), J::Object(b)) => {
            b.iter().all(|(k, w)| w.is_null() || a.get(k).is_some_and(|h| json_matches(h, w)))
        }
        _ => have == want,
    }
}

/// Grid points evaluated per parallel batch (bounds the specs held at once).
const BATCH: u64 = 1 << 16;

/// The axis value indices of grid point `n` (last axis fastest).
fn decode(mut n: u64, radices: &[u32]) -> Vec<u32> {
    let mut idx = vec![0u32; radices.len()];
    for k in (0..radices.len()).rev() {
        let r = u64::from(radices[k]);
        idx[k] = (n % r) as u32;
        n /= r;
    }
    idx
}

// Most outcomes are `Valid`; boxing the spec would allocate once more per point.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Invalid(Vec<Diagnostic>),
    Excluded(usize),
    Valid(ExperimentSpec, SpecHash, Span),
}

fn evaluate_point(sweep: &Sweep, idx: &[u32]) -> Outcome {
    let mut raw = sweep.fixed.clone();
    for (axis, &i) in sweep.axes.iter().zip(idx) {
        raw.overlay(&axis.values[i as usize].raw());
    }
    match raw.validate(sweep.fixed_span) {
        Err(errs) => Outcome::Invalid(errs),
        Ok(spec) => match (!sweep.excludes.is_empty()).then(|| excluded_by(sweep, &spec)).flatten() {
            Some(e) => Outcome::Excluded(e),
            None => {
                let hash = spec.hash();
                Outcome::Valid(spec, hash, span_of_requires(&raw, sweep.fixed_span))
            }
        },
    }
}

/// Evaluates grid points `start..end` on all cores, in order.
fn evaluate_grid(sweep: &Sweep, radices: &[u32], start: u64, end: u64) -> Vec<Outcome> {
    let n = end - start;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8) as u64;
    if threads == 1 || n < 1024 {
        return (start..end).map(|i| evaluate_point(sweep, &decode(i, radices))).collect();
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (a, b) = (start + t * chunk, (start + (t + 1) * chunk).min(end));
                scope.spawn(move || (a..b).map(|i| evaluate_point(sweep, &decode(i, radices))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Jobs in execution order.
pub fn order_jobs(n_points: u32, cycles: u32, order: Order, seed: u64) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(n_points as usize * cycles as usize);
    match order {
        Order::Sequential => {
            for point in 0..n_points {
                jobs.extend((1..=cycles).map(|cycle| Job { point, cycle }));
            }
        }
        Order::Interleaved => {
            for cycle in 1..=cycles {
                jobs.extend((0..n_points).map(|point| Job { point, cycle }));
            }
        }
        Order::Shuffled => {
            let mut rng = SplitMix64(seed);
            let mut perm: Vec<u32> = (0..n_points).collect();
            for cycle in 1..=cycles {
                // Fisher–Yates with our own fixed generator: the order must not change when
                // a dependency's RNG does.
                for i in (1..perm.len()).rev() {
                    let j = (rng.next() % (i as u64 + 1)) as usize;
                    perm.swap(i, j);
                }
                jobs.extend(perm.iter().map(|&point| Job { point, cycle }));
            }
        }
    }
    jobs
}

/// SplitMix64: tiny, well known, and fixed forever (shuffles are part of the format).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Decides which nodes may run a spec (labels ⊇ `requires`, the device exists), caching
/// by (requires, device) since most points share both.
struct Placer<'s> {
    sweep: &'s Sweep,
    cache: HashMap<(BTreeMap<String, String>, Device, u32), u32>,
    sets: Vec<Vec<u16>>,
}

impl<'s> Placer<'s> {
    fn new(sweep: &'s Sweep) -> Self {
        Placer { sweep, cache: HashMap::new(), sets: Vec::new() }
    }

    fn place(&mut self, spec: &ExperimentSpec, span: Span) -> Result<u32, Diagnostic> {
        let key = (spec.requires.clone(), spec.device, spec.gpu_count());
        if let Some(&p) = self.cache.get(&key) {
            return Ok(p);
        }
        let eligible: Vec<u16> = self
            .sweep
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| spec.requires.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
            .filter(|(_, n)| match (spec.device, n.gpus) {
                (Device::Cpu, _) | (_, None) => true,
                (Device::Cuda(None), Some(g)) => g >= spec.gpu_count(),
                (Device::Cuda(Some(i)), Some(g)) => i < g,
            })
            // A Slurm agent step holds one GPU: a job of several cannot run in one yet.
            .filter(|(_, n)| spec.gpu_count() <= 1 || !matches!(n.transport, crate::sweep::Transport::Slurm(_)))
            .map(|(i, _)| i as u16)
            .collect();
        if eligible.is_empty()
            && spec.gpu_count() > 1
            && self.sweep.nodes.iter().any(|n| matches!(n.transport, crate::sweep::Transport::Slurm(_)))
        {
            return Err(Diagnostic::at(
                span,
                format!(
                    "an experiment of {} GPUs cannot run on Slurm nodes yet: each agent step holds one GPU",
                    spec.gpu_count()
                ),
            )
            .with_help("use one GPU per experiment on Slurm (`gpus: 1`), or SSH nodes for jobs of several GPUs"));
        }
        if eligible.is_empty() {
            let wanted: Vec<String> = spec.requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let have: Vec<String> = self
                .sweep
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} ({}; {} GPUs)",
                        n.name,
                        crate::sweep::describe_labels(&n.labels),
                        n.gpus.map_or("?".to_owned(), |g| g.to_string())
                    )
                })
                .collect();
            return Err(Diagnostic::at(
                span,
                format!(
                    "no node can run an experiment with device `{}`{} and requires [{}]",
                    spec.device,
                    if spec.gpu_count() > 1 { format!(" × {} GPUs", spec.gpu_count()) } else { String::new() },
                    wanted.join(", ")
                ),
            )
            .with_help(format!("nodes: {}", have.join("; "))));
        }
        let id = self.sets.len() as u32;
        self.sets.push(eligible);
        self.cache.insert(key, id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests;
