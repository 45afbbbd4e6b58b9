//! # patchmesh-sim: the deterministic simulator
//!
//! Runs the protocol core ([`patchmesh_protocol::node::Node`]) for up to 100,000 nodes in a
//! discrete-event world with sites, LAN and WAN links (latency, bandwidth, loss), partitions,
//! crashes and restarts from a node's own store, clock skew and adversarial nodes; optionally
//! a patch payload fetched by every node with the core's download planner ([`payload`]) and a
//! rollout of a patch through rings, gates, windows and halts, with a fault model that makes
//! the patch fail on chosen nodes ([`rollout`]). It checks invariants and reports figures as
//! JSON. An admin uses it to rehearse a rollout; we use it to prove safety. One seed gives one
//! run, bit for bit.

pub mod enrol;
pub mod intel;
pub mod payload;
pub mod rehearsal;
pub mod rollout;
pub mod scenario;
pub mod stats;
pub mod world;

pub use scenario::Scenario;
pub use world::{run, Report};
