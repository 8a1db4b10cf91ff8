//! The journal reader: torn, garbled and reordered lines give a replay or an error naming
//! the line, and whatever replays can be asked what is left to run.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("llem-fuzz-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("journal.jsonl");
    std::fs::write(&path, data).expect("write");
    if let Ok(replay) = llem::run::journal::replay(&path) {
        let _ = replay.outcomes();
        let _ = replay.failures();
        let _ = replay.allocations();
        let _ = replay.current_sweep();
    }
});
