//! `results.parquet` (one flat row per finished job, analysis-ready) and `summary.md` /
//! `summary.csv` (one row per configuration, mean over cycles with a 95 % confidence
//! interval). Null stays null: energy that was not measured is "not measured", never 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use llem_common::result::JobResult;
use llem_common::spec::fields;
use parquet::basic::Compression;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::journal::{replay, Outcome};
use llem_common::util::write_atomic;

use super::rundir::attempt_dir;
use crate::expand::{point_display, point_spec};
use crate::plan::Plan;

enum Column {
    F64(Vec<Option<f64>>),
    I64(Vec<Option<i64>>),
    Str(Vec<Option<String>>),
}

/// A finished job and its result.
#[derive(Debug)]
pub struct Row {
    pub job_id: String,
    pub config_id: String,
    pub cycle: u32,
    pub attempt: u32,
    pub swept: Vec<(String, serde_json::Value)>,
    pub result: JobResult,
}

/// The finished jobs of a run, in plan order, each exactly once (from the journal).
pub fn finished_rows(plan: &Plan, run_dir: &Path) -> Result<Vec<Row>> {
    let replayed = replay(&run_dir.join("journal.jsonl"))?;
    let (outcomes, _) = replayed.outcomes();
    let exp = &plan.expansion;
    let mut rows = Vec::new();
    for job in &exp.jobs {
        let id = exp.job_id(job);
        let Some(Outcome::Finished { attempt }) = outcomes.get(&id) else { continue };
        let path = attempt_dir(run_dir, &id, *attempt).join("result.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let result = JobResult::from_json(&text)?;
        let point = &exp.points[job.point as usize];
        let spec = point_spec(&plan.sweep, exp, point).to_json();
        let swept = point_display(&plan.sweep, exp, point)
            .iter()
            .map(|(k, _)| (k.clone(), fields::lookup(&spec, k).cloned().unwrap_or_default()))
            .collect();
        rows.push(Row {
            job_id: id,
            config_id: point.hash.short(),
            cycle: job.cycle,
            attempt: *attempt,
            swept,
            result,
        });
    }
    Ok(rows)
}

fn write_parquet(path: &Path, columns: &[(String, Column)]) -> Result<()> {
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, c)| match c {
            Column::F64(_) => format!("OPTIONAL DOUBLE {name};"),
            Column::I64(_) => format!("OPTIONAL INT64 {name};"),
            Column::Str(_) => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
        })
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message results {{ {} }}", fields.join(" ")))?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::UNCOMPRESSED).build());
    let mut buffer = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buffer, schema, props)?;
    let mut group = writer.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = group.next_column()? {
        let levels = |present: Vec<bool>| present.iter().map(|&p| i16::from(p)).collect::<Vec<i16>>();
        match (&columns[i].1, col.untyped()) {
            (Column::F64(v), ColumnWriter::DoubleColumnWriter(w)) => {
                let values: Vec<f64> = v.iter().flatten().copied().collect();
                w.write_batch(&values, Some(&levels(v.iter().map(Option::is_some).collect())), None)?;
            }
            (Column::I64(v), ColumnWriter::Int64ColumnWriter(w)) => {
                let values: Vec<i64> = v.iter().flatten().copied().collect();
                w.write_batch(&values, Some(&levels(v.iter().map(Option::is_some).collect())), None)?;
            }
            (Column::Str(v), ColumnWriter::ByteArrayColumnWriter(w)) => {
                let values: Vec<ByteArray> = v.iter().flatten().map(|s| ByteArray::from(s.as_str())).collect();
                w.write_batch(&values, Some(&levels(v.iter().map(Option::is_some).collect())), None)?;
            }
            _ => anyhow::bail!("column {} has an unexpected type", columns[i].0),
        }
        col.close()?;
        i += 1;
    }
    group.close()?;
    writer.close()?;
    write_atomic(path, &buffer)?;
    Ok(())
}

/// A column name Parquet readers take as it is: `decoding.temperature` → `decoding_temperature`.
fn column_name(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Writes `results.parquet`: job id, config id, cycle, attempt, node, every swept field
/// as its own column (numbers as doubles), the key metrics and the warning codes.
pub fn write_results_parquet(rows: &[Row], path: &Path) -> Result<()> {
    let mut cols: Vec<(String, Column)> = vec![
        ("job_id".into(), Column::Str(rows.iter().map(|r| Some(r.job_id.clone())).collect())),
        ("config_id".into(), Column::Str(rows.iter().map(|r| Some(r.config_id.clone())).collect())),
        ("cycle".into(), Column::I64(rows.iter().map(|r| Some(i64::from(r.cycle))).collect())),
        ("attempt".into(), Column::I64(rows.iter().map(|r| Some(i64::from(r.attempt))).collect())),
        ("node".into(), Column::Str(rows.iter().map(|r| Some(r.result.node.hostname.clone())).collect())),
        ("model".into(), Column::Str(rows.iter().map(|r| Some(r.result.spec.model.clone())).collect())),
    ];
    let mut swept: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.swept {
            if !swept.contains(k) {
                swept.push(k.clone());
            }
        }
    }
    for key in swept {
        let values: Vec<Option<&serde_json::Value>> =
            rows.iter().map(|r| r.swept.iter().find(|(k, _)| *k == key).map(|(_, v)| v)).collect();
        let numeric = values.iter().flatten().all(|v| v.is_number());
        let col = if numeric {
            Column::F64(values.iter().map(|v| v.and_then(serde_json::Value::as_f64)).collect())
        } else {
            Column::Str(
                values.iter().map(|v| v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect(),
            )
        };
        cols.push((column_name(&key), col));
    }
    let f = |g: fn(&JobResult) -> Option<f64>| Column::F64(rows.iter().map(|r| g(&r.result)).collect());
    cols.extend([
        ("energy_total_j".to_owned(), f(|r| r.energy.total_j)),
        ("energy_adjusted_j".to_owned(), f(|r| r.energy.adjusted_j)),
        ("baseline_w".to_owned(), f(|r| r.energy.baseline_w)),
        ("j_per_output_token".to_owned(), f(|r| r.energy.j_per_output_token)),
        ("j_per_output_token_adjusted".to_owned(), f(|r| r.energy.j_per_output_token_adjusted)),
        ("output_tokens_per_s".to_owned(), f(|r| r.throughput.output_tokens_per_s)),
        ("ttft_p50_ms".to_owned(), f(|r| r.latency.ttft_ms.map(|s| s.p50))),
        ("ttft_p95_ms".to_owned(), f(|r| r.latency.ttft_ms.map(|s| s.p95))),
        ("itl_p50_ms".to_owned(), f(|r| r.latency.itl_ms.map(|s| s.p50))),
        ("itl_p95_ms".to_owned(), f(|r| r.latency.itl_ms.map(|s| s.p95))),
        ("duration_s".to_owned(), f(|r| Some(r.duration_s))),
    ]);
    cols.push(("input_tokens".into(), Column::I64(rows.iter().map(|r| Some(r.result.tokens.input as i64)).collect())));
    cols.push((
        "output_tokens".into(),
        Column::I64(rows.iter().map(|r| Some(r.result.tokens.output as i64)).collect()),
    ));
    cols.push((
        "warnings".into(),
        Column::Str(
            rows.iter()
                .map(|r| Some(r.result.warnings.iter().map(|w| w.code.as_str()).collect::<Vec<_>>().join(",")))
                .collect(),
        ),
    ));
    write_parquet(path, &cols)
}

/// Mean and 95 % confidence half-width (Student's t) of the present values.
pub fn mean_ci(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return Some((mean, None));
    }
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // t(0.975, df) for small samples; 1.96 beyond 30.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    let t = T.get(values.len() - 2).copied().unwrap_or(1.96);
    Some((mean, Some(t * sd / n.sqrt())))
}

fn fmt(v: Option<(f64, Option<f64>)>, digits: usize) -> String {
    match v {
        None => "not measured".to_owned(),
        Some((m, None)) => format!("{m:.digits$}"),
        Some((m, Some(ci))) => format!("{m:.digits$} ± {ci:.digits$}"),
    }
}

/// `summary.md` and `summary.csv`: one row per configuration.
pub fn summary(rows: &[Row]) -> (String, String) {
    let mut configs: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in rows {
        if !configs.contains_key(&r.config_id) {
            order.push(r.config_id.clone());
        }
        configs.entry(r.config_id.clone()).or_default().push(r);
    }
    let mut md = String::from("| config | swept | cycles | J / output token (95 % CI) | output tok/s | TTFT p50 ms |\n|---|---|---|---|---|---|\n");
    let mut csv = String::from("config_id,swept,cycles,j_per_output_token_mean,j_per_output_token_ci95,output_tokens_per_s_mean,ttft_p50_ms_mean\n");
    for id in &order {
        let group = &configs[id];
        let swept = group[0]
            .swept
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(" ");
        let jpt: Vec<f64> = group.iter().filter_map(|r| r.result.energy.j_per_output_token).collect();
        let tps: Vec<f64> = group.iter().filter_map(|r| r.result.throughput.output_tokens_per_s).collect();
        let ttft: Vec<f64> = group.iter().filter_map(|r| r.result.latency.ttft_ms.map(|s| s.p50)).collect();
        let (j, t, f) = (mean_ci(&jpt), mean_ci(&tps), mean_ci(&ttft));
        md += &format!("| `{id}` | {swept} | {} | {} | {} | {} |\n", group.len(), fmt(j, 4), fmt(t, 1), fmt(f, 1));
        let opt = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x}"));
        csv += &format!(
            "{id},\"{swept}\",{},{},{},{},{}\n",
            group.len(),
            opt(j.map(|x| x.0)),
            opt(j.and_then(|x| x.1)),
            opt(t.map(|x| x.0)),
            opt(f.map(|x| x.0))
        );
    }
    (md, csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_intervals() {
        assert_eq!(mean_ci(&[]), None);
        assert_eq!(mean_ci(&[2.0]), Some((2.0, None)));
        let (m, ci) = mean_ci(&[1.0, 2.0, 3.0]).expect("stats");
        assert_eq!(m, 2.0);
        assert!((ci.expect("ci") - 4.303 * 1.0 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(fmt(None, 2), "not measured");
    }
}
