//! `llem validate` and `llem plan` on the example sweeps and the malformed corpus.

use std::path::Path;

use llem_tests::{assert_snapshot, llem, repo_root, tests_dir};

const BAD_INPUT: i32 = 2;

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_sweep_validates() {
    let root = repo_root();
    let files: Vec<String> = yaml_files(&root.join("sweeps")).into_iter().map(|f| format!("sweeps/{f}")).collect();
    assert!(files.len() >= 3, "expected the example sweeps, found {files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = llem(&root, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok: ")).count(), files.len(), "{stdout}");
}

#[test]
fn malformed_files_give_their_snapshot_errors() {
    let dir = tests_dir();
    let files = yaml_files(&dir.join("malformed"));
    assert!(files.len() >= 20, "the malformed corpus shrank: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let rel = format!("malformed/{file}");
        let out = llem(&dir, &["validate", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(BAD_INPUT) {
            failures.push(format!("{rel}: exit {:?}, expected {BAD_INPUT}\n{stderr}", out.status.code()));
            continue;
        }
        if !out.stdout.is_empty() {
            failures.push(format!("{rel}: printed on stdout: {}", String::from_utf8_lossy(&out.stdout)));
        }
        let snapshot = dir.join("malformed").join(file.replace(".yaml", ".stderr"));
        if let Err(panic) = std::panic::catch_unwind(|| assert_snapshot(&snapshot, &stderr)) {
            failures.push(panic.downcast_ref::<String>().cloned().unwrap_or_default());
        }
        // Every error names its place.
        let located = stderr.lines().filter(|l| l.trim_start().starts_with("--> malformed/")).count();
        let errors = stderr.lines().filter(|l| l.starts_with("error: ")).count();
        if located == 0 || errors == 0 {
            failures.push(format!("{rel}: errors without file:line:col\n{stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn validate_json_reports_positions() {
    let dir = tests_dir();
    let out = llem(&dir, &["validate", "--json", "malformed/typo-top-level.yaml"]);
    assert_eq!(out.status.code(), Some(BAD_INPUT));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    let error = &report[0]["errors"][0];
    assert_eq!(error["file"], "malformed/typo-top-level.yaml");
    assert_eq!(error["line"], 3);
    assert_eq!(error["column"], 1);
    assert_eq!(error["help"], "did you mean `batch_size`?");
}

#[test]
fn plan_json_has_jobs_and_graph() {
    let root = repo_root();
    let out = llem(&root, &["plan", "--json", "sweeps/gpu-grid.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let jobs = plan["jobs"].as_array().expect("jobs");
    let counts = &plan["counts"];
    assert_eq!(jobs.len() as u64, counts["jobs"].as_u64().expect("count"));
    for job in jobs {
        let id = job["id"].as_str().expect("id");
        assert!(id.ends_with(&format!("-c{}", job["cycle"])), "{id}");
        assert!(job["spec"]["model"].is_string());
        assert!(job["spec"]["measurement"]["warmup"]["cv"].is_number());
    }
    let nodes = plan["graph"]["nodes"].as_array().expect("graph nodes");
    let edges = plan["graph"]["edges"].as_array().expect("graph edges");
    let kinds = |k: &str| nodes.iter().filter(|n| n["kind"] == k).count();
    assert_eq!(kinds("job"), jobs.len());
    assert_eq!(kinds("report"), 1);
    assert!(kinds("probe") >= 1 && kinds("prepare") >= 1);
    // Every job hangs off a prepare and leads to the report.
    for job in jobs {
        let id = &job["id"];
        assert!(edges.iter().any(|e| e["to"] == *id && e["kind"] == "runs_on"), "{id}");
        assert!(edges.iter().any(|e| e["from"] == *id && e["to"] == "report"), "{id}");
    }
    // The same sweep gives the same ids.
    let again = llem(&root, &["plan", "--json", "sweeps/gpu-grid.yaml"]);
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn plan_summary_counts_only() {
    let root = repo_root();
    let out = llem(&root, &["plan", "--summary", "--json", "sweeps/cluster.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let c = &summary["counts"];
    let configs = c["configurations"].as_u64().expect("configurations");
    assert_eq!(
        configs,
        c["grid"].as_u64().expect("grid") - c["excluded"].as_u64().expect("excluded")
            + c["included"].as_u64().expect("included")
    );
    assert_eq!(c["jobs"].as_u64(), Some(configs * c["cycles"].as_u64().expect("cycles")));
    assert!(summary.get("jobs").is_none());
    assert_eq!(summary["nodes"].as_array().map(Vec::len), Some(3));
    let text = llem(&root, &["plan", "--summary", "sweeps/cluster.yaml"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("monotone: batch_size"), "{text}");
    assert!(text.lines().count() < 10, "{text}");
}

#[test]
fn plan_table_lists_every_job() {
    let root = repo_root();
    let out = llem(&root, &["plan", "sweeps/quickstart.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().expect("header");
    assert!(header.contains("job") && header.contains("cycle") && header.contains("nodes"), "{header}");
    let summary = llem(&root, &["plan", "--summary", "--json", "sweeps/quickstart.yaml"]);
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).expect("json");
    let jobs = summary["counts"]["jobs"].as_u64().expect("jobs") as usize;
    let rows = text.lines().skip(1).take_while(|l| !l.is_empty()).count();
    assert_eq!(rows, jobs, "{text}");
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    let root = repo_root();
    let out = llem(&root, &["plan"]);
    assert_eq!(out.status.code(), Some(BAD_INPUT));
    let out = llem(&root, &["validate", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `does-not-exist.yaml`"));
    let help = llem(&root, &["plan", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Examples:") && help.contains("--summary"), "{help}");
    let top = llem(&root, &["--help"]);
    assert!(String::from_utf8_lossy(&top.stdout).contains("Exit codes"));
}
