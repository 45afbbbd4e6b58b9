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

use crate::payload::{Host, PayloadEv, PayloadModel};
use crate::rollout::{assign_labels, NodeInfo, RolloutEv, RolloutFigures, RolloutModel};
use crate::scenario::{Link, Scenario};
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

/// Wall-clock epoch of simulated time zero (node clocks add their skew).
const EPOCH_MS: u64 = 1_800_000_000_000;
const CERT_VALID_MS: u64 = 365 * 86_400_000;

/// Memoised ed25519: identical (domain, body, key, signature) are checked once per run.
#[derive(Default)]
pub struct MemoCheck {
    memo: Mutex<HashMap<[u8; 32], Result<(), SignatureError>>>,
}

impl SignatureCheck for MemoCheck {
    fn check(
        &self,
        domain: Domain,
        body: &[u8],
        entry: &SignatureEntry,
    ) -> Result<(), SignatureError> {
        let mut h = blake3::Hasher::new();
        h.update(domain.tag().as_bytes());
        h.update(&entry.key.0);
        h.update(&entry.signature.0);
        h.update(body);
        let k = *h.finalize().as_bytes();
        if let Some(r) = self.memo.lock().unwrap().get(&k) {
            return r.clone();
        }
        let r = Ed25519.check(domain, body, entry);
        self.memo.lock().unwrap().insert(k, r.clone());
        r
    }
}

/// Percentiles of a latency.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
}

impl Percentiles {
    pub(crate) fn of(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        Percentiles { p50: at(0.5), p99: at(0.99), max: *v.last().unwrap() }
    }
}

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Honest nodes.
    pub nodes: usize,
    /// Sites.
    pub sites: usize,
    /// Adversarial nodes.
    pub adversaries: usize,
    /// The seed.
    pub seed: u64,
    /// Hash of the ordered event trace.
    pub trace_hash: String,
    /// All live nodes hold the same catalog and admin set, and each site's live nodes the same
    /// site state.
    pub state_converged: bool,
    /// Publish → each node holds it, simulated milliseconds.
    pub policy_convergence_ms: Percentiles,
    /// Nodes whose convergence time was measured (live from publish to receipt).
    pub policy_convergence_nodes: usize,
    /// Catalog-carrying bytes on the wire per node for the measured change.
    pub sync_bytes_per_change: f64,
    /// Anti-entropy and gossip bytes per node per simulated second once warm (digests etc.).
    pub background_bytes_per_node_per_s: f64,
    /// All bytes sent.
    pub bytes_sent_total: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Messages lost to link loss, partitions or crashed receivers.
    pub messages_lost: u64,
    /// Messages delivered, by kind.
    pub messages_by_kind: BTreeMap<String, u64>,
    /// Objects refused by honest nodes, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Site summaries held per node (mean), and records held per node (mean).
    pub summaries_per_node: f64,
    /// Records held per node (mean): the site, not the fleet.
    pub records_per_node: f64,
    /// Invariant violations; empty when all hold.
    pub invariant_violations: Vec<String>,
    /// Simulated time.
    pub simulated_ms: u64,
    /// Wall-clock time of the run.
    pub wall_ms: u64,
    /// Peak resident set size of the process.
    pub peak_rss_mb: u64,
    /// Max over sites of payload bytes entering the site over the WAN (with `Have` replies)
    /// divided by the payload size; 0 without a payload.
    pub wan_bytes_per_site_ratio: f64,
    /// Publication → each node holds the whole payload verified, simulated milliseconds, over
    /// nodes live at the end.
    pub payload_complete_ms: Percentiles,
    /// Nodes counted in `payload_complete_ms`.
    pub payload_complete_nodes: usize,
    /// Times a downloading node took over its site's WAN fetch because the elected member
    /// was seen gone.
    pub payload_failovers: usize,
    /// Rollout figures (blast radius, halt latency, completion), present with a `[rollout]`.
    #[serde(flatten)]
    pub rollout: Option<RolloutFigures>,
}

enum Ev {
    Deliver { from: u32, to: u32, size: usize, msg: Arc<Message> },
    Bytes { from: u32, to: u32, bytes: Vec<u8> },
    Timer { node: u32 },
    Publish { measured: bool, node: u32, tag: u8 },
    PartitionStart(usize),
    PartitionEnd(usize),
    Crash(usize),
    Restart(u32),
    Revoke,
    Attack,
    Payload(PayloadEv),
    CrashFetchers,
    Rollout(RolloutEv),
}

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
    violations: Vec<String>,
    rejected_adversary_free: bool,
    /// For a steady start: what every node of a site has in its store at time zero.
    site_stores: Vec<Arc<Vec<Persist>>>,
    /// The payload transfer model, when the scenario has a payload.
    payload: Option<Box<PayloadModel>>,
    /// The rollout model, when the scenario has a rollout.
    rollout: Option<Box<RolloutModel>>,
}

/// Builds, for a steady start, each site's store: its members' records and one summary per
/// site signed by that site's elected reporter.
#[allow(clippy::type_complexity)]
fn steady_stores(
    made: Vec<(SecretKey, Envelope, Option<Arc<Bundle>>)>,
    site_of: &[u32],
    sites: usize,
    genesis: &Envelope,
    check: &Arc<MemoCheck>,
) -> (Vec<(SecretKey, Envelope, Option<Arc<Bundle>>)>, Vec<Arc<Vec<Persist>>>) {
    let trust =
        patchmesh_protocol::trust::Trust::new(genesis.clone(), check.as_ref()).expect("genesis");
    let mut states: Vec<patchmesh_protocol::site::SiteState> =
        (0..sites as u32).map(|s| patchmesh_protocol::site::SiteState::new(site_name(s))).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); sites];
    for (i, (_, _, rec)) in made.iter().enumerate() {
        let site = site_of[i] as usize;
        let held = patchmesh_protocol::site::verify_record(
            rec.as_ref().expect("steady record"),
            &trust,
            Millis(EPOCH_MS),
            check.as_ref(),
        )
        .expect("record verifies");
        states[site].merge_record(held).expect("record merges");
        members[site].push(i);
    }
    let mut summaries = Vec::with_capacity(sites);
    for (site, state) in states.iter().enumerate() {
        let name = site_name(site as u32);
        let Some(&reporter) = members[site].iter().min_by_key(|i| {
            patchmesh_protocol::site::reporter_score(&name, &NodeId(made[**i].0.public().0))
        }) else {
            continue;
        };
        let summary = state.summarise(trust.mesh(), NodeId(made[reporter].0.public().0));
        let b = Arc::new(Bundle::new(
            Envelope::seal(Domain::SiteSummary, &summary, &[&made[reporter].0]),
            made[reporter].1.clone(),
        ));
        b.precheck(check.as_ref()).expect("summary verifies");
        summaries.push(Persist::Summary(b));
    }
    let stores = states
        .iter()
        .map(|state| {
            let mut store: Vec<Persist> =
                state.records().values().map(|h| Persist::SiteObject(h.bundle.clone())).collect();
            store.extend(summaries.iter().cloned());
            Arc::new(store)
        })
        .collect();
    (made, stores)
}

fn site_name(i: u32) -> SiteId {
    SiteId::from(format!("site-{i:04}").as_str())
}

fn derive_keys(rng: &mut ChaCha8Rng, count: usize) -> Vec<[u8; 32]> {
    (0..count)
        .map(|_| {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        })
        .collect()
}

/// Makes node keys and admission certificates on two threads; each item depends only on its
/// seed, so the result is the same as a sequential loop.
fn make_nodes(
    seeds: &[[u8; 32]],
    sites: &[u32],
    labels: &[BTreeMap<String, String>],
    admin: &SecretKey,
    g: &Genesis,
    steady: bool,
    check: &MemoCheck,
) -> Vec<(SecretKey, Envelope, Option<Arc<Bundle>>)> {
    let work = |range: std::ops::Range<usize>| -> Vec<(SecretKey, Envelope, Option<Arc<Bundle>>)> {
        range
            .map(|i| {
                let k = SecretKey::from_seed(seeds[i]);
                let cert = mesh::admit(
                    admin,
                    g,
                    NodeId(k.public().0),
                    &site_name(sites[i]),
                    labels.get(i).cloned().unwrap_or_default(),
                    Millis(EPOCH_MS),
                    CERT_VALID_MS,
                );
                // A running fleet's record of this node, checked here on a worker thread so
                // the (memoised) signature checks are paid in parallel.
                let record = steady.then(|| {
                    let rec = NodeRecord {
                        mesh: g.mesh_id(),
                        node: NodeId(k.public().0),
                        site: site_name(sites[i]),
                        version: 1,
                        written_at: Millis(EPOCH_MS),
                        inventory: Default::default(),
                        rollouts: BTreeMap::new(),
                    };
                    let b = Arc::new(Bundle::new(
                        Envelope::seal(Domain::NodeRecord, &rec, &[&k]),
                        cert.clone(),
                    ));
                    b.precheck(check).expect("own record verifies");
                    b
                });
                (k, cert, record)
            })
            .collect()
    };
    let mid = seeds.len() / 2;
    std::thread::scope(|sc| {
        let h = sc.spawn(|| work(mid..seeds.len()));
        let mut a = work(0..mid);
        a.extend(h.join().expect("key generation thread"));
        a
    })
}

impl World {
    /// Builds the world for a scenario and seed.
    pub fn new(s: Scenario, seed: u64) -> World {
        let t_new = std::time::Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key_seeds = derive_keys(&mut rng, 5);
        let roots: Vec<SecretKey> =
            key_seeds[..3].iter().map(|k| SecretKey::from_seed(*k)).collect();
        let admins: Vec<SecretKey> =
            key_seeds[3..].iter().map(|k| SecretKey::from_seed(*k)).collect();
        let genesis = mesh::genesis(
            &s.name,
            &[&roots[0], &roots[1], &roots[2]],
            2,
            &[admins[0].public(), admins[1].public()],
            mesh::Approval::always(1),
            Millis(EPOCH_MS),
        );
        let genesis_body: Genesis = genesis.open("genesis").expect("own genesis decodes");
        let check = Arc::new(MemoCheck::default());

        // Sites: partitioned ones first, adversaries never inside a partition.
        let total = s.nodes + s.adversaries;
        let mut site_of: Vec<u32> = (0..s.nodes).map(|i| (i % s.sites) as u32).collect();
        let mut site_order: Vec<u32> = (0..s.sites as u32).collect();
        for i in (1..site_order.len()).rev() {
            site_order.swap(i, rng.gen_range(0..=i));
        }
        let partition_sites: Vec<Vec<u32>> =
            s.partition.iter().map(|p| site_order[..p.sites].to_vec()).collect();
        let max_part = s.partition.iter().map(|p| p.sites).max().unwrap_or(0);
        for _ in 0..s.adversaries {
            site_of.push(site_order[rng.gen_range(max_part..s.sites)]);
        }
        let seeds = derive_keys(&mut rng, total);
        let steady = s.start == crate::scenario::Start::Steady;
        // Certificate labels and the bad patch's victims, for a rollout (adversaries get none).
        let (labels, bad) = match &s.rollout {
            Some(r) => assign_labels(r, seed, s.nodes),
            None => (Vec::new(), Vec::new()),
        };
        let made = make_nodes(&seeds, &site_of, &labels, &admins[0], &genesis_body, steady, &check);

        let mut members: Vec<Vec<u32>> = vec![Vec::new(); s.sites];
        for (i, site) in site_of.iter().enumerate().take(s.nodes) {
            members[*site as usize].push(i as u32);
        }
        let mut links: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); total];
        let add = |a: u32, b: u32, links: &mut Vec<BTreeSet<u32>>| {
            if a != b {
                links[a as usize].insert(b);
                links[b as usize].insert(a);
            }
        };
        for (i, site) in site_of.iter().enumerate() {
            let m = &members[*site as usize];
            for _ in 0..s.topology.lan_degree.min(m.len().saturating_sub(1)) {
                // A random other member (never itself, so every node has a link).
                let mut j = m[rng.gen_range(0..m.len())];
                while j == i as u32 {
                    j = m[rng.gen_range(0..m.len())];
                }
                add(i as u32, j, &mut links);
            }
        }
        for site in 0..s.sites {
            let mut peers_sites: Vec<usize> = Vec::new();
            if s.sites > 1 {
                peers_sites.push((site + 1) % s.sites);
                for _ in 0..s.topology.wan_links_per_site {
                    peers_sites.push(rng.gen_range(0..s.sites));
                }
            }
            for other in peers_sites {
                if other == site || members[site].is_empty() || members[other].is_empty() {
                    continue;
                }
                let a = members[site][rng.gen_range(0..members[site].len())];
                let b = members[other][rng.gen_range(0..members[other].len())];
                add(a, b, &mut links);
            }
        }

        let mut crash_sets = Vec::new();
        let mut crashing = BTreeSet::new();
        // Fetchers that crash are chosen during the run, so every node keeps a store.
        let keep_stores = s.payload.as_ref().is_some_and(|p| p.fetcher_crashes > 0);
        for c in &s.crash {
            let set: Vec<u32> = (0..c.nodes)
                .map(|_| rng.gen_range(0..s.nodes as u32))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            crashing.extend(set.iter().copied());
            crash_sets.push(set);
        }

        let mut ents = Vec::with_capacity(total);
        let (made, site_stores) = if steady {
            steady_stores(made, &site_of, s.sites, &genesis, &check)
        } else {
            (made, Vec::new())
        };
        for (i, (key, admission, _)) in made.into_iter().enumerate() {
            let skew_ms = if s.clock_skew_ms > 0 {
                rng.gen_range(-(s.clock_skew_ms as i64)..=s.clock_skew_ms as i64)
            } else {
                0
            };
            let config = Config {
                key,
                admission,
                genesis: genesis.clone(),
                anti_entropy_interval_ms: s.protocol.anti_entropy_interval_ms,
                summary_interval_ms: s.protocol.summary_interval_ms,
                gossip_flush_ms: s.protocol.gossip_flush_ms,
                summary_fanout: s.protocol.summary_fanout,
                seed: rng.gen(),
                record_version_floor: u64::from(steady),
                check: check.clone(),
                relay: patchmesh_protocol::node::RelayMode::Direct,
                rollout_eval_ms: s.protocol.rollout_eval_ms,
            };
            ents.push(Entity {
                node: None,
                config,
                site: site_of[i],
                skew_ms,
                links: links[i].iter().copied().collect(),
                timer_at: u64::MAX,
                store: (keep_stores || crashing.contains(&(i as u32))).then(|| {
                    site_stores
                        .get(site_of[i] as usize)
                        .map(|st: &Arc<Vec<Persist>>| st.as_ref().clone())
                        .unwrap_or_default()
                }),
                adversary: i >= s.nodes,
            });
        }
        let payload = s.payload.clone().map(|spec| {
            let ids = ents[..s.nodes].iter().map(|e| NodeId(e.config.key.public().0)).collect();
            let sites = site_of[..s.nodes].to_vec();
            Box::new(PayloadModel::new(
                spec,
                seed,
                ids,
                sites,
                s.sites,
                s.lan.clone(),
                s.wan.clone(),
            ))
        });
        let rollout = s.rollout.clone().map(|spec| {
            let nodes = ents
                .iter()
                .enumerate()
                .map(|(i, e)| NodeInfo {
                    id: NodeId(e.config.key.public().0),
                    site: e.site,
                    labels: labels.get(i).cloned().unwrap_or_default(),
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
            Box::new(RolloutModel::new(spec, seed, nodes, s.sites, cuts, eval_ms, EPOCH_MS))
        });
        World {
            payload,
            rollout,
            started: t_new,
            partitioned: vec![false; s.sites],
            received_us: vec![u64::MAX; s.nodes],
            eligible: vec![false; s.nodes],
            keys: Keys { roots, admins, genesis, genesis_body },
            site_stores,
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
            violations: Vec::new(),
            rejected_adversary_free: true,
        }
    }

    fn schedule(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { t, seq: self.seq, ev }));
    }

    fn node_now(&self, i: u32) -> Millis {
        let ms = (EPOCH_MS + self.now_us / 1000) as i64 + self.ents[i as usize].skew_ms;
        Millis(ms as u64)
    }

    fn honest(&self, i: u32) -> bool {
        !self.ents[i as usize].adversary
    }

    /// Builds node `i` from its config and store (what a process does at boot). Depends only
    /// on the entity and the initial site stores, so many can be built in parallel.
    fn build_node(&self, i: u32, first_boot: bool) -> (Node, Option<String>) {
        let e = &self.ents[i as usize];
        let mut config = e.config.clone();
        if let Some(store) = &e.store {
            config.record_version_floor = store
                .iter()
                .filter_map(|p| match p {
                    Persist::RecordVersionFloor(v) => Some(*v),
                    _ => None,
                })
                .max()
                .unwrap_or(config.record_version_floor);
        }
        let now = self.node_now(i);
        let mut node = Node::new(config, now).expect("simulated node config is valid");
        let store: Option<&[Persist]> = match &e.store {
            Some(store) if !store.is_empty() => Some(store),
            _ if first_boot && !self.site_stores.is_empty() => {
                Some(self.site_stores[e.site as usize].as_slice())
            }
            _ => None,
        };
        let mut problem = None;
        if let Some(store) = store {
            let refused = node.restore(store);
            if refused > 0 {
                problem = Some(format!("node {i} refused {refused} objects of its store"));
            }
        }
        (node, problem)
    }

    /// Boots every node at time zero, two at a time, then connects them in index order.
    fn boot_all(&mut self) {
        let n = self.ents.len() as u32;
        let mid = n / 2;
        let this = &*self;
        let build = |range: std::ops::Range<u32>| -> Vec<(Node, Option<String>)> {
            range.map(|i| this.build_node(i, true)).collect()
        };
        let built: Vec<(Node, Option<String>)> = std::thread::scope(|sc| {
            let h = sc.spawn(|| build(mid..n));
            let mut a = build(0..mid);
            a.extend(h.join().expect("boot thread"));
            a
        });
        for (i, (node, problem)) in built.into_iter().enumerate() {
            if let Some(p) = problem {
                self.violations.push(p);
            }
            self.ents[i].node = Some(node);
            self.input(i as u32, Input::Start);
            self.tell_facts(i as u32);
            self.connect_started(i as u32, |j| j < i as u32);
        }
    }

    fn start_node(&mut self, i: u32) {
        let (node, problem) = self.build_node(i, false);
        if let Some(p) = problem {
            self.violations.push(p);
        }
        if let Some(m) = self.rollout.as_mut() {
            m.on_restart(i, node.rollouts().journal().get(&m.id()), self.now_us);
        }
        self.ents[i as usize].node = Some(node);
        self.input(i, Input::Start);
        self.tell_facts(i);
        self.connect_started(i, |_| true);
    }

    /// Tells a booting node its OS, packages and time zone (what its inventory collector
    /// reports), before anything else reaches it.
    fn tell_facts(&mut self, i: u32) {
        if let Some(facts) = self.rollout.as_ref().map(|m| m.facts(i)) {
            self.input(i, Input::Command(Command::SetFacts(facts)));
        }
    }

    /// Connects node `i` to each linked node that is up and passes `filter`.
    fn connect_started(&mut self, i: u32, filter: impl Fn(u32) -> bool) {
        let links = self.ents[i as usize].links.clone();
        for j in links {
            if self.ents[j as usize].node.is_none() || !filter(j) {
                continue;
            }
            let (ni, nj) = (
                self.ents[i as usize].config.key.public(),
                self.ents[j as usize].config.key.public(),
            );
            self.input(i, Input::Connected { peer: PeerId(u64::from(j)), node: NodeId(nj.0) });
            self.input(j, Input::Connected { peer: PeerId(u64::from(i)), node: NodeId(ni.0) });
        }
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
                }
                Output::Penalize { .. } | Output::Event(_) => {}
                // Simulated nodes run in direct relay mode, which never asks for pubsub.
                Output::Broadcast { .. } | Output::GossipVerdict { .. } => {
                    unreachable!("pubsub output in direct relay mode")
                }
            }
        }
        if let Some(t) = timeout {
            let local_ms = t.0 as i64 - self.ents[i as usize].skew_ms - EPOCH_MS as i64;
            let at = (local_ms.max(0) as u64 * 1000).max(self.now_us);
            if at != self.ents[i as usize].timer_at {
                self.ents[i as usize].timer_at = at;
                self.schedule(at, Ev::Timer { node: i });
            }
        }
    }

    fn link(&self, a: u32, b: u32) -> (&Link, bool) {
        let (sa, sb) = (self.ents[a as usize].site, self.ents[b as usize].site);
        if sa == sb {
            (&self.s.lan, false)
        } else {
            (&self.s.wan, true)
        }
    }

    fn send(&mut self, from: u32, to: u32, msg: Arc<Message>) {
        let size = msg.wire_bytes();
        if self.honest(from) {
            self.check_relay(from, &msg);
        }
        self.transmit(from, to, size, Ev::Deliver { from, to, size, msg });
    }

    fn transmit(&mut self, from: u32, to: u32, size: usize, ev: Ev) {
        self.bytes_total += size as u64;
        let is_catalog = matches!(&ev, Ev::Deliver { msg, .. } if msg.is_catalog());
        if is_catalog && self.measured_hash.is_some() && self.measure_end_us.is_none() {
            self.catalog_bytes += size as u64;
        }
        if !is_catalog
            && !self.ents[from as usize].adversary
            && self.now_us >= self.background_from_us
            && self.now_us < self.background_to_us
        {
            self.background_bytes += size as u64;
        }
        let (link, wan) = self.link(from, to);
        let (delay, tx, loss) = (link.one_way_us(), link.transmit_us(size), link.loss);
        let (sa, sb) =
            (self.ents[from as usize].site as usize, self.ents[to as usize].site as usize);
        let cut = wan && (self.partitioned[sa] || self.partitioned[sb]);
        if cut || (loss > 0.0 && self.rng.gen::<f64>() < loss) {
            self.lost += 1;
            return;
        }
        let free = self.link_free.entry((from, to)).or_insert(0);
        let start = (*free).max(self.now_us);
        *free = start + tx;
        let at = start + tx + delay;
        self.schedule(at, ev);
    }

    /// An honest node must never send anything an adversary forged.
    fn check_relay(&mut self, from: u32, msg: &Message) {
        if self.forged.envelopes.is_empty() && self.forged.bundles.is_empty() {
            return;
        }
        let bad = match msg {
            Message::CatalogChange(env) => self.forged.envelopes.contains(&env.id()),
            Message::CatalogSync(s) => {
                s.changes.iter().any(|e| self.forged.envelopes.contains(&e.id()))
            }
            Message::AdminSets(v) => v.iter().any(|e| self.forged.envelopes.contains(&e.id())),
            Message::SiteObjects(v) | Message::Summaries(v) => {
                v.iter().any(|b| self.forged.bundles.contains(&b.id()))
            }
            _ => false,
        };
        if bad {
            self.violations
                .push(format!("honest node {from} relayed a forged object ({})", msg.kind()));
        }
    }

    fn trace(&mut self, t: u64, code: u8, a: u32, b: u32, extra: u64) {
        let mut rec = [0u8; 25];
        rec[..8].copy_from_slice(&t.to_le_bytes());
        rec[8] = code;
        rec[9..13].copy_from_slice(&a.to_le_bytes());
        rec[13..17].copy_from_slice(&b.to_le_bytes());
        rec[17..25].copy_from_slice(&extra.to_le_bytes());
        self.trace.update(&rec);
    }

    fn schedule_script(&mut self) {
        let ms = 1000u64;
        self.schedule(self.s.publish_at_ms * ms, Ev::Publish { measured: true, node: 0, tag: 0 });
        if self.s.revoke_admin_at_ms > 0 {
            self.schedule(self.s.revoke_admin_at_ms * ms, Ev::Revoke);
        }
        if self.s.adversaries > 0 {
            self.schedule(self.s.warmup_ms * ms, Ev::Attack);
        }
        for (i, p) in self.s.partition.clone().iter().enumerate() {
            self.schedule(p.start_ms * ms, Ev::PartitionStart(i));
            self.schedule(p.end_ms * ms, Ev::PartitionEnd(i));
            if p.publish_inside {
                let mid = (p.start_ms + p.end_ms) / 2 * ms;
                let inside = self.partition_sites[i][0];
                let node_in =
                    (0..self.s.nodes as u32).find(|n| self.ents[*n as usize].site == inside);
                let node_out = (0..self.s.nodes as u32)
                    .find(|n| !self.partition_sites[i].contains(&self.ents[*n as usize].site));
                if let (Some(a), Some(b)) = (node_in, node_out) {
                    self.schedule(
                        mid,
                        Ev::Publish { measured: false, node: a, tag: 1 + 2 * i as u8 },
                    );
                    self.schedule(
                        mid,
                        Ev::Publish { measured: false, node: b, tag: 2 + 2 * i as u8 },
                    );
                }
            }
        }
        if let Some(p) = &self.payload {
            self.schedule(p.at_us(), Ev::Payload(PayloadEv::Publish));
        }
        if let Some(r) = &self.rollout {
            self.schedule(r.at_us(), Ev::Rollout(RolloutEv::Publish));
        }
        if let Some(p) = self.s.payload.as_ref().filter(|p| p.fetcher_crashes > 0) {
            self.schedule(p.fetcher_crash_at_ms * ms, Ev::CrashFetchers);
        }
        for (i, c) in self.s.crash.clone().iter().enumerate() {
            self.schedule(c.at_ms * ms, Ev::Crash(i));
            for n in self.crash_sets[i].clone() {
                self.schedule((c.at_ms + c.down_ms) * ms, Ev::Restart(n));
            }
        }
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        let wall = self.started;
        self.boot_all();

        self.schedule_script();
        let end_us = self.s.duration_ms * 1000;
        self.background_from_us = self.s.warmup_ms * 1000;
        self.background_to_us = self.s.publish_at_ms * 1000;
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.t > end_us {
                break;
            }
            self.now_us = q.t;
            let kind: &'static str = match &q.ev {
                Ev::Deliver { msg, .. } => msg.kind(),
                Ev::Timer { node } if self.ents[*node as usize].timer_at != q.t => "timer_stale",
                Ev::Timer { .. } => "timer",
                Ev::Rollout(_) => "rollout",
                Ev::Payload(_) => "payload",
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
        if std::env::var_os("PATCHMESH_SIM_PROFILE").is_some() {
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
                self.trace(t, 1, from, to, size as u64);
                let catalog = msg.is_catalog();
                self.input(to, Input::Message { peer: PeerId(u64::from(from)), msg });
                if catalog {
                    self.observe(to);
                }
            }
            Ev::Bytes { from, to, bytes } => {
                self.trace(t, 2, from, to, bytes.len() as u64);
                self.input(to, Input::Bytes { peer: PeerId(u64::from(from)), bytes });
            }
            Ev::Timer { node } => {
                if self.ents[node as usize].timer_at != t || self.ents[node as usize].node.is_none()
                {
                    return;
                }
                self.ents[node as usize].timer_at = u64::MAX;
                self.trace(t, 3, node, 0, 0);
                self.input(node, Input::Timer);
            }
            Ev::Publish { measured, node, tag } => self.publish(measured, node, tag),
            Ev::PartitionStart(i) | Ev::PartitionEnd(i) => {
                let cut = matches!(ev, Ev::PartitionStart(_));
                self.trace(t, if cut { 5 } else { 6 }, i as u32, 0, 0);
                for s in self.partition_sites[i].clone() {
                    self.partitioned[s as usize] = cut;
                    self.with_payload(|p, w| p.on_partition(w, s, cut));
                }
            }
            Ev::Crash(i) => {
                for n in self.crash_sets[i].clone() {
                    self.crash_node(n);
                }
            }
            Ev::Restart(n) => {
                self.trace(t, 8, n, 0, 0);
                self.start_node(n);
                if self.honest(n) {
                    self.with_payload(|p, w| p.on_restart(w, n));
                }
            }
            Ev::Revoke => self.revoke(),
            Ev::Attack => self.attack(),
            Ev::Payload(e) => self.with_payload(|p, w| p.step(w, e)),
            Ev::Rollout(RolloutEv::Publish) => self.publish_rollout(),
            Ev::Rollout(RolloutEv::Done { node, life, result }) => {
                let Some(m) = self.rollout.as_mut() else { return };
                if m.deliverable(node, life) {
                    self.trace(t, 11, node, u32::from(result.ok), result.id);
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

    fn crash_node(&mut self, n: u32) {
        self.trace(self.now_us, 7, n, 0, 0);
        let was_up = self.ents[n as usize].node.is_some();
        self.ents[n as usize].node = None;
        self.ents[n as usize].timer_at = u64::MAX;
        if (n as usize) < self.eligible.len()
            && self.received_us[n as usize] == u64::MAX
            && self.eligible[n as usize]
        {
            self.eligible[n as usize] = false;
            self.pending_measure -= 1;
        }
        for j in self.ents[n as usize].links.clone() {
            self.input(j, Input::Disconnected { peer: PeerId(u64::from(n)) });
        }
        if let Some(m) = self.rollout.as_mut() {
            m.on_crash(n, self.now_us);
        }
        if was_up && self.honest(n) {
            self.with_payload(|p, w| p.on_crash(w, n));
        }
    }

    /// Lends the payload model the world for one call (it schedules events and traces).
    fn with_payload(&mut self, f: impl FnOnce(&mut PayloadModel, &mut World)) {
        if let Some(mut p) = self.payload.take() {
            f(&mut p, self);
            self.payload = Some(p);
        }
    }

    fn command_entry(&mut self, tag: u8) -> (String, Option<CatalogEntry>) {
        let mut id = [tag; 32];
        self.rng.fill_bytes(&mut id[..8]);
        let c = CatalogEntry::Command(AdminCommand {
            rollout: RolloutId(id),
            action: CommandAction::Pause,
            issued_at: Millis(EPOCH_MS + self.now_us / 1000),
            admin: self.keys.admins[0].public(),
        });
        (c.key(), Some(c))
    }

    fn publish(&mut self, measured: bool, node: u32, tag: u8) {
        let node = if measured {
            // A random honest node that is up.
            let mut n = self.rng.gen_range(0..self.s.nodes as u32);
            while self.ents[n as usize].node.is_none() {
                n = (n + 1) % self.s.nodes as u32;
            }
            n
        } else {
            node
        };
        self.trace(self.now_us, 4, node, u32::from(tag), 0);
        let edit = self.command_entry(tag);
        let admin = self.keys.admins[0].clone();
        let before: BTreeSet<ObjectId> = self.ents[node as usize]
            .node
            .as_ref()
            .map(|n| n.catalog_change_ids().into_iter().collect())
            .unwrap_or_default();
        self.input(node, Input::Command(Command::Publish { admin, edits: vec![edit] }));
        if !measured {
            return;
        }
        let Some(n) = self.ents[node as usize].node.as_ref() else { return };
        let new_env = n.catalog().envelopes().find(|e| !before.contains(&e.id())).cloned();
        let Some(env) = new_env else {
            self.violations.push("the measured publish produced no change".into());
            return;
        };
        self.measured_hash = catalog::change_hash(&env);
        self.measured_at_us = self.now_us;
        for i in 0..self.s.nodes {
            self.eligible[i] = self.ents[i].node.is_some();
        }
        self.pending_measure = self.eligible.iter().filter(|e| **e).count();
        self.observe(node);
    }

    fn observe(&mut self, i: u32) {
        let Some(hash) = self.measured_hash else { return };
        let iu = i as usize;
        if iu >= self.s.nodes || !self.eligible[iu] || self.received_us[iu] != u64::MAX {
            return;
        }
        if self.ents[iu].node.as_ref().is_some_and(|n| n.catalog().has(&hash)) {
            self.received_us[iu] = self.now_us;
            self.pending_measure -= 1;
            if self.pending_measure == 0 {
                self.measure_end_us = Some(self.now_us);
            }
        }
    }

    /// An admin publishes the patch and its rollout at a random honest node that is up.
    fn publish_rollout(&mut self) {
        let Some(m) = self.rollout.as_mut() else { return };
        let edits = m.publish(self.now_us);
        let mut n = self.rng.gen_range(0..self.s.nodes as u32);
        while self.ents[n as usize].node.is_none() {
            n = (n + 1) % self.s.nodes as u32;
        }
        self.trace(self.now_us, 12, n, 0, 0);
        let admin = self.keys.admins[0].clone();
        self.input(n, Input::Command(Command::Publish { admin, edits }));
    }

    fn revoke(&mut self) {
        // Root keys 0 and 2 revoke admin 1 (which never signed, so no history is kept).
        let Some(n) = self.ents[0].node.as_ref() else { return };
        let current = n.trust().admins().clone();
        let env = mesh::next_admin_set(
            &current,
            vec![self.keys.admins[0].public()],
            vec![Revocation { key: self.keys.admins[1].public(), kept_seq: BTreeMap::new() }],
            &[&self.keys.roots[0], &self.keys.roots[2]],
        );
        self.trace(self.now_us, 9, 0, 0, 0);
        self.input(0, Input::Command(Command::AdminSet(env)));
    }

    /// Every adversary sends every kind of bad object to each of its peers.
    fn attack(&mut self) {
        self.trace(self.now_us, 10, 0, 0, 0);
        let mesh_id = self.keys.genesis_body.mesh_id();
        for a in self.s.nodes as u32..self.ents.len() as u32 {
            let Some(adv) = self.ents[a as usize].node.as_ref() else { continue };
            let mut forged_envs: Vec<Envelope> = Vec::new();
            // A genuine-looking change, authored on a scratch catalog with the admin key the
            // revocation removed, then variants of it.
            let trust = adv.trust().clone();
            let mut scratch = patchmesh_protocol::catalog::Catalog::new(mesh_id);
            let scratch_trust =
                patchmesh_protocol::trust::Trust::new(self.keys.genesis.clone(), &Ed25519)
                    .expect("genesis");
            let edit = self.command_entry(200);
            let by_revoked = scratch
                .author(
                    &self.keys.admins[1],
                    [9; 8],
                    Millis(EPOCH_MS),
                    &scratch_trust,
                    std::slice::from_ref(&edit),
                )
                .expect("scratch author");
            let body: catalog::ChangeBody = by_revoked.open("c").expect("own change");
            let own_key = self.ents[a as usize].config.key.clone();
            // 1. signed by a non-admin key
            forged_envs.push(Envelope::seal(Domain::CatalogChange, &body, &[&own_key]));
            // 2. an admin's signature from another domain, relabelled
            let admission = self.ents[a as usize].config.admission.clone();
            forged_envs.push(Envelope {
                domain: Domain::CatalogChange,
                body: admission.body.clone(),
                signatures: admission.signatures.clone(),
            });
            // 3. unsigned
            forged_envs.push(Envelope {
                domain: Domain::CatalogChange,
                body: by_revoked.body.clone(),
                signatures: vec![],
            });
            // 4. signed by the revoked admin (only forged once the revocation exists)
            if trust.admins().revocation(&self.keys.admins[1].public()).is_some() {
                forged_envs.push(by_revoked.clone());
            }
            // 5. admin sets: one stolen root (below threshold), the same root twice
            let grab = mesh::next_admin_set(
                trust.admins(),
                vec![own_key.public()],
                vec![],
                &[&self.keys.roots[1]],
            );
            let mut twice = grab.clone();
            twice.signatures.push(twice.signatures[0]);
            let sets = vec![grab, twice];
            for e in forged_envs.iter().chain(sets.iter()) {
                self.forged.envelopes.insert(e.id());
                if let Some(h) = catalog::change_hash(e) {
                    if e.domain == Domain::CatalogChange {
                        self.forged.change_hashes.push(h);
                    }
                }
            }
            // The change by the revoked admin has a real change hash; the non-admin one shares it.
            // 6. a record claiming to be an honest node of the same site, at a high version
            let site = self.ents[a as usize].site;
            let victim = (0..self.s.nodes as u32).find(|n| self.ents[*n as usize].site == site);
            let mut bundles = Vec::new();
            if let Some(v) = victim {
                let rec = NodeRecord {
                    mesh: mesh_id,
                    node: NodeId(self.ents[v as usize].config.key.public().0),
                    site: site_name(site),
                    version: 1_000_000,
                    written_at: Millis(EPOCH_MS),
                    inventory: Default::default(),
                    rollouts: BTreeMap::new(),
                };
                let b = Arc::new(Bundle::new(
                    Envelope::seal(Domain::NodeRecord, &rec, &[&own_key]),
                    admission.clone(),
                ));
                self.forged.bundles.insert(b.id());
                self.forged.records.push((v, 1_000_000));
                bundles.push(b);
            }
            let peers = self.ents[a as usize].links.clone();
            for p in peers {
                for e in &forged_envs {
                    self.send(a, p, Arc::new(Message::CatalogChange(Arc::new(e.clone()))));
                }
                for set in &sets {
                    self.send(a, p, Arc::new(Message::AdminSets(vec![set.clone()])));
                }
                if !bundles.is_empty() {
                    self.send(a, p, Arc::new(Message::SiteObjects(bundles.clone())));
                }
                // 7. garbage, truncated and oversized bytes
                let mut garbage = vec![0u8; 97];
                self.rng.fill_bytes(&mut garbage);
                let truncated =
                    Message::CatalogChange(Arc::new(by_revoked.clone())).to_bytes()[..50].to_vec();
                let oversized = vec![7u8; limits::MESSAGE_BYTES_MAX + 1];
                for bytes in [garbage, truncated, oversized] {
                    let size = bytes.len();
                    self.transmit(a, p, size, Ev::Bytes { from: a, to: p, bytes });
                }
            }
        }
    }

    fn finish(mut self) -> Report {
        let mut violations = std::mem::take(&mut self.violations);
        // Convergence: every live honest node agrees on catalog and trust; each site on its state.
        let mut catalogs: BTreeMap<(StateHash, u64), usize> = BTreeMap::new();
        let mut sites: BTreeMap<u32, BTreeSet<StateHash>> = BTreeMap::new();
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        let (mut summaries, mut records, mut live) = (0usize, 0usize, 0usize);
        for i in 0..self.s.nodes {
            let site = self.ents[i].site;
            let Some(n) = self.ents[i].node.as_mut() else { continue };
            live += 1;
            *catalogs.entry((n.catalog().state_hash(), n.trust().version())).or_default() += 1;
            sites.entry(site).or_default().insert(n.state_hash());
            summaries += n.summaries().all().len();
            records += n.site().records().len();
            for (k, v) in &n.stats().rejected {
                *rejected.entry(k.to_string()).or_default() += v;
            }
            for h in &self.forged.change_hashes {
                if n.catalog().has(h) {
                    violations.push(format!("node {i} stored a forged catalog change"));
                }
            }
            let admins = n.trust().admins();
            if admins.admins.len() != 1 && self.s.revoke_admin_at_ms > 0 {
                violations.push(format!("node {i} holds admin set {:?}", admins.admins.len()));
            }
            if n.trust().version() > 2 {
                violations.push(format!("node {i} accepted an admin set no root quorum signed"));
            }
        }
        for (v, max) in &self.forged.records {
            if let Some(n) =
                self.ents.iter().filter(|e| !e.adversary).filter_map(|e| e.node.as_ref()).find(
                    |n| {
                        n.site()
                            .record_version(&NodeId(self.ents[*v as usize].config.key.public().0))
                            >= Some(*max)
                    },
                )
            {
                violations.push(format!("node {:?} stored a forged record", n.id()));
            }
        }
        let converged = catalogs.len() == 1 && sites.values().all(|s| s.len() == 1);
        if !converged {
            violations.push(format!(
                "not converged: {} catalog/trust states, {} sites disagree",
                catalogs.len(),
                sites.values().filter(|s| s.len() > 1).count()
            ));
        }
        let times: Vec<u64> = self
            .received_us
            .iter()
            .zip(&self.eligible)
            .filter(|(t, e)| **e && **t != u64::MAX)
            .map(|(t, _)| (t - self.measured_at_us) / 1000)
            .collect();
        if self.measured_hash.is_some() && self.pending_measure > 0 {
            violations
                .push(format!("{} nodes never received the measured change", self.pending_measure));
        }
        if self.s.adversaries > 0 && rejected.is_empty() {
            violations.push("adversaries attacked but no node refused anything".into());
        }
        let _ = self.rejected_adversary_free;
        let figures = self.payload.as_ref().map(|p| p.finish(self.now_us)).unwrap_or_default();
        violations.extend(figures.violations);
        let rollout = self.rollout.take().map(|m| {
            let id = m.id();
            let live: Vec<_> = self.ents[..self.s.nodes]
                .iter()
                .map(|e| {
                    e.node.as_ref().map(|n| {
                        let engine = n.rollouts();
                        (
                            engine.journal().get(&id).cloned(),
                            engine.verdicts().get(&id).map(|v| v.control.clone()),
                        )
                    })
                })
                .collect();
            let (figures, v) = m.finish(&live, self.now_us);
            violations.extend(v);
            figures
        });
        let nodes = self.s.nodes.max(1) as f64;
        let bg_s = (self.background_to_us.saturating_sub(self.background_from_us)) as f64 / 1e6;
        let report = Report {
            scenario: self.s.name.clone(),
            nodes: self.s.nodes,
            sites: self.s.sites,
            adversaries: self.s.adversaries,
            seed: self.seed,
            trace_hash: self.trace.finalize().to_hex().to_string(),
            state_converged: converged,
            policy_convergence_nodes: times.len(),
            policy_convergence_ms: Percentiles::of(times),
            sync_bytes_per_change: (self.catalog_bytes as f64 / nodes * 10.0).round() / 10.0,
            background_bytes_per_node_per_s: if bg_s > 0.0 {
                (self.background_bytes as f64 / nodes / bg_s).round()
            } else {
                0.0
            },
            bytes_sent_total: self.bytes_total,
            messages_delivered: self.delivered,
            messages_lost: self.lost,
            messages_by_kind: self.by_kind.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            rejected,
            summaries_per_node: (summaries as f64 / live.max(1) as f64 * 10.0).round() / 10.0,
            records_per_node: (records as f64 / live.max(1) as f64 * 10.0).round() / 10.0,
            invariant_violations: violations,
            simulated_ms: self.now_us / 1000,
            // Everything from building the world to this report: keys, topology, run, checks.
            wall_ms: self.started.elapsed().as_millis() as u64,
            peak_rss_mb: peak_rss_mb(),
            wan_bytes_per_site_ratio: figures.wan_bytes_per_site_ratio,
            payload_complete_ms: figures.complete_ms,
            payload_complete_nodes: figures.complete_nodes,
            payload_failovers: figures.failovers,
            rollout,
        };
        // Freeing a 100,000-node world takes seconds and the report is all that is left to use.
        std::mem::forget(self.ents);
        report
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
        self.trace(self.now_us, code, a, b, extra);
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

/// Peak resident set size (VmHWM) of this process in MiB; 0 where /proc is not available.
pub fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Runs a scenario with a seed.
pub fn run(s: &Scenario, seed: u64) -> Report {
    World::new(s.clone(), seed).run()
}

thread_local! { static PROF: std::cell::RefCell<BTreeMap<&'static str, (u64, u64)>> = Default::default(); }
