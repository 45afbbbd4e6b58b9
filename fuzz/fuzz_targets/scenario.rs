#![no_main]
//! A simulator scenario file (`patchmesh-sim run FILE`): parsing and validation must refuse
//! with a reason, never panic (`simulations/tests/scenarios.rs` replays the seeds).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = patchmesh_sim::Scenario::parse(text, "fuzz");
    }
});
