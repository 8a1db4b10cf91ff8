//! `results.parquet` (one flat row per finished job, analysis-ready) and `summary.md` /
//! `summary.csv` (one row per configuration, mean over cycles with a 95 % confidence
//! interval). Null stays null: energy that was not measured is "not measured", never 0.
//! Server jobs (`engine: openai`) add their `serving` figures: columns that are null for
//! every other job, and summary columns only when some job is a server job.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use llem_common::result::{Energy, JobResult, Latency, ServingResult, Throughput, Tokens};
use llem_common::spec::{fields, ExperimentSpec};
use parquet::basic::Compression;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::journal::{replay, Outcome};
use llem_common::util::write_atomic_with;

use super::rundir::attempt_dir;
use crate::expand::{point_display, point_spec};
use crate::plan::Plan;

/// One column of results.parquet: how to read its value from a row. The values are made
/// as the column is written, one column at a time straight into the file, so a large run
/// never holds every column (nor the file) in memory at once.
enum Column<'a> {
    F64(Get<'a, f64>),
    I64(Get<'a, i64>),
    Str(Get<'a, String>),
}

/// A column's value in a row (`None` is null).
type Get<'a, T> = Box<dyn Fn(&Row) -> Option<T> + 'a>;

fn f64_column<'a>(f: impl Fn(&Row) -> Option<f64> + 'a) -> Column<'a> {
    Column::F64(Box::new(f))
}

fn i64_column<'a>(f: impl Fn(&Row) -> Option<i64> + 'a) -> Column<'a> {
    Column::I64(Box::new(f))
}

fn str_column<'a>(f: impl Fn(&Row) -> Option<String> + 'a) -> Column<'a> {
    Column::Str(Box::new(f))
}

/// A finished job and its result.
#[derive(Debug)]
pub struct Row {
    pub job_id: String,
    pub config_id: String,
    pub cycle: u32,
    pub attempt: u32,
    pub swept: Vec<(String, serde_json::Value)>,
    pub result: Figures,
}

/// What the tables and the report read of a job's `result.json`. The rest (the node
/// snapshot, warning messages, the sampling record …) stays in the file: every result
/// held whole was most of `llem run`'s peak memory at 50,000 jobs.
#[derive(Debug, Clone)]
pub struct Figures {
    pub model: String,
    /// GPUs the job held (0 on the CPU).
    pub gpus: u32,
    /// The node's hostname.
    pub node: String,
    pub energy: Energy,
    pub tokens: Tokens,
    pub throughput: Throughput,
    pub latency: Latency,
    pub duration_s: f64,
    /// The warnings' codes, in order.
    pub warnings: Vec<String>,
    /// A server job's figures and its spec, which the report's server lines are keyed by.
    pub server: Option<Box<Served>>,
}

#[derive(Debug, Clone)]
pub struct Served {
    pub spec: ExperimentSpec,
    pub serving: ServingResult,
}

impl Figures {
    pub fn serving(&self) -> Option<&ServingResult> {
        self.server.as_ref().map(|s| &s.serving)
    }
}

impl From<JobResult> for Figures {
    fn from(r: JobResult) -> Self {
        Figures {
            model: r.spec.model.clone(),
            gpus: r.spec.gpu_count(),
            node: r.node.hostname,
            energy: r.energy,
            tokens: r.tokens,
            throughput: r.throughput,
            latency: r.latency,
            duration_s: r.duration_s,
            warnings: r.warnings.into_iter().map(|w| w.code).collect(),
            server: r.serving.map(|serving| Box::new(Served { spec: r.spec, serving })),
        }
    }
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
        let result = Figures::from(JobResult::from_json(&text)?);
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

fn write_parquet(path: &Path, rows: &[Row], columns: &[(String, Column<'_>)]) -> Result<()> {
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
    // The Parquet error travels inside the io::Error as its source, so the message keeps
    // its whole chain.
    write_atomic_with(path, |file| write_row_group(file, schema, props, rows, columns).map_err(std::io::Error::other))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes every row as one row group, a column at a time.
fn write_row_group(
    file: &mut std::io::BufWriter<std::fs::File>,
    schema: Arc<parquet::schema::types::Type>,
    props: Arc<WriterProperties>,
    rows: &[Row],
    columns: &[(String, Column<'_>)],
) -> Result<()> {
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let mut group = writer.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = group.next_column()? {
        match (&columns[i].1, col.untyped()) {
            (Column::F64(get), ColumnWriter::DoubleColumnWriter(w)) => {
                let (values, levels) = present(rows, get);
                w.write_batch(&values, Some(&levels), None)?;
            }
            (Column::I64(get), ColumnWriter::Int64ColumnWriter(w)) => {
                let (values, levels) = present(rows, get);
                w.write_batch(&values, Some(&levels), None)?;
            }
            (Column::Str(get), ColumnWriter::ByteArrayColumnWriter(w)) => {
                let (values, levels) = present(rows, |r| get(r).map(|s| ByteArray::from(s.into_bytes())));
                w.write_batch(&values, Some(&levels), None)?;
            }
            _ => anyhow::bail!("column {} has an unexpected type", columns[i].0),
        }
        col.close()?;
        i += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(())
}

/// A column's present values and its definition levels (1 present, 0 null).
fn present<T>(rows: &[Row], get: impl Fn(&Row) -> Option<T>) -> (Vec<T>, Vec<i16>) {
    let mut values = Vec::with_capacity(rows.len());
    let mut levels = Vec::with_capacity(rows.len());
    for r in rows {
        let v = get(r);
        levels.push(i16::from(v.is_some()));
        values.extend(v);
    }
    (values, levels)
}

/// A column name Parquet readers take as it is: `decoding.temperature` → `decoding_temperature`.
fn column_name(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Writes `results.parquet`: job id, config id, cycle, attempt, node, every swept field
/// as its own column (numbers as doubles), the key metrics and the warning codes; then
/// `gpus` (GPUs the job held, 0 on the CPU) and a server job's `serving` figures (null for
/// the jobs of other engines).
pub fn write_results_parquet(rows: &[Row], path: &Path) -> Result<()> {
    let mut cols: Vec<(String, Column<'_>)> = vec![
        ("job_id".into(), str_column(|r| Some(r.job_id.clone()))),
        ("config_id".into(), str_column(|r| Some(r.config_id.clone()))),
        ("cycle".into(), i64_column(|r| Some(i64::from(r.cycle)))),
        ("attempt".into(), i64_column(|r| Some(i64::from(r.attempt)))),
        ("node".into(), str_column(|r| Some(r.result.node.clone()))),
        ("model".into(), str_column(|r| Some(r.result.model.clone()))),
    ];
    let mut swept: Vec<&str> = Vec::new();
    for r in rows {
        for (k, _) in &r.swept {
            if !swept.contains(&k.as_str()) {
                swept.push(k);
            }
        }
    }
    for key in swept {
        // `gpus` has its own column below: the count the job held (a swept 1 is unset in
        // the spec, so the swept value would read null).
        if key == "gpus" {
            continue;
        }
        let value = move |r: &Row| r.swept.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let numeric = rows.iter().filter_map(&value).all(|v| v.is_number());
        let col = if numeric {
            f64_column(move |r| value(r).and_then(|v| v.as_f64()))
        } else {
            str_column(move |r| value(r).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        };
        cols.push((column_name(key), col));
    }
    let f = |g: fn(&Figures) -> Option<f64>| f64_column(move |r| g(&r.result));
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
    cols.push(("input_tokens".into(), i64_column(|r| Some(r.result.tokens.input as i64))));
    cols.push(("output_tokens".into(), i64_column(|r| Some(r.result.tokens.output as i64))));
    cols.push(("warnings".into(), str_column(|r| Some(r.result.warnings.join(",")))));
    // Server figures, null for jobs of other engines; `gpus` for every job (0 on the CPU).
    let sv = |g: fn(&ServingResult) -> Option<f64>| f64_column(move |r| r.result.serving().and_then(g));
    let count = |g: fn(&ServingResult) -> u64| i64_column(move |r| r.result.serving().map(|s| g(s) as i64));
    cols.extend([
        ("gpus".to_owned(), i64_column(|r| Some(i64::from(r.result.gpus)))),
        ("serving_requests".to_owned(), count(|s| s.requests)),
        ("serving_errors".to_owned(), count(|s| s.errors)),
        ("request_throughput_per_s".to_owned(), sv(|s| s.request_throughput_per_s)),
        ("output_tokens_per_s_served".to_owned(), sv(|s| s.output_tokens_per_s)),
        ("ttft_ms_p50".to_owned(), sv(|s| s.ttft_ms.map(|d| d.p50))),
        ("ttft_ms_p99".to_owned(), sv(|s| s.ttft_ms.map(|d| d.p99))),
        ("tpot_ms_p50".to_owned(), sv(|s| s.tpot_ms.map(|d| d.p50))),
        ("tpot_ms_p99".to_owned(), sv(|s| s.tpot_ms.map(|d| d.p99))),
        ("itl_ms_p50".to_owned(), sv(|s| s.itl_ms.map(|d| d.p50))),
        ("itl_ms_p99".to_owned(), sv(|s| s.itl_ms.map(|d| d.p99))),
        ("e2el_ms_p50".to_owned(), sv(|s| s.e2el_ms.map(|d| d.p50))),
        ("e2el_ms_p99".to_owned(), sv(|s| s.e2el_ms.map(|d| d.p99))),
        ("goodput_requests_per_s".to_owned(), sv(|s| s.goodput_requests_per_s)),
        ("steady_state_j_per_output_token".to_owned(), sv(|s| s.steady_state.as_ref()?.j_per_output_token)),
        ("steady_state_output_tokens_per_s".to_owned(), sv(|s| s.steady_state.as_ref()?.output_tokens_per_s)),
        ("energy_per_request_j_mean".to_owned(), sv(|s| s.energy_per_request_j.map(|d| d.mean))),
        (
            "token_count_method".to_owned(),
            str_column(|r| r.result.serving().map(|s| s.token_count_method.name().to_owned())),
        ),
    ]);
    write_parquet(path, rows, &cols)
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

/// `summary.md` and `summary.csv`: one row per configuration. With server jobs in the
/// run, TTFT p99 and served output tokens/s too ("–" for a configuration of another
/// engine).
pub fn summary(rows: &[Row]) -> (String, String) {
    let mut configs: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in rows {
        if !configs.contains_key(&r.config_id) {
            order.push(r.config_id.clone());
        }
        configs.entry(r.config_id.clone()).or_default().push(r);
    }
    let served = rows.iter().any(|r| r.result.serving().is_some());
    let mut md =
        String::from("| config | swept | cycles | gpus | J / output token (95 % CI) | output tok/s | TTFT p50 ms |");
    let mut csv = String::from("config_id,swept,cycles,j_per_output_token_mean,j_per_output_token_ci95,output_tokens_per_s_mean,ttft_p50_ms_mean,gpus");
    if served {
        md += " TTFT p99 ms (served) | output tok/s (served) |";
        csv += ",ttft_p99_ms_mean,output_tokens_per_s_served_mean";
    }
    md += if served { "\n|---|---|---|---|---|---|---|---|---|\n" } else { "\n|---|---|---|---|---|---|---|\n" };
    csv += "\n";
    for id in &order {
        let group = &configs[id];
        let swept = group[0]
            .swept
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(" ");
        let gpus = group[0].result.gpus;
        let jpt: Vec<f64> = group.iter().filter_map(|r| r.result.energy.j_per_output_token).collect();
        let tps: Vec<f64> = group.iter().filter_map(|r| r.result.throughput.output_tokens_per_s).collect();
        let ttft: Vec<f64> = group.iter().filter_map(|r| r.result.latency.ttft_ms.map(|s| s.p50)).collect();
        let (j, t, f) = (mean_ci(&jpt), mean_ci(&tps), mean_ci(&ttft));
        md +=
            &format!("| `{id}` | {swept} | {} | {gpus} | {} | {} | {} |", group.len(), fmt(j, 4), fmt(t, 1), fmt(f, 1));
        let opt = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x}"));
        csv += &format!(
            "{id},\"{swept}\",{},{},{},{},{},{gpus}",
            group.len(),
            opt(j.map(|x| x.0)),
            opt(j.and_then(|x| x.1)),
            opt(t.map(|x| x.0)),
            opt(f.map(|x| x.0))
        );
        if served {
            let serving: Vec<&ServingResult> = group.iter().filter_map(|r| r.result.serving()).collect();
            let p99: Vec<f64> = serving.iter().filter_map(|s| s.ttft_ms.map(|d| d.p99)).collect();
            let out: Vec<f64> = serving.iter().filter_map(|s| s.output_tokens_per_s).collect();
            let (p, o) = (mean_ci(&p99), mean_ci(&out));
            if serving.is_empty() {
                md += " – | – |";
            } else {
                md += &format!(" {} | {} |", fmt(p, 1), fmt(o, 1));
            }
            csv += &format!(",{},{}", opt(p.map(|x| x.0)), opt(o.map(|x| x.0)));
        }
        md += "\n";
        csv += "\n";
    }
    (md, csv)
}

/// Rows for the tests of the results and the report: the checked-in v1 result as a
/// candle job, or as a server job with figures derived from its load.
#[cfg(test)]
pub(crate) mod test_rows {
    use std::collections::BTreeMap;

    use llem_common::result::{Distribution, JobResult, ServingResult, SteadyState, TokenCountMethod};
    use llem_common::spec::{Device, Engine, Load, Server};

    use super::Row;

    fn fixture() -> JobResult {
        JobResult::from_json(include_str!("../../../tests/fixtures/result-v1.json")).expect("the v1 fixture loads")
    }

    /// The result of a CPU job of engine `candle`, no energy measured.
    fn candle_result(config: &str, cycle: u32) -> JobResult {
        let mut result = fixture();
        result.spec.engine = Engine::Candle;
        result.job_id = format!("{config}-c{cycle}");
        result
    }

    fn row(config: &str, cycle: u32, result: JobResult) -> Row {
        let job_id = result.job_id.clone();
        Row { job_id, config_id: config.to_owned(), cycle, attempt: 1, swept: Vec::new(), result: result.into() }
    }

    /// A CPU job of engine `candle`, nothing swept, no energy measured.
    pub(crate) fn candle_row(config: &str, cycle: u32) -> Row {
        row(config, cycle, candle_result(config, cycle))
    }

    fn dist(p50: f64, p99: f64) -> Distribution {
        Distribution { mean: p50, p50, p90: p99, p95: p99, p99, n: 100 }
    }

    /// A closed-loop server job on 2 GPUs with `concurrency` requests in flight and the
    /// server option `max-num-seqs: seqs` (both swept). TTFT p50/p99 10/30 ms × c,
    /// 100 output tokens/s × c, J per output token 1/c + 0.01 × cycle.
    pub(crate) fn server_row(config: &str, cycle: u32, concurrency: u32, seqs: u32) -> Row {
        server_row_with(config, cycle, concurrency, seqs, |_| {})
    }

    /// [`server_row`] with its result changed by `edit` first.
    pub(crate) fn server_row_with(
        config: &str,
        cycle: u32,
        concurrency: u32,
        seqs: u32,
        edit: impl FnOnce(&mut JobResult),
    ) -> Row {
        let mut r = candle_result(config, cycle);
        let c = f64::from(concurrency);
        let jpt = 1.0 / c + 0.01 * f64::from(cycle);
        r.spec.engine = Engine::Openai;
        r.spec.device = Device::Cuda(None);
        r.spec.gpus = Some(2);
        r.spec.load = Some(Load {
            burstiness: None,
            concurrency: Some(concurrency),
            duration_s: None,
            max_error_rate: 0.1,
            request_rate: None,
            requests: Some(100),
            seed: 0,
            slo: None,
            timeout_s: 600.0,
        });
        r.spec.server = Some(Server {
            command: Some(vec!["serve".to_owned(), "{port}".to_owned()]),
            env: BTreeMap::new(),
            options: BTreeMap::from([("max-num-seqs".to_owned(), serde_json::json!(seqs))]),
            ready_timeout_s: 600.0,
            url: None,
        });
        r.energy.j_per_output_token = Some(jpt);
        r.serving = Some(ServingResult {
            server: Some("vllm".to_owned()),
            requests: 100,
            errors: 1,
            token_count_method: TokenCountMethod::Usage,
            request_throughput_per_s: Some(c),
            output_tokens_per_s: Some(100.0 * c),
            total_tokens_per_s: None,
            ttft_ms: Some(dist(10.0 * c, 30.0 * c)),
            tpot_ms: Some(dist(5.0, 9.0)),
            itl_ms: Some(dist(5.0, 12.0)),
            itl_per_token_ms: None,
            e2el_ms: Some(dist(300.0, 900.0)),
            goodput_requests_per_s: Some(0.9 * c),
            steady_state: Some(SteadyState {
                start_s: 0.2,
                end_s: 0.8,
                output_tokens: 400,
                output_tokens_per_s: Some(90.0 * c),
                energy_j: Some(400.0 * jpt),
                adjusted_j: None,
                j_per_output_token: Some(jpt),
                j_per_output_token_adjusted: None,
            }),
            energy_per_request_j: Some(dist(2.0, 4.0)),
            send_lag_ms: None,
        });
        edit(&mut r);
        let mut row = row(config, cycle, r);
        row.swept = vec![
            ("load.concurrency".to_owned(), serde_json::json!(concurrency)),
            ("server.options.max-num-seqs".to_owned(), serde_json::json!(seqs)),
        ];
        row
    }
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::SerializedFileReader;
    use parquet::record::Field;

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

    const SERVER_COLUMNS: [&str; 18] = [
        "serving_requests",
        "serving_errors",
        "request_throughput_per_s",
        "output_tokens_per_s_served",
        "ttft_ms_p50",
        "ttft_ms_p99",
        "tpot_ms_p50",
        "tpot_ms_p99",
        "itl_ms_p50",
        "itl_ms_p99",
        "e2el_ms_p50",
        "e2el_ms_p99",
        "goodput_requests_per_s",
        "steady_state_j_per_output_token",
        "steady_state_output_tokens_per_s",
        "energy_per_request_j_mean",
        "token_count_method",
        "j_per_output_token",
    ];

    /// Writes `rows` to a results.parquet and reads it back: each row's (column, value).
    fn round_trip(rows: &[Row]) -> Vec<Vec<(String, Field)>> {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("results.parquet");
        write_results_parquet(rows, &path).expect("write");
        let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("parquet");
        reader
            .into_iter()
            .map(|row| row.expect("row").get_column_iter().map(|(n, f)| (n.clone(), f.clone())).collect())
            .collect()
    }

    #[test]
    fn results_parquet_has_the_server_columns_null_for_other_jobs() {
        let back = round_trip(&[test_rows::candle_row("a", 1), test_rows::server_row("s", 1, 4, 64)]);
        assert_eq!(back.len(), 2);
        let get = |row: usize, name: &str| {
            back[row].iter().find(|(n, _)| n == name).map(|(_, f)| f.clone()).unwrap_or_else(|| panic!("no {name}"))
        };
        // j_per_output_token: the candle fixture measured no energy (null, never 0).
        for name in SERVER_COLUMNS {
            assert_eq!(get(0, name), Field::Null, "{name} of a candle job");
            assert_ne!(get(1, name), Field::Null, "{name} of a server job");
        }
        assert_eq!((get(0, "gpus"), get(1, "gpus")), (Field::Long(0), Field::Long(2)));
        assert_eq!(get(1, "ttft_ms_p99"), Field::Double(120.0));
        assert_eq!(get(1, "output_tokens_per_s_served"), Field::Double(400.0));
        assert_eq!(get(1, "serving_errors"), Field::Long(1));
        assert_eq!(get(1, "token_count_method"), Field::Str("usage".to_owned()));
        assert_eq!(get(1, "load_concurrency"), Field::Double(4.0));
        let names: Vec<&str> = back[0].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "gpus").count(), 1);
        assert!(names.starts_with(&["job_id", "config_id", "cycle", "attempt", "node", "model"]), "{names:?}");
    }

    #[test]
    fn a_swept_gpus_field_keeps_its_one_column() {
        let mut row = test_rows::server_row("s", 1, 4, 64);
        row.swept.push(("gpus".to_owned(), serde_json::json!(2)));
        let back = round_trip(&[row]);
        let gpus: Vec<&Field> = back[0].iter().filter(|(n, _)| n == "gpus").map(|(_, f)| f).collect();
        assert_eq!(gpus, vec![&Field::Long(2)], "the count the job held, once");
    }

    #[test]
    fn summary_has_gpus_and_server_columns_only_with_server_jobs() {
        let (md, csv) = summary(&[test_rows::candle_row("a", 1)]);
        assert!(md.lines().next().expect("header").contains("| gpus |") && !md.contains("TTFT p99"), "{md}");
        assert!(csv.lines().next().expect("header").ends_with(",ttft_p50_ms_mean,gpus"), "{csv}");
        assert!(md.contains("| 1 | 0 | not measured |"), "one cycle, no GPU, energy not measured: {md}");

        let rows =
            [test_rows::candle_row("a", 1), test_rows::server_row("s", 1, 4, 64), test_rows::server_row("s", 2, 4, 64)];
        let (md, csv) = summary(&rows);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(lines[0].contains("TTFT p99 ms (served)") && lines[0].contains("output tok/s (served)"));
        for l in &lines {
            assert_eq!(l.matches('|').count(), 10, "{l}");
        }
        assert!(lines[2].ends_with(" – | – |"), "a candle configuration: {}", lines[2]);
        let server = lines[3];
        assert!(server.contains("| 2 | 2 |") && server.contains("120.0") && server.contains("400.0"), "{server}");
        assert!(csv.lines().nth(2).expect("row").ends_with(",2,120,400"), "{csv}");
    }
}
