//! # Rollout model
//!
//! Plays an admin's rollout (`[rollout]` in a scenario) against the fleet. The decisions —
//! who is targeted, which ring a node is in, when it may start, when a ring is promoted, when
//! the rollout halts and what rolls back — are all the protocol core's
//! ([`patchmesh_protocol::rollout`]); this module is the executor around it and the observer
//! that checks it.
//!
//! ## Fault model
//! - **Labels.** At admission a seeded draw gives exactly `round(canary_fraction * nodes)`
//!   honest nodes the canary label and, independently, `round(label_fraction * nodes)` the fail
//!   label; `round(fail_fraction * labelled)` of the latter are *bad*: the patch fails
//!   verification there (every verification, the first one after install included).
//! - **Facts.** Every node is told its OS, packages and time zone at each boot
//!   (`Command::SetFacts`), as a real node's inventory collector does; time zones are given to
//!   sites round-robin.
//! - **Effects.** Each effect completes after its step's duration times `1 + step_jitter *
//!   U[0,1)` (seeded). Everything succeeds except verification on a bad node. A node that
//!   crashes loses the effects it had in flight; on restart it is rebuilt from its store (its
//!   journal entries among it) and the core re-issues the step its journal names.
//! - **Payload.** As a node does by default (`prefetch = true`), each node starts fetching the
//!   payload when the patch reaches its catalog (`fetch_ms`, jittered); its Fetch step waits
//!   only for what is left of that download, as the node's Fetch effect does (see
//!   [`RolloutSpec::prefetch`]; `prefetch = false` charges `fetch_ms` to every Fetch step).
//!
//! ## Measured (all in simulated time)
//! - **Blast radius**: once the rollout halted, the number of nodes in rings after the ring that
//!   halted it that ever entered `Installing` — with a failing canary ring, every node outside
//!   ring 0. The safety claim is that it is zero: a ring's failures halt the fleet before any
//!   later ring may start.
//! - **Halt threshold time** T0: per ring, the moment its failures first exceeded
//!   `max_failures` (the `(max_failures + 1)`-th earliest time a member entered `RollingBack`
//!   with a failure), earliest over rings.
//! - **Halt latency**: T0 → the node's first `RolloutEvent::Stopped`, over honest nodes up at
//!   the end that were up at T0, did not crash before stopping, and whose site was not cut off
//!   by a partition at T0. Nodes cut off at T0 cannot hear anything until the partition heals;
//!   they are measured apart, as heal → stopped (`halt_after_heal_ms`).
//! - **Completion** (good patch): publish → the last targeted live node `Committed`.
//!
//! ## Invariants
//! - blast radius 0;
//! - a node starts (enters `Fetching`) only inside a window by its own clock and zone, or after
//!   the deadline;
//! - with `rollback_on_halt`, a node whose verdict is halted does not keep the patch
//!   (`Installing` … `Committed`) for longer than [`RolloutModel::hold_grace_ms`];
//! - once the rollout halted, every live node ends halted, and a node that saw it halted still
//!   does (no admin command lifts a halt in a simulated run);
//! - with a good patch (no bad node), every targeted live node ends `Committed`;
//! - no site ever has more members holding an install slot at once than
//!   `max_concurrent_per_site` (`max_site_concurrency`; soaking members hold no slot).

pub mod spec;

pub use spec::{profile_quiet, GateSpec, RingToml, RolloutSpec};

use crate::stats::Percentiles;
use patchmesh_protocol::catalog::{CatalogEntry, ExecutorSpec, PatchEntry, RolloutEntry};
use patchmesh_protocol::ids::{ContentId, Millis, NodeId, RolloutId};
use patchmesh_protocol::rollout::activity::{install_window_open, QuietHours};
use patchmesh_protocol::rollout::target::ring_of;
use patchmesh_protocol::rollout::{
    Action, Control, Effect, EffectResult, Facts, JournalEntry, Step,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Events of the rollout model in the world's queue.
#[derive(Debug)]
pub(crate) enum RolloutEv {
    /// The admin publishes the patch and the rollout.
    Publish,
    /// An effect completes on `node`, if the node has not crashed since it began (`life`).
    Done {
        /// The node.
        node: u32,
        /// The node's life when the effect began.
        life: u32,
        /// The outcome.
        result: EffectResult,
    },
}

/// Figures of a run with a rollout (flattened into the JSON report).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RolloutFigures {
    /// Nodes in rings after the ring that halted the rollout (outside ring 0 when the canary
    /// ring failed) that ever entered `Installing`; 0 when it did not halt.
    pub blast_radius: u64,
    /// The ring whose failures halted the rollout, if it halted.
    pub halting_ring: Option<u8>,
    /// Whether any node's verdict halted the rollout (or a ring's failures crossed its gate).
    pub rollout_halted: bool,
    /// T0, the moment a ring's failures first exceeded `max_failures`, scenario time.
    pub halt_threshold_ms: Option<u64>,
    /// T0 → each node stopped (nodes reachable and up from T0).
    pub halt_latency_ms: Percentiles,
    /// Nodes counted in `halt_latency_ms`.
    pub halt_latency_nodes: usize,
    /// Partition heal → stopped, for nodes whose site was cut off at T0.
    pub halt_after_heal_ms: Percentiles,
    /// Nodes counted in `halt_after_heal_ms`.
    pub halt_after_heal_nodes: usize,
    /// Live nodes whose verdict is halted (or aborted) at the end.
    pub halted_nodes: usize,
    /// Honest nodes that ever emitted `Stopped` (saw the rollout halted or aborted).
    pub ever_stopped_nodes: usize,
    /// Honest nodes up at the end.
    pub live_nodes: usize,
    /// Rings in the policy.
    pub rings: usize,
    /// Rings whose every targeted live member ended `Committed` (and that have one).
    pub rings_completed: usize,
    /// Per ring, its live targeted members.
    pub ring_targeted_nodes: Vec<usize>,
    /// Per ring, the first install start (`Fetching`) of a member, scenario time.
    pub ring_start_ms: Vec<Option<u64>>,
    /// Per ring, when its last targeted live member committed, if all did, scenario time.
    pub ring_done_ms: Vec<Option<u64>>,
    /// Per ring, when enough of its members had committed (soaked) for its gate's success
    /// condition to hold (`min_reports`, and `min_success_permille` of its targeted members),
    /// scenario time: the earliest the next ring could start. The gap from here to the next
    /// ring's `ring_start_ms` is what promotion costs (summaries, evaluation, windows).
    pub ring_gate_ms: Vec<Option<u64>>,
    /// Publish → the last targeted live node committed; None unless all did.
    pub rollout_complete_ms: Option<u64>,
    /// Targeted live nodes that ended `Committed`.
    pub rollout_committed_nodes: usize,
    /// Live nodes the rollout targets.
    pub rollout_targeted_nodes: usize,
    /// Live nodes that ended `RolledBack`.
    pub rolled_back_nodes: usize,
    /// Live nodes whose install failed (and reported it).
    pub failed_nodes: usize,
    /// Honest nodes the patch fails on (the fault model's choice).
    pub bad_nodes: usize,
    /// Honest nodes given the canary label.
    pub canary_nodes: usize,
    /// Earliest install start (`Fetching`) per time zone, scenario time.
    pub first_start_ms_by_zone: BTreeMap<String, u64>,
    /// Most installs of one site in a non-final step at once (never over the policy's
    /// `max_concurrent_per_site`: a run where it is reports a violation).
    pub max_site_concurrency: u32,
    /// Effects in flight on nodes that crashed (their results were lost).
    pub effects_lost: u64,
    /// Per `[[partition]]`, honest nodes of its sites, cut off (or eclipsed) at T0, that
    /// began installing after T0: the halt had not reached them. A cut shorter than the nodes'
    /// listening window goes unseen (see `protocol::node::reach`); an eclipse that forwards
    /// beacons must leave this at 0.
    pub cut_installs_after_halt: Vec<usize>,
}

/// What the model knows of one node (honest or adversary).
#[derive(Debug, Default)]
struct Member {
    site: u32,
    labels: BTreeMap<String, String>,
    bad: bool,
    honest: bool,
    /// Ring in the rollout, None if not targeted.
    ring: Option<u8>,
    /// Incremented at each crash; effects of an earlier life are lost.
    life: u32,
    up: bool,
    step: Option<Step>,
    started_us: Option<u64>,
    installing_us: Option<u64>,
    failed_us: Option<u64>,
    committed_us: Option<u64>,
    stopped_us: Option<u64>,
    /// First `Stopped` of the current life.
    life_stopped_us: Option<u64>,
    /// Since when the node holds the patch (`Installing` … `Committed`) in this life.
    hold_since_us: Option<u64>,
    /// (crash, restart) times; restart `u64::MAX` while down.
    downs: Vec<(u64, u64)>,
    /// The payload download: the life it began in, and when it completes (see
    /// [`RolloutSpec::prefetch`]).
    payload: Option<(u32, u64)>,
}

impl Member {
    /// When the payload download this node has is done: None if it has none, or lost the one
    /// in flight in a crash.
    fn payload_at(&self, now_us: u64) -> Option<u64> {
        self.payload.filter(|(life, at)| *at <= now_us || *life == self.life).map(|(_, at)| at)
    }
}

/// Whether a member at `step` holds one of its site's install slots (as the engine counts
/// them: everything from fetching to rolling back but the soak).
fn holds_slot(step: Step) -> bool {
    !step.is_terminal() && step != Step::Soaking
}

fn holds_patch(step: Step) -> bool {
    matches!(step, Step::Installing | Step::Verifying | Step::Soaking | Step::Committed)
}

/// Picks exactly `round(fraction * n)` of `0..n`, seeded.
fn pick(rng: &mut ChaCha8Rng, n: usize, fraction: f64) -> Vec<usize> {
    let k = ((n as f64) * fraction).round() as usize;
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = rng.gen_range(i..n);
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all.sort_unstable();
    all
}

/// Labels of every honest node's admission certificate, and which nodes are bad. Drawn from
/// their own RNG stream so a scenario's other draws do not move when a rollout is added.
/// `base` holds the labels an explicit fleet gives its nodes; with `label_fraction` 0 the bad
/// patch fails on `fail_fraction` of the nodes that already carry `fail_label`.
pub(crate) fn assign_labels(
    spec: &RolloutSpec,
    seed: u64,
    base: Vec<BTreeMap<String, String>>,
) -> (Vec<BTreeMap<String, String>>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x726f_6c6c_6f75_7473);
    let nodes = base.len();
    let mut labels = base;
    let mut bad = vec![false; nodes];
    if let Some((k, v)) = spec.canary_label() {
        for i in pick(&mut rng, nodes, spec.canary_fraction) {
            labels[i].insert(k.clone(), v.clone());
        }
    }
    if let Some((k, v)) = spec.fail_label() {
        let labelled = if spec.label_fraction > 0.0 {
            let picked = pick(&mut rng, nodes, spec.label_fraction);
            for &i in &picked {
                labels[i].insert(k.clone(), v.clone());
            }
            picked
        } else {
            (0..nodes).filter(|i| labels[*i].get(&k) == Some(&v)).collect()
        };
        for j in pick(&mut rng, labelled.len(), spec.fail_fraction) {
            bad[labelled[j]] = true;
        }
    }
    (labels, bad)
}

/// The rollout model.
pub(crate) struct RolloutModel {
    spec: RolloutSpec,
    entry: RolloutEntry,
    patch: PatchEntry,
    /// Each node's time zone.
    zones: Vec<(String, jiff::tz::TimeZone)>,
    /// Each node's quiet hours.
    quiet: Vec<Option<QuietHours>>,
    members: Vec<Member>,
    rng: ChaCha8Rng,
    published_us: Option<u64>,
    site_running: Vec<u32>,
    max_site_running: u32,
    effects_lost: u64,
    violations: Vec<String>,
    /// Partitions: (sites cut off, start, heal), simulated microseconds.
    cuts: Vec<(Vec<u32>, u64, u64)>,
    eval_ms: u64,
}

/// A node as the world describes it to the model.
pub(crate) struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Its site.
    pub site: u32,
    /// Its certificate's labels.
    pub labels: BTreeMap<String, String>,
    /// Its time zone (empty: the spec's zones, round-robin by site).
    pub zone: String,
    /// Its quiet hours (`--window auto`).
    pub quiet: Option<QuietHours>,
    /// Whether the patch fails on it.
    pub bad: bool,
    /// False for adversaries (executed for, never measured).
    pub honest: bool,
}

impl RolloutModel {
    /// A model of `spec` over `nodes`; `epoch_ms` is the wall-clock time of scenario time
    /// zero, `cuts` the scenario's partitions and `eval_ms` the nodes' rollout period.
    pub(crate) fn new(
        spec: RolloutSpec,
        seed: u64,
        nodes: Vec<NodeInfo>,
        sites: usize,
        cuts: Vec<(Vec<u32>, u64, u64)>,
        eval_ms: u64,
        epoch_ms: u64,
    ) -> RolloutModel {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6566_6665_6374_7321);
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        let content =
            *blake3::hash(&[b"patchmesh-sim patch".as_slice(), &seed.to_le_bytes()].concat())
                .as_bytes();
        let entry = spec
            .entry(RolloutId(id), ContentId(content), epoch_ms)
            .expect("rollout policy validated on load");
        let patch = PatchEntry {
            content_id: ContentId(content),
            size_bytes: 8 << 20,
            name: "openssl".into(),
            version: "3.0.15-1~deb12u1".into(),
            executor: ExecutorSpec {
                kind: "dpkg".into(),
                install: None,
                verify: Some("systemctl is-active nginx".into()),
                rollback: None,
                timeout_ms: 600_000,
            },
        };
        let by_site: Vec<(String, jiff::tz::TimeZone)> = spec
            .time_zones
            .iter()
            .map(|z| (z.clone(), jiff::tz::TimeZone::get(z).expect("time zone validated on load")))
            .collect();
        let zones = nodes
            .iter()
            .map(|n| match jiff::tz::TimeZone::get(&n.zone) {
                Ok(tz) if !n.zone.is_empty() => (n.zone.clone(), tz),
                _ => by_site[n.site as usize % by_site.len()].clone(),
            })
            .collect();
        let quiet = nodes.iter().map(|n| n.quiet).collect();
        let members = nodes
            .into_iter()
            .map(|n| Member {
                ring: ring_of(&entry, &n.id, &n.labels),
                site: n.site,
                labels: n.labels,
                bad: n.bad,
                honest: n.honest,
                up: true,
                ..Member::default()
            })
            .collect();
        RolloutModel {
            spec,
            entry,
            patch,
            zones,
            quiet,
            members,
            rng,
            published_us: None,
            site_running: vec![0; sites],
            max_site_running: 0,
            effects_lost: 0,
            violations: Vec::new(),
            cuts,
            eval_ms,
        }
    }

    /// When the admin publishes, simulated microseconds.
    pub(crate) fn at_us(&self) -> u64 {
        self.spec.at_ms * 1000
    }

    /// The rollout's id.
    pub(crate) fn id(&self) -> RolloutId {
        self.entry.id
    }

    /// How long a halted node may still hold the patch before it counts as a violation: one
    /// evaluation period for the verdict to be acted on, the longest step (an effect in flight
    /// is finished before the rollback starts), and a second of slack.
    pub(crate) fn hold_grace_ms(&self) -> u64 {
        2 * self.eval_ms + self.spec.step_ms_max() + 1000
    }

    fn zone_of(&self, node: u32) -> &(String, jiff::tz::TimeZone) {
        &self.zones[node as usize]
    }

    /// What node `node` is told about itself at boot.
    pub(crate) fn facts(&self, node: u32) -> Facts {
        Facts {
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            packages: [("openssl".to_string(), "3.0.11-1~deb12u2".to_string())].into(),
            tz: self.zone_of(node).1.clone(),
            quiet: self.quiet[node as usize],
        }
    }

    /// The catalog key of the patch.
    pub(crate) fn patch_key(&self) -> String {
        CatalogEntry::Patch(self.patch.clone()).key()
    }

    /// The catalog edits the admin publishes: the patch and its rollout, in one change.
    pub(crate) fn publish(&mut self, now_us: u64) -> Vec<(String, Option<CatalogEntry>)> {
        self.published_us = Some(now_us);
        let patch = CatalogEntry::Patch(self.patch.clone());
        let rollout = CatalogEntry::Rollout(self.entry.clone());
        vec![(patch.key(), Some(patch)), (rollout.key(), Some(rollout))]
    }

    /// The catalog of `node` changed; `has_patch` says whether it now holds the patch entry.
    /// A prefetching node starts fetching the payload (see [`RolloutSpec::prefetch`]).
    pub(crate) fn on_catalog(&mut self, node: u32, has_patch: impl FnOnce() -> bool, now_us: u64) {
        if !self.spec.prefetch || self.members[node as usize].payload_at(now_us).is_some() {
            return;
        }
        if has_patch() {
            let at = now_us + self.step_us(Action::Fetch);
            let m = &mut self.members[node as usize];
            m.payload = Some((m.life, at));
        }
    }

    /// Whether `on_catalog` still wants to hear of `node`'s catalog changes.
    pub(crate) fn awaits_catalog(&self, node: u32, now_us: u64) -> bool {
        self.spec.prefetch && self.members[node as usize].payload_at(now_us).is_none()
    }

    /// A step's duration, jittered, in microseconds.
    fn step_us(&mut self, action: Action) -> u64 {
        let nominal = self.spec.step_ms(action) as f64;
        let ms = nominal * (1.0 + self.spec.step_jitter * self.rng.gen::<f64>());
        (ms * 1000.0) as u64
    }

    /// Starts an effect; returns when it completes and the event that completes it. A Fetch
    /// waits for the payload download the node has (see [`RolloutSpec::prefetch`]), or starts
    /// one.
    pub(crate) fn on_effect(&mut self, node: u32, effect: Effect, now_us: u64) -> (u64, RolloutEv) {
        let fetched = self.members[node as usize].payload_at(now_us);
        let at = match (effect.action, fetched) {
            (Action::Fetch, Some(at)) => at.max(now_us),
            (Action::Fetch, None) => {
                let at = now_us + self.step_us(Action::Fetch);
                let m = &mut self.members[node as usize];
                m.payload = Some((m.life, at));
                at
            }
            (action, _) => now_us + self.step_us(action),
        };
        let m = &self.members[node as usize];
        let ok = !(effect.action == Action::Verify && m.bad);
        let detail = match (effect.action, ok) {
            (Action::Verify, false) => "nginx is not active after the upgrade".to_string(),
            (a, _) => format!("{a:?} ok"),
        };
        let result = EffectResult { id: effect.id, ok, detail };
        (at, RolloutEv::Done { node, life: m.life, result })
    }

    /// Whether a completed effect still reaches its node (it has not crashed since).
    pub(crate) fn deliverable(&mut self, node: u32, life: u32) -> bool {
        let m = &self.members[node as usize];
        let ok = m.up && m.life == life;
        if !ok {
            self.effects_lost += 1;
        }
        ok
    }

    fn running(&mut self, site: u32, delta: i32) {
        let c = &mut self.site_running[site as usize];
        *c = c.saturating_add_signed(delta);
        self.max_site_running = self.max_site_running.max(*c);
    }

    /// A journal entry the node persisted, at simulated `now_us` and node clock `clock`.
    pub(crate) fn on_journal(
        &mut self,
        node: u32,
        entry: &JournalEntry,
        now_us: u64,
        clock: Millis,
    ) {
        if entry.rollout != self.entry.id || !self.members[node as usize].honest {
            return;
        }
        let prev = self.members[node as usize].step;
        let step = entry.step;
        if step == Step::Fetching && self.members[node as usize].started_us.is_none() {
            self.members[node as usize].started_us = Some(now_us);
            let deadline_passed = self.entry.deadline.is_some_and(|d| clock >= d);
            let zone = self.zone_of(node).0.clone();
            if !deadline_passed && !install_window_open(&self.entry, clock, &self.facts(node)) {
                self.violations.push(format!(
                    "node {node} ({zone}) started at {} ms, its window closed and the deadline not passed",
                    now_us / 1000
                ));
            }
        }
        let was_running = prev.is_some_and(holds_slot);
        let site = self.members[node as usize].site;
        match (was_running, holds_slot(step)) {
            (false, true) => self.running(site, 1),
            (true, false) => self.running(site, -1),
            _ => {}
        }
        let was_holding = prev.is_some_and(holds_patch);
        if was_holding && !holds_patch(step) {
            self.check_hold(node, now_us);
            self.members[node as usize].hold_since_us = None;
        } else if !was_holding && holds_patch(step) {
            self.members[node as usize].hold_since_us = Some(now_us);
        }
        let m = &mut self.members[node as usize];
        m.step = Some(step);
        match step {
            Step::Installing => {
                m.installing_us.get_or_insert(now_us);
            }
            Step::RollingBack if entry.failed => {
                m.failed_us.get_or_insert(now_us);
            }
            Step::Committed => m.committed_us = Some(now_us),
            _ => {}
        }
    }

    /// Checks that a halted node did not hold the patch longer than the grace (up to `now_us`).
    fn check_hold(&mut self, node: u32, now_us: u64) {
        let grace_ms = self.hold_grace_ms();
        let m = &self.members[node as usize];
        if !self.entry.rollback_on_halt {
            return;
        }
        let (Some(held), Some(stopped)) = (m.hold_since_us, m.life_stopped_us) else { return };
        let from = held.max(stopped);
        if now_us > from && (now_us - from) / 1000 > grace_ms {
            let step = m.step.map_or("none", Step::name);
            self.violations.push(format!(
                "node {node} held the patch ({step}) {} ms after its verdict halted (grace {grace_ms} ms)",
                (now_us - from) / 1000
            ));
        }
    }

    /// The node emitted `RolloutEvent::Stopped`.
    pub(crate) fn on_stopped(&mut self, node: u32, rollout: RolloutId, now_us: u64) {
        let m = &mut self.members[node as usize];
        if rollout == self.entry.id && m.honest {
            m.stopped_us.get_or_insert(now_us);
            m.life_stopped_us.get_or_insert(now_us);
        }
    }

    /// The node crashed: its effects in flight are lost.
    pub(crate) fn on_crash(&mut self, node: u32, now_us: u64) {
        if !self.members[node as usize].up {
            return;
        }
        self.check_hold(node, now_us);
        let m = &mut self.members[node as usize];
        m.life += 1;
        m.up = false;
        m.downs.push((now_us, u64::MAX));
        m.life_stopped_us = None;
        m.hold_since_us = None;
        let running = m.step.is_some_and(holds_slot);
        let site = m.site;
        if running && m.honest {
            self.running(site, -1);
        }
    }

    /// The node restarted from its store; `journal` is its restored entry for the rollout.
    pub(crate) fn on_restart(&mut self, node: u32, journal: Option<&JournalEntry>, now_us: u64) {
        let m = &mut self.members[node as usize];
        m.up = true;
        if let Some(d) = m.downs.last_mut() {
            d.1 = now_us;
        }
        m.step = journal.map(|j| j.step);
        m.hold_since_us = m.step.filter(|s| holds_patch(*s)).map(|_| now_us);
        let running = m.step.is_some_and(holds_slot);
        let site = m.site;
        if running && m.honest {
            self.running(site, 1);
        }
    }

    fn cut_at(&self, site: u32, t: u64) -> Option<u64> {
        self.cuts
            .iter()
            .filter(|(sites, start, end)| sites.contains(&site) && *start <= t && t < *end)
            .map(|(_, _, end)| *end)
            .max()
    }

    /// T0 and its ring: per ring, the moment its failures first exceeded `max_failures`; the
    /// earliest.
    fn threshold_us(&self) -> Option<(u64, u8)> {
        let mut by_ring: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
        for m in self.members.iter().filter(|m| m.honest) {
            if let (Some(r), Some(t)) = (m.ring, m.failed_us) {
                by_ring.entry(r).or_default().push(t);
            }
        }
        by_ring
            .into_iter()
            .filter_map(|(r, mut times)| {
                times.sort_unstable();
                let max = self.entry.rings.get(usize::from(r))?.gate.max_failures as usize;
                times.get(max).map(|t| (*t, r))
            })
            .min()
    }

    /// The first start in each window zone, in milliseconds.
    fn first_start_by_zone(&self, honest: &[(usize, &Member)]) -> BTreeMap<String, u64> {
        let mut by_zone: BTreeMap<String, u64> = BTreeMap::new();
        for &(i, m) in honest {
            if let Some(t) = m.started_us {
                let zone = self.zone_of(i as u32).0.clone();
                let e = by_zone.entry(zone).or_insert(u64::MAX);
                *e = (*e).min(t / 1000);
            }
        }
        by_zone
    }

    /// Figures and violations at the end. `live[i]` is, for each honest node up at the end,
    /// its journal entry for the rollout and its verdict's control. (About a hundred lines:
    /// one pass over the members fills most figures at once; what stands alone is in helpers.)
    pub(crate) fn finish(
        mut self,
        live: &[Option<(Option<JournalEntry>, Option<Control>)>],
        end_us: u64,
    ) -> (RolloutFigures, Vec<String>) {
        let threshold = self.threshold_us();
        let t0 = threshold.map(|(t, _)| t);
        let halted =
            |c: &Option<Control>| matches!(c, Some(Control::Halted { .. } | Control::Aborted));
        // The ring that halted the rollout: the first to cross `max_failures`, or the ring
        // live verdicts name (a halt by `max_failure_permille` once all its members reported).
        let halting_ring = threshold
            .map(|(_, r)| r)
            .into_iter()
            .chain(live.iter().flatten().filter_map(|(_, c)| match c {
                Some(Control::Halted { ring, .. }) => Some(*ring),
                Some(Control::Aborted) => Some(0),
                _ => None,
            }))
            .min();
        let rollout_halted = halting_ring.is_some();
        // Nodes still holding the patch at the end, halted.
        for (i, l) in live.iter().enumerate() {
            if l.is_some() {
                self.check_hold(i as u32, end_us);
            }
        }
        let mut v = std::mem::take(&mut self.violations);
        let honest: Vec<(usize, &Member)> =
            self.members.iter().enumerate().filter(|(_, m)| m.honest).collect();
        // Installs in rings after the one that halted: with a failing canary ring, every
        // install outside ring 0.
        let blast_radius = match halting_ring {
            Some(h) => honest
                .iter()
                .filter(|(_, m)| m.ring.is_some_and(|r| r > h) && m.installing_us.is_some())
                .count() as u64,
            None => 0,
        };
        if blast_radius > 0 {
            v.push(format!(
                "blast radius {blast_radius}: nodes in rings after ring {} installed a rollout it halted",
                halting_ring.unwrap_or(0)
            ));
        }
        let (mut latencies, mut after_heal) = (Vec::new(), Vec::new());
        let mut never_halted = Vec::new();
        let mut f = RolloutFigures { rings: self.entry.rings.len(), ..RolloutFigures::default() };
        // Per ring: live targeted members, committed ones, the last commit.
        let mut ring_members: BTreeMap<u8, (usize, usize, u64)> = BTreeMap::new();
        let mut last_commit = 0u64;
        let mut not_committed = Vec::new();
        // A good patch must reach every targeted live node, unless the scenario is a
        // rehearsal that may not finish (an empty ring, a horizon before the last window).
        let good = !honest.iter().any(|(_, m)| m.bad) && self.spec.expect_complete;
        for &(i, m) in &honest {
            let Some(Some((journal, control))) = live.get(i) else { continue };
            f.live_nodes += 1;
            let step = journal.as_ref().map(|j| j.step);
            if halted(control) {
                f.halted_nodes += 1;
            } else if rollout_halted {
                never_halted.push(i);
            }
            f.rolled_back_nodes += usize::from(step == Some(Step::RolledBack));
            f.failed_nodes += usize::from(journal.as_ref().is_some_and(|j| j.failed));
            if let Some(r) = m.ring {
                f.rollout_targeted_nodes += 1;
                let e = ring_members.entry(r).or_default();
                e.0 += 1;
                if step == Some(Step::Committed) {
                    f.rollout_committed_nodes += 1;
                    e.1 += 1;
                    e.2 = e.2.max(m.committed_us.unwrap_or(0));
                    last_commit = last_commit.max(m.committed_us.unwrap_or(0));
                } else {
                    not_committed.push(i);
                }
            }
            if let (Some(t0), Some(stopped)) = (t0, m.stopped_us) {
                let down_at_t0_or_after = m.downs.iter().any(|(d, u)| *u > t0 && *d <= stopped);
                if down_at_t0_or_after {
                    continue;
                }
                match self.cut_at(m.site, t0) {
                    None => latencies.push(stopped.saturating_sub(t0) / 1000),
                    Some(heal) => after_heal.push(stopped.saturating_sub(heal) / 1000),
                }
            }
        }
        f.ever_stopped_nodes = honest.iter().filter(|(_, m)| m.stopped_us.is_some()).count();
        v.extend(outcome_violations(&honest, live, &never_halted, good, &not_committed));
        let gates: Vec<_> = self.entry.rings.iter().map(|r| &r.gate).collect();
        ring_timings(&mut f, &gates, &honest, &ring_members);
        if f.rollout_targeted_nodes > 0 && not_committed.is_empty() {
            f.rollout_complete_ms = self.published_us.map(|p| last_commit.saturating_sub(p) / 1000);
        }
        f.blast_radius = blast_radius;
        f.halting_ring = halting_ring;
        f.rollout_halted = rollout_halted;
        f.halt_threshold_ms = t0.map(|t| t / 1000);
        f.halt_latency_nodes = latencies.len();
        f.halt_latency_ms = Percentiles::of(latencies);
        f.halt_after_heal_nodes = after_heal.len();
        f.halt_after_heal_ms = Percentiles::of(after_heal);
        f.bad_nodes = honest.iter().filter(|(_, m)| m.bad).count();
        if let Some((k, val)) = self.spec.canary_label() {
            f.canary_nodes = honest.iter().filter(|(_, m)| m.labels.get(&k) == Some(&val)).count();
        }
        f.first_start_ms_by_zone = self.first_start_by_zone(&honest);
        f.max_site_concurrency = self.max_site_running;
        if self.max_site_running > self.entry.max_concurrent_per_site {
            v.push(format!(
                "{} members of one site held an install slot at once (limit {})",
                self.max_site_running, self.entry.max_concurrent_per_site
            ));
        }
        f.effects_lost = self.effects_lost;
        if let Some(t0) = t0 {
            f.cut_installs_after_halt = self
                .cuts
                .iter()
                .map(|(sites, start, end)| {
                    let cut_at_t0 = *start <= t0 && t0 < *end;
                    honest
                        .iter()
                        .filter(|(_, m)| {
                            cut_at_t0
                                && sites.contains(&m.site)
                                && m.installing_us.is_some_and(|t| t > t0)
                        })
                        .count()
                })
                .collect();
        }
        (f, v)
    }
}

/// What the nodes' end states break: a halt seen then lifted with no admin command, a halt
/// some live nodes never saw, a good patch some targeted live nodes did not commit.
fn outcome_violations(
    honest: &[(usize, &Member)],
    live: &[Option<(Option<JournalEntry>, Option<Control>)>],
    never_halted: &[usize],
    good: bool,
    not_committed: &[usize],
) -> Vec<String> {
    let halted = |c: &Option<Control>| matches!(c, Some(Control::Halted { .. } | Control::Aborted));
    let mut v = Vec::new();
    // No admin command lifts a halt in a simulated run, so a node that saw the rollout
    // halted must still see it halted (DESIGN §7: a halt dominates until an admin says).
    let lifted: Vec<usize> = honest
        .iter()
        .filter(|(i, m)| {
            m.stopped_us.is_some()
                && live.get(*i).is_some_and(|l| l.as_ref().is_some_and(|(_, c)| !halted(c)))
        })
        .map(|(i, _)| *i)
        .collect();
    if !lifted.is_empty() {
        v.push(format!(
            "{} live nodes saw the rollout halted, then running again with no admin command (first: {:?})",
            lifted.len(),
            &lifted[..lifted.len().min(5)]
        ));
    }
    if !never_halted.is_empty() {
        v.push(format!(
            "the rollout halted but {} live nodes did not (first: {:?})",
            never_halted.len(),
            &never_halted[..never_halted.len().min(5)]
        ));
    }
    if good && !not_committed.is_empty() {
        v.push(format!(
            "good patch: {} targeted live nodes did not commit (first: {:?})",
            not_committed.len(),
            &not_committed[..not_committed.len().min(5)]
        ));
    }
    v
}

/// Per ring: when its first member started and when its last live targeted member committed
/// (`ring_members`: live targeted members, committed ones, the last commit), and how many
/// rings every live targeted member committed.
fn ring_timings(
    f: &mut RolloutFigures,
    gates: &[&patchmesh_protocol::rollout::policy::Gate],
    honest: &[(usize, &Member)],
    ring_members: &BTreeMap<u8, (usize, usize, u64)>,
) {
    f.rings_completed = ring_members.values().filter(|(n, c, _)| *n > 0 && n == c).count();
    f.ring_done_ms = (0..f.rings as u8)
        .map(|r| {
            ring_members.get(&r).filter(|(n, c, _)| *n > 0 && n == c).map(|(_, _, t)| t / 1000)
        })
        .collect();
    f.ring_targeted_nodes =
        (0..f.rings as u8).map(|r| ring_members.get(&r).map_or(0, |m| m.0)).collect();
    f.ring_start_ms = (0..f.rings as u8)
        .map(|r| {
            let starts =
                honest.iter().filter(|(_, m)| m.ring == Some(r)).filter_map(|(_, m)| m.started_us);
            starts.min().map(|t| t / 1000)
        })
        .collect();
    f.ring_gate_ms = gates
        .iter()
        .enumerate()
        .map(|(r, gate)| {
            let members = honest.iter().filter(|(_, m)| m.ring == Some(r as u8));
            let targeted = members.clone().count() as u64;
            let mut commits: Vec<u64> = members.filter_map(|(_, m)| m.committed_us).collect();
            commits.sort_unstable();
            let by_share = (targeted * u64::from(gate.min_success_permille)).div_ceil(1000);
            let needed = by_share.max(u64::from(gate.min_reports)).max(1) as usize;
            commits.get(needed - 1).map(|t| t / 1000)
        })
        .collect();
}
