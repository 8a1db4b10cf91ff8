//! `journal.jsonl`: every event of a run, append-only, one JSON object per line, fsync per
//! record. The first line is a versioned header. A torn last line (the process died while
//! writing it) is ignored on replay; anything else malformed is an error.
//!
//! Version 2 records where the run directory's copy of the sweep is (`snapshot`), the
//! working directory of the run, and each failure's kind; version 3 adds the records
//! `allocated` (a Slurm allocation, so that resume can release one left behind) and
//! `stopped` (the run's resources ended). Version 1 journals
//! (`tests/fixtures/journal-v1.jsonl`) keep loading.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use llem_common::failure::FailureKind;
use serde::{Deserialize, Serialize};

/// The version this build writes.
pub const JOURNAL_VERSION: u32 = 3;
/// The oldest version it reads.
pub const OLDEST_JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub llem_journal: u32,
    pub sweep: String,
    /// The sweep file: as given to `llem run` (version 1), absolute (version 2).
    pub sweep_file: String,
    pub source_hash: String,
    pub created_at: String,
    /// Where the run directory keeps the files the sweep was read from (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// The directory `llem run` ran in: local agents start there, so relative model
    /// paths mean the same on resume (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The run's identity on the nodes: agents keep its outbox under it, so it must never
    /// be another run's (version 2; version 1 used the directory's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A run directory's copy of a sweep's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The copy, relative to the run directory (`sweep`, then `sweep-2` …).
    pub dir: String,
    /// The top file, relative to `dir`.
    pub top: String,
    /// The directory the copy was made from (absolute).
    pub original_root: String,
    /// The top file it was made from (absolute): resume compares the copy with it while
    /// it is still there.
    pub original_file: String,
}

/// One thing that happened to a job attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Dispatched {
        job: String,
        attempt: u32,
        node: String,
        at: String,
    },
    /// The result and its files are stored in `jobs/<job>/attempt-<n>/`.
    Finished {
        job: String,
        attempt: u32,
        at: String,
    },
    Failed {
        job: String,
        attempt: u32,
        /// Why, as a type (version 1 journals have none: read as `engine_error`).
        #[serde(default = "legacy_kind")]
        kind: FailureKind,
        error: String,
        /// Whether the job runs again: false marks the final failure that resume keeps
        /// (unless `--retry-failed`).
        retryable: bool,
        at: String,
    },
    Skipped {
        job: String,
        because: String,
        at: String,
    },
    Cancelled {
        job: String,
        attempt: u32,
        at: String,
    },
    Interrupted {
        at: String,
    },
    /// The transport holds resources for the run: Slurm allocation `id` on `hosts`
    /// (version 3).
    Allocated {
        id: String,
        hosts: Vec<String>,
        at: String,
    },
    /// The run stopped because what it ran on is gone (version 3); the jobs left run on
    /// resume.
    Stopped {
        why: String,
        at: String,
    },
    /// `resume --allow-changed-sweep` with changed files: from here on the sweep is the
    /// copy in `snapshot`.
    SweepChanged {
        snapshot: Snapshot,
        source_hash: String,
        at: String,
    },
}

fn legacy_kind() -> FailureKind {
    FailureKind::EngineError
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path}:{line}: not a journal record: {error}")]
    Corrupt { path: String, line: usize, error: String },
    #[error("{0} has no journal header")]
    NoHeader(String),
    #[error(
        "{path} is journal version {found}; this llem reads versions {OLDEST_JOURNAL_VERSION} to {JOURNAL_VERSION}"
    )]
    Version { path: String, found: u32 },
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
}

impl Journal {
    /// Creates a new journal with its header (fails if one exists).
    pub fn create(path: &Path, header: &Header) -> Result<Journal, JournalError> {
        let file = OpenOptions::new().create_new(true).append(true).open(path)?;
        let mut j = Journal { file };
        j.write_line(&serde_json::to_string(header).map_err(std::io::Error::other)?)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(j)
    }

    /// Opens an existing journal to append (after [`replay`]).
    pub fn append_to(path: &Path) -> Result<Journal, JournalError> {
        Ok(Journal { file: OpenOptions::new().append(true).open(path)? })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file.sync_data()
    }

    /// Appends and fsyncs one record: when this returns, the record survives a crash.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        self.write_line(&serde_json::to_string(record).map_err(std::io::Error::other)?)?;
        Ok(())
    }
}

/// Everything a journal says.
#[derive(Debug, Clone)]
pub struct Replay {
    pub header: Header,
    pub records: Vec<Record>,
    /// Whether the last line was torn (and dropped).
    pub torn_tail: bool,
}

/// The state of each job after replay: the last word on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished { attempt: u32 },
    Failed { attempt: u32, kind: FailureKind },
    Skipped,
}

impl Replay {
    /// The sweep as it now stands: the last change's copy, else the header's.
    pub fn current_sweep(&self) -> (Option<&Snapshot>, &str) {
        let changed = self.records.iter().rev().find_map(|r| match r {
            Record::SweepChanged { snapshot, source_hash, .. } => Some((snapshot, source_hash.as_str())),
            _ => None,
        });
        match changed {
            Some((snapshot, hash)) => (Some(snapshot), hash),
            None => (self.header.snapshot.as_ref(), self.header.source_hash.as_str()),
        }
    }

    /// The allocations the run's journal records, oldest first.
    pub fn allocations(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Allocated { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Failures per job that count against `retries` (every `failed` record: a
    /// cancellation is journaled as `cancelled`).
    pub fn failures(&self) -> BTreeMap<String, u32> {
        let mut failures = BTreeMap::new();
        for r in &self.records {
            if let Record::Failed { job, .. } = r {
                *failures.entry(job.clone()).or_default() += 1;
            }
        }
        failures
    }

    /// Job id → outcome, and the highest attempt number seen per job.
    pub fn outcomes(&self) -> (BTreeMap<String, Outcome>, BTreeMap<String, u32>) {
        let mut outcomes = BTreeMap::new();
        let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
        for r in &self.records {
            match r {
                Record::Dispatched { job, attempt, .. } => {
                    let a = attempts.entry(job.clone()).or_default();
                    *a = (*a).max(*attempt);
                }
                // A finished attempt is final; nothing after it changes that.
                Record::Finished { job, attempt, .. } => {
                    outcomes.insert(job.clone(), Outcome::Finished { attempt: *attempt });
                }
                Record::Failed { job, attempt, kind, retryable: false, .. }
                    if !matches!(outcomes.get(job), Some(Outcome::Finished { .. })) =>
                {
                    outcomes.insert(job.clone(), Outcome::Failed { attempt: *attempt, kind: *kind });
                }
                Record::Skipped { job, .. } if !matches!(outcomes.get(job), Some(Outcome::Finished { .. })) => {
                    outcomes.insert(job.clone(), Outcome::Skipped);
                }
                _ => {}
            }
        }
        (outcomes, attempts)
    }
}

/// Reads a journal, tolerating a torn last line.
pub fn replay(path: &Path) -> Result<Replay, JournalError> {
    let text = std::fs::read_to_string(path)?;
    let name = path.display().to_string();
    let ends_clean = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let header_line = lines.first().ok_or_else(|| JournalError::NoHeader(name.clone()))?;
    let probe: serde_json::Value =
        serde_json::from_str(header_line).map_err(|_| JournalError::NoHeader(name.clone()))?;
    let found = probe
        .get("llem_journal")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| JournalError::NoHeader(name.clone()))?;
    if !(u64::from(OLDEST_JOURNAL_VERSION)..=u64::from(JOURNAL_VERSION)).contains(&found) {
        return Err(JournalError::Version { path: name, found: found as u32 });
    }
    let header: Header = serde_json::from_value(probe).map_err(|e| JournalError::Corrupt {
        path: name.clone(),
        line: 1,
        error: e.to_string(),
    })?;
    let mut records = Vec::with_capacity(lines.len());
    let mut torn_tail = false;
    for (i, line) in lines.iter().enumerate().skip(1) {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            // Only the very last line may be torn, and only if the file does not end in
            // a newline (every complete record does).
            Err(_) if i == lines.len() - 1 && !ends_clean => torn_tail = true,
            Err(e) => return Err(JournalError::Corrupt { path: name, line: i + 1, error: e.to_string() }),
        }
    }
    Ok(Replay { header, records, torn_tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            llem_journal: JOURNAL_VERSION,
            sweep: "s".into(),
            sweep_file: "/w/s.yaml".into(),
            source_hash: "h".into(),
            created_at: "t".into(),
            snapshot: Some(Snapshot {
                dir: "sweep".into(),
                top: "s.yaml".into(),
                original_root: "/w".into(),
                original_file: "/w/s.yaml".into(),
            }),
            working_dir: Some("/w".into()),
            run_id: Some("s-20261201-0123abcd".into()),
        }
    }

    #[test]
    fn appends_replay_and_torn_tails() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::create(&path, &header()).expect("create");
        assert!(Journal::create(&path, &header()).is_err(), "never overwrites");
        j.append(&Record::Dispatched { job: "a-c1".into(), attempt: 1, node: "local".into(), at: "t".into() })
            .expect("append");
        j.append(&Record::Failed {
            job: "a-c1".into(),
            attempt: 1,
            kind: FailureKind::LostConnection,
            error: "crash".into(),
            retryable: true,
            at: "t".into(),
        })
        .expect("append");
        j.append(&Record::Dispatched { job: "a-c1".into(), attempt: 2, node: "local".into(), at: "t".into() })
            .expect("append");
        j.append(&Record::Finished { job: "a-c1".into(), attempt: 2, at: "t".into() }).expect("append");
        j.append(&Record::Allocated { id: "12".into(), hosts: vec!["gpu-a".into()], at: "t".into() }).expect("append");
        drop(j);
        // A crash in the middle of a line.
        OpenOptions::new().append(true).open(&path).expect("open").write_all(b"{\"event\":\"dispat").expect("write");
        let r = replay(&path).expect("replays");
        assert!(r.torn_tail);
        assert_eq!(r.records.len(), 5);
        assert_eq!(r.allocations(), ["12"]);
        let (outcomes, attempts) = r.outcomes();
        assert_eq!(outcomes.get("a-c1"), Some(&Outcome::Finished { attempt: 2 }));
        assert_eq!(attempts.get("a-c1"), Some(&2));
        // Anything malformed before the last line is corruption, not a torn tail.
        let text = std::fs::read_to_string(&path).expect("read");
        let mut bad = text.lines().take(3).collect::<Vec<_>>().join("\n");
        bad.push_str("\nnot json\n{\"event\":\"interrupted\",\"at\":\"t\"}\n");
        std::fs::write(&path, bad).expect("write");
        assert!(matches!(replay(&path), Err(JournalError::Corrupt { line: 4, .. })));
    }

    #[test]
    fn a_version_1_journal_keeps_loading() {
        // Written by the release before version 2 (checked in; never regenerated).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/journal-v1.jsonl");
        let r = replay(&path).expect("a v1 journal replays");
        assert_eq!(r.header.llem_journal, 1);
        assert_eq!(r.current_sweep(), (None, r.header.source_hash.as_str()), "no copy: the original file is used");
        let (outcomes, attempts) = r.outcomes();
        assert_eq!(outcomes.get("87cf823bcd68f0b7-c1"), Some(&Outcome::Finished { attempt: 1 }));
        assert_eq!(
            outcomes.get("83e9a68b00bc98eb-c1"),
            Some(&Outcome::Failed { attempt: 2, kind: FailureKind::EngineError }),
            "a v1 failure has no kind: read as an engine error"
        );
        assert_eq!(attempts.get("83e9a68b00bc98eb-c1"), Some(&2));
    }

    #[test]
    fn a_changed_sweep_becomes_the_current_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::create(&path, &header()).expect("create");
        let next = Snapshot {
            dir: "sweep-2".into(),
            top: "s.yaml".into(),
            original_root: "/w".into(),
            original_file: "/w/s2.yaml".into(),
        };
        j.append(&Record::SweepChanged { snapshot: next.clone(), source_hash: "h2".into(), at: "t".into() })
            .expect("append");
        let r = replay(&path).expect("replay");
        assert_eq!(r.current_sweep(), (Some(&next), "h2"));
    }

    #[test]
    fn other_versions_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, "{\"llem_journal\": 9}\n").expect("write");
        assert!(matches!(replay(&path), Err(JournalError::Version { found: 9, .. })));
    }
}
