//! The protocol's frame decoder, both directions: length prefixes up to 4 GiB, garbage and
//! truncated frames give errors, never a panic or an allocation past `MAX_FRAME`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llem_common::protocol::{read_frame, FromAgent, ToAgent};

fuzz_target!(|data: &[u8]| {
    let mut to_agent = data;
    while let Ok(Some(_)) = read_frame::<ToAgent>(&mut to_agent) {}
    let mut from_agent = data;
    while let Ok(Some(_)) = read_frame::<FromAgent>(&mut from_agent) {}
});
