//! Multi-process tests of the real `patchmesh` binary (loopback and network namespaces) live in
//! this crate's `tests/` folder as the node runtime grows; the protocol harness and simulator
//! tests live beside their crates.
