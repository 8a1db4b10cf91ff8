//! Benchmark: replay a 100,000-event journal (what `llem resume` and `llem status` do).
//! Target: < 0.3 s.
//!
//!   cargo bench -p llem --bench journal_replay

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use llem::run::journal::{replay, Header, Journal, Record};

fn main() {
    let dir = std::env::temp_dir().join(format!("llem-journal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.jsonl");
    let header = Header {
        llem_journal: llem::run::journal::JOURNAL_VERSION,
        sweep: "bench".into(),
        sweep_file: "/bench/bench.yaml".into(),
        source_hash: "0".repeat(64),
        created_at: "2026-11-27T00:00:00.000Z".into(),
        snapshot: None,
        working_dir: None,
        run_id: None,
    };
    // Written as text in one go: appending 100,000 fsynced records would measure the disk.
    drop(Journal::create(&path, &header).unwrap());
    let mut text = std::fs::read_to_string(&path).unwrap();
    for i in 0..50_000u32 {
        let job = format!("{:016x}-c{}", u64::from(i) * 0x9E37_79B9, i % 3 + 1);
        let d = Record::Dispatched {
            job: job.clone(),
            attempt: 1,
            node: "local/cpu".into(),
            at: "2026-11-27T00:00:00.000Z".into(),
        };
        let f = Record::Finished { job, attempt: 1, at: "2026-11-27T00:00:01.000Z".into() };
        text.push_str(&serde_json::to_string(&d).unwrap());
        text.push('\n');
        text.push_str(&serde_json::to_string(&f).unwrap());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let r = replay(&path).unwrap();
        let (outcomes, _) = r.outcomes();
        times.push(start.elapsed().as_secs_f64());
        assert_eq!(r.records.len(), 100_000);
        assert_eq!(outcomes.len(), 50_000);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "journal_replay: 100000 events, replay + outcomes: median {:.3} s (min {:.3}, max {:.3}) over 5 runs",
        times[2], times[0], times[4]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
