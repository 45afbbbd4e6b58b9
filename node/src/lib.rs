//! # patchmesh-node: the runtime that drives the protocol core on a real machine
//!
//! - [`daemon`]: the tokio driver that owns a `protocol::Node`, the libp2p swarm and the store.
//! - [`net`]: the libp2p swarm (QUIC/TCP, gossipsub, request-response, Kademlia, mDNS, NAT
//!   traversal) and how its identity binds to the node key.
//! - [`store`]: the sled store behind the [`store::Store`] trait.
//! - [`control`]: the local control API the CLI uses (Unix socket + token), and its typed
//!   views, shared by the daemon, the CLI and the tests.
//! - [`transfer`]: payload downloads (driving `protocol::transfer::fetch::Fetch`) and serving.
//! - [`content`]: the content store of verified payloads.
//! - [`clock`]: the wall clock (with a configurable offset for tests of wrong clocks).
//! - [`config`]: the daemon's TOML configuration.
//! - [`files`]: key and trust files on disk.
//! - [`inventory`]: what the machine is and has installed.
//! - [`units`]: figures as an admin reads them, shared by the CLI, dashboard and reports.
//! - [`executor`]: the install steps (stage, install, verify, rollback) for file, command and dpkg patches.
//!
//! This crate stands on `patchmesh-protocol` only; the simulator never depends on it.

pub mod activity;
pub mod audit;
pub mod clock;
pub mod config;
pub mod content;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod executor;
pub mod files;
pub mod fuzzing;
pub mod integrations;
pub mod intel;
pub mod inventory;
pub mod metrics;
pub mod net;
pub mod report;
pub mod store;
pub mod transfer;
pub mod units;
