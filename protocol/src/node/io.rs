//! What goes in and out of a [`super::Node`]: its configuration, inputs, commands, outputs, events,
//! what it asks to persist, and its counters.

use crate::catalog::CatalogEntry;
use crate::crypto::{Envelope, SecretKey, SignatureCheck};
use crate::ids::{NodeId, RolloutId, SiteId, StateHash};
use crate::rollout::{EffectResult, Facts, JournalEntry, RolloutEvent};
use crate::site::{Bundle, EvidenceKind, InventorySummary};
use crate::wire::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A connection handle chosen by the driver. Transport identity only: authority comes from the
/// admission certificate the peer presents, which must name the node key the transport
/// authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

/// Static configuration of a node.
#[derive(Clone)]
pub struct Config {
    /// The node's key.
    pub key: SecretKey,
    /// The node's admission certificate, signed by an admin.
    pub admission: Envelope,
    /// The mesh genesis.
    pub genesis: Envelope,
    /// Mean anti-entropy period.
    pub anti_entropy_interval_ms: u64,
    /// Minimum time between two summaries this node publishes for its site.
    pub summary_interval_ms: u64,
    /// Site objects and summaries to relay are batched and flushed at this period, so a burst
    /// of many small objects costs one message per peer rather than one per object.
    pub gossip_flush_ms: u64,
    /// Fresh summaries are pushed to this many random peers (anti-entropy completes the
    /// spread); site objects go to every same-site peer.
    pub summary_fanout: usize,
    /// Seed of the node's RNG (peer choice, jitter).
    pub seed: u64,
    /// The highest record version this node ever signed (persisted by the driver).
    pub record_version_floor: u64,
    /// Signature checker.
    pub check: Arc<dyn SignatureCheck>,
    /// How fresh objects are spread.
    pub relay: RelayMode,
    /// Rollouts are re-evaluated at least this often (windows, gates, soak timers); failure
    /// reports, admin commands and effect results trigger an evaluation at once.
    pub rollout_eval_ms: u64,
}

/// How fresh objects are spread (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// One [`Output::Send`] per peer.
    Direct,
    /// One [`Output::Broadcast`] per object on a pubsub topic.
    Topics,
}

/// A pubsub topic in [`RelayMode::Topics`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// Admin sets and catalog changes: every node.
    Control,
    /// Records and evidence of one site: that site's nodes.
    Site(SiteId),
    /// Site summaries: every node.
    Summaries,
}

/// The node's judgement of a pubsub message, for the driver's pubsub validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new to us: forward it.
    Accept,
    /// Invalid: drop it and lower the forwarder's score.
    Reject,
    /// Valid but not new (or not ours to judge): drop it without penalty.
    Ignore,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config({:?})", self.key.public())
    }
}

/// Something the node must act on.
#[derive(Clone, Debug)]
pub enum Input {
    /// Start: the node signs its first record (unless it restored one) and arms its timers.
    /// A driver sends it once, after [`super::Node::restore`] and before anything else.
    Start,
    /// The transport connected to a peer whose node key it authenticated.
    Connected {
        /// Connection handle.
        peer: PeerId,
        /// The node key the transport authenticated.
        node: NodeId,
    },
    /// The connection closed.
    Disconnected {
        /// Connection handle.
        peer: PeerId,
    },
    /// A decoded message from a peer.
    Message {
        /// Sender.
        peer: PeerId,
        /// The message.
        msg: Arc<Message>,
    },
    /// Raw bytes from a peer; decoded with limits first.
    Bytes {
        /// Sender.
        peer: PeerId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Raw bytes a peer forwarded on a pubsub topic ([`RelayMode::Topics`]); the node answers
    /// with [`Output::GossipVerdict`] carrying the same `token`.
    Gossip {
        /// The peer that forwarded it.
        peer: PeerId,
        /// The driver's handle on the message.
        token: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The deadline from [`super::Node::poll_timeout`] passed.
    Timer,
    /// A local command (from the CLI or an admin on this node).
    Command(Command),
    /// The result of an [`Output::Effect`].
    EffectDone(EffectResult),
}

/// A local command.
#[derive(Clone, Debug)]
pub enum Command {
    /// Sign and publish catalog edits as an admin.
    Publish {
        /// The admin key.
        admin: SecretKey,
        /// Entries to put (`Some`) or delete (`None`).
        edits: Vec<(String, Option<CatalogEntry>)>,
    },
    /// Verify, apply and spread a catalog change an admin signed elsewhere (see
    /// [`crate::catalog::Catalog::prepare`]); judged exactly like a peer's.
    Submit(Envelope),
    /// Apply and spread a root-signed admin set.
    AdminSet(Envelope),
    /// Re-sign this node's record with a new inventory summary (rollout standings are the
    /// node's own).
    UpdateRecord {
        /// Inventory summary.
        inventory: InventorySummary,
    },
    /// What the node is and has installed, and its time zone: what rollout selectors and
    /// windows read.
    SetFacts(Facts),
    /// Re-sign this node's record with its exposure to known vulnerabilities (computed by the
    /// driver from the intel bundle with [`crate::intel::report::exposure_summary`]); unchanged
    /// exposure signs nothing.
    SetExposure(Option<crate::intel::report::ExposureSummary>),
    /// Carry this audit-log checkpoint in the node's record from now on.
    SetAuditHead(crate::audit::Head),
    /// Sign and publish evidence.
    Report {
        /// The rollout observed.
        rollout: RolloutId,
        /// What happened.
        kind: EvidenceKind,
        /// Detail for audit.
        detail: String,
    },
}

/// What a local command did ([`super::Node::command`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A signed object (a catalog change, an admin set) was new: it is kept and spreading.
    Applied(crate::ids::ObjectId),
    /// The node already held it: nothing changed.
    Unchanged,
    /// Done at once (records, facts and evidence).
    Done,
}

/// What the driver must persist before it acknowledges anything depending on it.
#[derive(Clone, Debug)]
pub enum Persist {
    /// A verified catalog change.
    CatalogChange(Envelope),
    /// A verified admin set (the version floor rises with it).
    AdminSet(Envelope),
    /// A verified record or evidence bundle.
    SiteObject(Arc<Bundle>),
    /// A verified summary.
    Summary(Arc<Bundle>),
    /// The highest record version signed: must be flushed before the record is sent.
    RecordVersionFloor(u64),
    /// A verified failure report from anywhere in the fleet.
    Alarm(Arc<Bundle>),
    /// An install's journal entry: must be flushed before the effect that follows it runs.
    Journal(JournalEntry),
}

/// Something that happened, for logs, tests and the simulator.
#[derive(Clone, Debug)]
pub enum Event {
    /// A peer presented a valid admission certificate.
    PeerAdmitted {
        /// Connection.
        peer: PeerId,
        /// Its node.
        node: NodeId,
        /// Its site.
        site: SiteId,
    },
    /// New catalog changes were applied.
    CatalogChanged {
        /// The new state hash.
        state: StateHash,
    },
    /// An object was refused.
    Rejected {
        /// Who sent it (None for local commands).
        peer: Option<PeerId>,
        /// Why, as text.
        reason: String,
    },
    /// A rollout changed on this node.
    Rollout(RolloutEvent),
    /// The node's reach into the rest of the mesh changed state (see [`super::Reach`]).
    Reach(super::Reach),
}

/// What the node asks the driver to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send a message to a peer.
    Send {
        /// Recipient.
        peer: PeerId,
        /// The message (shared: relaying to many peers copies nothing).
        msg: Arc<Message>,
    },
    /// Persist this (and flush, for floors) before continuing.
    Persist(Persist),
    /// Close the connection.
    Disconnect {
        /// The peer.
        peer: PeerId,
    },
    /// Lower the peer's score (it sent something invalid).
    Penalize {
        /// The peer.
        peer: PeerId,
    },
    /// Publish on a pubsub topic ([`RelayMode::Topics`]).
    Broadcast {
        /// The topic.
        topic: Topic,
        /// The message.
        msg: Arc<Message>,
    },
    /// The verdict on an [`Input::Gossip`].
    GossipVerdict {
        /// The token of the input.
        token: u64,
        /// What to do with the message.
        verdict: Verdict,
    },
    /// An event.
    Event(Event),
    /// Carry out an install step; answer with [`Input::EffectDone`] and the same id. The
    /// journal entry persisted just before it says which step it is.
    Effect(crate::rollout::Effect),
}

/// Counters of what the node accepted and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Objects refused, by reason kind.
    pub rejected: BTreeMap<&'static str, u64>,
    /// New objects accepted.
    pub accepted: u64,
    /// Messages dropped because the sender was not admitted.
    pub unadmitted_dropped: u64,
    /// Outputs dropped because the driver did not drain the queue.
    pub outputs_dropped: u64,
    /// Summaries of its site this node endorsed.
    pub endorsed: u64,
}
