//! The run directory: everything needed to report and resume a run, whatever the
//! working directory and wherever the sweep's files went since (docs/results.md).
//!
//! ```text
//! runs/<sweep>-<utc>/
//!   sweep/             a copy of every file the sweep read, laid out as they were
//!   plan.json  journal.jsonl  agents/<slot>.log
//!   probe/<node>.json  prepare/<node>.json
//!   jobs/<job-id>/attempt-<n>/{result.json, timeseries.parquet, …}
//!   results.parquet  report/{index.html, summary.md, summary.csv, *.svg}
//! ```
//!
//! Every file is written temp → fsync → rename.

use std::path::{Path, PathBuf};

use llem_common::util::{now_rfc3339, write_atomic, write_atomic_with};

use super::journal::{self, Header, Journal, JournalError, Replay, Snapshot};
use crate::expand::point_spec;
use crate::plan::{Plan, Task};
use crate::sweep::{self, CopyOf, Sweep, SweepError};

/// Why a directory cannot be used as a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{path} is not a run directory (it has no journal.jsonl): give a directory that `llem run` made, like runs/<sweep>-<utc>")]
    NotARunDir { path: String },
    #[error("the journal of {path} cannot be read: {source}")]
    Journal { path: String, source: JournalError },
    #[error("cannot create the run directory {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    /// The run's identity on the nodes (their outboxes are kept per run): made once, at
    /// `llem run`, and kept in the journal, so a moved or renamed directory keeps it and
    /// no two runs share one.
    pub id: String,
}

/// A new run's identity: its directory's name and 32 bits no other run has.
fn new_run_id(dir: &Path) -> String {
    use sha2::Digest as _;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{}/{}/{nanos}", std::process::id(), dir.display());
    let digest = sha2::Sha256::digest(seed.as_bytes());
    let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{}-{:02x}{:02x}{:02x}{:02x}", file_name(&name), digest[0], digest[1], digest[2], digest[3])
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let fail = |source| RunDirError::Write { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    write_atomic(path, bytes).map_err(fail)
}

/// The directory of one attempt's files in the run directory at `run`.
pub fn attempt_dir(run: &Path, job: &str, attempt: u32) -> PathBuf {
    run.join("jobs").join(job).join(format!("attempt-{attempt}"))
}

/// A name made safe for a file name (node and slot names may hold `:` or `/`).
pub fn file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect()
}

impl RunDir {
    /// Creates `<root>/<sweep>-<utc>` with the sweep's files, the plan and the journal.
    pub fn create(plan: &Plan, root: &Path) -> Result<(RunDir, Journal), RunDirError> {
        let stamp: String = now_rfc3339().chars().filter(|c| c.is_ascii_digit()).take(14).collect();
        let name = file_name(&plan.sweep.name);
        let mut path = root.join(format!("{name}-{stamp}"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = root.join(format!("{name}-{stamp}-{n}"));
        }
        std::fs::create_dir_all(&path)
            .map_err(|source| RunDirError::Create { path: path.display().to_string(), source })?;
        let run = RunDir { id: new_run_id(&path), path };
        let snapshot = run.keep_sweep(&plan.sweep, "sweep")?;
        run.write_plan(plan)?;
        let header = Header {
            llem_journal: journal::JOURNAL_VERSION,
            sweep: plan.sweep.name.clone(),
            sweep_file: sweep::absolute(&plan.sweep.path).display().to_string(),
            source_hash: plan.sweep.source_hash.clone(),
            created_at: now_rfc3339(),
            snapshot: Some(snapshot),
            working_dir: std::env::current_dir().ok().map(|d| d.display().to_string()),
            run_id: Some(run.id.clone()),
        };
        let journal_path = run.journal_path();
        let journal = Journal::create(&journal_path, &header)
            .map_err(|source| RunDirError::Journal { path: journal_path.display().to_string(), source })?;
        Ok((run, journal))
    }

    /// An existing run directory and what its journal says.
    pub fn open(path: &Path) -> Result<(RunDir, Replay), RunDirError> {
        let journal_path = path.join("journal.jsonl");
        if !journal_path.is_file() {
            return Err(RunDirError::NotARunDir { path: path.display().to_string() });
        }
        let replay = journal::replay(&journal_path)
            .map_err(|source| RunDirError::Journal { path: journal_path.display().to_string(), source })?;
        // Version 1 named its outboxes after the directory.
        let dir_name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let id = replay.header.run_id.clone().unwrap_or_else(|| file_name(&dir_name));
        Ok((RunDir { path: path.to_owned(), id }, replay))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path.join("journal.jsonl")
    }

    /// The directory of one attempt's files.
    pub fn attempt_dir(&self, job: &str, attempt: u32) -> PathBuf {
        attempt_dir(&self.path, job, attempt)
    }

    /// Where a slot's agent writes its log.
    pub fn agent_log(&self, slot: &str) -> PathBuf {
        self.path.join("agents").join(format!("{}.log", file_name(slot)))
    }

    /// Copies every file the sweep read into `<run>/<dir>/`, laid out as under its root.
    pub fn keep_sweep(&self, sweep: &Sweep, dir: &str) -> Result<Snapshot, RunDirError> {
        let copy = self.path.join(dir);
        for file in &sweep.files {
            let rel = file.path.strip_prefix(&sweep.root).unwrap_or(&file.path);
            write(&copy.join(rel), file.text.as_bytes())?;
        }
        let top = sweep.files.first().map(|f| f.path.strip_prefix(&sweep.root).unwrap_or(&f.path).to_owned());
        Ok(Snapshot {
            dir: dir.to_owned(),
            top: top.unwrap_or_default().display().to_string(),
            original_root: sweep.root.display().to_string(),
            original_file: sweep.files.first().map(|f| f.path.display().to_string()).unwrap_or_default(),
        })
    }

    /// A name for the next copy of a changed sweep (`sweep-2`, `sweep-3`, …).
    pub fn next_copy_name(&self) -> String {
        (2..).map(|n| format!("sweep-{n}")).find(|d| !self.path.join(d).exists()).unwrap_or_default()
    }

    /// Reads the sweep from the run directory's copy.
    pub fn load_copy(&self, snapshot: &Snapshot) -> Result<Sweep, SweepError> {
        let copy_root = self.path.join(&snapshot.dir);
        let copy = CopyOf { copy_root: copy_root.clone(), original_root: PathBuf::from(&snapshot.original_root) };
        sweep::load_copy(&copy_root.join(&snapshot.top), copy)
    }

    /// Writes plan.json (again, for a changed sweep). Streamed, one job's spec at a time:
    /// built whole as a JSON tree it took ~12 KB per job at the start of every run.
    pub fn write_plan(&self, plan: &Plan) -> Result<(), RunDirError> {
        let path = self.path.join("plan.json");
        let fail = |source| RunDirError::Write { path: path.display().to_string(), source };
        write_atomic_with(&path, |w| serde_json::to_writer_pretty(w, &PlanFile(plan)).map_err(std::io::Error::other))
            .map_err(fail)
    }

    /// Stores what a node's probe reported.
    pub fn write_probe(&self, node: &str, report: &llem_common::probe::ProbeReport) -> Result<(), RunDirError> {
        let bytes = serde_json::to_vec_pretty(report).unwrap_or_default();
        write(&self.path.join("probe").join(format!("{}.json", file_name(node))), &bytes)
    }

    /// Stores what a node's agent found of each model (`{model: status}`).
    pub fn write_prepared(&self, node: &str, models: &serde_json::Value) -> Result<(), RunDirError> {
        let bytes = serde_json::to_vec_pretty(models).unwrap_or_default();
        write(&self.path.join("prepare").join(format!("{}.json", file_name(node))), &bytes)
    }
}

/// plan.json as it is serialized: the keys in sorted order, as `serde_json::Value`'s maps
/// keep them (the file's bytes did not change when it began to be streamed).
struct PlanFile<'p>(&'p Plan);

impl serde::Serialize for PlanFile<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap as _};
        let plan = self.0;
        let counts = serde_json::to_value(&plan.expansion.counts).map_err(S::Error::custom)?;
        let job_tasks = plan.graph.node_weights().filter(|t| matches!(t, Task::Job { .. })).count();
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("counts", &counts)?;
        map.serialize_entry(
            "graph",
            &serde_json::json!({"tasks": plan.graph.node_count(), "edges": plan.graph.edge_count(), "jobs": job_tasks}),
        )?;
        map.serialize_entry("jobs", &PlanJobs(plan))?;
        map.serialize_entry(
            "sweep",
            &serde_json::json!({"name": plan.sweep.name, "file": plan.sweep.path, "source_hash": plan.sweep.source_hash}),
        )?;
        map.end()
    }
}

/// plan.json's `jobs`, each built as it is written.
struct PlanJobs<'p>(&'p Plan);

impl serde::Serialize for PlanJobs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.expansion.jobs.iter().map(|job| PlanJob(self.0, job)))
    }
}

struct PlanJob<'p>(&'p Plan, &'p crate::expand::Job);

impl serde::Serialize for PlanJob<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let (plan, job) = (self.0, self.1);
        let point = &plan.expansion.points[job.point as usize];
        let spec = serde_json::to_value(point_spec(&plan.sweep, &plan.expansion, point)).map_err(S::Error::custom)?;
        serde_json::json!({"id": plan.expansion.job_id(job), "cycle": job.cycle, "spec": spec}).serialize(s)
    }
}
