#![no_main]
//! A node configuration file (`patchmesh_node::fuzzing::node_config`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_node::fuzzing::node_config(data));
