//! The node's own side of rollouts: whether it is targeted, when it may start, and the install
//! journal that carries one install through its steps.
//!
//! ## The install journal
//! Each install is a state machine whose current step is persisted (and flushed) by the driver
//! *before* the step's effect runs:
//!
//! ```text
//! Fetching → Staging → Installing → Verifying → Soaking → Committed
//!                 \           \            \          \         \
//!                  └───────────┴────────────┴──────────┴─────────┴→ RollingBack → RolledBack
//!                                                                                └→ Failed
//! Fetching/Staging → Cancelled   (halted or aborted before anything was installed)
//! ```
//! Executors make every step idempotent, so after a crash the node re-runs the step the journal
//! names: an install interrupted mid-way is installed again and verified, a rollback is rolled
//! back again. The machine ends in Committed (new) or RolledBack (old), never in between.
//! Verification runs once after install and then every `recheck_ms` through the soak; any
//! failure is reported as signed evidence and rolls the install back.

use super::activity::install_window_open;
use super::alarms::Alarms;
use super::policy::RolloutEntry;
use super::target::{ring_of, selects, Facts, NO_RING};
use super::verdict::{
    count_failures, judge, other_sites, own_site, ring_stats, Control, Policies, Tally, Verdict,
};
use crate::ids::{ContentId, Millis, NodeId, RolloutId, SiteId};
use crate::limits;
use crate::site::{EvidenceKind, RolloutStatus, SiteState, Standing, Summaries};
use crate::trust::Trust;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A step of an install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Getting the payload into the content store.
    Fetching,
    /// Preparing the install and keeping what rollback needs.
    Staging,
    /// Installing.
    Installing,
    /// Verifying right after install.
    Verifying,
    /// Installed and verified; re-verified periodically until the soak time has passed.
    Soaking,
    /// Done: the new version stays.
    Committed,
    /// Undoing the install.
    RollingBack,
    /// Undone: the old version is back.
    RolledBack,
    /// Rollback failed: needs an operator.
    Failed,
    /// Stopped before anything was installed.
    Cancelled,
}

impl Step {
    /// True for steps that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Committed | Step::RolledBack | Step::Failed | Step::Cancelled)
    }

    /// Lower-case name, for logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Step::Fetching => "fetching",
            Step::Staging => "staging",
            Step::Installing => "installing",
            Step::Verifying => "verifying",
            Step::Soaking => "soaking",
            Step::Committed => "committed",
            Step::RollingBack => "rolling_back",
            Step::RolledBack => "rolled_back",
            Step::Failed => "failed",
            Step::Cancelled => "cancelled",
        }
    }

    /// Every step in order (tests loop over them).
    pub const ALL: [Step; 10] = [
        Step::Fetching,
        Step::Staging,
        Step::Installing,
        Step::Verifying,
        Step::Soaking,
        Step::Committed,
        Step::RollingBack,
        Step::RolledBack,
        Step::Failed,
        Step::Cancelled,
    ];

    /// Parses [`Step::name`].
    pub fn from_name(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.name() == s)
    }
}

/// The persisted state of one install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The rollout.
    pub rollout: RolloutId,
    /// The payload installed.
    pub content_id: ContentId,
    /// This node's ring in it.
    pub ring: u8,
    /// The current step.
    pub step: Step,
    /// True once this install failed (and its failure was reported).
    pub failed: bool,
    /// When it failed (node clock).
    pub failed_at: Option<Millis>,
    /// When the install started (node clock).
    pub started_at: Millis,
    /// When the current step began.
    pub step_at: Millis,
    /// End of the soak, once verified.
    pub soak_until: Option<Millis>,
    /// Verifications passed.
    pub checks: u32,
    /// What the last step said (bounded).
    pub detail: String,
}

/// What a driver must do for an install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Have the payload in the content store.
    Fetch,
    /// Prepare (executor stage).
    Stage,
    /// Install.
    Install,
    /// Verify (also the periodic re-checks).
    Verify,
    /// Roll back.
    Rollback,
}

/// An effect for the driver; its result comes back as [`EffectResult`] with the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// Correlation id.
    pub id: u64,
    /// The rollout.
    pub rollout: RolloutId,
    /// The payload.
    pub content_id: ContentId,
    /// What to do.
    pub action: Action,
}

/// The outcome of an [`Effect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectResult {
    /// The effect's id.
    pub id: u64,
    /// Whether the step succeeded.
    pub ok: bool,
    /// What happened, for audit (bounded by the engine).
    pub detail: String,
}

/// Something that happened to a rollout on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// This node's verdict became halted or aborted.
    Stopped {
        /// The rollout.
        rollout: RolloutId,
        /// Why.
        control: Control,
    },
    /// The install moved to a step.
    Step {
        /// The rollout.
        rollout: RolloutId,
        /// This node's ring.
        ring: u8,
        /// The new step.
        step: Step,
    },
}

/// What the engine asks its node to do.
#[derive(Clone, Debug)]
pub enum EngineOut {
    /// Persist (and flush) this journal entry before the effects that follow.
    Journal(JournalEntry),
    /// Run an effect.
    Effect(Effect),
    /// Sign and publish evidence.
    Report {
        /// The rollout.
        rollout: RolloutId,
        /// What happened.
        kind: EvidenceKind,
        /// Detail.
        detail: String,
    },
    /// Something happened.
    Event(RolloutEvent),
}

/// What the engine reads from its node for one evaluation.
pub struct View<'a> {
    /// The node.
    pub me: NodeId,
    /// Its site.
    pub site_id: &'a SiteId,
    /// Labels of its certificate.
    pub labels: &'a BTreeMap<String, String>,
    /// Trust state (admins, approval policy).
    pub trust: &'a Trust,
    /// Its site's records.
    pub site: &'a SiteState,
    /// Other sites' summaries.
    pub summaries: &'a Summaries,
    /// Fleet-wide failure reports.
    pub alarms: &'a Alarms,
    /// The site's live members and its young rollouts, worked out only if an install slot is
    /// ranked.
    pub liveness: &'a Liveness<'a>,
    /// The node's clock.
    pub now: Millis,
    /// No new install starts: the node may not be hearing a halt (it is cut off from the mesh,
    /// or behind it; see [`crate::node::Reach`]). Installs under way and rollbacks go on.
    pub hold: bool,
}

/// What ranking for an install slot reads about the site, worked out the first time a step
/// ranks one: most steps of a busy node rank none (it waits on a gate, or installs already),
/// and working it out walks every record of the site.
pub struct Liveness<'a> {
    known: std::cell::OnceCell<Live>,
    work_out: Box<dyn Fn() -> Live + 'a>,
}

/// The live members of a site, and the young rollouts (see [`Liveness`]).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Members not known to be down (the node decides which; see `node::rollouts`).
    pub members: BTreeSet<NodeId>,
    /// Rollouts this node saw start within [`limits::MEMBER_LIVE_MS`]: a member that has not
    /// said where it stands in one of them yet may be about to start.
    pub young: BTreeSet<RolloutId>,
}

impl<'a> Liveness<'a> {
    /// Worked out by `work_out` when first read.
    pub fn new(work_out: impl Fn() -> Live + 'a) -> Liveness<'a> {
        Liveness { known: std::cell::OnceCell::new(), work_out: Box::new(work_out) }
    }

    /// Known already.
    pub fn known(live: Live) -> Liveness<'a> {
        let liveness = Liveness::new(Live::default);
        let _ = liveness.known.set(live);
        liveness
    }

    fn get(&self) -> &Live {
        self.known.get_or_init(|| (self.work_out)())
    }
}

/// A node's rollout engine.
#[derive(Debug, Default)]
pub struct Engine {
    /// The node's facts (OS, packages, time zone).
    pub facts: Facts,
    journal: BTreeMap<RolloutId, JournalEntry>,
    inflight: BTreeMap<RolloutId, (u64, Action)>,
    /// Fetch retries and soak re-checks, by rollout.
    wake_at: BTreeMap<RolloutId, Millis>,
    /// When a gate this node waits on should pass (the members soaking now end their soaks),
    /// by rollout: the engine wants to be evaluated then.
    gate_wake: BTreeMap<RolloutId, Millis>,
    /// Failure reports per ring, by rollout, with the rollout's hash and the reports they
    /// count (see [`count_failures`]).
    failures: BTreeMap<RolloutId, ([u8; 32], usize, Vec<u32>)>,
    /// What other sites' summaries say, by rollout, with the rollout's hash and the version
    /// of the summaries it was read from (see [`other_sites`]).
    others: BTreeMap<RolloutId, ([u8; 32], ([u64; 4], usize), Tally)>,
    /// What this site's records say, by rollout, with the rollout's hash and the records'
    /// change count it was read at (see [`own_site`]).
    own: BTreeMap<RolloutId, ([u8; 32], u64, Tally)>,
    standings: BTreeMap<RolloutId, Standing>,
    stopped: BTreeSet<RolloutId>,
    verdicts: BTreeMap<RolloutId, Verdict>,
    next_id: u64,
    resumed: bool,
}

/// Delay before a failed fetch is tried again.
const FETCH_RETRY_MS: u64 = 5_000;

fn bounded(mut s: String) -> String {
    if s.len() > limits::TEXT_BYTES_MAX {
        let mut cut = limits::TEXT_BYTES_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Engine {
    /// Restores a journal entry persisted before a restart.
    pub fn restore(&mut self, entry: JournalEntry) {
        if self.journal.len() < limits::JOURNAL_ENTRIES_MAX
            || self.journal.contains_key(&entry.rollout)
        {
            self.journal.insert(entry.rollout, entry);
        }
    }

    /// The journal.
    pub fn journal(&self) -> &BTreeMap<RolloutId, JournalEntry> {
        &self.journal
    }

    /// This node's standing per rollout (what its record says).
    pub fn standings(&self) -> &BTreeMap<RolloutId, Standing> {
        &self.standings
    }

    /// The last verdict per rollout.
    pub fn verdicts(&self) -> &BTreeMap<RolloutId, Verdict> {
        &self.verdicts
    }

    /// The earliest time the engine needs to run again for its own timers.
    pub fn next_wake(&self) -> Option<Millis> {
        self.wake_at.values().chain(self.gate_wake.values()).min().copied()
    }

    /// True while some install is not in a terminal step.
    pub fn busy(&self) -> bool {
        self.journal.values().any(|j| !j.step.is_terminal())
    }

    fn effect(&mut self, out: &mut Vec<EngineOut>, j: &JournalEntry, action: Action) {
        self.next_id += 1;
        let id = self.next_id;
        self.inflight.insert(j.rollout, (id, action));
        out.push(EngineOut::Effect(Effect {
            id,
            rollout: j.rollout,
            content_id: j.content_id,
            action,
        }));
    }

    fn enter(
        &mut self,
        out: &mut Vec<EngineOut>,
        mut j: JournalEntry,
        step: Step,
        now: Millis,
    ) -> JournalEntry {
        j.step = step;
        j.step_at = now;
        out.push(EngineOut::Journal(j.clone()));
        out.push(EngineOut::Event(RolloutEvent::Step { rollout: j.rollout, ring: j.ring, step }));
        let action = match step {
            Step::Fetching => Some(Action::Fetch),
            Step::Staging => Some(Action::Stage),
            Step::Installing => Some(Action::Install),
            Step::Verifying => Some(Action::Verify),
            Step::RollingBack => Some(Action::Rollback),
            _ => None,
        };
        if let Some(a) = action {
            self.effect(out, &j, a);
        }
        self.journal.insert(j.rollout, j.clone());
        j
    }

    /// Puts every soak's end off by `ms` (time the node's clock skipped: a suspended machine or
    /// a clock stepped forward, which must not count as soaking). Returns the entries to persist.
    pub fn hold_soaks(&mut self, ms: u64) -> Vec<JournalEntry> {
        let mut changed = Vec::new();
        for j in self.journal.values_mut() {
            if j.step == Step::Soaking {
                if let Some(end) = j.soak_until.as_mut() {
                    *end = end.plus(ms);
                    changed.push(j.clone());
                }
            }
        }
        changed
    }

    /// Takes an effect's result.
    pub fn on_result(
        &mut self,
        result: EffectResult,
        policies: &Policies,
        now: Millis,
    ) -> Vec<EngineOut> {
        let mut out = Vec::new();
        let Some(rollout) =
            self.inflight.iter().find(|(_, (id, _))| *id == result.id).map(|(r, _)| *r)
        else {
            return out; // Stale (from before a restart, or a cancelled install).
        };
        let (_, action) = self.inflight.remove(&rollout).unwrap_or((0, Action::Fetch));
        let Some(mut j) = self.journal.get(&rollout).cloned() else { return out };
        j.detail = bounded(result.detail.clone());
        let soak_ms = policies
            .rollouts
            .get(&rollout)
            .and_then(|a| a.rollout.rings.get(usize::from(j.ring)))
            .map_or(0, |r| r.gate.min_soak_ms);
        let recheck_ms = policies
            .rollouts
            .get(&rollout)
            .map_or(60_000, |a| a.rollout.recheck_ms.max(limits::RECHECK_MS_MIN));
        match (action, result.ok, j.step) {
            (Action::Fetch, true, Step::Fetching) => {
                self.enter(&mut out, j, Step::Staging, now);
            }
            (Action::Fetch, false, Step::Fetching) => {
                // Not the patch's fault: try again later.
                self.wake_at.insert(rollout, now.plus(FETCH_RETRY_MS));
                self.journal.insert(rollout, j);
            }
            (Action::Stage, true, Step::Staging) => {
                self.enter(&mut out, j, Step::Installing, now);
            }
            (Action::Install, true, Step::Installing) => {
                self.enter(&mut out, j, Step::Verifying, now);
            }
            (Action::Verify, true, Step::Verifying) => {
                j.checks += 1;
                j.soak_until = Some(now.plus(soak_ms));
                self.wake_at.insert(rollout, now.plus(recheck_ms.min(soak_ms.max(1))));
                self.enter(&mut out, j, Step::Soaking, now);
            }
            (Action::Verify, true, Step::Soaking) => {
                j.checks += 1;
                // The next check, or the soak's end if sooner: a soak ends on time, not up to
                // a whole re-check period late.
                let next = now.plus(recheck_ms);
                self.wake_at.insert(rollout, j.soak_until.map_or(next, |end| next.min(end)));
                self.journal.insert(rollout, j);
            }
            (Action::Rollback, true, Step::RollingBack) => {
                self.wake_at.remove(&rollout);
                let j = self.enter(&mut out, j, Step::RolledBack, now);
                out.push(EngineOut::Report {
                    rollout,
                    kind: EvidenceKind::RolledBack,
                    detail: j.detail,
                });
            }
            (Action::Rollback, false, Step::RollingBack) => {
                self.wake_at.remove(&rollout);
                self.enter(&mut out, j, Step::Failed, now);
            }
            (_, false, Step::Staging | Step::Installing | Step::Verifying | Step::Soaking) => {
                // The patch failed on this node: report it once, then undo it.
                self.wake_at.remove(&rollout);
                if !j.failed {
                    j.failed = true;
                    j.failed_at = Some(now);
                    let detail = bounded(format!("{} failed: {}", j.step.name(), result.detail));
                    out.push(EngineOut::Report {
                        rollout,
                        kind: EvidenceKind::InstallFailed,
                        detail,
                    });
                }
                self.enter(&mut out, j, Step::RollingBack, now);
            }
            _ => {
                self.journal.insert(rollout, j);
            }
        }
        out
    }

    /// Evaluates every rollout and advances this node's installs.
    pub fn step(&mut self, policies: &Policies, view: &View<'_>) -> Vec<EngineOut> {
        let mut out = Vec::new();
        if !self.resumed {
            // After a restart, re-run the step each unfinished install was in.
            self.resumed = true;
            let open: Vec<JournalEntry> =
                self.journal.values().filter(|j| !j.step.is_terminal()).cloned().collect();
            for j in open {
                let action = match j.step {
                    Step::Fetching => Action::Fetch,
                    Step::Staging => Action::Stage,
                    Step::Installing => Action::Install,
                    Step::Verifying | Step::Soaking => Action::Verify,
                    _ => Action::Rollback,
                };
                self.effect(&mut out, &j, action);
            }
        }
        for (id, authored) in &policies.rollouts {
            let rollout = &authored.rollout;
            // Failures per ring change only when a report arrives: kept between steps, and
            // each report counted once.
            let held = view.alarms.count_of(id);
            let kept = self.failures.entry(*id).or_insert((authored.hash, 0, Vec::new()));
            if kept.0 != authored.hash || kept.1 > held {
                *kept = (authored.hash, 0, Vec::new());
            }
            if kept.1 < held || kept.2.len() != rollout.rings.len() {
                count_failures(rollout, view.alarms, kept.1, &mut kept.2);
                kept.1 = held;
            }
            let failed = &self.failures[id].2;
            // What other sites say changes only with the summaries held: kept between steps.
            let version = view.summaries.version();
            let fresh =
                self.others.get(id).is_some_and(|(h, v, _)| *h == authored.hash && *v == version);
            if !fresh {
                let tally = other_sites(rollout, view.site_id, view.summaries);
                self.others.insert(*id, (authored.hash, version, tally));
            }
            // So does what this site's records say, with the records.
            let records = view.site.records_changed();
            let fresh =
                self.own.get(id).is_some_and(|(h, v, _)| *h == authored.hash && *v == records);
            if !fresh {
                self.own.insert(*id, (authored.hash, records, own_site(rollout, view.site)));
            }
            let (own, others) = (&self.own[id].2, &self.others[id].2);
            let rings = ring_stats(rollout, own, others, failed, view.now);
            let commands = policies.commands.get(id).map(Vec::as_slice).unwrap_or(&[]);
            let verdict = judge(authored, commands, view.trust, rings, view.now);
            if matches!(verdict.control, Control::Halted { .. } | Control::Aborted)
                && self.stopped.insert(*id)
            {
                out.push(EngineOut::Event(RolloutEvent::Stopped {
                    rollout: *id,
                    control: verdict.control.clone(),
                }));
            }
            if policies.patches.contains_key(&rollout.content_id) {
                // A node takes part only where the rollout's author, and the patch's, may
                // publish: checked against its own admitted site and labels, whatever the
                // selector says.
                let admins = view.trust.admins();
                // (Entries of a key no longer an admin, rotated out or revoked, were judged when
                // signed and hold no role now; they keep their selector alone.)
                let may = |k: &crate::ids::KeyId| {
                    !admins.is_admin(k)
                        || admins.grants_on(
                            k,
                            crate::trust::Permission::Publish,
                            view.site_id,
                            view.labels,
                        )
                };
                let patch_author = policies.patch_authors.get(&rollout.content_id);
                let in_scope = may(&authored.author) && patch_author.is_some_and(may);
                self.advance(&mut out, rollout, &verdict, view, in_scope);
            }
            // Pending in the ring a gate is about to open: look again when it should.
            let waits = self.standings.get(id).is_some_and(|s| {
                s.status == RolloutStatus::Pending && s.ring == verdict.open_rings
            });
            match verdict.promotes_at.filter(|_| waits && verdict.running()) {
                Some(at) => self.gate_wake.insert(*id, at),
                None => self.gate_wake.remove(id),
            };
            self.verdicts.insert(*id, verdict);
        }
        self.verdicts.retain(|id, _| policies.rollouts.contains_key(id));
        self.gate_wake.retain(|id, _| policies.rollouts.contains_key(id));
        self.failures.retain(|id, _| policies.rollouts.contains_key(id));
        self.others.retain(|id, _| policies.rollouts.contains_key(id));
        self.own.retain(|id, _| policies.rollouts.contains_key(id));
        out
    }

    fn set_standing(&mut self, rollout: RolloutId, ring: u8, status: RolloutStatus) {
        if self.standings.len() >= limits::ROLLOUT_STATUS_PER_RECORD_MAX
            && !self.standings.contains_key(&rollout)
        {
            return;
        }
        self.standings.insert(rollout, Standing { ring, status });
    }

    fn advance(
        &mut self,
        out: &mut Vec<EngineOut>,
        rollout: &RolloutEntry,
        verdict: &Verdict,
        view: &View<'_>,
        in_scope: bool,
    ) {
        let id = rollout.id;
        let now = view.now;
        let Some(j) = self.journal.get(&id).cloned() else {
            // Not started: decide targeting, then whether to start.
            let ring = (in_scope
                && selects(&rollout.target, view.site_id, view.labels, &self.facts))
            .then(|| ring_of(rollout, &view.me, view.labels))
            .flatten();
            let Some(ring) = ring else {
                self.set_standing(id, NO_RING, RolloutStatus::NotTargeted);
                return;
            };
            self.set_standing(id, ring, RolloutStatus::Pending);
            if self.may_start(rollout, verdict, ring, view) {
                let entry = JournalEntry {
                    rollout: id,
                    content_id: rollout.content_id,
                    ring,
                    step: Step::Fetching,
                    failed: false,
                    failed_at: None,
                    started_at: now,
                    step_at: now,
                    soak_until: None,
                    checks: 0,
                    detail: String::new(),
                };
                self.set_standing(id, ring, RolloutStatus::Installing);
                self.enter(out, entry, Step::Fetching, now);
            }
            return;
        };
        let status = match j.step {
            Step::Committed => RolloutStatus::Succeeded,
            Step::RolledBack => RolloutStatus::RolledBack,
            Step::Failed => RolloutStatus::Failed,
            Step::Cancelled => RolloutStatus::Pending,
            Step::Soaking => RolloutStatus::Soaking,
            _ => RolloutStatus::Installing,
        };
        self.set_standing(id, j.ring, status);
        if self.inflight.contains_key(&id) {
            return;
        }
        let stop = verdict.must_roll_back(rollout);
        let halted = matches!(verdict.control, Control::Halted { .. } | Control::Aborted);
        match j.step {
            Step::Fetching | Step::Staging if halted => {
                self.wake_at.remove(&id);
                self.enter(out, j, Step::Cancelled, now);
            }
            Step::Fetching
                if verdict.running() && self.wake_at.get(&id).is_some_and(|t| now >= *t) =>
            {
                self.wake_at.remove(&id);
                self.effect(out, &j, Action::Fetch);
            }
            Step::Staging
            | Step::Installing
            | Step::Verifying
            | Step::Soaking
            | Step::Committed
                if stop =>
            {
                self.wake_at.remove(&id);
                self.enter(out, j, Step::RollingBack, now);
            }
            Step::Soaking => {
                if j.soak_until.is_some_and(|t| now >= t) {
                    self.wake_at.remove(&id);
                    let detail = format!("verified {} times over the soak", j.checks);
                    self.enter(out, j, Step::Committed, now);
                    self.set_standing(id, self.journal[&id].ring, RolloutStatus::Succeeded);
                    out.push(EngineOut::Report {
                        rollout: id,
                        kind: EvidenceKind::InstallSucceeded,
                        detail,
                    });
                } else if self.wake_at.get(&id).is_none_or(|t| now >= *t) {
                    self.wake_at.remove(&id);
                    self.effect(out, &j, Action::Verify);
                }
            }
            _ => {}
        }
    }

    fn may_start(
        &self,
        rollout: &RolloutEntry,
        verdict: &Verdict,
        ring: u8,
        view: &View<'_>,
    ) -> bool {
        if !verdict.running() || ring >= verdict.open_rings || view.hold {
            return false;
        }
        let deadline_passed = rollout.deadline.is_some_and(|d| view.now >= d);
        if !deadline_passed && !install_window_open(rollout, view.now, &self.facts) {
            return false;
        }
        // Every member that started, wherever it stands now (soaking included).
        let started: u32 = verdict
            .rings
            .iter()
            .map(|r| r.installing + r.soaking + r.succeeded + r.failed + r.rolled_back)
            .sum();
        if started >= rollout.max_targets {
            return false;
        }
        // Site concurrency: installs running in the site, plus live pending members of an open
        // ring that rank before this node, must leave a slot (and every live member must have
        // said where it stands, so that the ranking sees them all). Ranking by the same hash on
        // every member keeps members from all starting at once: a member's standing only moves
        // forward (pending, installing, soaking, done), so a stale record counts it as ahead or
        // installing, never as gone. `Live::members` leaves out members known to be down (see
        // `node::rollouts`), which hold no slot.
        let live = view.liveness.get();
        let mut installing = 0u32;
        let mut ahead = 0u32;
        let my_rank = (ring, super::target::percentile_bp(&rollout.id, &view.me), view.me);
        for (node, held) in view.site.records() {
            if *node == view.me {
                continue;
            }
            let rollouts = &held.record().rollouts;
            let Some(s) = rollouts.get(&rollout.id) else {
                // A connected member that has not said where it stands may be about to start
                // too: wait for its record (one gossip round) rather than race it for a slot.
                if live.members.contains(node)
                    && rollouts.len() < limits::ROLLOUT_STATUS_PER_RECORD_MAX
                {
                    return false;
                }
                // So may one this node is not connected to, while the rollout is young: its
                // ring follows from its id and labels, so it counts as pending where it will
                // stand (a sparsely connected site let every canary start at once before its
                // members' first records of the rollout had gone round).
                if live.young.contains(&rollout.id) {
                    let labels = held.bundle.admission_cert().map(|c| &c.labels);
                    if let Some(r) = labels.and_then(|l| super::target::ring_of(rollout, node, l)) {
                        let rank = (r, super::target::percentile_bp(&rollout.id, node), *node);
                        if r < verdict.open_rings && rank < my_rank {
                            ahead += 1;
                        }
                    }
                }
                continue;
            };
            match s.status {
                RolloutStatus::Installing => installing += 1,
                RolloutStatus::Pending
                    if s.ring < verdict.open_rings && live.members.contains(node) =>
                {
                    let rank = (s.ring, super::target::percentile_bp(&rollout.id, node), *node);
                    if rank < my_rank {
                        ahead += 1;
                    }
                }
                _ => {}
            }
        }
        // `max_targets`: the members of this site ranked ahead may start first, so they count
        // against what is left (exact within a site; see `RolloutEntry::max_targets`).
        installing + ahead < rollout.max_concurrent_per_site
            && started.saturating_add(ahead) < rollout.max_targets
    }
}
