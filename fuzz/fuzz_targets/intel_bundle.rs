#![no_main]
//! `patchmesh_protocol::fuzzing::intel_bundle` under libFuzzer (`scripts/fuzz.sh`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_protocol::fuzzing::intel_bundle(data));
