//! The plan: a sweep's jobs as a dependency graph.
//!
//! Per node `probe` → per (node, model) `prepare` → jobs → `report`. A `prepare → job`
//! edge means "may run on this node once the model is there" (any one of them suffices);
//! every other edge means "after". Models of engines that read no files (`synthetic`,
//! `command`) have no `prepare`: their jobs run on a node once it is probed. Every task
//! runs: the dispatcher sends the probe and the preparations to the node's agent
//! (`run/dispatcher.rs`), and stores what they report in the run directory. With `execution.monotone`, a job also waits for the
//! same configuration at the next smaller value of that field, so a failure there (out of
//! memory, say) can skip the larger ones.

use std::collections::HashMap;

use llem_common::diag::Diagnostic;
use llem_common::spec::fields;
use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use llem_common::spec::SpecHashMap;

use crate::expand::{expand, point_raw, Expansion, Origin};
use crate::sweep::Sweep;

/// A unit of work in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Learn what a node has and can measure.
    Probe { node: u16 },
    /// Make sure a model is present (and checksummed) on a node.
    Prepare { node: u16, model: u32 },
    /// Index into [`Expansion::jobs`].
    Job { job: u32 },
    /// Aggregate results into the report.
    Report,
}

/// What an edge means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dep {
    /// The target starts after the source finished.
    After,
    /// The target may run on the source's node once the source finished (any of several).
    RunsOn,
}

/// A sweep, expanded and arranged as a graph.
#[derive(Debug)]
pub struct Plan {
    pub sweep: Sweep,
    pub expansion: Expansion,
    pub graph: DiGraph<Task, Dep, u32>,
    /// Graph node of each job, by job index.
    pub job_nodes: Vec<NodeIndex<u32>>,
}

impl Plan {
    /// Expands `sweep` and builds its graph.
    pub fn build(sweep: Sweep) -> Result<Plan, Vec<Diagnostic>> {
        let expansion = expand(&sweep)?;
        let mut graph: DiGraph<Task, Dep, u32> =
            DiGraph::with_capacity(expansion.jobs.len() + 16, expansion.jobs.len() * 2 + 16);
        let mut probes: HashMap<u16, NodeIndex<u32>> = HashMap::new();
        let mut prepares: HashMap<(u16, u32), NodeIndex<u32>> = HashMap::new();
        let report = graph.add_node(Task::Report);
        let mut job_nodes = Vec::with_capacity(expansion.jobs.len());
        for (j, job) in expansion.jobs.iter().enumerate() {
            let point = &expansion.points[job.point as usize];
            let job_node = graph.add_node(Task::Job { job: j as u32 });
            job_nodes.push(job_node);
            let reads_files = expansion.models[point.model as usize].reads_files;
            for &node in &expansion.placements[point.placement as usize] {
                let probe = *probes.entry(node).or_insert_with(|| graph.add_node(Task::Probe { node }));
                // An engine that reads no model files has nothing to prepare.
                let before = if reads_files {
                    *prepares.entry((node, point.model)).or_insert_with(|| {
                        let p = graph.add_node(Task::Prepare { node, model: point.model });
                        graph.add_edge(probe, p, Dep::After);
                        p
                    })
                } else {
                    probe
                };
                graph.add_edge(before, job_node, Dep::RunsOn);
            }
            graph.add_edge(job_node, report, Dep::After);
        }
        let mut plan = Plan { sweep, expansion, graph, job_nodes };
        plan.add_monotone_edges();
        plan.check_acyclic()?;
        Ok(plan)
    }

    /// Chains each monotone field's values within groups of otherwise equal configs.
    ///
    /// Two points are in one group when they are equal once the field is set to the
    /// axis's first value; the group key is then that point's spec hash. For grid points
    /// this is found from axis indices alone (no spec is rebuilt), which keeps a
    /// million-point sweep fast; include entries are resolved individually.
    fn add_monotone_edges(&mut self) {
        let (sweep, exp) = (&self.sweep, &self.expansion);
        let cycles = sweep.execution.cycles as usize;
        let n_axes = sweep.axes.len();
        let mut edges: Vec<(u32, u32)> = Vec::new();
        for field in &sweep.execution.monotone {
            // A field that is not swept has one value: nothing to chain (load warns).
            let Some(k) = sweep.axes.iter().position(|a| a.path == *field) else { continue };
            let axis = &sweep.axes[k];
            let value_of = |raw: &llem_common::spec::raw::RawExperiment| {
                let json = serde_json::to_value(raw).unwrap_or_default();
                fields::lookup(&json, field).and_then(serde_json::Value::as_f64)
            };
            let axis_values: Vec<Option<f64>> = axis.values.iter().map(|v| value_of(&v.raw())).collect();
            let radices: Vec<u64> = sweep.axes.iter().map(|a| a.values.len() as u64).collect();
            let linear = |idx: &[u32]| idx.iter().zip(&radices).fold(0u64, |n, (&i, &r)| n * r + u64::from(i));
            // grid number → point (u32::MAX where excluded)
            let mut by_linear = vec![u32::MAX; exp.counts.grid as usize];
            for (p, point) in exp.points.iter().enumerate() {
                if matches!(point.origin, Origin::Grid(_)) {
                    by_linear[linear(exp.indices(n_axes, point)) as usize] = p as u32;
                }
            }
            let key_of_raw = |mut raw: llem_common::spec::raw::RawExperiment| {
                raw.overlay(&axis.values[0].raw());
                raw.validate(sweep.fixed_span).ok().map(|s| s.hash())
            };
            let mut group_of: SpecHashMap<usize> = SpecHashMap::default();
            let mut idx: Vec<u32> = Vec::with_capacity(n_axes);
            let mut groups: Vec<Vec<(f64, usize)>> = Vec::new();
            for (p, point) in exp.points.iter().enumerate() {
                let (key, value) = match point.origin {
                    Origin::Grid(_) => {
                        idx.clear();
                        idx.extend_from_slice(exp.indices(n_axes, point));
                        let value = axis_values[idx[k] as usize];
                        idx[k] = 0;
                        let first = by_linear[linear(&idx) as usize];
                        let key = (first != u32::MAX).then(|| exp.points[first as usize].hash).or_else(|| {
                            // The group's first point was excluded: rebuild its spec.
                            let mut raw = sweep.fixed.clone();
                            for (a, &i) in sweep.axes.iter().zip(&idx) {
                                raw.overlay(&a.values[i as usize].raw());
                            }
                            key_of_raw(raw)
                        });
                        (key, value)
                    }
                    Origin::Include(_) => {
                        let raw = point_raw(sweep, exp, point);
                        (key_of_raw(raw.clone()), value_of(&raw))
                    }
                };
                let (Some(key), Some(value)) = (key, value) else { continue };
                let g = *group_of.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push((value, p));
            }
            // job index of (point, cycle)
            let mut job_of = vec![u32::MAX; exp.points.len() * cycles];
            for (j, job) in exp.jobs.iter().enumerate() {
                job_of[job.point as usize * cycles + (job.cycle as usize - 1)] = j as u32;
            }
            for mut group in groups {
                group.sort_by(|a, b| a.0.total_cmp(&b.0));
                for pair in group.windows(2) {
                    for c in 0..cycles {
                        edges.push((job_of[pair[0].1 * cycles + c], job_of[pair[1].1 * cycles + c]));
                    }
                }
            }
        }
        for (from, to) in edges {
            self.graph.add_edge(self.job_nodes[from as usize], self.job_nodes[to as usize], Dep::After);
        }
    }

    fn check_acyclic(&self) -> Result<(), Vec<Diagnostic>> {
        let Err(cycle) = toposort(&self.graph, None) else {
            return Ok(());
        };
        let start = cycle.node_id();
        let component = kosaraju_scc(&self.graph).into_iter().find(|c| c.contains(&start)).unwrap_or_default();
        let names: Vec<String> = component.iter().map(|&n| self.task_name(n)).collect();
        Err(vec![Diagnostic::nowhere(format!(
            "the dependency graph has a cycle: {} → {}",
            names.join(" → "),
            self.task_name(start)
        ))])
    }

    /// A task's stable name, as in `plan --json`: `probe:NODE`, `prepare:NODE:MODEL`,
    /// the job id, or `report`.
    pub fn task_name(&self, n: NodeIndex<u32>) -> String {
        match self.graph[n] {
            Task::Probe { node } => format!("probe:{}", self.sweep.nodes[node as usize].name),
            Task::Prepare { node, model } => {
                format!(
                    "prepare:{}:{}",
                    self.sweep.nodes[node as usize].name, self.expansion.models[model as usize].name
                )
            }
            Task::Job { job } => self.expansion.job_id(&self.expansion.jobs[job as usize]),
            Task::Report => "report".to_owned(),
        }
    }

    /// Names of the nodes that may run a point.
    pub fn placement_names(&self, placement: u32) -> Vec<&str> {
        self.expansion.placements[placement as usize]
            .iter()
            .map(|&n| self.sweep.nodes[n as usize].name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_named() {
        let sweep = crate::sweep::tests::sweep_from("model: m\nsweep: {batch_size: [1, 2]}\nexecution: {cycles: 1}\n");
        let mut plan = Plan::build(sweep).expect("plan");
        let (a, b) = (plan.job_nodes[0], plan.job_nodes[1]);
        plan.graph.add_edge(a, b, Dep::After);
        plan.graph.add_edge(b, a, Dep::After);
        let err = plan.check_acyclic().expect_err("cycle");
        let id_a = plan.task_name(a);
        let id_b = plan.task_name(b);
        assert!(err[0].message.contains(&id_a) && err[0].message.contains(&id_b), "{}", err[0].message);
        assert!(err[0].message.starts_with("the dependency graph has a cycle"));
    }

    #[test]
    fn the_quickstart_keeps_its_job_ids() {
        // Pinned: run directories of every earlier release resume against these
        // (docs/sweep-format.md, "Job ids").
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps/quickstart.yaml");
        let plan = Plan::build(crate::sweep::load(&path).expect("loads")).expect("plan");
        let ids: Vec<String> = plan.expansion.jobs.iter().take(2).map(|j| plan.expansion.job_id(j)).collect();
        assert_eq!(ids, ["87cf823bcd68f0b7-c1", "83e9a68b00bc98eb-c1"]);
    }

    #[test]
    fn graph_shape() {
        let sweep = crate::sweep::tests::sweep_from(
            "model: m\nsweep: {batch_size: [1, 2, 4], max_output_tokens: [8, 16]}\nexecution: {cycles: 2, monotone: [batch_size]}\n",
        );
        let plan = Plan::build(sweep).expect("plan");
        let tasks = plan.graph.node_count();
        // 12 jobs + probe + prepare + report
        assert_eq!(tasks, 15);
        // probe→prepare, 12 prepare→job, 12 job→report, monotone: 2 groups × 2 links × 2 cycles
        assert_eq!(plan.graph.edge_count(), 1 + 12 + 12 + 8);
    }
}
