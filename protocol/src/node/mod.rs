//! The node state machine: one per endpoint, driven by the real node and by the simulator.
//!
//! [`Node::handle_input`] only routes: each input goes to the sub-machine that owns the state
//! it touches, and every object that turns out new goes through one path ([`Node::keep`]):
//! count → persist → spread. The sub-machines own their state, take `now` as an argument and
//! return values or outputs:
//!
//! | module | owns | decides |
//! |---|---|---|
//! | [`peers`] | connections, admission, per-peer catalog sync | who is who, who is live, late hellos |
//! | [`replicas`] | trust, catalog, site state, summaries, alarms | digests and anti-entropy answers |
//! | [`relay`] | relay mode, batches, the output queue | who gets a fresh object, and when |
//! | [`endorse`] | summaries of the site proposed by its members | endorsements |
//! | [`publisher`] | record version, inventory, summary cadence | what the node signs about itself and its site |
//! | [`reach`] | other sites' beacons | whether the node still hears the mesh ([`Reach`]) |
//! | [`timers`] | one deadline per [`timers::Timer`] | when the node wakes |
//! | [`rollouts`] | (the [`crate::rollout::Engine`] and its policies) | installs, reports, halts |
//!
//! Four more files hold the router's own steps, not sub-machines: [`accept`] (the one path of
//! every new object and each kind of message's acceptance), [`commands`] (the driver's
//! commands), [`restore`] (a node's state from its store, which many simulated nodes
//! restoring one store can share: [`RestoreMemo`]) and [`vouchers`] (admission by voucher and
//! enrolment, re-judged as the catalog changes).
//!
//! A message that arrived by pubsub gets a verdict from what its handling returned (`Judged`:
//! anything new → accept; anything invalid → reject; else ignore), never from a flag.
//!
//! ## Time
//! `now` is the driver's clock. The node's clock never goes backwards, and it never stalls:
//! when the driver's clock steps back (an NTP correction, an admin fixing a clock that was
//! ahead), the node's clock keeps going from where it was at half the driver's rate until it
//! is back on the driver's clock, so a deadline is delayed, never brought forward, a version
//! or expiry check never sees time undone, and timers keep firing (at half pace) instead of
//! waiting hours for the clock to catch up. When the driver's clock skips ahead between two
//! inputs by more than [`limits::CLOCK_GAP_MS`] (or three rollout evaluation periods), the
//! excess does not count toward any soak in progress: a clock stepped forward or a machine
//! that slept must not promote a ring early. A soak survives a restart by its absolute end;
//! a jump while the node is down is not seen.
//!
//! ## Misbehaviour
//! Anything that fails verification is refused, counted in [`Stats`], reported as
//! [`Event::Rejected`] and answered with [`Output::Penalize`]; it is never stored or relayed. A
//! stale version (a replay or a gap, which an honest peer sends in a gossip race) and a hello
//! that came too late (a slow link) are counted but cost no penalty ([`refusal::Offence`]). A peer without a valid admission certificate
//! gets nothing and is disconnected.

mod accept;
mod commands;
mod endorse;
mod io;
mod peers;
mod publisher;
mod reach;
mod refusal;
mod relay;
mod replicas;
mod restore;
mod rollouts;
mod timers;
mod vouchers;

use crate::catalog::{Catalog, Offer};
use crate::crypto::{Domain, Envelope};
use crate::ids::{Millis, NodeId, ObjectId, RolloutId, SiteId, StateHash};
use crate::limits;
use crate::rollout::alarms::Alarms;
use crate::rollout::{Engine, Policies};
use crate::site::{self, Bundle, EvidenceKind, HeldSummary, Merge};
use crate::site::{SiteError, SiteState, Summaries};
use crate::trust::{Admitted, Trust, TrustError};
use crate::wire::Message;
use peers::{Hello, Peers};
use publisher::Publisher;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relay::{Batch, Outbox, Relay, Via};
use replicas::{Digest, Replicas};
use std::collections::BTreeMap;
use std::sync::Arc;
use timers::{Timer, Timers};

pub use io::{
    Command, Config, Event, Input, Outcome, Output, PeerId, Persist, RelayMode, Stats, Topic,
    Verdict,
};
pub use reach::{Holdings, Reach};
pub use refusal::{Offence, Refusal};
pub use restore::RestoreMemo;

/// The protocol state machine of one node.
pub struct Node {
    config: Config,
    id: NodeId,
    own: Admitted,
    state: Replicas,
    peers: Peers,
    relay: Relay,
    out: Outbox,
    publisher: Publisher,
    timers: Timers,
    rng: ChaCha8Rng,
    now: Millis,
    started: bool,
    stats: Stats,
    engine: Engine,
    policies: Arc<Policies>,
    policies_stale: bool,
    /// Enrolment vouchers (from the catalog) and the enrolments seen per voucher.
    gate: crate::enrol::Gate,
    /// Site members whose record this node holds and whose admission is an enrolment: judged
    /// again whenever the gate changes, and dropped once it no longer admits them.
    enrolled_members: BTreeMap<NodeId, crate::enrol::Enrolled>,
    rollouts_due: bool,
    /// When this node last pulled from a peer on the hint that a gate it waits on opened.
    gate_hint_at: Option<Millis>,
    /// When something each site member signed (a record, evidence) last reached this node, by
    /// its clock: a member heard from lately is live for install-slot ranking even when this
    /// node holds no connection to it.
    member_heard: BTreeMap<NodeId, Millis>,
    /// When `member_heard` was last pruned of members not heard from lately (its readers judge
    /// freshness themselves; pruning only bounds it, so once per `MEMBER_LIVE_MS`).
    member_heard_pruned_at: Option<Millis>,
    /// The driver's clock at the previous input, and how far the node's clock is ahead of it
    /// after the driver's clock stepped back (slewed off at half rate; see "Time").
    driver_last: Option<Millis>,
    behind_ms: u64,
    /// When this node first saw each ring of a rollout open (ring 0: the rollout running).
    ring_opened_at: BTreeMap<(RolloutId, u8), Millis>,
    /// Summaries of this node's site proposed by its members, awaiting endorsement.
    proposals: endorse::Proposals,
    /// When this run of the node started (by its clock).
    started_at: Millis,
    /// Other sites' beacons, and this node's own beacon cadence.
    beacons: reach::Beacons,
    /// The node's reach as last judged.
    reach: Reach,
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

/// What handling one message did, for the verdict on a pubsub message.
#[derive(Clone, Copy, Debug, Default)]
struct Judged {
    /// Something in it was new and valid.
    fresh: bool,
    /// Something in it was invalid (not merely stale).
    invalid: bool,
}

impl Judged {
    const FRESH: Judged = Judged { fresh: true, invalid: false };

    fn and(self, other: Judged) -> Judged {
        Judged { fresh: self.fresh || other.fresh, invalid: self.invalid || other.invalid }
    }

    fn verdict(self) -> Verdict {
        if self.invalid {
            Verdict::Reject
        } else if self.fresh {
            Verdict::Accept
        } else {
            Verdict::Ignore
        }
    }
}

/// A verified object new to this node, on its way through [`Node::keep`].
enum Fresh {
    AdminSet(Envelope),
    CatalogChange(Envelope),
    SiteObject(Arc<Bundle>),
    Summary(Arc<Bundle>),
    Alarm(Arc<Bundle>),
}

impl Node {
    /// A node at time `now`. Call [`Node::restore`] (if there is a store), then send
    /// [`Input::Start`].
    pub fn new(config: Config, now: Millis) -> Result<Node, StartError> {
        let trust = Trust::new(config.genesis.clone(), config.check.as_ref())?;
        let own = trust.check_admission(&config.admission, now, config.check.as_ref())?;
        let id = NodeId(config.key.public().0);
        if own.cert.node != id {
            return Err(StartError::NotOurCert { cert: own.cert.node, node: id });
        }
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let publisher = Publisher::new(
            config.key.clone(),
            config.admission.clone(),
            trust.mesh(),
            own.cert.site.clone(),
            config.record_version_floor,
            now,
        );
        Ok(Node {
            state: Replicas {
                catalog: Catalog::new(trust.mesh()),
                site: SiteState::new(own.cert.site.clone()),
                summaries: Summaries::default(),
                alarms: Alarms::default(),
                trust,
            },
            peers: Peers::default(),
            relay: Relay::new(config.relay, config.summary_fanout),
            out: Outbox::default(),
            publisher,
            timers: Timers::default(),
            rng,
            now,
            started: false,
            stats: Stats::default(),
            engine: Engine::default(),
            policies: Arc::new(Policies::default()),
            policies_stale: true,
            gate: Self::own_gate(&own),
            enrolled_members: BTreeMap::new(),
            rollouts_due: true,
            gate_hint_at: None,
            member_heard: BTreeMap::new(),
            member_heard_pruned_at: None,
            proposals: endorse::Proposals::default(),
            beacons: reach::Beacons::new(own.cert.site.clone(), now),
            reach: Reach::Listening { until: now },
            started_at: now,
            ring_opened_at: BTreeMap::new(),
            driver_last: None,
            behind_ms: 0,
            id,
            own,
            config,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// This node's site.
    pub fn site_id(&self) -> &SiteId {
        self.state.site.site()
    }
    /// The catalog replica.
    pub fn catalog(&self) -> &Catalog {
        &self.state.catalog
    }
    /// Trust state.
    pub fn trust(&self) -> &Trust {
        &self.state.trust
    }
    /// The site state.
    pub fn site(&self) -> &SiteState {
        &self.state.site
    }
    /// Site summaries held.
    pub fn summaries(&self) -> &Summaries {
        &self.state.summaries
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Admitted peers.
    pub fn admitted_peers(&self) -> impl Iterator<Item = (PeerId, NodeId, &SiteId)> {
        self.peers.admitted()
    }
    /// The rollout engine's state: verdicts, journal and standings (for status views).
    pub fn rollouts(&self) -> &Engine {
        &self.engine
    }
    /// The parsed rollout policies of the catalog.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }
    /// Whether the node still hears the rest of the mesh, as last judged (see [`Reach`]).
    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// How much the node holds of what every node should hold.
    pub fn holdings(&self) -> Holdings {
        Holdings {
            catalog_changes: u32::try_from(self.state.catalog.len()).unwrap_or(u32::MAX),
            alarms: u32::try_from(self.state.alarms.len()).unwrap_or(u32::MAX),
            trust_version: self.state.trust.version(),
        }
    }

    /// Fleet-wide failure reports held.
    pub fn alarms(&self) -> &Alarms {
        &self.state.alarms
    }
    /// Envelope ids of every catalog change held (for tests and invariant checks).
    pub fn catalog_change_ids(&self) -> Vec<ObjectId> {
        self.state.catalog.envelopes().map(|e| e.id()).collect()
    }

    /// Hash of everything replicated that every node of this site should agree on: trust
    /// version, catalog and site state.
    pub fn state_hash(&mut self) -> StateHash {
        let catalog = self.state.catalog.state_hash();
        let site = self.state.site.digest();
        StateHash(crate::crypto::hash_parts(&[
            &self.state.trust.version().to_le_bytes(),
            &catalog.0,
            &site.0,
        ]))
    }

    /// The next time [`Input::Timer`] is due; `None` before [`Input::Start`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        let rollouts_live = !self.policies.rollouts.is_empty() || self.engine.busy();
        let t = self.timers.next(|t| t != Timer::RolloutEval || rollouts_live);
        let next = match (t, self.engine.next_wake()) {
            (Some(t), Some(w)) => Some(t.min(w)),
            (t, w) => t.or(w),
        };
        // Deadlines are on the node's clock; the driver's runs `behind_ms` behind it after it
        // stepped back (see "Time"). Asking early only costs a wake-up that finds nothing due.
        next.map(|t| Millis(t.0.saturating_sub(self.behind_ms)))
    }

    /// Next output for the driver, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// Feeds one input at time `now` (see the module docs for time going backwards).
    pub fn handle_input(&mut self, now: Millis, input: Input) {
        self.begin(now, matches!(input, Input::Start));
        match input {
            Input::Start => {}
            Input::Connected { peer, node } => {
                if self.peers.connect(peer, node, self.now) {
                    let hello = self.hello();
                    self.out.send(peer, hello);
                } else {
                    self.out.push(Output::Disconnect { peer });
                }
            }
            Input::Disconnected { peer } => self.peers.remove(peer),
            Input::Message { peer, msg } => {
                self.on_message(Via::Direct(peer), msg);
            }
            Input::Bytes { peer, bytes } => match Message::from_bytes(&bytes) {
                Ok(msg) => {
                    self.on_message(Via::Direct(peer), Arc::new(msg));
                }
                Err(e) => {
                    self.refuse(Some(peer), e.into());
                }
            },
            Input::Gossip { peer, token, bytes } => {
                let verdict = self.on_gossip(peer, &bytes);
                self.out.push(Output::GossipVerdict { token, verdict });
            }
            Input::Timer => self.on_timers(),
            Input::Command(cmd) => {
                // The outcome is also in the outputs (a refusal as `Event::Rejected`).
                let _ = self.on_command(cmd);
            }
            Input::EffectDone(result) => self.on_effect_done(result),
        }
        self.end();
    }

    /// Runs a local command at `now`, like [`Input::Command`], and returns what it did or why
    /// it was refused. The machine is synchronous, so the outcome is known when the call
    /// returns: a driver needs no correlation id and never scans the outputs for a refusal.
    /// The outputs the command causes (persist, relay) are queued as for any input.
    pub fn command(&mut self, now: Millis, cmd: Command) -> Result<Outcome, Refusal> {
        self.begin(now, false);
        let outcome = self.on_command(cmd);
        self.end();
        outcome
    }

    /// Every input's start: time never goes backwards, and a node starts before anything.
    fn begin(&mut self, now: Millis, is_start: bool) {
        match self.driver_last {
            Some(last) if now < last => {
                // Stepped back: carry on from the node's time, owing the difference.
                self.behind_ms = self.behind_ms.saturating_add(last.0 - now.0);
            }
            Some(last) => {
                let dt = now.0 - last.0;
                let slew = (dt / 2).min(self.behind_ms);
                self.behind_ms -= slew;
                let step = dt - slew;
                let gap = limits::CLOCK_GAP_MS.max(self.config.rollout_eval_ms.saturating_mul(3));
                if step > gap {
                    for j in self.engine.hold_soaks(step - gap) {
                        self.out.push(Output::Persist(Persist::Journal(j)));
                    }
                }
            }
            None => {}
        }
        self.driver_last = Some(now);
        self.now = self.now.max(now.plus(self.behind_ms));
        if !self.started {
            debug_assert!(is_start, "a node is started before anything else");
            // A driver that forgot `Start` still gets a node that works.
            self.start();
        }
    }

    /// Every input's end: rollouts are driven on what changed.
    fn end(&mut self) {
        self.drive_rollouts();
        self.stats.outputs_dropped = self.out.dropped;
    }

    fn start(&mut self) {
        self.started = true;
        self.started_at = self.now;
        if self.state.site.record_version(&self.id).is_none() {
            self.update_record();
        }
        let first_tick =
            self.now.plus(self.rng.gen_range(0..=self.config.anti_entropy_interval_ms.max(1)));
        self.timers.set(Timer::AntiEntropy, first_tick);
        self.timers.set(Timer::RolloutEval, self.now);
    }

    fn on_timers(&mut self) {
        if self.timers.due(Timer::Flush, self.now) {
            self.timers.clear(Timer::Flush);
            self.relay.flush(self.state.site.site(), &self.peers, &mut self.rng, &mut self.out);
        }
        if self.timers.due(Timer::AntiEntropy, self.now) {
            let interval = self.config.anti_entropy_interval_ms.max(1);
            let jitter = self.rng.gen_range(0..=interval / 2);
            self.timers.set(Timer::AntiEntropy, self.now.plus(interval - interval / 4 + jitter));
            self.anti_entropy();
        }
        if self.timers.due(Timer::RolloutEval, self.now) {
            self.rollouts_due = true;
        }
    }

    /// Drops peers whose hello is late, sends one random admitted peer a digest, and
    /// publishes the site summary if it is due.
    fn anti_entropy(&mut self) {
        let now = self.now;
        if self.member_heard_pruned_at.is_none_or(|at| now.since(at) >= limits::MEMBER_LIVE_MS) {
            self.member_heard.retain(|_, at| now.since(*at) < limits::MEMBER_LIVE_MS);
            self.member_heard_pruned_at = Some(now);
        }
        for peer in self.peers.late(self.now) {
            self.refuse(Some(peer), Refusal::HelloTimeout);
            self.peers.remove(peer);
            self.out.push(Output::Disconnect { peer });
        }
        // A certificate that expires while its node is connected ends the connection (the
        // node comes back with a renewed one, or not at all).
        for (peer, e) in self.peers.expired(self.now) {
            self.refuse(Some(peer), e.into());
            self.peers.remove(peer);
            self.out.push(Output::Disconnect { peer });
        }
        if let Some(peer) = self.peers.random_admitted(&mut self.rng) {
            let digest = self.state.digest();
            self.out.send(peer, digest);
        }
        let summary = self.publisher.summary_due(
            &mut self.state.site,
            &self.state.summaries,
            self.config.summary_interval_ms,
            self.config.anti_entropy_interval_ms,
            self.now,
        );
        if let Some(bundle) = summary {
            let s = &self.state;
            let held =
                site::verify_summary(&bundle, &s.trust, self.now, self.config.check.as_ref());
            match held {
                Ok(held) if held.countable() => {
                    if let Ok(Merge::New) = self.accept_summary(&bundle) {
                        self.keep(Via::Local, vec![Fresh::Summary(bundle)]);
                    }
                }
                // Several records: a proposal for another member to endorse.
                Ok(_) => self.proposals.propose(bundle),
                Err(e) => {
                    self.refuse(None, e.into());
                }
            }
        }
        self.tick_proposals();
        self.beacon_tick();
    }

    /// Other sites known (by their summaries).
    fn other_sites(&self) -> usize {
        let own = self.state.site.site();
        self.state.summaries.all().keys().filter(|s| *s != own).count()
    }

    /// Beacons for the site when this node is its reporter and a beacon is due, then judges
    /// the node's reach (see [`reach`]).
    fn beacon_tick(&mut self) {
        let sites = self.other_sites();
        let period = reach::period_ms(self.config.summary_interval_ms, sites + 1);
        if sites > 0
            && self.publisher.is_reporter(&mut self.state.site)
            && self.beacons.own_due(
                self.now,
                period,
                self.config.summary_interval_ms.saturating_mul(2),
                self.holdings(),
                sites + 1,
                &mut self.rng,
            )
        {
            let bundle = self.publisher.beacon(self.holdings(), self.now);
            let check = self.config.check.clone();
            if let Ok(b) = site::verify_beacon(&bundle, &self.state.trust, self.now, check.as_ref())
            {
                self.beacons.accept(&b, &bundle, self.now);
                let msg = Arc::new(Message::Beacon(bundle));
                self.relay.spread(Via::Local, msg, &self.peers, &mut self.out);
            }
        }
        self.judge_reach();
        // Listening or cut off: ask for the beacons peers hold rather than wait for the next
        // ones: one peer of this site (which heard what crossed to it while this node was
        // down) and one of another (the end of a cut).
        let wants = matches!(self.reach, Reach::Listening { .. } | Reach::CutOff { .. });
        if self.beacons.ask_due(wants, self.now, self.config.anti_entropy_interval_ms.max(1)) {
            let own = self.state.site.site().clone();
            for same in [true, false] {
                let peers: Vec<PeerId> = self
                    .peers
                    .admitted()
                    .filter(|(_, _, s)| (**s == own) == same)
                    .map(|(p, _, _)| p)
                    .collect();
                if !peers.is_empty() {
                    let peer = peers[self.rng.gen_range(0..peers.len())];
                    self.out.send(peer, Arc::new(Message::BeaconsAsk));
                }
            }
        }
    }

    /// Judges the node's reach again; a change of state is an event, and a change of whether
    /// installs hold re-evaluates the rollouts.
    fn judge_reach(&mut self) {
        let reach = self.beacons.judge(
            self.now,
            self.other_sites(),
            &self.holdings(),
            self.config.summary_interval_ms,
            self.config.anti_entropy_interval_ms,
        );
        if reach.name() != self.reach.name() {
            self.out.push(Output::Event(Event::Reach(reach.clone())));
        }
        if reach.holds_installs() != self.reach.holds_installs() {
            self.rollouts_due = true;
        }
        self.reach = reach;
    }

    /// A beacon from a peer: verified, kept if it is its site's newest, relayed, and pulled on
    /// at once when it claims more than this node holds.
    fn on_beacon(&mut self, via: Via, peer: PeerId, bundle: &Arc<Bundle>) -> Judged {
        let check = self.config.check.clone();
        let beacon = match site::verify_beacon(bundle, &self.state.trust, self.now, check.as_ref())
        {
            Ok(b) => b,
            Err(e) => return self.refuse(Some(peer), e.into()),
        };
        if !self.beacons.accept(&beacon, bundle, self.now) {
            return Judged::default();
        }
        self.stats.accepted += 1;
        let every = self.config.anti_entropy_interval_ms.max(1);
        if self.beacons.pull_due(&beacon, &self.holdings(), self.now, every) {
            let digest = self.state.digest();
            self.out.send(peer, digest);
        }
        let msg = Arc::new(Message::Beacon(bundle.clone()));
        self.relay.spread(via, msg, &self.peers, &mut self.out);
        self.judge_reach();
        Judged::FRESH
    }

    /// Endorses the proposals this node's records support, and hands its own proposal to the
    /// next site peer when that is due (see [`endorse`]).
    fn tick_proposals(&mut self) {
        if !self.proposals.waiting() {
            return;
        }
        let own = self.state.site.site().clone();
        let circulating = self
            .state
            .summaries
            .all()
            .get(&own)
            .filter(|h| h.endorsed())
            .and_then(|h| h.bundle.summary_body_hash().map(|hash| (h.rank(), hash)));
        let site_peers: Vec<(PeerId, NodeId)> = self.peers.local().collect();
        let due = self.proposals.tick(
            &mut self.state.site,
            circulating,
            &site_peers,
            self.config.anti_entropy_interval_ms,
            self.now,
        );
        if let Some((peer, bundle)) = due.ask {
            self.out.send(peer, Arc::new(Message::SiteObjects(vec![bundle])));
        }
        for proposal in due.endorse {
            let bundle = self.publisher.endorse(&proposal);
            match self.accept_summary(&bundle) {
                Ok(Merge::New) => {
                    self.stats.endorsed += 1;
                    // Straight back to the author too, so it stops asking others (over pubsub
                    // it is among the summary topic's subscribers already).
                    let author = proposal.summary().map(|s| s.author);
                    if let (Some(author), RelayMode::Direct) = (author, self.config.relay) {
                        let back = Arc::new(Message::Summaries(vec![bundle.clone()]));
                        for peer in self.peers.of_node(&author) {
                            self.out.send(peer, back.clone());
                        }
                    }
                    self.keep(Via::Local, vec![Fresh::Summary(bundle)]);
                }
                Ok(Merge::Duplicate) => {}
                Err(e) => {
                    self.refuse(None, e);
                }
            }
        }
    }

    /// A member's summary of this node's site, handed to it by `from` for endorsement. Only
    /// its author hands one on (proposals are never relayed). Returns whether it is new here.
    fn accept_proposal(
        &mut self,
        bundle: &Arc<Bundle>,
        from: Option<NodeId>,
    ) -> Result<bool, Refusal> {
        let s = &self.state;
        let held = site::verify_summary(bundle, &s.trust, self.now, self.config.check.as_ref())?;
        let summary = held.summary();
        if summary.site != *s.site.site() {
            return Err(SiteError::ForeignSite(summary.site.clone()).into());
        }
        if from != Some(summary.author) {
            return Ok(false);
        }
        Ok(self.proposals.offer(&held, &s.site))
    }

    fn hello(&self) -> Arc<Message> {
        Arc::new(Message::Hello {
            mesh: self.state.trust.mesh(),
            admission: self.config.admission.clone(),
            trust_version: self.state.trust.version(),
        })
    }
}
