#![no_main]
//! The dpkg status database the inventory reads (`patchmesh_node::fuzzing::dpkg_status`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| patchmesh_node::fuzzing::dpkg_status(data));
