//! The node state machine: one per endpoint, driven by the real node and by the simulator.
//!
//! It routes inputs to sub-machines — membership (peers and their admission), trust (admin sets),
//! catalog (signed automerge changes), site state (records and evidence) and summaries — and
//! queues outputs for the driver. See the crate docs for the drive contract.
//!
//! ## Gossip and anti-entropy
//! New objects are pushed at once to every admitted peer that should hold them (catalog changes
//! and summaries to all peers, site objects to peers of the same site), except the peer they came
//! from; a node relays only what it verified and stored as new. Because pushes can be lost, every
//! `anti_entropy_interval_ms` (jittered) a node sends a [`Message::Digest`] to one random admitted
//! peer, and to each peer once on connect; any digest that differs starts a repair exchange
//! (automerge sync for the catalog, key lists for site objects, rank lists for summaries).
//!
//! ## Relay modes
//! With [`RelayMode::Direct`] (the simulator) the node pushes every relay itself, one
//! [`Output::Send`] per peer. With [`RelayMode::Topics`] (the real node, over gossipsub) the node
//! emits one [`Output::Broadcast`] per fresh object it originated or repaired, on a [`Topic`];
//! objects that arrived by [`Input::Gossip`] are not re-sent by the node: the driver's pubsub
//! forwards them once the node answers with [`Output::GossipVerdict`] `Accept`. Anti-entropy is
//! the same in both modes.
//!
//! ## Misbehaviour
//! Anything that fails verification is refused, counted in [`Stats`], reported as
//! [`Event::Rejected`] and answered with [`Output::Penalize`]; it is never stored or relayed. A
//! peer without a valid admission certificate gets nothing and is disconnected.

use crate::catalog::{Catalog, CatalogEntry, CatalogError, Offer, PeerSync};
use crate::crypto::{DecodeError, Domain, Envelope, SecretKey, SignatureCheck};
use crate::ids::{Millis, NodeId, ObjectId, RolloutId, SiteId, StateHash};
use crate::limits;
use crate::rollout::alarms::Alarms;
use crate::rollout::engine::{EngineOut, View};
use crate::rollout::{EffectResult, Engine, Facts, JournalEntry, Policies, RolloutEvent};
use crate::site::{
    self, Bundle, Evidence, EvidenceKind, HeldSummary, InventorySummary, Merge, NodeRecord,
    SiteError, SiteState, Summaries,
};
use crate::trust::{Admitted, Trust, TrustError};
use crate::wire::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// The deadline from [`Node::poll_timeout`] passed.
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
    /// [`Catalog::prepare`]); judged exactly like a peer's.
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
}

#[derive(Debug)]
struct Peer {
    node: NodeId,
    admitted: Option<Admitted>,
    catalog: PeerSync,
    connected_at: Millis,
}

impl Peer {
    fn site(&self) -> Option<&SiteId> {
        self.admitted.as_ref().map(|a| &a.cert.site)
    }
}

/// Why an object from a peer was refused; the kind string is what [`Stats`] counts.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("hello names node {0:?} but the transport authenticated another key")]
    HelloMismatch(NodeId),
    #[error("this message kind may not travel by pubsub")]
    NotGossip,
    #[error("no valid hello within the admission timeout")]
    HelloTimeout,
}

impl Refusal {
    fn kind(&self) -> &'static str {
        use crate::crypto::SignatureError as S;
        let trust_kind = |t: &TrustError| match t {
            TrustError::Signature(S::Duplicate(_)) => "duplicate_signer",
            TrustError::Signature(_) => "bad_signature",
            TrustError::Decode(_) => "malformed",
            TrustError::WrongDomain { .. } => "wrong_domain",
            TrustError::WrongMesh { .. } => "wrong_mesh",
            TrustError::UnknownKey(_) => "unknown_key",
            TrustError::BelowThreshold { .. } => "below_threshold",
            TrustError::Revoked(_) => "revoked",
            TrustError::Replay { .. } => "replay",
            TrustError::Gap { .. } => "gap",
            TrustError::Expired { .. } => "expired",
            TrustError::Invalid(_) => "invalid",
        };
        match self {
            Refusal::Trust(t) => trust_kind(t),
            Refusal::Catalog(CatalogError::Trust(t)) => trust_kind(t),
            Refusal::Catalog(CatalogError::RevokedHistory { .. }) => "revoked",
            Refusal::Catalog(CatalogError::Decode(_)) => "malformed",
            Refusal::Catalog(_) => "bad_catalog",
            Refusal::Site(SiteError::Trust(t)) => trust_kind(t),
            Refusal::Site(SiteError::Replay { .. }) => "replay",
            Refusal::Site(SiteError::Decode(_)) => "malformed",
            Refusal::Site(_) => "bad_site_object",
            Refusal::Decode(DecodeError::TooLarge { .. }) => "oversized",
            Refusal::Decode(_) => "malformed",
            Refusal::HelloMismatch(_) => "hello_mismatch",
            Refusal::NotGossip => "not_gossip",
            Refusal::HelloTimeout => "hello_timeout",
        }
    }
}

/// The protocol state machine of one node.
pub struct Node {
    config: Config,
    id: NodeId,
    own: Admitted,
    trust: Trust,
    catalog: Catalog,
    site: SiteState,
    summaries: Summaries,
    peers: BTreeMap<PeerId, Peer>,
    outputs: VecDeque<Output>,
    rng: ChaCha8Rng,
    now: Millis,
    next_tick: Millis,
    next_flush: Option<Millis>,
    /// Fresh site objects to relay to same-site peers, with the peer each came from.
    outbox_site: Vec<(Arc<Bundle>, Option<PeerId>)>,
    /// Fresh summaries to relay to all peers, with the peer each came from.
    outbox_summaries: Vec<(Arc<Bundle>, Option<PeerId>)>,
    record_version: u64,
    started: bool,
    last_summary_at: Option<Millis>,
    site_changed_at: Millis,
    reporter_cache: Option<(StateHash, bool)>,
    last_summary_digest: Option<StateHash>,
    stats: Stats,
    /// While an [`Input::Gossip`] is handled: the verdict so far.
    gossip: Option<Verdict>,
    inventory: InventorySummary,
    engine: Engine,
    alarms: Alarms,
    policies: Arc<Policies>,
    policies_stale: bool,
    rollouts_due: bool,
    next_rollout_eval: Millis,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({:?})", self.id)
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The genesis or the node's own certificate does not verify.
    #[error("trust: {0}")]
    Trust(#[from] TrustError),
    /// The certificate names another key.
    #[error("admission certificate is for {cert:?}, this node is {node:?}")]
    NotOurCert {
        /// The certificate's node.
        cert: NodeId,
        /// Our key.
        node: NodeId,
    },
}

impl Node {
    /// A node at time `now`. Call [`Node::restore`] (if there is a store) before the first input;
    /// the first input starts the node, which signs its first record unless it restored one.
    pub fn new(config: Config, now: Millis) -> Result<Node, StartError> {
        let trust = Trust::new(config.genesis.clone(), config.check.as_ref())?;
        let own = trust.check_admission(&config.admission, now, config.check.as_ref())?;
        let id = NodeId(config.key.public().0);
        if own.cert.node != id {
            return Err(StartError::NotOurCert { cert: own.cert.node, node: id });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let first_tick = now.plus(rng.gen_range(0..=config.anti_entropy_interval_ms.max(1)));
        let node = Node {
            catalog: Catalog::new(trust.mesh()),
            site: SiteState::new(own.cert.site.clone()),
            summaries: Summaries::default(),
            peers: BTreeMap::new(),
            outputs: VecDeque::new(),
            rng,
            now,
            next_tick: first_tick,
            next_flush: None,
            outbox_site: Vec::new(),
            outbox_summaries: Vec::new(),
            record_version: config.record_version_floor,
            started: false,
            last_summary_at: None,
            site_changed_at: now,
            reporter_cache: None,
            last_summary_digest: None,
            stats: Stats::default(),
            gossip: None,
            inventory: InventorySummary::default(),
            engine: Engine::default(),
            alarms: Alarms::default(),
            policies: Arc::new(Policies::default()),
            policies_stale: true,
            rollouts_due: true,
            next_rollout_eval: now,
            id,
            own,
            trust,
            config,
        };
        Ok(node)
    }

    /// Restores verified state from the driver's store. Every object is verified again: a
    /// store is no more trusted than a peer.
    pub fn restore(&mut self, persisted: &[Persist]) -> usize {
        let mut refused = 0;
        let check = self.config.check.clone();
        // Trust first: later objects are judged by the admin set the store reached.
        for p in persisted {
            if let Persist::AdminSet(env) = p {
                if self.trust.apply_admin_set(env, check.as_ref()).is_err() {
                    refused += 1;
                }
            }
        }
        let (mut records, mut summaries) = (Vec::new(), Vec::new());
        for p in persisted {
            let ok = match p {
                Persist::AdminSet(_) => true,
                Persist::CatalogChange(env) => {
                    self.catalog.offer(env, &self.trust, check.as_ref()).is_ok()
                }
                Persist::SiteObject(b) if b.object().domain == Domain::NodeRecord => {
                    match site::verify_record(b, &self.trust, self.now, check.as_ref()) {
                        Ok(h) => {
                            records.push(h);
                            true
                        }
                        Err(_) => false,
                    }
                }
                Persist::SiteObject(b) => self.accept_site_object(b).is_ok(),
                Persist::Summary(b) => {
                    match site::verify_summary(b, &self.trust, self.now, check.as_ref()) {
                        Ok(h) => {
                            summaries.push(h);
                            true
                        }
                        Err(_) => false,
                    }
                }
                Persist::RecordVersionFloor(v) => {
                    self.record_version = self.record_version.max(*v);
                    true
                }
                Persist::Alarm(b) => match Alarms::verify(b, &self.trust, self.now, check.as_ref()) {
                    Ok(a) => self.alarms.merge(a).is_ok(),
                    Err(_) => false,
                },
                Persist::Journal(entry) => {
                    self.engine.restore(entry.clone());
                    true
                }
            };
            if !ok {
                refused += 1;
            }
        }
        // Superseded versions in a store are expected, not refusals.
        self.site.merge_records(records);
        if let Some(held) = self.site.records().get(&self.id) {
            self.inventory = held.record().inventory.clone();
        }
        self.summaries.merge_all(summaries);
        // Restoring queued a persist for every object; drop them and their capacity.
        self.outputs = VecDeque::new();
        self.outbox_site = Vec::new();
        self.outbox_summaries = Vec::new();
        self.next_flush = None;
        refused
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// This node's site.
    pub fn site_id(&self) -> &SiteId {
        self.site.site()
    }
    /// The catalog replica.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    /// Trust state.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }
    /// The site state.
    pub fn site(&self) -> &SiteState {
        &self.site
    }
    /// Site summaries held.
    pub fn summaries(&self) -> &Summaries {
        &self.summaries
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Admitted peers.
    pub fn admitted_peers(&self) -> impl Iterator<Item = (PeerId, NodeId, &SiteId)> {
        self.peers.iter().filter_map(|(p, peer)| peer.site().map(|s| (*p, peer.node, s)))
    }

    /// Hash of everything replicated that every node of this site should agree on: trust
    /// version, catalog and site state.
    pub fn state_hash(&mut self) -> StateHash {
        let catalog = self.catalog.state_hash();
        let site = self.site.digest();
        StateHash(crate::crypto::hash_parts(&[
            &self.trust.version().to_le_bytes(),
            &catalog.0,
            &site.0,
        ]))
    }

    /// The next time [`Input::Timer`] is due.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t = self.next_flush.map_or(self.next_tick, |f| f.min(self.next_tick));
        if !self.policies.rollouts.is_empty() || self.engine.busy() {
            t = t.min(self.next_rollout_eval);
        }
        if let Some(w) = self.engine.next_wake() {
            t = t.min(w);
        }
        Some(t)
    }

    /// Next output for the driver, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Feeds one input at time `now`.
    pub fn handle_input(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        if !self.started {
            self.started = true;
            if self.site.record_version(&self.id).is_none() {
                self.update_record();
            }
        }
        match input {
            Input::Connected { peer, node } => self.on_connected(peer, node),
            Input::Disconnected { peer } => {
                self.peers.remove(&peer);
            }
            Input::Message { peer, msg } => self.on_message(peer, msg),
            Input::Bytes { peer, bytes } => match Message::from_bytes(&bytes) {
                Ok(msg) => self.on_message(peer, Arc::new(msg)),
                Err(e) => self.refuse(Some(peer), e.into()),
            },
            Input::Gossip { peer, token, bytes } => self.on_gossip(peer, token, &bytes),
            Input::Timer => {
                if self.next_flush.is_some_and(|f| self.now >= f) {
                    self.flush();
                }
                if self.now >= self.next_tick {
                    self.on_tick();
                }
            }
            Input::Command(cmd) => self.on_command(cmd),
            Input::EffectDone(result) => {
                let outs = self.engine.on_result(result, &self.policies, self.now);
                self.apply_engine(outs);
                self.rollouts_due = true;
            }
        }
        self.drive_rollouts();
    }

    fn push(&mut self, out: Output) {
        if self.outputs.len() >= limits::OUTPUT_QUEUE_MAX {
            self.stats.outputs_dropped += 1;
            return;
        }
        self.outputs.push_back(out);
    }

    fn send(&mut self, peer: PeerId, msg: Arc<Message>) {
        self.push(Output::Send { peer, msg });
    }

    fn on_gossip(&mut self, peer: PeerId, token: u64, bytes: &[u8]) {
        let admitted = self.peers.get(&peer).is_some_and(|p| p.admitted.is_some());
        let verdict = match Message::from_bytes(bytes) {
            // Only fresh-object messages travel by pubsub; anything else there is a violation.
            Ok(msg)
                if matches!(
                    msg,
                    Message::AdminSets(_)
                        | Message::CatalogChange(_)
                        | Message::SiteObjects(_)
                        | Message::Summaries(_)
                        | Message::Alarms { reply: false, .. }
                ) =>
            {
                if admitted {
                    self.gossip = Some(Verdict::Ignore);
                    self.on_message(peer, Arc::new(msg));
                    self.gossip.take().unwrap_or(Verdict::Ignore)
                } else {
                    // No certificate yet: its data is not judged, and it is not forwarded.
                    self.stats.unadmitted_dropped += 1;
                    Verdict::Ignore
                }
            }
            Ok(_) => {
                self.refuse(Some(peer), Refusal::NotGossip);
                Verdict::Reject
            }
            Err(e) => {
                self.refuse(Some(peer), e.into());
                Verdict::Reject
            }
        };
        self.push(Output::GossipVerdict { token, verdict });
    }

    /// Notes that a gossiped object was new and valid (forward it), unless something in the
    /// same message was invalid.
    fn gossip_accepted(&mut self) {
        if self.gossip == Some(Verdict::Ignore) {
            self.gossip = Some(Verdict::Accept);
        }
    }

    fn refuse(&mut self, peer: Option<PeerId>, why: Refusal) {
        let kind = why.kind();
        if self.gossip.is_some() && !matches!(kind, "replay" | "gap") {
            self.gossip = Some(Verdict::Reject);
        }
        *self.stats.rejected.entry(kind).or_default() += 1;
        // A stale version can arrive from an honest peer through a gossip race; only outright
        // invalid objects cost the sender score.
        if let (Some(peer), false) = (peer, matches!(kind, "replay" | "gap")) {
            self.push(Output::Penalize { peer });
        }
        self.push(Output::Event(Event::Rejected { peer, reason: why.to_string() }));
    }

    fn hello(&self) -> Arc<Message> {
        Arc::new(Message::Hello {
            mesh: self.trust.mesh(),
            admission: self.config.admission.clone(),
            trust_version: self.trust.version(),
        })
    }

    fn on_connected(&mut self, peer: PeerId, node: NodeId) {
        if self.peers.len() >= limits::PEERS_MAX && !self.peers.contains_key(&peer) {
            self.push(Output::Disconnect { peer });
            return;
        }
        let connected_at = self.now;
        self.peers.insert(
            peer,
            Peer { node, admitted: None, catalog: PeerSync::default(), connected_at },
        );
        let hello = self.hello();
        self.send(peer, hello);
    }

    fn on_message(&mut self, peer: PeerId, msg: Arc<Message>) {
        let Some(state) = self.peers.get(&peer) else { return };
        if let Message::Hello { admission, .. } = msg.as_ref() {
            let node = state.node;
            return self.on_hello(peer, node, admission);
        }
        if state.admitted.is_none() {
            // No certificate, no state exchange: its data is ignored and it is dropped.
            self.stats.unadmitted_dropped += 1;
            self.peers.remove(&peer);
            self.push(Output::Disconnect { peer });
            return;
        }
        match msg.as_ref() {
            Message::Hello { .. } => {}
            Message::AdminSets(sets) => self.on_admin_sets(peer, sets),
            Message::CatalogChange(env) => self.on_catalog_change(peer, env, &msg),
            Message::CatalogSync(sync) => self.on_catalog_sync(peer, sync),
            Message::Digest { catalog, site, summaries, alarms, trust_version } => {
                self.on_digest(peer, *catalog, *site, *summaries, *alarms, *trust_version)
            }
            Message::Alarms { bundles, reply } => self.accept_alarms(Some(peer), bundles, *reply),
            Message::SiteKeys { keys, reply } => {
                if self.peer_site(peer) == Some(self.site.site().clone()) {
                    let mut theirs = keys.clone();
                    theirs.sort_unstable();
                    theirs.dedup();
                    let missing = self.site.missing_from(&theirs, limits::OBJECTS_PER_SYNC_MAX);
                    if !missing.is_empty() {
                        self.send(peer, Arc::new(Message::SiteObjects(missing)));
                    }
                    let mine = self.site.keys();
                    if *reply && theirs.iter().any(|k| mine.binary_search(k).is_err()) {
                        self.send(peer, Arc::new(Message::SiteKeys { keys: mine, reply: false }));
                    }
                }
            }
            Message::SiteObjects(bundles) => self.on_site_objects(peer, bundles),
            Message::SummaryRanks { ranks, reply } => {
                let newer = self.summaries.newer_than(ranks, limits::OBJECTS_PER_SYNC_MAX);
                if !newer.is_empty() {
                    self.send(peer, Arc::new(Message::Summaries(newer)));
                }
                let mine = self.summaries.ranks();
                let theirs_newer = ranks
                    .iter()
                    .any(|(s, r)| mine.iter().find(|(m, _)| m == s).is_none_or(|(_, mr)| mr < r));
                if *reply && theirs_newer {
                    self.send(peer, Arc::new(Message::SummaryRanks { ranks: mine, reply: false }));
                }
            }
            Message::Summaries(bundles) => self.on_summaries(peer, bundles),
        }
    }

    fn peer_site(&self, peer: PeerId) -> Option<SiteId> {
        self.peers.get(&peer).and_then(|p| p.site().cloned())
    }

    fn on_hello(&mut self, peer: PeerId, node: NodeId, admission: &Envelope) {
        match self.trust.check_admission(admission, self.now, self.config.check.as_ref()) {
            Ok(admitted) if admitted.cert.node == node => {
                let site = admitted.cert.site.clone();
                if let Some(p) = self.peers.get_mut(&peer) {
                    let first = p.admitted.is_none();
                    p.admitted = Some(admitted);
                    if first {
                        self.push(Output::Event(Event::PeerAdmitted { peer, node, site }));
                        // Anti-entropy on connect.
                        let digest = self.digest();
                        self.send(peer, digest);
                    }
                }
            }
            Ok(_) => {
                self.refuse(Some(peer), Refusal::HelloMismatch(node));
                self.peers.remove(&peer);
                self.push(Output::Disconnect { peer });
            }
            Err(e) => {
                self.refuse(Some(peer), e.into());
                self.peers.remove(&peer);
                self.push(Output::Disconnect { peer });
            }
        }
    }

    fn digest(&mut self) -> Arc<Message> {
        Arc::new(Message::Digest {
            catalog: self.catalog.state_hash(),
            site: self.site.digest(),
            summaries: self.summaries.digest(),
            alarms: self.alarms.digest(),
            trust_version: self.trust.version(),
        })
    }

    fn on_digest(
        &mut self,
        peer: PeerId,
        catalog: StateHash,
        site: StateHash,
        summaries: StateHash,
        alarms: StateHash,
        trust_version: u64,
    ) {
        if alarms != self.alarms.digest() {
            let bundles = self.alarms.bundles_except(&[], limits::OBJECTS_PER_SYNC_MAX);
            self.send(peer, Arc::new(Message::Alarms { bundles, reply: true }));
        }
        if trust_version < self.trust.version() {
            let chain = self.trust.chain().to_vec();
            self.send(peer, Arc::new(Message::AdminSets(chain)));
        }
        if catalog != self.catalog.state_hash() {
            self.catalog_sync_to(peer);
        }
        if self.peer_site(peer) == Some(self.site.site().clone()) && site != self.site.digest() {
            let keys = self.site.keys();
            self.send(peer, Arc::new(Message::SiteKeys { keys, reply: true }));
        }
        if summaries != self.summaries.digest() {
            let ranks = self.summaries.ranks();
            self.send(peer, Arc::new(Message::SummaryRanks { ranks, reply: true }));
        }
    }

    fn catalog_sync_to(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if let Some(sync) = self.catalog.sync_message(&mut p.catalog) {
            self.send(peer, Arc::new(Message::CatalogSync(sync)));
        }
    }

    fn relay(&mut self, from: Option<PeerId>, msg: Arc<Message>, same_site_only: bool) {
        if self.config.relay == RelayMode::Topics {
            // Pubsub forwards what came by pubsub; the rest is published once.
            if self.gossip.is_none() {
                let topic = if same_site_only {
                    Topic::Site(self.site.site().clone())
                } else {
                    Topic::Control
                };
                self.push(Output::Broadcast { topic, msg });
            }
            return;
        }
        let targets: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, peer)| Some(**p) != from && peer.admitted.is_some())
            .filter(|(_, peer)| !same_site_only || peer.site() == Some(self.site.site()))
            .map(|(p, _)| *p)
            .collect();
        for p in targets {
            self.send(p, msg.clone());
        }
    }

    /// True if we hold this exact record already; such a copy needs no verification.
    fn holds_record_bytes(&self, bundle: &Bundle) -> bool {
        let (Some(hash), Some(signer)) = (bundle.body_hash(), bundle.object().signatures.first())
        else {
            return false;
        };
        self.site.records().get(&NodeId(signer.key.0)).is_some_and(|held| held.body_hash() == hash)
    }

    fn queue_relay(&mut self, bundle: Arc<Bundle>, from: Option<PeerId>, site_object: bool) {
        if self.gossip.is_some() && self.config.relay == RelayMode::Topics {
            return;
        }
        let outbox = if site_object { &mut self.outbox_site } else { &mut self.outbox_summaries };
        if outbox.len() < limits::OBJECTS_PER_SYNC_MAX * 4 {
            outbox.push((bundle, from));
        }
        if self.next_flush.is_none() {
            self.next_flush = Some(self.now.plus(self.config.gossip_flush_ms));
        }
    }

    /// Sends each peer one batch of the fresh objects it did not send us.
    fn flush(&mut self) {
        self.next_flush = None;
        let site_objects = std::mem::take(&mut self.outbox_site);
        let summaries = std::mem::take(&mut self.outbox_summaries);
        if self.config.relay == RelayMode::Topics {
            let batch = |items: Vec<(Arc<Bundle>, Option<PeerId>)>| -> Vec<Arc<Bundle>> {
                items.into_iter().map(|(b, _)| b).take(limits::OBJECTS_PER_SYNC_MAX).collect()
            };
            let site_batch = batch(site_objects);
            if !site_batch.is_empty() {
                let topic = Topic::Site(self.site.site().clone());
                self.push(Output::Broadcast {
                    topic,
                    msg: Arc::new(Message::SiteObjects(site_batch)),
                });
            }
            let summary_batch = batch(summaries);
            if !summary_batch.is_empty() {
                let msg = Arc::new(Message::Summaries(summary_batch));
                self.push(Output::Broadcast { topic: Topic::Summaries, msg });
            }
            return;
        }
        let peers: Vec<(PeerId, bool)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.admitted.is_some())
            .map(|(id, p)| (*id, p.site() == Some(self.site.site())))
            .collect();
        // Summaries go to a random few peers; which ones is drawn from the node's own RNG.
        let mut summary_targets: Vec<PeerId> = peers.iter().map(|(p, _)| *p).collect();
        for i in (1..summary_targets.len()).rev() {
            summary_targets.swap(i, self.rng.gen_range(0..=i));
        }
        summary_targets.truncate(self.config.summary_fanout);
        for (peer, same_site) in peers {
            let pick = |items: &[(Arc<Bundle>, Option<PeerId>)]| -> Vec<Arc<Bundle>> {
                items
                    .iter()
                    .filter(|(_, from)| *from != Some(peer))
                    .map(|(b, _)| b.clone())
                    .take(limits::OBJECTS_PER_SYNC_MAX)
                    .collect()
            };
            if same_site {
                let batch = pick(&site_objects);
                if !batch.is_empty() {
                    self.send(peer, Arc::new(Message::SiteObjects(batch)));
                }
            }
            let batch = if summary_targets.contains(&peer) { pick(&summaries) } else { Vec::new() };
            if !batch.is_empty() {
                self.send(peer, Arc::new(Message::Summaries(batch)));
            }
        }
    }

    fn on_admin_sets(&mut self, peer: PeerId, sets: &[Envelope]) {
        let mut advanced = false;
        for env in sets {
            match self.trust.apply_admin_set(env, self.config.check.as_ref()) {
                Ok(true) => {
                    advanced = true;
                    self.gossip_accepted();
                    self.stats.accepted += 1;
                    self.push(Output::Persist(Persist::AdminSet(env.clone())));
                }
                Ok(false) => {}
                // Versions we already passed are harmless in a chain someone sends whole.
                Err(TrustError::Replay { .. }) if self.is_in_chain(env) => {}
                Err(e) => {
                    self.refuse(Some(peer), e.into());
                    break;
                }
            }
        }
        if advanced {
            let chain = self.trust.chain().to_vec();
            self.relay(Some(peer), Arc::new(Message::AdminSets(chain)), false);
        }
    }

    fn is_in_chain(&self, env: &Envelope) -> bool {
        self.trust.chain().iter().any(|e| e == env)
    }

    fn on_catalog_change(&mut self, peer: PeerId, env: &Envelope, msg: &Arc<Message>) {
        match self.catalog.offer(env, &self.trust, self.config.check.as_ref()) {
            Ok(Offer::New) => {
                self.gossip_accepted();
                self.stats.accepted += 1;
                self.catalog_changed(Some(peer), env.clone(), Some(msg.clone()));
            }
            Ok(Offer::Duplicate) => {}
            Err(e) => self.refuse(Some(peer), e.into()),
        }
    }

    /// A new change was applied: persist it, report it, spread it (reusing the message it came
    /// in, if any).
    fn catalog_changed(&mut self, from: Option<PeerId>, env: Envelope, msg: Option<Arc<Message>>) {
        self.policies_stale = true;
        self.rollouts_due = true;
        self.push(Output::Persist(Persist::CatalogChange(env.clone())));
        let state = self.catalog.state_hash();
        self.push(Output::Event(Event::CatalogChanged { state }));
        let msg = msg.unwrap_or_else(|| Arc::new(Message::CatalogChange(Arc::new(env))));
        self.relay(from, msg, false);
    }

    fn on_catalog_sync(&mut self, peer: PeerId, sync: &crate::catalog::CatalogSync) {
        let Some(mut p) = self.peers.remove(&peer) else { return };
        let result = self.catalog.receive_sync(
            &mut p.catalog,
            sync,
            &self.trust,
            self.config.check.as_ref(),
        );
        let reply = self.catalog.sync_message(&mut p.catalog);
        self.peers.insert(peer, p);
        match result {
            Ok(fresh) => {
                if !fresh.is_empty() {
                    self.policies_stale = true;
                    self.rollouts_due = true;
                    self.stats.accepted += fresh.len() as u64;
                    for env in &fresh {
                        self.push(Output::Persist(Persist::CatalogChange(env.clone())));
                    }
                    let state = self.catalog.state_hash();
                    self.push(Output::Event(Event::CatalogChanged { state }));
                    // Changes repaired by sync are pushed on, so a healed partition spreads them
                    // as fast as fresh gossip.
                    for env in fresh {
                        self.relay(
                            Some(peer),
                            Arc::new(Message::CatalogChange(Arc::new(env))),
                            false,
                        );
                    }
                }
            }
            Err(e) => self.refuse(Some(peer), e.into()),
        }
        if let Some(reply) = reply {
            self.send(peer, Arc::new(Message::CatalogSync(reply)));
        }
    }

    fn accept_site_object(&mut self, bundle: &Arc<Bundle>) -> Result<Merge, Refusal> {
        let check = self.config.check.clone();
        match bundle.object().domain {
            Domain::NodeRecord => {
                let held = site::verify_record(bundle, &self.trust, self.now, check.as_ref())?;
                Ok(self.site.merge_record(held)?)
            }
            Domain::Evidence => {
                let ev = site::verify_evidence(bundle, &self.trust, self.now, check.as_ref())?;
                Ok(self.site.merge_evidence(ev, bundle.clone())?)
            }
            other => {
                Err(TrustError::WrongDomain { expected: Domain::NodeRecord, got: other }.into())
            }
        }
    }

    fn on_site_objects(&mut self, peer: PeerId, bundles: &[Arc<Bundle>]) {
        for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
            if self.holds_record_bytes(bundle) {
                continue;
            }
            match self.accept_site_object(bundle) {
                Ok(Merge::New) => {
                    self.gossip_accepted();
                    self.stats.accepted += 1;
                    self.site_changed_at = self.now;
                    self.push(Output::Persist(Persist::SiteObject(bundle.clone())));
                    self.queue_relay(bundle.clone(), Some(peer), true);
                }
                Ok(Merge::Duplicate) => {}
                // Another site's object is not ours to keep; not misbehaviour by itself.
                Err(Refusal::Site(SiteError::ForeignSite(_))) => {}
                Err(e) => self.refuse(Some(peer), e),
            }
        }
    }

    fn accept_summary(&mut self, bundle: &Arc<Bundle>) -> Result<Merge, Refusal> {
        let check = self.config.check.clone();
        let (site, rank) = site::summary_rank(bundle, check.as_ref())?;
        if self.summaries.rank_of(site).is_some_and(|held| held >= rank) {
            return Ok(Merge::Duplicate);
        }
        let held: HeldSummary =
            site::verify_summary(bundle, &self.trust, self.now, check.as_ref())?;
        Ok(self.summaries.merge(held)?)
    }

    fn on_summaries(&mut self, peer: PeerId, bundles: &[Arc<Bundle>]) {
        for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
            match self.accept_summary(bundle) {
                Ok(Merge::New) => {
                    self.gossip_accepted();
                    self.stats.accepted += 1;
                    self.push(Output::Persist(Persist::Summary(bundle.clone())));
                    self.queue_relay(bundle.clone(), Some(peer), false);
                }
                Ok(Merge::Duplicate) => {}
                Err(e) => self.refuse(Some(peer), e),
            }
        }
    }

    fn on_tick(&mut self) {
        let interval = self.config.anti_entropy_interval_ms.max(1);
        let jitter = self.rng.gen_range(0..=interval / 2);
        self.next_tick = self.now.plus(interval - interval / 4 + jitter);
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.admitted.is_none() && self.now.since(p.connected_at) >= limits::HELLO_TIMEOUT_MS
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in late {
            self.refuse(Some(peer), Refusal::HelloTimeout);
            self.peers.remove(&peer);
            self.push(Output::Disconnect { peer });
        }
        let admitted: Vec<PeerId> =
            self.peers.iter().filter(|(_, p)| p.admitted.is_some()).map(|(id, _)| *id).collect();
        if !admitted.is_empty() {
            let peer = admitted[self.rng.gen_range(0..admitted.len())];
            let digest = self.digest();
            self.send(peer, digest);
        }
        self.maybe_publish_summary();
    }

    /// The site's reporter is the member whose id hashes lowest with the site name: every
    /// member holding the same records elects the same one, with no coordination.
    fn is_reporter(&mut self) -> bool {
        // Re-elect only when the set of records changed (the digest moved).
        let digest = self.site.digest();
        if let Some((at, answer)) = self.reporter_cache {
            if at == digest {
                return answer;
            }
        }
        let score = |n: &NodeId| site::reporter_score(self.site.site(), n);
        let mine = score(&self.id);
        let answer = self.site.records().keys().all(|n| *n == self.id || score(n) > mine);
        self.reporter_cache = Some((digest, answer));
        answer
    }

    /// A site's summary is published when its state has been quiet for an anti-entropy period
    /// (so one summary covers a burst of changes), at most once per summary interval, and at
    /// least every four intervals while the site keeps changing.
    fn maybe_publish_summary(&mut self) {
        let since_last = self.last_summary_at.map(|t| self.now.since(t));
        let interval = self.config.summary_interval_ms;
        let quiet = self.now.since(self.site_changed_at) >= self.config.anti_entropy_interval_ms;
        let due = match since_last {
            None => quiet,
            Some(ms) => ms >= interval && (quiet || ms >= 4 * interval),
        };
        if !due || !self.is_reporter() {
            return;
        }
        let digest = self.site.digest();
        if self.last_summary_digest == Some(digest) {
            return;
        }
        let summary = self.site.summarise(self.trust.mesh(), self.id);
        self.last_summary_digest = Some(digest);
        // A summary already in circulation that says the same (e.g. restored from the store)
        // is not republished.
        if let Some(held) = self.summaries.all().get(self.site.site()) {
            let h = held.summary();
            if (h.records_root, h.evidence_root, &h.counts, &h.evidence)
                == (summary.records_root, summary.evidence_root, &summary.counts, &summary.evidence)
            {
                return;
            }
        }
        let bundle = Arc::new(Bundle::new(
            Envelope::seal(Domain::SiteSummary, &summary, &[&self.config.key]),
            self.config.admission.clone(),
        ));
        self.last_summary_at = Some(self.now);
        if let Ok(Merge::New) = self.accept_summary(&bundle) {
            self.push(Output::Persist(Persist::Summary(bundle.clone())));
            self.queue_relay(bundle, None, false);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { admin, edits } => {
                let mut session = [0u8; 8];
                session.copy_from_slice(&self.id.0[..8]);
                match self.catalog.author(&admin, session, self.now, &self.trust, &edits) {
                    Ok(env) => self.catalog_changed(None, env, None),
                    Err(e) => self.refuse(None, e.into()),
                }
            }
            Command::Submit(env) => {
                match self.catalog.offer(&env, &self.trust, self.config.check.as_ref()) {
                    Ok(Offer::New) => {
                        self.stats.accepted += 1;
                        self.catalog_changed(None, env, None);
                    }
                    Ok(Offer::Duplicate) => {}
                    Err(e) => self.refuse(None, e.into()),
                }
            }
            Command::AdminSet(env) => {
                match self.trust.apply_admin_set(&env, self.config.check.as_ref()) {
                    Ok(advanced) => {
                        if advanced {
                            self.push(Output::Persist(Persist::AdminSet(env)));
                            let chain = self.trust.chain().to_vec();
                            self.relay(None, Arc::new(Message::AdminSets(chain)), false);
                        }
                    }
                    Err(e) => self.refuse(None, e.into()),
                }
            }
            Command::UpdateRecord { inventory } => {
                self.inventory = inventory;
                self.update_record();
            }
            Command::SetFacts(facts) => {
                self.engine.facts = facts;
                self.rollouts_due = true;
            }
            Command::Report { rollout, kind, detail } => self.report(rollout, kind, detail),
        }
    }

    /// Signs evidence; a failure report also floods fleet-wide as an alarm.
    fn report(&mut self, rollout: RolloutId, kind: EvidenceKind, detail: String) {
        let mut detail = detail;
        if detail.len() > limits::TEXT_BYTES_MAX {
            let mut cut = limits::TEXT_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let ev = Evidence {
            mesh: self.trust.mesh(),
            node: self.id,
            site: self.site.site().clone(),
            rollout,
            kind,
            at: self.now,
            detail,
        };
        let bundle = Arc::new(Bundle::new(
            Envelope::seal(Domain::Evidence, &ev, &[&self.config.key]),
            self.config.admission.clone(),
        ));
        self.publish_site_object(bundle.clone());
        if kind == EvidenceKind::InstallFailed {
            self.accept_alarms(None, &[bundle], false);
        }
    }

    /// Verifies and keeps failure reports; new ones flood on to every peer at once (a halt
    /// waits for nothing else).
    fn accept_alarms(&mut self, peer: Option<PeerId>, bundles: &[Arc<Bundle>], reply: bool) {
        let check = self.config.check.clone();
        let mut fresh = Vec::new();
        for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
            match Alarms::verify(bundle, &self.trust, self.now, check.as_ref()) {
                Ok(alarm) => match self.alarms.merge(alarm) {
                    Ok(Merge::New) => {
                        self.gossip_accepted();
                        self.stats.accepted += 1;
                        self.push(Output::Persist(Persist::Alarm(bundle.clone())));
                        fresh.push(bundle.clone());
                    }
                    Ok(Merge::Duplicate) => {}
                    Err(e) => self.refuse(peer, e.into()),
                },
                Err(e) => self.refuse(peer, e.into()),
            }
        }
        if !fresh.is_empty() {
            self.rollouts_due = true;
            self.relay(peer, Arc::new(Message::Alarms { bundles: fresh, reply: false }), false);
        }
        if let (Some(peer), true) = (peer, reply) {
            // An anti-entropy exchange: send back what the peer lacks.
            let mut theirs: Vec<ObjectId> = bundles.iter().map(|b| b.id()).collect();
            theirs.sort_unstable();
            let missing = self.alarms.bundles_except(&theirs, limits::OBJECTS_PER_SYNC_MAX);
            if !missing.is_empty() {
                self.send(peer, Arc::new(Message::Alarms { bundles: missing, reply: false }));
            }
        }
    }

    /// Runs the rollout engine when something it reads changed or its period passed.
    fn drive_rollouts(&mut self) {
        if self.now >= self.next_rollout_eval {
            self.rollouts_due = true;
        }
        if !self.rollouts_due && self.engine.next_wake().is_none_or(|w| self.now < w) {
            return;
        }
        self.rollouts_due = false;
        self.next_rollout_eval = self.now.plus(self.config.rollout_eval_ms.max(1));
        if self.policies_stale {
            self.policies_stale = false;
            self.policies = Arc::new(Policies::parse(self.catalog.entries_authored()));
        }
        if self.policies.rollouts.is_empty() && !self.engine.busy() {
            return;
        }
        let live: BTreeSet<NodeId> = self
            .peers
            .values()
            .filter(|p| p.admitted.as_ref().is_some_and(|a| a.cert.site == *self.site.site()))
            .map(|p| p.node)
            .collect();
        let before = self.engine.standings().clone();
        let policies = self.policies.clone();
        let view = View {
            me: self.id,
            site_id: self.site.site(),
            labels: &self.own.cert.labels,
            trust: &self.trust,
            site: &self.site,
            summaries: &self.summaries,
            alarms: &self.alarms,
            live: &live,
            now: self.now,
        };
        let outs = self.engine.step(&policies, &view);
        self.apply_engine(outs);
        if *self.engine.standings() != before {
            self.update_record();
        }
    }

    fn apply_engine(&mut self, outs: Vec<EngineOut>) {
        let before = self.engine.standings().clone();
        for out in outs {
            match out {
                EngineOut::Journal(entry) => self.push(Output::Persist(Persist::Journal(entry))),
                EngineOut::Effect(effect) => self.push(Output::Effect(effect)),
                EngineOut::Report { rollout, kind, detail } => self.report(rollout, kind, detail),
                EngineOut::Event(ev) => self.push(Output::Event(Event::Rollout(ev))),
            }
        }
        if *self.engine.standings() != before {
            self.update_record();
        }
    }

    /// The rollout engine's state: verdicts, journal and standings (for status views).
    pub fn rollouts(&self) -> &Engine {
        &self.engine
    }

    /// The parsed rollout policies of the catalog.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Fleet-wide failure reports held.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    fn update_record(&mut self) {
        let inventory = self.inventory.clone();
        let rollouts = self.engine.standings().clone();
        self.record_version += 1;
        self.push(Output::Persist(Persist::RecordVersionFloor(self.record_version)));
        let record = NodeRecord {
            mesh: self.trust.mesh(),
            node: self.id,
            site: self.own.cert.site.clone(),
            version: self.record_version,
            written_at: self.now,
            inventory,
            rollouts,
        };
        let bundle = Arc::new(Bundle::new(
            Envelope::seal(Domain::NodeRecord, &record, &[&self.config.key]),
            self.config.admission.clone(),
        ));
        self.publish_site_object(bundle);
    }

    fn publish_site_object(&mut self, bundle: Arc<Bundle>) {
        match self.accept_site_object(&bundle) {
            Ok(Merge::New) => {
                self.site_changed_at = self.now;
                self.push(Output::Persist(Persist::SiteObject(bundle.clone())));
                self.queue_relay(bundle, None, true);
            }
            Ok(Merge::Duplicate) => {}
            Err(e) => self.refuse(None, e),
        }
    }

    /// Envelope ids of every catalog change held (for tests and invariant checks).
    pub fn catalog_change_ids(&self) -> Vec<ObjectId> {
        self.catalog.envelopes().map(|e| e.id()).collect()
    }
}
