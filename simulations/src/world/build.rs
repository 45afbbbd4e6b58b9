//! Building a world: keys, the overlay and node configs, steady stores, and booting and
//! restarting nodes.

use super::*;

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

/// Builds, for a steady start, each site's store: its members' records and one summary per
/// site signed by that site's elected reporter and endorsed by the next member in the election
/// order (as a running fleet's would be; a site of one member needs no endorsement).
#[allow(clippy::type_complexity)]
pub(super) fn steady_stores(
    epoch_ms: u64,
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
            Millis(epoch_ms),
            check.as_ref(),
        )
        .expect("record verifies");
        states[site].merge_record(held).expect("record merges");
        members[site].push(i);
    }
    let mut summaries = Vec::with_capacity(sites);
    for (site, state) in states.iter().enumerate() {
        let name = site_name(site as u32);
        let mut order = members[site].clone();
        order.sort_by_cached_key(|i| {
            patchmesh_protocol::site::reporter_score(&name, &NodeId(made[*i].0.public().0))
        });
        let Some(&reporter) = order.first() else { continue };
        let summary = state.summarise(trust.mesh(), NodeId(made[reporter].0.public().0));
        let env = Envelope::seal(Domain::SiteSummary, &summary, &[&made[reporter].0]);
        let b = Arc::new(match order.get(1) {
            None => Bundle::new(env, made[reporter].1.clone()),
            Some(&deputy) => {
                let endorsement = patchmesh_protocol::site::Endorsement {
                    mesh: trust.mesh(),
                    site: name.clone(),
                    endorser: NodeId(made[deputy].0.public().0),
                    summary: env,
                    admission: made[reporter].1.clone(),
                };
                Bundle::new(
                    Envelope::seal(Domain::SummaryEndorsement, &endorsement, &[&made[deputy].0]),
                    made[deputy].1.clone(),
                )
            }
        });
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

pub(super) fn site_name(i: u32) -> SiteId {
    SiteId::from(format!("site-{i:04}").as_str())
}

pub(super) fn derive_keys(rng: &mut ChaCha8Rng, count: usize) -> Vec<[u8; 32]> {
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
#[allow(clippy::too_many_arguments)]
pub(super) fn make_nodes(
    epoch_ms: u64,
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
                    Millis(epoch_ms),
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
                        written_at: Millis(epoch_ms),
                        inventory: Default::default(),
                        rollouts: BTreeMap::new(),
                        exposure: None,
                        audit: None,
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
    /// Builds node `i` from its config and store (what a process does at boot). Depends only
    /// on the entity and the initial site stores, so many can be built in parallel.
    pub(super) fn build_node(&self, i: u32, first_boot: bool) -> (Node, Option<String>) {
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
        // A node's own store is its own; a site's steady store is restored by each of its
        // members, which share the verified records and summaries (`RestoreMemo`).
        let (store, memo): (Option<&[Persist]>, _) = match &e.store {
            Some(store) if !store.is_empty() => (Some(store), None),
            _ if first_boot && !self.site_stores.is_empty() => {
                (Some(self.site_stores[e.site as usize].as_slice()), Some(&self.restore_memo))
            }
            _ => (None, None),
        };
        let mut problem = None;
        if let Some(store) = store {
            let refused = node.restore_shared(store, memo);
            if refused > 0 {
                problem = Some(format!("node {i} refused {refused} objects of its store"));
            }
        }
        (node, problem)
    }

    /// Boots every node at time zero, two at a time, then connects them in index order.
    pub(super) fn boot_all(&mut self) {
        // Enrolling machines boot when they join ([`crate::enrol`]).
        let n = self.enrol.as_ref().map_or(self.ents.len() as u32, |m| m.first);
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
        super::phase("stores restored", self.started);
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

    pub(super) fn start_node(&mut self, i: u32) {
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
    pub(super) fn tell_facts(&mut self, i: u32) {
        if let Some(facts) = self.rollout.as_ref().map(|m| m.facts(i)) {
            self.input(i, Input::Command(Command::SetFacts(facts)));
        }
    }

    /// Connects node `i` to each linked node that is up and passes `filter`.
    /// `a` dials `b` again (see `Ev::Redial`): the link comes back if both are up, not linked
    /// already and not cut apart; a dial that fails is tried again later, twice as late.
    pub(super) fn redial(&mut self, a: u32, b: u32, tries: u8) {
        let up = |w: &World, n: u32| w.ents[n as usize].node.is_some();
        if self.ents[a as usize].links.contains(&b) || !up(self, a) {
            return;
        }
        let (sa, sb) = (self.ents[a as usize].site as usize, self.ents[b as usize].site as usize);
        let cut = sa != sb && (self.partitioned[sa] || self.partitioned[sb]);
        if !up(self, b) || cut {
            if tries + 1 < REDIAL_TRIES {
                let wait = REDIAL_US << (tries + 1);
                self.schedule(self.now_us + wait, Ev::Redial { a, b, tries: tries + 1 });
            }
            return;
        }
        self.trace(self.now_us, TraceCode::Redial, a, b, u64::from(tries));
        self.redialled += 1;
        self.ents[a as usize].links.push(b);
        self.ents[b as usize].links.push(a);
        self.connect_started(a, |j| j == b);
    }

    pub(super) fn connect_started(&mut self, i: u32, filter: impl Fn(u32) -> bool) {
        let links = self.ents[i as usize].links.clone();
        for j in links {
            if self.ents[j as usize].node.is_none() || !filter(j) {
                continue;
            }
            // A dial across the enrol model's split fails; the machine dials again on the heal.
            if let Some(m) = self.enrol.as_mut().filter(|m| m.cut(i, j)) {
                m.redial.push((i, j));
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
}

/// The mesh's root and admin keys and its genesis, from the world's random stream.
pub(super) fn build_keys(rng: &mut ChaCha8Rng, name: &str, epoch_ms: u64) -> Keys {
    let key_seeds = derive_keys(rng, 5);
    let roots: Vec<SecretKey> = key_seeds[..3].iter().map(|k| SecretKey::from_seed(*k)).collect();
    let admins: Vec<SecretKey> = key_seeds[3..].iter().map(|k| SecretKey::from_seed(*k)).collect();
    let genesis = mesh::genesis(
        name,
        &[&roots[0], &roots[1], &roots[2]],
        2,
        &[admins[0].public(), admins[1].public()],
        mesh::Approval::always(1),
        Millis(epoch_ms),
    );
    let genesis_body: Genesis = genesis.open("genesis").expect("own genesis decodes");
    Keys { roots, admins, genesis, genesis_body }
}

/// Each node's site (honest nodes round-robin, adversaries at random outside any partition),
/// and the sites each partition cuts off (the next ones of a shuffled order).
pub(super) fn place_sites(s: &Scenario, rng: &mut ChaCha8Rng) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut site_of: Vec<u32> = s.placement().iter().map(|p| p.0).collect();
    let mut site_order: Vec<u32> = (0..s.sites as u32).collect();
    for i in (1..site_order.len()).rev() {
        site_order.swap(i, rng.gen_range(0..=i));
    }
    // Partitions cut disjoint sets of sites (one site in two partitions would be healed by
    // whichever ends first).
    let mut next = 0;
    let partition_sites: Vec<Vec<u32>> = s
        .partition
        .iter()
        .map(|p| {
            next += p.sites;
            site_order[next - p.sites..next].to_vec()
        })
        .collect();
    let max_part = next;
    for _ in 0..s.adversaries {
        site_of.push(site_order[rng.gen_range(max_part..s.sites)]);
    }
    (site_of, partition_sites)
}

/// The overlay: `lan_degree` random links per node inside its site, and per site one link to
/// the next site plus `wan_links_per_site` to random ones.
/// Enrolling machines (from `first_machine` on) pick their links among the fleet's members
/// of their site and the other machines.
pub(super) fn build_links(
    s: &Scenario,
    site_of: &[u32],
    first_machine: u32,
    rng: &mut ChaCha8Rng,
) -> Vec<BTreeSet<u32>> {
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); s.sites];
    for (i, site) in site_of.iter().enumerate().take(s.nodes) {
        members[*site as usize].push(i as u32);
    }
    let mut joining: Vec<Vec<u32>> = members.clone();
    for (i, site) in site_of.iter().enumerate().skip(first_machine as usize) {
        joining[*site as usize].push(i as u32);
    }
    let mut links: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); site_of.len()];
    let add = |a: u32, b: u32, links: &mut Vec<BTreeSet<u32>>| {
        if a != b {
            links[a as usize].insert(b);
            links[b as usize].insert(a);
        }
    };
    for (i, site) in site_of.iter().enumerate() {
        let m = if i as u32 >= first_machine { &joining } else { &members };
        let m = &m[*site as usize];
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
    links
}

/// The nodes each `[[crash]]` takes down, and all of them together.
pub(super) fn pick_crashes(s: &Scenario, rng: &mut ChaCha8Rng) -> (Vec<Vec<u32>>, BTreeSet<u32>) {
    let mut crash_sets = Vec::new();
    let mut crashing = BTreeSet::new();
    for c in &s.crash {
        let set: Vec<u32> = (0..c.nodes)
            .map(|_| rng.gen_range(0..s.nodes as u32))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        crashing.extend(set.iter().copied());
        crash_sets.push(set);
    }
    (crash_sets, crashing)
}

/// What the nodes that keep a store start it from.
pub(super) struct Stores<'a> {
    /// Per site, the steady store its members restore (empty when not steady).
    pub site_stores: &'a [Arc<Vec<Persist>>],
    /// Nodes that crash (and restart from their store).
    pub crashing: &'a BTreeSet<u32>,
}

/// The world's entities: each node's config, clock skew, links and store.
#[allow(clippy::too_many_arguments)]
pub(super) fn entities(
    s: &Scenario,
    made: Vec<(SecretKey, Envelope, Option<Arc<Bundle>>)>,
    site_of: &[u32],
    links: &[BTreeSet<u32>],
    genesis: &Envelope,
    check: &Arc<MemoCheck>,
    stores: Stores<'_>,
    rng: &mut ChaCha8Rng,
) -> Vec<Entity> {
    // Fetchers that crash are chosen during the run, so every node keeps a store.
    let keep_stores = s.payload.as_ref().is_some_and(|p| p.fetcher_crashes > 0);
    let steady = s.start == crate::scenario::Start::Steady;
    let mut ents = Vec::with_capacity(made.len());
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
            store: (keep_stores || stores.crashing.contains(&(i as u32))).then(|| {
                stores
                    .site_stores
                    .get(site_of[i] as usize)
                    .map(|st| st.as_ref().clone())
                    .unwrap_or_default()
            }),
            adversary: i >= s.nodes && i < s.nodes + s.adversaries,
        });
    }
    ents
}
