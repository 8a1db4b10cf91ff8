//! Sweep-level keys as written (stage one). The experiment fields at the top level are
//! read by llem-common's `RawExperiment`; `sweep:`, `include:`, `exclude:` and `nodes:`
//! hold free-form values and are read from the node tree directly (see `load`).

use std::collections::BTreeMap;

use llem_common::de::Spanned;
use serde::Deserialize;

use super::Order;

type S<T> = Option<Spanned<T>>;

/// Keys that belong to the sweep rather than to an experiment.
pub const SWEEP_KEYS: &[&str] = &["name", "base", "sweep", "include", "exclude", "execution", "nodes", "nodes_file"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    pub name: S<String>,
    pub base: S<String>,
    pub execution: Option<RawExecution>,
    pub nodes_file: S<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecution {
    pub cycles: S<u32>,
    pub order: S<Order>,
    pub seed: S<u64>,
    pub gap_s: S<f64>,
    pub cycle_gap_s: S<f64>,
    pub retries: S<u32>,
    pub monotone: S<Vec<Spanned<String>>>,
}

impl RawExecution {
    /// Fields set in `top` win.
    pub fn overlay(&mut self, top: &RawExecution) {
        fn pick<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        pick(&mut self.cycles, &top.cycles);
        pick(&mut self.order, &top.order);
        pick(&mut self.seed, &top.seed);
        pick(&mut self.gap_s, &top.gap_s);
        pick(&mut self.cycle_gap_s, &top.cycle_gap_s);
        pick(&mut self.retries, &top.retries);
        pick(&mut self.monotone, &top.monotone);
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: S<String>,
    pub host: S<String>,
    pub port: S<u16>,
    pub user: S<String>,
    pub identity_file: S<String>,
    pub known_hosts: S<String>,
    pub ssh_config: S<String>,
    pub gpus: S<u32>,
    pub labels: Option<BTreeMap<String, Spanned<String>>>,
}

/// `nodes: {slurm: …}`: one Slurm allocation whose nodes run the jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlurm {
    pub partition: S<String>,
    pub nodes: S<u32>,
    pub gpus_per_node: S<u32>,
    pub time: S<String>,
    pub account: S<String>,
    pub qos: S<String>,
    pub constraint: S<String>,
    pub reservation: S<String>,
    pub extra: Option<Vec<Spanned<String>>>,
    pub agent: S<String>,
}

/// The `nodes:` mapping form (only `slurm:` today).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodesMap {
    pub slurm: RawSlurm,
}
