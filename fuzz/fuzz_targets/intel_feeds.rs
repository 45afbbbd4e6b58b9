#![no_main]
//! The intel feeds an admin imports (`patchmesh_node::fuzzing::intel_feeds`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_node::fuzzing::intel_feeds(data));
