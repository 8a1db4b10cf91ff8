//! `nodes:` and `nodes_file:`: where jobs run. Each entry is an SSH node; unset SSH
//! settings are left to `ssh` and its configuration, so a `~/.ssh/config` alias works as
//! it does for `ssh HOST`.

use std::path::Path;

use llem_common::de::Spanned;
use llem_common::diag::Diagnostic;
use llem_common::yaml::{Node, Span, Value};

use super::load::Loader;
use super::raw::RawNode;
use super::{NodeSpec, SshNode, Transport};

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
            _ => {
                self.errors.push(Diagnostic::at(
                    node.span,
                    format!("`nodes` must be `local` or a list of nodes, found {}", node.value.describe()),
                ));
                None
            }
        }
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
