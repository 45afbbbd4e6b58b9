//! # patchmesh-protocol: the sans-IO core
//!
//! Everything a patchmesh node decides is decided here, with no I/O: no sockets, no disk, no
//! clock and no OS randomness. The real node (`patchmesh-node`) and the simulator
//! (`patchmesh-sim`) both drive the same [`node::Node`], so what the simulator proves about a
//! rollout is a property of the code that runs on endpoints.
//!
//! ## The drive contract
//! A driver owns a [`node::Node`], restores it from its store ([`node::Node::restore`]), feeds
//! [`node::Input::Start`] once, and repeats:
//! 1. `node.handle_input(now, input)` with one [`node::Input`]: a message or raw bytes from a
//!    peer, a connection change, a timer, or a local command. `now` is the driver's clock in
//!    milliseconds since the Unix epoch; the node never reads a clock. Randomness comes from a
//!    seed in [`node::Config`] that the driver chooses.
//! 2. `while let Some(out) = node.poll_output()` — carry out every [`node::Output`] in order:
//!    send a message, persist (and flush floors) before anything that depends on it, disconnect,
//!    penalise a peer, log an event. The queue is bounded; a driver that does not drain it loses
//!    outputs (counted in [`node::Stats::outputs_dropped`]).
//! 3. `node.poll_timeout()` gives the next deadline; at or after it, feed [`node::Input::Timer`].
//!
//! After a restart the driver builds a new node from its config and calls
//! [`node::Node::restore`] with what it persisted; every object is verified again.
//!
//! ## Glossary
//! - **Mesh**: the nodes sharing one genesis. **Genesis**: mesh name, root keys, root threshold,
//!   first admins. **Mesh id**: BLAKE3 of the genesis body.
//! - **Admin set**: root-signed, versioned list of admin keys; **version floor**: the highest
//!   version accepted, persisted, never lowered; anything older is a **replay**.
//! - **Admission certificate**: admin-signed binding of a node key to a site, labels and expiry.
//! - **Envelope**: canonical body bytes plus signatures over `patchmesh/v1/<kind> || 0 || body`.
//! - **Catalog**: admin-written automerge document (patches, rollouts, commands); every change in
//!   an admin-signed envelope whose actor is bound to the signing key.
//! - **Node record**: a node's signed, versioned self-description; highest version wins.
//! - **Evidence**: signed install and health reports; a grow-only set.
//! - **Site state**: records and evidence of one site, held in full by its members.
//! - **Site summary**: signed counts for a site plus hashes committing to the objects behind
//!   them; how other sites see it.
//! - **State hash**: a hash over replicated state, equal on two nodes iff they hold the same.
//!
//! ## Modules
//! [`limits`] (every bound), [`ids`], [`crypto`] (encoding, envelopes), [`trust`] (genesis, admin
//! sets, admission), [`catalog`], [`site`] (records, evidence, summaries), [`rollout`] (policies,
//! rings, gates, halts, the install journal), [`transfer`] (payload verification, and the
//! [`transfer::fetch::Fetch`] machine that makes every decision of a download under the same
//! drive contract), [`wire`] (messages), and [`node`], which routes inputs to its sub-machines:
//!
//! ```text
//!                        node::Node  (handle_input routes; keep() = count → persist → spread)
//!   ┌──────────┬───────────┬─────────┬───────────┬────────┬──────────────────────────┐
//!   peers      replicas    relay     publisher   timers   rollouts
//!   who is     trust,      spread    record,     one      rollout::Engine
//!   admitted,  catalog,    now or    evidence,   deadline (rings, gates, halts,
//!   live,      site,       batched,  summary     per      install journal)
//!   late       summaries,  outbox    cadence     Timer
//!              alarms,
//!              repair
//! ```
//!
//! A driver's loop, in full (the real node and the simulator differ only in how they carry
//! out outputs and wait):
//!
//! ```no_run
//! use patchmesh_protocol::ids::Millis;
//! use patchmesh_protocol::node::{Input, Node, Output};
//!
//! fn drive(
//!     mut node: Node,
//!     clock: impl Fn() -> Millis,
//!     // Blocks until an input arrives or the deadline passes (then `None`).
//!     mut wait: impl FnMut(Option<Millis>) -> Option<Input>,
//!     mut carry_out: impl FnMut(Output),
//! ) {
//!     node.handle_input(clock(), Input::Start);
//!     loop {
//!         // Every output, in order: a `Persist` is stored (and floors flushed) before the
//!         // next output is carried out.
//!         while let Some(out) = node.poll_output() {
//!             carry_out(out);
//!         }
//!         let input = wait(node.poll_timeout()).unwrap_or(Input::Timer);
//!         node.handle_input(clock(), input);
//!     }
//! }
//! ```

#![warn(missing_docs)]

pub mod audit;
pub mod catalog;
pub mod crypto;
pub mod enrol;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod integrations;
pub mod intel;
pub mod limits;
pub mod mesh;
pub mod node;
pub mod rollout;
pub mod site;
pub mod transfer;
pub mod trust;
pub mod wire;
