//! The deterministic discrete-event world.
//!
//! One seed fixes everything: keys, overlay, clock skews, losses, which nodes crash and which
//! sites are partitioned. Events are ordered by (time, sequence number) and every collection
//! whose order can change a decision is ordered, so the same seed replays bit for bit; the
//! `trace_hash` of the report is a hash of the ordered event trace that proves it.
//!
//! The world drives real [`patchmesh_protocol::node::Node`]s through the drive contract. Two
//! things are shared between simulated nodes to fit 100,000 of them on one machine, neither of
//! which changes a decision: messages are passed as shared typed values (their wire size is
//! computed from the real encoding; decoding from bytes is exercised by the adversaries' raw
//! garbage and by the protocol tests), and signature checks of identical bytes are memoised
//! across nodes ([`MemoCheck`]): ed25519 verification is a pure function.
//!
//! With a `[rollout]`, the world is also the nodes' executor: it answers each install effect
//! after its step's simulated duration ([`crate::rollout`]).
//!
//! ## Layout
//! - `mod.rs`: the world's state, the event queue and dispatch ([`World::run`]), and how one
//!   input reaches a node and its outputs leave it.
//! - `build`: keys, topology, node configs, steady stores, booting and restarting nodes.
//! - `network`: links, bandwidth, loss and partitions; the trace of every event.
//! - `script`: what the scenario makes happen: publications, crashes, revocations and the
//!   adversaries' attacks.
//! - `report`: measurement and the [`Report`].
//!
//! Models (payload, rollout) plug in one way: they get the world as their [`Host`] and give
//! back `(at, event)` pairs it schedules.

mod build;
mod network;
mod reach;
pub use reach::{CutReach, ReachFigures};
mod report;
mod script;

pub use build::MemoCheck;
use build::{
    build_keys, build_links, derive_keys, entities, make_nodes, pick_crashes, place_sites,
    site_name, steady_stores, Stores,
};
use network::TraceCode;
pub use report::{peak_rss_mb, Report};

use crate::payload::{Host, PayloadEv, PayloadModel};
use crate::rollout::{assign_labels, NodeInfo, RolloutEv, RolloutFigures, RolloutModel};
use crate::scenario::{Link, Scenario};
use crate::stats::Percentiles;
use patchmesh_protocol::catalog::{self, AdminCommand, CatalogEntry, CommandAction};
use patchmesh_protocol::crypto::{
    Domain, Ed25519, Envelope, SecretKey, SignatureCheck, SignatureEntry, SignatureError,
};
use patchmesh_protocol::ids::{Millis, NodeId, ObjectId, RolloutId, SiteId, StateHash};
use patchmesh_protocol::limits;
use patchmesh_protocol::mesh;
use patchmesh_protocol::node::{Command, Config, Event, Input, Node, Output, PeerId, Persist};
use patchmesh_protocol::rollout::RolloutEvent;
use patchmesh_protocol::site::{Bundle, NodeRecord};
use patchmesh_protocol::trust::{Genesis, Revocation};
use patchmesh_protocol::wire::Message;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

const CERT_VALID_MS: u64 = 365 * 86_400_000;

enum Ev {
    Deliver {
        from: u32,
        to: u32,
        size: usize,
        msg: Arc<Message>,
    },
    Bytes {
        from: u32,
        to: u32,
        bytes: Vec<u8>,
    },
    Timer {
        node: u32,
    },
    Publish {
        measured: bool,
        node: u32,
        tag: u8,
    },
    PartitionStart(usize),
    PartitionEnd(usize),
    Crash(usize),
    Restart(u32),
    Revoke,
    Attack,
    Payload(PayloadEv),
    CrashFetchers,
    Rollout(RolloutEv),
    Intel(crate::intel::IntelEv),
    Enrol(crate::enrol::EnrolEv),
    /// Node `a` dials `b` again, as the endpoint redials a peer it lost (libp2p, and the
    /// daemon keeping `peers_target` connections); `tries` so far.
    Redial {
        a: u32,
        b: u32,
        tries: u8,
    },
}

/// How long a node waits before redialling a peer it lost, doubling per failed try.
const REDIAL_US: u64 = 2_000_000;
/// Tries before a node gives up on one lost peer (the last waits about a minute).
const REDIAL_TRIES: u8 = 6;

struct Queued {
    t: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

struct Keys {
    roots: Vec<SecretKey>,
    admins: Vec<SecretKey>,
    genesis: Envelope,
    genesis_body: Genesis,
}

/// Forged objects the adversaries injected, to check none is ever stored or relayed.
#[derive(Default)]
struct Forged {
    envelopes: HashSet<ObjectId>,
    change_hashes: Vec<[u8; 32]>,
    bundles: HashSet<ObjectId>,
    /// (honest node, version it must never reach).
    records: Vec<(u32, u64)>,
}

struct Entity {
    node: Option<Node>,
    config: Config,
    site: u32,
    skew_ms: i64,
    links: Vec<u32>,
    timer_at: u64,
    store: Option<Vec<Persist>>,
    adversary: bool,
}

/// A simulated world.
pub struct World {
    started: std::time::Instant,
    s: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    keys: Keys,
    ents: Vec<Entity>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    now_us: u64,
    link_free: HashMap<(u32, u32), u64>,
    partitioned: Vec<bool>,
    /// Per site, the message kinds its cut lets through (see `Partition::pass`).
    partition_pass: Vec<Vec<String>>,
    /// Honest nodes' reach into the mesh as they judge it (see [`reach`]).
    reach: reach::ReachLog,
    /// Each site's WAN link.
    site_wan: Vec<Link>,
    partition_sites: Vec<Vec<u32>>,
    crash_sets: Vec<Vec<u32>>,
    trace: blake3::Hasher,
    forged: Forged,
    // measurement
    measured_hash: Option<[u8; 32]>,
    measured_at_us: u64,
    received_us: Vec<u64>,
    eligible: Vec<bool>,
    pending_measure: usize,
    measure_end_us: Option<u64>,
    catalog_bytes: u64,
    bytes_total: u64,
    background_bytes: u64,
    background_from_us: u64,
    background_to_us: u64,
    delivered: u64,
    by_kind: BTreeMap<&'static str, u64>,
    lost: u64,
    /// Links two nodes dialled again after dropping each other.
    redialled: u64,
    violations: Vec<String>,
    rejected_adversary_free: bool,
    /// For a steady start: what every node of a site has in its store at time zero.
    site_stores: Vec<Arc<Vec<Persist>>>,
    /// Site records and summaries verified once per steady store, shared by the site's members.
    restore_memo: patchmesh_protocol::node::RestoreMemo,
    /// The payload transfer model, when the scenario has a payload.
    payload: Option<Box<PayloadModel>>,
    /// The rollout model, when the scenario has a rollout.
    rollout: Option<Box<RolloutModel>>,
    /// The intel model, when the scenario has an `[intel]`.
    intel: Option<Box<crate::intel::IntelModel>>,
    /// The enrolment model, when the scenario has an `[enrol]`.
    enrol: Option<Box<crate::enrol::EnrolModel>>,
}

impl World {
    /// Builds the world for a scenario and seed. The steps draw from one random stream in a
    /// fixed order (keys, sites, node keys, links, crashes, skews), so a seed gives one world.
    pub fn new(s: Scenario, seed: u64) -> World {
        let t_new = std::time::Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = build_keys(&mut rng, &s.name, s.epoch_ms);
        let check = Arc::new(MemoCheck::default());
        let (mut site_of, partition_sites) = place_sites(&s, &mut rng);
        let seeds = derive_keys(&mut rng, s.nodes + s.adversaries);
        // Machines that enrol join site 0 after the fleet and the adversaries.
        let first_machine = (s.nodes + s.adversaries) as u32;
        let mut enrol = s.enrol.clone().map(|spec| {
            let machine_seeds = derive_keys(&mut rng, spec.machines);
            let model = crate::enrol::EnrolModel::new(
                spec,
                first_machine,
                &keys.admins[0],
                keys.genesis_body.mesh_id(),
                site_name(0),
                s.epoch_ms,
                &mut rng,
            );
            site_of.extend(std::iter::repeat_n(0, machine_seeds.len()));
            (Box::new(model), machine_seeds)
        });
        let steady = s.start == crate::scenario::Start::Steady;
        // Certificate labels and the bad patch's victims, for a rollout (adversaries get none).
        // An explicit fleet's members carry their kind's labels and zone.
        let kinds: Vec<Option<&crate::scenario::KindSpec>> =
            s.placement().iter().map(|p| p.1.map(|(si, ki)| &s.site[si].kinds[ki])).collect();
        let base: Vec<BTreeMap<String, String>> =
            kinds.iter().map(|k| k.map(|k| k.labels.clone()).unwrap_or_default()).collect();
        let zones: Vec<String> =
            kinds.iter().map(|k| k.map(|k| k.zone.clone()).unwrap_or_default()).collect();
        // Quiet hours: an explicit kind's own, else the spec's activity profiles round-robin.
        let profiles = s.rollout.as_ref().map(|r| r.activity.clone()).unwrap_or_default();
        let quiet: Vec<Option<patchmesh_protocol::rollout::activity::QuietHours>> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k.and_then(|k| k.quiet_hours()) {
                Some(q) => Some(q),
                None if profiles.is_empty() => None,
                None => crate::rollout::profile_quiet(&profiles[i % profiles.len()]).ok().flatten(),
            })
            .collect();
        let (labels, bad) = match &s.rollout {
            Some(r) => assign_labels(r, seed, base),
            None => (base, Vec::new()),
        };
        let mut made = make_nodes(
            s.epoch_ms,
            &seeds,
            &site_of,
            &labels,
            &keys.admins[0],
            &keys.genesis_body,
            steady,
            &check,
        );
        if let Some((m, machine_seeds)) = &enrol {
            // Each machine's admission is its enrolment, signed once its clock skew is known.
            made.extend(
                machine_seeds
                    .iter()
                    .map(|seed| (SecretKey::from_seed(*seed), m.voucher.clone(), None)),
            );
        }
        let links = build_links(&s, &site_of, first_machine, &mut rng);
        let (crash_sets, crashing) = pick_crashes(&s, &mut rng);
        phase("keys and admissions", t_new);
        let (made, site_stores) = if steady {
            steady_stores(s.epoch_ms, made, &site_of, s.sites, &keys.genesis, &check)
        } else {
            (made, Vec::new())
        };
        phase("steady stores", t_new);
        let stores = Stores { site_stores: &site_stores, crashing: &crashing };
        let mut ents =
            entities(&s, made, &site_of, &links, &keys.genesis, &check, stores, &mut rng);
        let enrol = enrol.take().map(|(mut m, _)| {
            enrol_machines(&mut m, &mut ents, check.as_ref(), s.epoch_ms);
            for (i, e) in ents.iter().enumerate() {
                if e.site == 0 && !e.adversary && rng.gen_bool(0.5) {
                    m.cut_off.insert(i as u32);
                }
            }
            m
        });
        let payload = s.payload.clone().map(|spec| {
            let ids = ents[..s.nodes].iter().map(|e| NodeId(e.config.key.public().0)).collect();
            let sites = site_of[..s.nodes].to_vec();
            let (lan, wan) = (s.lan.clone(), s.wan.clone());
            Box::new(PayloadModel::new(spec, seed, ids, sites, s.sites, &links, lan, wan))
        });
        let rollout = s.rollout.clone().map(|spec| {
            let nodes = ents
                .iter()
                .enumerate()
                .map(|(i, e)| NodeInfo {
                    id: NodeId(e.config.key.public().0),
                    site: e.site,
                    labels: labels.get(i).cloned().unwrap_or_default(),
                    zone: zones.get(i).cloned().unwrap_or_default(),
                    quiet: quiet.get(i).copied().flatten(),
                    bad: bad.get(i).copied().unwrap_or(false),
                    honest: !e.adversary,
                })
                .collect();
            let cuts = s
                .partition
                .iter()
                .zip(&partition_sites)
                .map(|(p, sites)| (sites.clone(), p.start_ms * 1000, p.end_ms * 1000))
                .collect();
            let eval_ms = s.protocol.rollout_eval_ms;
            Box::new(RolloutModel::new(spec, seed, nodes, s.sites, cuts, eval_ms, s.epoch_ms))
        });
        let intel = s
            .intel
            .clone()
            .map(|spec| Box::new(crate::intel::IntelModel::new(spec, s.nodes, s.epoch_ms)));
        World {
            payload,
            rollout,
            intel,
            enrol,
            started: t_new,
            partitioned: vec![false; s.sites],
            partition_pass: vec![Vec::new(); s.sites],
            reach: reach::ReachLog::default(),
            site_wan: (0..s.sites).map(|i| s.wan_of(i)).collect(),
            received_us: vec![u64::MAX; s.nodes],
            eligible: vec![false; s.nodes],
            keys,
            site_stores,
            restore_memo: Default::default(),
            s,
            seed,
            rng,
            ents,
            queue: BinaryHeap::new(),
            seq: 0,
            now_us: 0,
            link_free: HashMap::new(),
            partition_sites,
            crash_sets,
            trace: blake3::Hasher::new(),
            forged: Forged::default(),
            measured_hash: None,
            measured_at_us: 0,
            pending_measure: 0,
            measure_end_us: None,
            catalog_bytes: 0,
            bytes_total: 0,
            background_bytes: 0,
            background_from_us: 0,
            background_to_us: 0,
            delivered: 0,
            by_kind: BTreeMap::new(),
            lost: 0,
            redialled: 0,
            violations: Vec::new(),
            rejected_adversary_free: true,
        }
    }

    fn schedule(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { t, seq: self.seq, ev }));
    }

    fn node_now(&self, i: u32) -> Millis {
        let ms = (self.s.epoch_ms + self.now_us / 1000) as i64 + self.ents[i as usize].skew_ms;
        Millis(ms as u64)
    }

    fn honest(&self, i: u32) -> bool {
        !self.ents[i as usize].adversary
    }

    /// Feeds one input and carries out the node's outputs.
    fn input(&mut self, i: u32, input: Input) {
        let now = self.node_now(i);
        let Some(node) = self.ents[i as usize].node.as_mut() else { return };
        node.handle_input(now, input);
        let mut outs = Vec::new();
        while let Some(o) = node.poll_output() {
            outs.push(o);
        }
        let timeout = node.poll_timeout();
        for o in outs {
            match o {
                Output::Send { peer, msg } => self.send(i, peer.0 as u32, msg),
                Output::Persist(p) => {
                    if let (Persist::Journal(entry), Some(m)) = (&p, self.rollout.as_mut()) {
                        m.on_journal(i, entry, self.now_us, now);
                    }
                    if let Some(store) = self.ents[i as usize].store.as_mut() {
                        keep(store, p);
                    }
                }
                Output::Effect(effect) => {
                    if let Some(m) = self.rollout.as_mut() {
                        let (at, ev) = m.on_effect(i, effect, self.now_us);
                        self.schedule(at, Ev::Rollout(ev));
                    }
                }
                Output::Event(Event::Rollout(RolloutEvent::Stopped { rollout, .. })) => {
                    if let Some(m) = self.rollout.as_mut() {
                        m.on_stopped(i, rollout, self.now_us);
                    }
                }
                Output::Disconnect { peer } => {
                    let j = peer.0 as u32;
                    self.ents[i as usize].links.retain(|x| *x != j);
                    self.ents[j as usize].links.retain(|x| *x != i);
                    self.input(j, Input::Disconnected { peer: PeerId(u64::from(i)) });
                    // Two honest nodes dropped each other (a hello lost on a lossy link, a
                    // certificate renewed): they dial again, as endpoints do.
                    if self.honest(i) && self.honest(j) {
                        let (a, b) = (i.min(j), i.max(j));
                        self.schedule(self.now_us + REDIAL_US, Ev::Redial { a, b, tries: 0 });
                    }
                }
                Output::Event(Event::CatalogChanged { .. }) => {
                    let now_us = self.now_us;
                    if let Some(m) = self.rollout.as_mut().filter(|m| m.awaits_catalog(i, now_us)) {
                        let node = self.ents[i as usize].node.as_ref();
                        let key = m.patch_key();
                        let has = || node.is_some_and(|n| n.catalog().entries().contains_key(&key));
                        m.on_catalog(i, has, now_us);
                    }
                }
                Output::Event(Event::Reach(r)) => {
                    if !self.ents[i as usize].adversary {
                        self.reach.note(i, self.now_us, r.holds_installs());
                    }
                }
                Output::Penalize { .. } | Output::Event(_) => {}
                // Simulated nodes run in direct relay mode, which never asks for pubsub.
                Output::Broadcast { .. } | Output::GossipVerdict { .. } => {
                    unreachable!("pubsub output in direct relay mode")
                }
            }
        }
        if let Some(t) = timeout {
            let local_ms = t.0 as i64 - self.ents[i as usize].skew_ms - self.s.epoch_ms as i64;
            let at = (local_ms.max(0) as u64 * 1000).max(self.now_us);
            if at != self.ents[i as usize].timer_at {
                self.ents[i as usize].timer_at = at;
                self.schedule(at, Ev::Timer { node: i });
            }
        }
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        let wall = self.started;
        phase("world built", wall);
        self.boot_all();
        phase("nodes booted", wall);
        let profile = std::env::var_os("PATCHMESH_SIM_PROFILE").is_some();
        if profile {
            eprintln!("{} restores shared a verified store", self.restore_memo.hits());
        }

        self.schedule_script();
        let end_us = self.s.duration_ms * 1000;
        self.background_from_us = self.s.warmup_ms * 1000;
        self.background_to_us = self.s.publish_at_ms * 1000;
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.t > end_us {
                break;
            }
            self.now_us = q.t;
            if !profile {
                self.step(q.ev);
                continue;
            }
            let kind: &'static str = match &q.ev {
                Ev::Deliver { msg, .. } => msg.kind(),
                Ev::Timer { node } if self.ents[*node as usize].timer_at != q.t => "timer_stale",
                Ev::Timer { .. } => "timer",
                Ev::Rollout(_) => "rollout",
                Ev::Payload(_) => "payload",
                Ev::Intel(_) => "intel",
                Ev::Enrol(_) => "enrol",
                _ => "other",
            };
            let t0 = std::time::Instant::now();
            self.step(q.ev);
            PROF.with(|p| {
                let mut p = p.borrow_mut();
                let x = p.entry(kind).or_insert((0u64, 0u64));
                x.0 += 1;
                x.1 += t0.elapsed().as_nanos() as u64;
            });
        }
        self.now_us = end_us;
        phase("events run", wall);
        if profile {
            PROF.with(|p| {
                for (k, (n, ns)) in p.borrow().iter() {
                    eprintln!(
                        "{k:16} {n:10} events {:8} ms {:6} ns/event",
                        ns / 1_000_000,
                        ns / n.max(&1)
                    );
                }
            });
        }
        let _ = wall;
        self.finish()
    }

    fn step(&mut self, ev: Ev) {
        let t = self.now_us;
        match ev {
            Ev::Deliver { from, to, size, msg } => {
                if self.ents[to as usize].node.is_none() {
                    self.lost += 1;
                    return;
                }
                self.delivered += 1;
                *self.by_kind.entry(msg.kind()).or_default() += 1;
                self.trace(t, TraceCode::Deliver, from, to, size as u64);
                let catalog = msg.is_catalog();
                self.input(to, Input::Message { peer: PeerId(u64::from(from)), msg });
                if catalog {
                    self.observe(to);
                }
            }
            Ev::Bytes { from, to, bytes } => {
                self.trace(t, TraceCode::Bytes, from, to, bytes.len() as u64);
                self.input(to, Input::Bytes { peer: PeerId(u64::from(from)), bytes });
            }
            Ev::Timer { node } => {
                if self.ents[node as usize].timer_at != t || self.ents[node as usize].node.is_none()
                {
                    return;
                }
                self.ents[node as usize].timer_at = u64::MAX;
                self.trace(t, TraceCode::Timer, node, 0, 0);
                self.input(node, Input::Timer);
            }
            Ev::Publish { measured, node, tag } => self.publish(measured, node, tag),
            Ev::PartitionStart(i) | Ev::PartitionEnd(i) => {
                let cut = matches!(ev, Ev::PartitionStart(_));
                let code = if cut { TraceCode::PartitionStart } else { TraceCode::PartitionEnd };
                self.trace(t, code, i as u32, 0, 0);
                let pass = if cut { self.s.partition[i].pass.clone() } else { Vec::new() };
                for s in self.partition_sites[i].clone() {
                    self.partitioned[s as usize] = cut;
                    self.partition_pass[s as usize] = pass.clone();
                    self.with_payload(|p, w| p.on_partition(w, s, cut));
                }
            }
            Ev::Crash(i) => {
                for n in self.crash_sets[i].clone() {
                    self.crash_node(n);
                }
            }
            Ev::Restart(n) => {
                self.trace(t, TraceCode::Restart, n, 0, 0);
                self.start_node(n);
                if self.honest(n) {
                    self.with_payload(|p, w| p.on_restart(w, n));
                }
            }
            Ev::Redial { a, b, tries } => self.redial(a, b, tries),
            Ev::Revoke => self.revoke(),
            Ev::Attack => self.attack(),
            Ev::Payload(e) => self.with_payload(|p, w| p.step(w, e)),
            Ev::Rollout(RolloutEv::Publish) => self.publish_rollout(),
            Ev::Intel(e) => self.intel_step(e),
            Ev::Enrol(e) => self.enrol_step(e),
            Ev::Rollout(RolloutEv::Done { node, life, result }) => {
                let Some(m) = self.rollout.as_mut() else { return };
                if m.deliverable(node, life) {
                    self.trace(t, TraceCode::EffectDone, node, u32::from(result.ok), result.id);
                    self.input(node, Input::EffectDone(result));
                }
            }
            Ev::CrashFetchers => {
                let spec = self.s.payload.clone().expect("scheduled with a payload");
                let nodes = self
                    .payload
                    .as_ref()
                    .map(|p| p.fetchers(spec.fetcher_crashes))
                    .unwrap_or_default();
                for n in nodes {
                    // A node already down is not brought up early by this crash's restart.
                    if self.ents[n as usize].node.is_some() {
                        self.crash_node(n);
                        self.schedule(t + spec.fetcher_down_ms * 1000, Ev::Restart(n));
                    }
                }
            }
        }
    }

    /// Lends the payload model the world for one call (it schedules events and traces).
    fn with_payload(&mut self, f: impl FnOnce(&mut PayloadModel, &mut World)) {
        if let Some(mut p) = self.payload.take() {
            f(&mut p, self);
            self.payload = Some(p);
        }
    }
}

impl Host for World {
    fn now_us(&self) -> u64 {
        self.now_us
    }
    fn schedule_payload(&mut self, at_us: u64, ev: PayloadEv) {
        self.schedule(at_us, Ev::Payload(ev));
    }
    fn trace_payload(&mut self, code: u8, a: u32, b: u32, extra: u64) {
        self.trace(self.now_us, TraceCode::Payload(code), a, b, extra);
    }
}

/// Signs each machine's enrolment with its own clock at its boot time (as `patchmesh node
/// enroll` does on the machine) and makes it the machine's admission.
fn enrol_machines(
    m: &mut crate::enrol::EnrolModel,
    ents: &mut [Entity],
    check: &MemoCheck,
    epoch_ms: u64,
) {
    for (k, join_us) in m.join_us.clone().into_iter().enumerate() {
        let i = m.first + k as u32;
        let e = &mut ents[i as usize];
        let at = Millis(((epoch_ms + join_us / 1000) as i64 + e.skew_ms) as u64);
        let env = patchmesh_protocol::enrol::enrol(m.voucher.clone(), &e.config.key, at);
        let (_, _, enrolled) =
            patchmesh_protocol::enrol::open(&env, check).expect("the model's own enrolment opens");
        e.config.admission = env;
        m.set_enrolment(i, enrolled);
    }
}

/// Adds a persisted object to a node's store; an install's journal entry replaces the one of
/// the same rollout (the latest step is all a restart needs).
fn keep(store: &mut Vec<Persist>, p: Persist) {
    if let Persist::Journal(entry) = &p {
        let slot = store
            .iter_mut()
            .find(|q| matches!(q, Persist::Journal(e) if e.rollout == entry.rollout));
        if let Some(slot) = slot {
            *slot = p;
            return;
        }
    }
    store.push(p);
}

/// Runs a scenario with a seed.
pub fn run(s: &Scenario, seed: u64) -> Report {
    World::new(s.clone(), seed).run()
}

/// With `PATCHMESH_SIM_PROFILE` set, prints how long the run has taken so far at a phase's end.
pub(super) fn phase(label: &str, since: std::time::Instant) {
    if std::env::var_os("PATCHMESH_SIM_PROFILE").is_some() {
        eprintln!("{label:24} done at {:8} ms", since.elapsed().as_millis());
    }
}

thread_local! { static PROF: std::cell::RefCell<BTreeMap<&'static str, (u64, u64)>> = Default::default(); }
