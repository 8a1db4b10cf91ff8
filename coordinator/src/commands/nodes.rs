//! `llem nodes check` / `llem nodes deploy`: each node reached through its transport's
//! connector, as a run would: the agent installed where missing, the round trip timed,
//! and (for `check`) the node probed over an agent session.

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
use crate::sweep::{self, NodeSpec};

/// How long a node may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks a node's agent to describe the node, over a session of its own.
fn probe(connector: &dyn Connector, node: &NodeSpec) -> anyhow::Result<ProbeReport> {
    let (tx, rx) = mpsc::channel();
    let log =
        std::env::temp_dir().join(format!("llem-nodes-{}-{}.log", std::process::id(), node.name.replace('/', "-")));
    let request = OpenRequest {
        slot: 0,
        gpu: None,
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
fn check(node: &NodeSpec, options: &ConnectOptions, deploy_only: bool) -> serde_json::Value {
    let connector = connector_for(node, options);
    let outcome = (|| -> anyhow::Result<serde_json::Value> {
        let agent = connector.deploy()?;
        let rtt = connector.round_trip()?;
        let probe =
            if deploy_only { serde_json::Value::Null } else { serde_json::to_value(probe(connector.as_ref(), node)?)? };
        Ok(json!({"node": node.name, "ok": true, "agent": agent, "rtt_ms": rtt.as_secs_f64() * 1000.0, "probe": probe}))
    })();
    connector.close();
    outcome.unwrap_or_else(|e| json!({"node": node.name, "ok": false, "error": format!("{e:#}")}))
}

pub fn nodes(args: &NodesArgs, deploy_only: bool) -> Result<u8, CommandError> {
    let sweep = sweep_or_error(sweep::load(&args.file))?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let options = ConnectOptions::new(&cwd, args.accept_new_host_keys);
    let rows: Vec<serde_json::Value> = sweep.nodes.iter().map(|n| check(n, &options, deploy_only)).collect();
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
        let p = &r["probe"];
        let gpus: Vec<&str> = p["node"]["gpus"]
            .as_array()
            .map(|g| g.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
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
        )?;
    }
    Ok(if failed > 0 { exit::RUN_FAILED } else { exit::OK })
}
