//! A protocol harness: a few nodes stepped in virtual time with in-memory delivery.
#![allow(dead_code)]

use patchmesh_protocol::catalog::{
    CatalogEntry, ExecutorSpec, Gate, PatchEntry, RingSpec, RolloutEntry, Selector,
};
use patchmesh_protocol::crypto::{Ed25519, Envelope, SecretKey};
use patchmesh_protocol::ids::{ContentId, Millis, NodeId, RolloutId, SiteId};
use patchmesh_protocol::mesh;
use patchmesh_protocol::node::{Command, Config, Input, Node, Output, PeerId, RelayMode};
use patchmesh_protocol::rollout::{Action, Control, EffectResult, Step};
use patchmesh_protocol::trust::Genesis;
use patchmesh_protocol::wire::Message;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub const T0: Millis = Millis(1_800_000_000_000);
pub const DAY_MS: u64 = 86_400_000;

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// Keys of a test mesh: three roots (2-of-3) and two admins.
pub struct Keys {
    pub roots: Vec<SecretKey>,
    pub admins: Vec<SecretKey>,
    pub genesis: Envelope,
    pub genesis_body: Genesis,
}

impl Keys {
    pub fn new() -> Keys {
        Keys::with_approval(mesh::Approval::always(1))
    }

    /// Keys whose genesis asks for this approval policy.
    pub fn with_approval(approval: mesh::Approval) -> Keys {
        let roots = vec![key(1), key(2), key(3)];
        let admins = vec![key(10), key(11)];
        let genesis = mesh::genesis(
            "test",
            &[&roots[0], &roots[1]],
            2,
            &[admins[0].public(), admins[1].public()],
            approval,
            T0,
        );
        // The genesis lists all three roots; only two signed.
        let mut g: Genesis = genesis.open("genesis").unwrap();
        g.root_keys = roots.iter().map(|k| k.public()).collect();
        let genesis = Envelope::seal(
            patchmesh_protocol::crypto::Domain::Genesis,
            &g,
            &[&roots[0], &roots[1]],
        );
        Keys { roots, admins, genesis_body: g, genesis }
    }

    pub fn admit(&self, node: &SecretKey, site: &str) -> Envelope {
        mesh::admit(
            &self.admins[0],
            &self.genesis_body,
            NodeId(node.public().0),
            &SiteId::from(site),
            BTreeMap::new(),
            T0,
            365 * DAY_MS,
        )
    }

    pub fn config(&self, node_key: SecretKey, site: &str) -> Config {
        Config {
            admission: self.admit(&node_key, site),
            key: node_key,
            genesis: self.genesis.clone(),
            anti_entropy_interval_ms: 1000,
            summary_interval_ms: 2000,
            gossip_flush_ms: 50,
            summary_fanout: 2,
            seed: 7,
            record_version_floor: 0,
            check: Arc::new(Ed25519),
            relay: RelayMode::Direct,
            rollout_eval_ms: 1000,
        }
    }
}

/// Nodes joined by in-memory links. Peer handles: node i sees node j as PeerId(j).
pub struct Harness {
    pub keys: Keys,
    pub nodes: Vec<Node>,
    pub now: Millis,
    pub queue: VecDeque<(usize, usize, Arc<Message>)>,
    pub sent: Vec<(usize, usize, Arc<Message>)>,
    pub penalized: Vec<(usize, PeerId)>,
    /// Effects the nodes asked for, in order; tests answer them with `Input::EffectDone`.
    pub effects: Vec<(usize, patchmesh_protocol::rollout::Effect)>,
    /// Rollout events per node.
    pub events: Vec<(usize, patchmesh_protocol::rollout::RolloutEvent)>,
    pub disconnected: Vec<(usize, PeerId)>,
    pub links: Vec<(usize, usize)>,
    pub cut: bool,
    /// A partition: node → side; messages between sides are lost (but those `passes` lets
    /// through: an eclipse by peers that forward some kinds and withhold the rest).
    pub sides: Option<Vec<u8>>,
    pub passes: fn(&Message) -> bool,
    /// Per node, how far its clock is off the harness's (a clock that jumps: change it).
    pub skew: Vec<i64>,
}

impl Harness {
    /// `sites[i]` is node i's site; node keys are seeded 100 + i.
    pub fn new(sites: &[&str]) -> Harness {
        let keys = Keys::new();
        let nodes = sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = keys.config(key(100 + i as u8), s);
                c.seed = i as u64;
                started(Node::new(c, T0).unwrap())
            })
            .collect();
        Harness {
            keys,
            nodes,
            now: T0,
            queue: VecDeque::new(),
            sent: Vec::new(),
            penalized: Vec::new(),
            effects: Vec::new(),
            events: Vec::new(),
            disconnected: Vec::new(),
            links: Vec::new(),
            cut: false,
            sides: None,
            passes: |_| false,
            skew: vec![0; sites.len()],
        }
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        self.links.push((a, b));
        let (na, nb) = (self.nodes[a].id(), self.nodes[b].id());
        let (ta, tb) = (self.clock(a), self.clock(b));
        self.nodes[a].handle_input(ta, Input::Connected { peer: PeerId(b as u64), node: nb });
        self.nodes[b].handle_input(tb, Input::Connected { peer: PeerId(a as u64), node: na });
        self.drain_all();
    }

    pub fn connect_all(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.connect(a, b);
            }
        }
    }

    pub fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].poll_output() {
            match out {
                Output::Send { peer, msg } => {
                    self.sent.push((i, peer.0 as usize, msg.clone()));
                    self.queue.push_back((i, peer.0 as usize, msg));
                }
                Output::Penalize { peer } => self.penalized.push((i, peer)),
                Output::Disconnect { peer } => self.disconnected.push((i, peer)),
                Output::Effect(e) => self.effects.push((i, e)),
                Output::Event(patchmesh_protocol::node::Event::Rollout(e)) => {
                    self.events.push((i, e))
                }
                Output::Persist(_) | Output::Event(_) => {}
                Output::Broadcast { .. } | Output::GossipVerdict { .. } => {
                    unreachable!("the harness runs direct relay mode")
                }
            }
        }
    }

    pub fn drain_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    /// Node `i`'s clock.
    pub fn clock(&self, i: usize) -> Millis {
        let skew = self.skew.get(i).copied().unwrap_or(0);
        Millis((self.now.0 as i64 + skew).max(0) as u64)
    }

    pub fn input(&mut self, i: usize, input: Input) {
        let t = self.clock(i);
        self.nodes[i].handle_input(t, input);
        self.drain(i);
    }

    /// Delivers until no message is in flight.
    pub fn settle(&mut self) {
        let mut steps = 0;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "messages never settle");
            if self.cut || to >= self.nodes.len() {
                continue;
            }
            if self.sides.as_ref().is_some_and(|s| s[from] != s[to]) && !(self.passes)(&msg) {
                continue;
            }
            let t = self.clock(to);
            self.nodes[to].handle_input(t, Input::Message { peer: PeerId(from as u64), msg });
            self.drain(to);
        }
    }

    /// Advances virtual time by `ms`, firing timers every 100 ms, delivering everything.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now.plus(ms);
        while self.now < end {
            self.now = self.now.plus(100);
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.clock(i)) {
                    self.input(i, Input::Timer);
                }
            }
            self.settle();
        }
    }

    pub fn state_hashes(&mut self) -> Vec<patchmesh_protocol::ids::StateHash> {
        self.nodes.iter_mut().map(|n| n.state_hash()).collect()
    }
}

/// `node` after [`Input::Start`] at `T0`.
pub fn started(mut node: Node) -> Node {
    node.handle_input(T0, Input::Start);
    node
}

/// The payload of the patch the rollout tests roll out.
pub const CONTENT: ContentId = ContentId([9; 32]);

/// A file patch of [`CONTENT`].
pub fn patch() -> PatchEntry {
    PatchEntry {
        content_id: CONTENT,
        size_bytes: 10,
        name: "app".into(),
        version: "2".into(),
        executor: ExecutorSpec {
            kind: "file".into(),
            install: Some("/tmp/x".into()),
            verify: None,
            rollback: None,
            timeout_ms: 1000,
        },
    }
}

pub fn publish(h: &mut Harness, at: usize, admin: usize, entries: Vec<CatalogEntry>) {
    let admin = h.keys.admins[admin].clone();
    let edits = entries.into_iter().map(|e| (e.key(), Some(e))).collect();
    h.input(at, Input::Command(Command::Publish { admin, edits }));
}

/// Runs `ms`, answering every effect: verify fails on nodes where `fails` says so.
pub fn run(h: &mut Harness, ms: u64, fails: &dyn Fn(usize) -> bool) {
    let end = h.now.plus(ms);
    while h.now < end {
        h.run_for(100);
        let effects = std::mem::take(&mut h.effects);
        for (i, e) in effects {
            let ok = !(e.action == Action::Verify && fails(i));
            h.input(
                i,
                Input::EffectDone(EffectResult { id: e.id, ok, detail: format!("{:?}", e.action) }),
            );
        }
    }
}

pub fn control(h: &Harness, i: usize, id: u8) -> Option<Control> {
    h.nodes[i].rollouts().verdicts().get(&RolloutId([id; 32])).map(|v| v.control.clone())
}

pub fn step(h: &Harness, i: usize, id: u8) -> Option<Step> {
    h.nodes[i].rollouts().journal().get(&RolloutId([id; 32])).map(|j| j.step)
}

/// Nodes in `sites` (node i in `sites[i]`); nodes in `canaries` carry `ring=canary`. Fully
/// connected, run 3 s.
pub fn labelled(keys: Keys, sites: &[&str], canaries: &[usize]) -> Harness {
    let n = sites.len();
    let mut h = Harness::new(&sites);
    h.keys = keys;
    for i in 0..n {
        let k = key(100 + i as u8);
        let mut c = h.keys.config(k.clone(), sites[i]);
        let labels: BTreeMap<String, String> = if canaries.contains(&i) {
            [("ring".to_string(), "canary".to_string())].into()
        } else {
            BTreeMap::new()
        };
        c.admission = mesh::admit(
            &h.keys.admins[0],
            &h.keys.genesis_body,
            NodeId(k.public().0),
            &SiteId::from(sites[i]),
            labels,
            T0,
            365 * DAY_MS,
        );
        c.seed = i as u64;
        h.nodes[i] = started(Node::new(c, T0).unwrap());
    }
    h.connect_all();
    h.run_for(3_000);
    h
}

/// A rollout of [`CONTENT`]: the canary label ring, then everyone; every gate needs all of
/// its ring to succeed, with no failure, soaked `soak_ms`.
pub fn rollout(id: u8, soak_ms: u64) -> RolloutEntry {
    let gate = Gate {
        min_success_permille: 1000,
        max_failures: 0,
        max_failure_permille: 0,
        min_soak_ms: soak_ms,
        min_reports: 1,
    };
    let ring = |name: &str, percent: u8, canary: bool| RingSpec {
        name: name.into(),
        percent,
        labels: if canary {
            [("ring".to_string(), "canary".to_string())].into()
        } else {
            BTreeMap::new()
        },
        gate: gate.clone(),
    };
    RolloutEntry {
        id: RolloutId([id; 32]),
        content_id: CONTENT,
        target: Selector::default(),
        rings: vec![ring("canary", 0, true), ring("all", 100, false)],
        windows: vec![],
        deadline: None,
        max_concurrent_per_site: 8,
        max_targets: 1_000,
        rollback_on_halt: true,
        recheck_ms: 500,
        created_at: T0,
        auto_window: false,
    }
}
