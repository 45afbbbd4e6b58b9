#![no_main]
//! A full inventory another node sends (`patchmesh_node::fuzzing::peer_inventory`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_node::fuzzing::peer_inventory(data));
