//! `journal.jsonl`: every event of a run, append-only, one JSON object per line, fsync per
//! record. The first line is a versioned header. A torn last line (the process died while
//! writing it) is ignored on replay; anything else malformed is an error.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub llem_journal: u32,
    pub sweep: String,
    /// Path of the sweep file as given to `llem run`.
    pub sweep_file: String,
    pub source_hash: String,
    pub created_at: String,
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
        error: String,
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
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path}:{line}: not a journal record: {error}")]
    Corrupt { path: String, line: usize, error: String },
    #[error("{0} has no journal header")]
    NoHeader(String),
    #[error("{path} is journal version {found}; this llem reads version {JOURNAL_VERSION}")]
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
    Failed { attempt: u32 },
    Skipped,
}

impl Replay {
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
                Record::Failed { job, attempt, retryable: false, .. }
                    if !matches!(outcomes.get(job), Some(Outcome::Finished { .. })) =>
                {
                    outcomes.insert(job.clone(), Outcome::Failed { attempt: *attempt });
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
    if found != u64::from(JOURNAL_VERSION) {
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
            llem_journal: 1,
            sweep: "s".into(),
            sweep_file: "s.yaml".into(),
            source_hash: "h".into(),
            created_at: "t".into(),
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
            error: "crash".into(),
            retryable: true,
            at: "t".into(),
        })
        .expect("append");
        j.append(&Record::Dispatched { job: "a-c1".into(), attempt: 2, node: "local".into(), at: "t".into() })
            .expect("append");
        j.append(&Record::Finished { job: "a-c1".into(), attempt: 2, at: "t".into() }).expect("append");
        drop(j);
        // A crash in the middle of a line.
        OpenOptions::new().append(true).open(&path).expect("open").write_all(b"{\"event\":\"dispat").expect("write");
        let r = replay(&path).expect("replays");
        assert!(r.torn_tail);
        assert_eq!(r.records.len(), 4);
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
    fn other_versions_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, "{\"llem_journal\": 9}\n").expect("write");
        assert!(matches!(replay(&path), Err(JournalError::Version { found: 9, .. })));
    }
}
