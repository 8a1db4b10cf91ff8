//! `nodes:` and `nodes_file:`: where jobs run. Each entry is an SSH node; unset SSH
//! settings are left to `ssh` and its configuration, so a `~/.ssh/config` alias works as
//! it does for `ssh HOST`.

use std::path::Path;

use llem_common::de::Spanned;
use llem_common::diag::Diagnostic;
use llem_common::yaml::{Node, Span, Value};

use super::load::Loader;
use super::raw::{RawNode, RawNodesMap, RawSlurm};
use super::{NodeSpec, SlurmAllocation, SlurmNode, SshNode, Transport};

impl Loader {
    /// The nodes `file` names inline or through `nodes_file:`; `None` when it names none.
    pub(super) fn nodes(
        &mut self,
        file: &Path,
        inline: Option<&Node>,
        nodes_file: Option<&Spanned<String>>,
    ) -> Option<Vec<NodeSpec>> {
        let from_file;
        let (node, written_in) = match (inline, nodes_file) {
            (Some(_), Some(f)) => {
                self.errors.push(Diagnostic::at(f.span, "give either `nodes:` or `nodes_file:`, not both"));
                return None;
            }
            (Some(node), None) => (node, file.to_owned()),
            (None, Some(f)) => {
                let path = self.files.resolve(file, &f.value);
                from_file = self.read(&path, Some(f.span))?.1;
                (&from_file, path)
            }
            (None, None) => return None,
        };
        match &node.value {
            Value::Null => Some(vec![NodeSpec::local()]),
            Value::Scalar { text, .. } if text == "local" => Some(vec![NodeSpec::local()]),
            Value::Seq(items) if items.is_empty() => {
                self.errors.push(
                    Diagnostic::at(node.span, "`nodes` is an empty list")
                        .with_help("write `nodes: local`, or list the nodes"),
                );
                None
            }
            Value::Seq(_) => {
                let raw: Vec<RawNode> = self.decode(node, "nodes")?;
                let mut out: Vec<NodeSpec> = Vec::new();
                for (i, n) in raw.into_iter().enumerate() {
                    let Some(spec) = self.node(&written_in, &node_item_span(node, i), n) else {
                        continue;
                    };
                    if out.iter().any(|o| o.name == spec.name) {
                        self.errors.push(
                            Diagnostic::at(node_item_span(node, i), format!("two nodes are named `{}`", spec.name))
                                .with_help("give each node its own `name:`"),
                        );
                        continue;
                    }
                    out.push(spec);
                }
                Some(out)
            }
            Value::Map(_) => {
                let raw: RawNodesMap = self.decode(node, "nodes")?;
                self.slurm(&written_in, raw.slurm)
            }
            _ => {
                self.errors.push(Diagnostic::at(
                    node.span,
                    format!("`nodes` must be `local`, a list of nodes or `slurm:`, found {}", node.value.describe()),
                ));
                None
            }
        }
    }

    /// `nodes: {slurm: …}`: one node entry per allocated node, `gpus_per_node` slots each.
    fn slurm(&mut self, file: &Path, raw: RawSlurm) -> Option<Vec<NodeSpec>> {
        let before = self.errors.len();
        let count = |v: &Option<Spanned<u32>>, name: &str, errors: &mut Vec<Diagnostic>| match v {
            Some(n) if n.value == 0 => {
                errors.push(Diagnostic::at(n.span, format!("`{name}` must be at least 1")));
                0
            }
            Some(n) => n.value,
            None => 1,
        };
        let nodes = count(&raw.nodes, "nodes", &mut self.errors);
        let gpus_per_node = raw.gpus_per_node.as_ref().map_or(0, |g| g.value);
        // salloc reads what starts with `-` as an option: a value is one plain word.
        let word = |v: Option<Spanned<String>>, name: &str, errors: &mut Vec<Diagnostic>| {
            let v = v?;
            if v.value.is_empty() || v.value.starts_with('-') || v.value.chars().any(char::is_control) {
                errors.push(Diagnostic::at(v.span, format!("`{name}` {:?} is not a Slurm {name}", v.value)));
                return None;
            }
            Some(v.value)
        };
        let partition = word(raw.partition, "partition", &mut self.errors);
        let time = word(raw.time, "time", &mut self.errors);
        let account = word(raw.account, "account", &mut self.errors);
        let qos = word(raw.qos, "qos", &mut self.errors);
        let constraint = word(raw.constraint, "constraint", &mut self.errors);
        let reservation = word(raw.reservation, "reservation", &mut self.errors);
        let mut extra = Vec::new();
        for e in raw.extra.unwrap_or_default() {
            if !e.value.starts_with('-') {
                self.errors.push(
                    Diagnostic::at(e.span, format!("`extra` item {:?} is not an salloc option", e.value))
                        .with_help("each item is one option with its value, e.g. `--exclusive` or `--mem=64G`"),
                );
                continue;
            }
            extra.push(e.value);
        }
        if self.errors.len() > before {
            return None;
        }
        let allocation = SlurmAllocation {
            partition,
            nodes,
            gpus_per_node,
            time,
            account,
            qos,
            constraint,
            reservation,
            extra,
            agent: raw.agent.map(|a| self.files.external(file, &a.value)),
        };
        Some(
            (0..nodes)
                .map(|index| NodeSpec {
                    name: format!("slurm-{index}"),
                    transport: Transport::Slurm(SlurmNode { allocation: allocation.clone(), index }),
                    gpus: Some(gpus_per_node),
                    labels: Default::default(),
                })
                .collect(),
        )
    }

    fn node(&mut self, file: &Path, span: &Span, raw: RawNode) -> Option<NodeSpec> {
        let Some(host) = raw.host.map(|h| h.value).filter(|h| !h.is_empty()) else {
            self.errors.push(
                Diagnostic::at(*span, "a node needs `host:`")
                    .with_help("e.g. `- {name: gpu1, host: gpu1.example.org, gpus: 8}`, or a `~/.ssh/config` alias"),
            );
            return None;
        };
        // ssh takes what starts with `-` as an option (`-oProxyCommand=…` would run a
        // local command): a host or user is a plain word.
        let plain = |s: &str| !s.starts_with('-') && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !plain(&host) {
            self.errors.push(
                Diagnostic::at(*span, format!("`host` {host:?} is not a host name"))
                    .with_help("a host name, an address or an ~/.ssh/config alias: no spaces, not starting with `-`"),
            );
            return None;
        }
        if let Some(u) = raw.user.as_ref().filter(|u| !plain(&u.value) || u.value.is_empty()) {
            self.errors.push(Diagnostic::at(u.span, format!("`user` {:?} is not a user name", u.value)));
            return None;
        }
        if let Some(p) = raw.port.as_ref().filter(|p| p.value == 0) {
            self.errors.push(Diagnostic::at(p.span, "`port` must be between 1 and 65535"));
            return None;
        }
        let name = raw.name.map_or_else(|| host.clone(), |n| n.value);
        let external = |p: Option<Spanned<String>>| p.map(|p| self.files.external(file, &p.value));
        let ssh = SshNode {
            port: raw.port.map(|p| p.value),
            user: raw.user.map(|u| u.value),
            identity_file: external(raw.identity_file),
            known_hosts: external(raw.known_hosts),
            ssh_config: external(raw.ssh_config),
            host,
        };
        Some(NodeSpec {
            name,
            transport: Transport::Ssh(ssh),
            gpus: raw.gpus.map(|g| g.value),
            labels: raw.labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.value)).collect(),
        })
    }
}

fn node_item_span(list: &Node, i: usize) -> Span {
    match &list.value {
        Value::Seq(items) => items.get(i).map_or(list.span, |n| n.span),
        _ => list.span,
    }
}

#[cfg(test)]
mod tests {
    use crate::sweep::tests::{sweep_from, try_sweep_from};
    use crate::sweep::Transport;

    #[test]
    fn a_slurm_allocation_is_one_node_entry_per_node_with_its_gpus() {
        let s = sweep_from(
            "model: m\nnodes:\n  slurm: {partition: gpu, nodes: 2, gpus_per_node: 4, time: \"04:00:00\", extra: [--exclusive]}\n",
        );
        let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["slurm-0", "slurm-1"]);
        assert!(s.nodes.iter().all(|n| n.gpus == Some(4)));
        let Transport::Slurm(node) = &s.nodes[1].transport else { panic!("{:?}", s.nodes[1]) };
        assert_eq!((node.index, node.allocation.extra.as_slice()), (1, &["--exclusive".to_owned()][..]));
        assert_eq!(node.allocation.time.as_deref(), Some("04:00:00"));
    }

    #[test]
    fn slurm_values_that_salloc_would_misread_are_refused_where_written() {
        for (field, why) in [
            ("extra: [exclusive]", "`extra` item \"exclusive\" is not an salloc option"),
            ("partition: --all", "`partition` \"--all\" is not a Slurm partition"),
            ("nodes: 0", "`nodes` must be at least 1"),
        ] {
            let err =
                try_sweep_from(&format!("model: m\nnodes:\n  slurm:\n    {field}\n")).expect_err(field).to_string();
            assert!(err.contains(why) && err.contains(":4:"), "{field}: {err}");
        }
    }
}
