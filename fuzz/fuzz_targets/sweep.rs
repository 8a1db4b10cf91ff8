//! The sweep reader, bytes → YAML tree → validated sweep or diagnostics: never a panic,
//! and every diagnostic about the file's contents carries a position that renders.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("llem-fuzz-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, data).expect("write");
    if let Err(e) = llem::sweep::load(&path) {
        assert!(!e.diagnostics.is_empty(), "a refused sweep says why");
        for d in &e.diagnostics {
            assert!(d.span.is_some(), "a diagnostic without a position: {}", d.message);
        }
        let text = llem_common::diag::render_all(&e.diagnostics, &e.sources);
        assert!(text.contains("sweep.yaml:"), "the rendering names file:line:col: {text}");
    }
});
