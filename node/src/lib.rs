//! # patchmesh-node: the runtime that drives the protocol core on a real machine
//!
//! The tokio driver, libp2p swarm, sled store, executors and control API live here as they are
//! built. This crate stands on `patchmesh-protocol` only; the simulator never depends on it.
//!
//! So far it holds the on-disk form of keys and trust objects ([`files`]), which `patchmesh
//! init` writes and the daemon will read, and the inventory collector ([`inventory`]) whose
//! summary goes into the signed node record.

pub mod files;
pub mod inventory;
