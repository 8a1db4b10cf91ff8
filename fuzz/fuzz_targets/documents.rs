//! The documents an agent sends back: `result.json` and probe reports.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llem_common::probe::ProbeReport;
use llem_common::result::JobResult;

fuzz_target!(|data: &[u8]| {
    if let Ok(result) = serde_json::from_slice::<JobResult>(data) {
        let again = serde_json::to_vec(&result).expect("a read result writes");
        serde_json::from_slice::<JobResult>(&again).expect("and reads back");
    }
    if let Ok(probe) = serde_json::from_slice::<ProbeReport>(data) {
        let again = serde_json::to_vec(&probe).expect("a read probe writes");
        serde_json::from_slice::<ProbeReport>(&again).expect("and reads back");
    }
});
