//! `llem nodes check` / `llem nodes deploy`: each node reached through its transport's
//! connector, as a run would: the agent installed where missing, the round trip timed,
//! and (for `check`) the node probed over an agent session. A Slurm sweep's nodes are
//! checked in one allocation of the sweep's shape (its steps are the sessions, and the
//! round trip is a no-op step), and each row says what `sinfo` says of the partition.

use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use llem_common::probe::ProbeReport;
use llem_common::protocol::{FromAgent, Hello, ToAgent};
use serde_json::json;

use super::sweep_or_error;
use crate::cli::NodesArgs;
use crate::error::CommandError;
use crate::exit;
use crate::run::connect::{Incoming, OpenRequest};
use crate::run::{connector_for, ConnectOptions, Connector};
use crate::sweep::{self, NodeSpec, Transport};

/// How long a node may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks a node's agent to describe the node, over a session of its own.
fn probe(connector: &dyn Connector, node: &NodeSpec) -> anyhow::Result<ProbeReport> {
    let (tx, rx) = mpsc::channel();
    let log =
        std::env::temp_dir().join(format!("llem-nodes-{}-{}.log", std::process::id(), node.name.replace('/', "-")));
    let request = OpenRequest {
        slot: 0,
        // A Slurm step sees only the GPUs it asks for: one, where the node has any.
        gpu: node.gpus.filter(|&g| g > 0).map(|_| 0),
        generation: 1,
        hello: Hello::new("coordinator").for_run("llem-nodes-check"),
        log: log.clone(),
        events: tx,
    };
    let mut session = connector.open(request)?;
    let answer = (|| {
        session.send(&ToAgent::Probe)?;
        loop {
            match rx.recv_timeout(PROBE_TIMEOUT) {
                Ok(Incoming::Agent { message: FromAgent::Hello(theirs), .. }) => {
                    Hello::new("coordinator").check(&theirs)?
                }
                Ok(Incoming::Agent { message: FromAgent::Probed { report }, .. }) => return Ok(*report),
                Ok(Incoming::Gone { why, .. }) => anyhow::bail!("the agent on {} ended: {why}", node.name),
                Ok(_) => {}
                Err(_) => anyhow::bail!("{} did not answer the probe within {} s", node.name, PROBE_TIMEOUT.as_secs()),
            }
        }
    })();
    session.shutdown();
    let _ = std::fs::remove_file(&log);
    answer
}

/// One node's row.
fn check(node: &NodeSpec, connector: &dyn Connector, deploy_only: bool) -> serde_json::Value {
    let outcome = (|| -> anyhow::Result<serde_json::Value> {
        let agent = connector.deploy()?;
        let rtt = connector.round_trip()?;
        let probe = if deploy_only { serde_json::Value::Null } else { serde_json::to_value(probe(connector, node)?)? };
        Ok(json!({"node": node.name, "ok": true, "agent": agent, "rtt_ms": rtt.as_secs_f64() * 1000.0, "probe": probe}))
    })();
    outcome.unwrap_or_else(|e| json!({"node": node.name, "ok": false, "error": format!("{e:#}")}))
}

/// What `sinfo` says of a partition's nodes: state, GPUs (gres) and CPUs of each.
fn partition_facts(partition: Option<&str>) -> serde_json::Value {
    let mut args = vec!["--noheader".to_owned(), "--Node".to_owned(), "--format=%N|%P|%T|%G|%c".to_owned()];
    if let Some(p) = partition {
        args.push(format!("--partition={p}"));
    }
    let out = match std::process::Command::new("sinfo").args(&args).output() {
        Ok(out) => out,
        Err(e) => return json!({"error": format!("cannot run sinfo: {e}")}),
    };
    let nodes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 5).then(|| json!({"name": f[0], "partition": f[1], "state": f[2], "gres": f[3], "cpus": f[4]}))
        })
        .collect();
    if nodes.is_empty() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let what = partition.map_or_else(|| "the default partition".to_owned(), |p| format!("partition {p}"));
        return json!({"error": format!("sinfo lists no node in {what}{}", if said.is_empty() { String::new() } else { format!(": {said}") })});
    }
    json!({"partition": partition, "nodes": nodes})
}

pub fn nodes(args: &NodesArgs, deploy_only: bool) -> Result<u8, CommandError> {
    let sweep = sweep_or_error(sweep::load(&args.file))?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let options = ConnectOptions::new(&cwd, args.accept_new_host_keys, None);
    // The partition as it is before the check's own allocation changes it.
    let slurm = sweep.nodes.iter().find_map(|n| match &n.transport {
        Transport::Slurm(target) => Some(partition_facts(target.allocation.partition.as_deref())),
        _ => None,
    });
    let connectors: Vec<_> = sweep.nodes.iter().map(|n| connector_for(n, &options)).collect();
    let mut rows: Vec<serde_json::Value> =
        sweep.nodes.iter().zip(&connectors).map(|(n, c)| check(n, c.as_ref(), deploy_only)).collect();
    for (row, node) in rows.iter_mut().zip(&sweep.nodes) {
        if let (Some(facts), Transport::Slurm(_)) = (&slurm, &node.transport) {
            row["slurm"] = facts.clone();
        }
    }
    // After every row: a Slurm sweep's nodes share one allocation, released here.
    for c in &connectors {
        c.close();
    }
    let _ = std::fs::remove_dir_all(&options.control_dir);
    let failed = rows.iter().filter(|r| r["ok"] != true).count();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(if failed > 0 { exit::RUN_FAILED } else { exit::OK });
    }
    writeln!(out, "{:<12} {:<4} {:>8}  {:<12} {:<28} energy sources", "node", "ok", "rtt ms", "agent", "gpus")?;
    for r in &rows {
        let name = r["node"].as_str().unwrap_or("");
        if r["ok"] != true {
            writeln!(out, "{name:<12} no   {}", r["error"].as_str().unwrap_or(""))?;
            continue;
        }
        write_row(&mut out, name, r, deploy_only)?;
    }
    if let Some(slurm) = rows.iter().find_map(|r| r.get("slurm")) {
        write_partition(&mut out, slurm)?;
    }
    Ok(if failed > 0 { exit::RUN_FAILED } else { exit::OK })
}

/// The partition's nodes as `sinfo` lists them, under the table.
fn write_partition(out: &mut impl std::io::Write, slurm: &serde_json::Value) -> std::io::Result<()> {
    if let Some(e) = slurm["error"].as_str() {
        return writeln!(out, "slurm: {e}");
    }
    let partition = slurm["partition"].as_str().unwrap_or("(default)");
    writeln!(out, "slurm partition {partition}:")?;
    for n in slurm["nodes"].as_array().into_iter().flatten() {
        let s = |k: &str| n[k].as_str().unwrap_or("").to_owned();
        writeln!(out, "  {:<16} {:<12} gres {:<16} cpus {}", s("name"), s("state"), s("gres"), s("cpus"))?;
    }
    Ok(())
}

/// A node that answered: its round trip, agent, GPUs and energy sources.
fn write_row(
    out: &mut impl std::io::Write,
    name: &str,
    r: &serde_json::Value,
    deploy_only: bool,
) -> std::io::Result<()> {
    let p = &r["probe"];
    let gpus: Vec<&str> =
        p["node"]["gpus"].as_array().map(|g| g.iter().filter_map(|x| x["name"].as_str()).collect()).unwrap_or_default();
    let sources: Vec<&str> = p["energy_sources"]
        .as_array()
        .map(|s| s.iter().filter(|x| x["available"] == true).filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    writeln!(
        out,
        "{name:<12} yes  {:>8.1}  {:<12} {:<28} {}",
        r["rtt_ms"].as_f64().unwrap_or(0.0),
        p["node"]["agent_version"].as_str().unwrap_or(if deploy_only { "deployed" } else { "?" }),
        if gpus.is_empty() { "none".to_owned() } else { gpus.join(", ") },
        sources.join(", ")
    )
}
