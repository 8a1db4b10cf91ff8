//! The openai engine's server-sent-events reader: any bytes, cut into any pieces, give the
//! same events as the whole at once, and each event's interpretation never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The module has no dependencies inside the agent; including it keeps candle out of the
// fuzz build.
#[path = "../../agent/src/workload/openai/sse.rs"]
#[allow(dead_code)]
mod sse;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where to cut the rest.
    let Some((&step, stream)) = data.split_first() else { return };
    let step = usize::from(step % 16) + 1;
    let mut whole = sse::EventReader::default();
    let all = whole.feed(stream);
    let mut pieces = sse::EventReader::default();
    let mut cut = Vec::new();
    for piece in stream.chunks(step) {
        cut.extend(pieces.feed(piece));
    }
    assert_eq!(all, cut, "events depend on how the bytes were cut");
    assert_eq!(whole.has_partial(), pieces.has_partial());
    for event in &all {
        let _ = sse::interpret(event);
    }
});
