#![no_main]
//! `patchmesh_protocol::fuzzing::node_inputs` under libFuzzer (`scripts/fuzz.sh`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_protocol::fuzzing::node_inputs(data));
