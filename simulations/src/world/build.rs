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
/// site signed by that site's elected reporter.
#[allow(clippy::type_complexity)]
pub(super) fn steady_stores(
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
pub(super) fn make_nodes(
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
    pub(super) fn boot_all(&mut self) {
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
    pub(super) fn connect_started(&mut self, i: u32, filter: impl Fn(u32) -> bool) {
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
}
