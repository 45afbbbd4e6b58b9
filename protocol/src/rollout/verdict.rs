//! The fleet-level verdict on a rollout: approvals, admin commands, ring gates and halts.
//!
//! Every input is replicated signed state (catalog entries with their authors, node records,
//! site summaries and fleet-wide failure reports), so two nodes holding the same state reach
//! the same verdict, and as state converges so do verdicts.
//!
//! ## Rules
//! - **Approval.** A rollout whose `max_targets` exceeds the mesh's `approval_above_nodes` needs
//!   `approval_threshold` distinct current admins: its author plus `Approve` commands naming the
//!   hash of exactly this rollout entry. Below that, its author suffices.
//! - **Abort** wins over everything unless a later `Resume` names it in `overrides`.
//! - **Pause/resume**: the latest of the pause and resume commands by `(issued_at, key)` wins,
//!   so two admins issuing conflicting commands during a partition converge on one answer once
//!   the catalog merges.
//! - **Halt**: ring `j` halts the rollout when its failed members exceed `max_failures`, or when
//!   every targeted member has reported (which needs every site summarised, see below) and
//!   failures exceed `max_failure_permille`. A `Resume` overriding the halt of ring `j`
//!   accepts a number of failures; only failures beyond them count. Failures are counted from
//!   the fleet-wide failure reports, so the count only grows.
//! - **Promotion**: ring `k` may install once every earlier ring's gate passes: enough
//!   succeeded members (`min_reports`, and `min_success_permille` of targeted), failures
//!   within both limits. Anything missing (an empty ring, sites not yet summarised) leaves the
//!   gate closed: missing evidence pauses, it never promotes. A site is summarised once the
//!   summary held for it counts its members' standings in this rollout (every member that
//!   evaluated it has one, `NotTargeted` included); a summary from before the rollout does not.
//!   The price: a site with no member up to summarise it holds promotion back until one is.
//! - **Soaks end on time.** A soaking member counts as succeeded once its ring's `min_soak_ms`
//!   and [`crate::limits::SOAK_COUNT_GRACE_MS`] have passed since its soak began, as its site's
//!   records or summary date it ([`crate::site::SoakStarts`]). A site therefore summarises a
//!   ring once its members there stop installing, not again when their soaks end, and every
//!   evaluator knows when the gate will pass ([`Verdict::promotes_at`]) and looks again then:
//!   the next ring starts within about a second of the truth, with no summary in between. A
//!   member that fails during its soak reports it at once, and a failure report floods the
//!   mesh well within the grace, which also covers clock skew between members up to it (a
//!   member whose clock runs further behind counts up to the difference early; its own soak is
//!   timed by its own clock either way). Halts do not use this: "every member reported" still
//!   waits for final standings.

use super::alarms::Alarms;
use super::policy::{AdminCommand, CommandAction, Override, RolloutEntry};
use super::target::ring_of;
use crate::catalog::{CatalogEntry, PatchEntry};
use crate::crypto::{encode, hash_parts};
use crate::ids::{ContentId, KeyId, Millis, RolloutId, SiteId};
use crate::site::{RolloutStatus, SiteState, Summaries};
use crate::trust::Trust;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A rollout entry with the admin who wrote it and its hash (what approvals name).
#[derive(Clone, Debug)]
pub struct Authored {
    /// The rollout.
    pub rollout: RolloutEntry,
    /// Its author.
    pub author: KeyId,
    /// Hash of its canonical encoding.
    pub hash: [u8; 32],
}

/// Hash of a rollout entry as approvals name it.
pub fn rollout_hash(r: &RolloutEntry) -> [u8; 32] {
    hash_parts(&[b"patchmesh/v1/rollout", &encode(r)])
}

/// The rollout-relevant part of the catalog, parsed once per catalog change.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    /// Valid rollouts by id.
    pub rollouts: BTreeMap<RolloutId, Authored>,
    /// Patches by content id.
    pub patches: BTreeMap<ContentId, PatchEntry>,
    /// Who wrote each patch entry (a node installs it only if that admin may publish there).
    pub patch_authors: BTreeMap<ContentId, KeyId>,
    /// Commands per rollout, with their catalog keys, whose `admin` is their signer.
    pub commands: BTreeMap<RolloutId, Vec<(String, AdminCommand)>>,
    /// Deferrals allowed per rollout (from the rollout's own author).
    pub deferrals: BTreeMap<RolloutId, super::policy::Deferrals>,
    /// Entries ignored (malformed policy, key mismatch, forged command author).
    pub ignored: Vec<(String, String)>,
}

impl Policies {
    /// Parses catalog entries (with authors, see `Catalog::entries_authored`). Entries whose
    /// author's roles (under `admins`, the set held now) do not grant what they do are ignored:
    /// a role removed or narrowed takes its rollouts, patches and commands with it.
    pub fn parse(
        entries: BTreeMap<String, (CatalogEntry, KeyId)>,
        admins: &crate::trust::AdminSet,
    ) -> Policies {
        use crate::trust::Permission as P;
        let mut p = Policies::default();
        let mut deferrals = Vec::new();
        for (key, (entry, author)) in entries {
            match entry {
                CatalogEntry::Patch(_) | CatalogEntry::Rollout(_)
                    if !admins.roles.is_empty()
                        && admins.is_admin(&author)
                        && !admins.grants(&author, P::Publish) =>
                {
                    p.ignored.push((key, "its author's roles do not grant publish".into()));
                }
                CatalogEntry::Patch(patch) => {
                    if key == format!("patch/{}", patch.content_id) {
                        p.patch_authors.insert(patch.content_id, author);
                        p.patches.insert(patch.content_id, patch);
                    } else {
                        p.ignored.push((key, "patch key does not match its content id".into()));
                    }
                }
                CatalogEntry::Rollout(rollout) => {
                    if key != format!("rollout/{}", rollout.id) {
                        p.ignored.push((key, "rollout key does not match its id".into()));
                    } else if let Err(e) = rollout.validate() {
                        p.ignored.push((key, e.to_string()));
                    } else if !admins.roles.is_empty()
                        && admins.is_admin(&author)
                        && !admins.grants_within(
                            &author,
                            P::Publish,
                            &rollout.target.sites,
                            &rollout.target.labels,
                        )
                    {
                        p.ignored
                            .push((key, "its target reaches beyond its author's scope".into()));
                    } else {
                        let hash = rollout_hash(&rollout);
                        p.rollouts.insert(rollout.id, Authored { rollout, author, hash });
                    }
                }
                CatalogEntry::Command(cmd) => {
                    if cmd.admin != author {
                        p.ignored
                            .push((key, "command names an admin other than its signer".into()));
                    } else {
                        p.commands.entry(cmd.rollout).or_default().push((key, cmd));
                    }
                }
                // Vulnerability data, not rollout policy.
                CatalogEntry::Intel(_)
                | CatalogEntry::Exception(_)
                | CatalogEntry::Integrations(_)
                | CatalogEntry::Voucher(_)
                | CatalogEntry::ReservedLabels(_)
                | CatalogEntry::NodeRevocation(_) => {}
                CatalogEntry::Deferrals(d) => {
                    if key != d.key() || d.validate().is_err() {
                        p.ignored.push((key, "malformed deferrals".into()));
                    } else {
                        deferrals.push((key, d, author));
                    }
                }
            }
        }
        for (key, d, author) in deferrals {
            match p.rollouts.get(&d.rollout) {
                Some(r) if r.author == author => {
                    p.deferrals.insert(d.rollout, d);
                }
                Some(_) => {
                    p.ignored.push((key, "deferrals not signed by the rollout's author".into()))
                }
                None => p.ignored.push((key, "deferrals of an unknown rollout".into())),
            }
        }
        p
    }
}

/// Counts of one ring's members as this node sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingStats {
    /// Members the rollout targets (every status but not-targeted).
    pub targeted: u32,
    /// Waiting for their ring, window or gate.
    pub pending: u32,
    /// Fetching, installing, verifying or rolling back (holding an install slot).
    pub installing: u32,
    /// Verified and soaking.
    #[serde(default)]
    pub soaking: u32,
    /// Installed, verified and soaked.
    pub succeeded: u32,
    /// Members with a failure report (fleet-wide, exact).
    pub failed: u32,
    /// Rolled back.
    pub rolled_back: u32,
    /// Soaking members whose soak has ended by now, as far as this node can tell: its ring's
    /// `min_soak_ms` and [`crate::limits::SOAK_COUNT_GRACE_MS`] have passed since the soak
    /// began (see [`crate::site::SoakStarts`]). The gate counts them with `succeeded`.
    #[serde(default)]
    pub soaked: u32,
    /// When enough members will have succeeded or soaked for this ring's success condition,
    /// if the members soaking now suffice and it does not hold yet: the moment to evaluate
    /// again, with no summary needed in between.
    #[serde(default)]
    pub enough_soaked_at: Option<Millis>,
    /// Other sites whose summary, as held here, does not mention the rollout yet (the same for
    /// every ring). Their members are missing from the counts above, so while any is missing
    /// the ring's gate stays closed: an undercounted ring could otherwise pass its gate on a
    /// few local successes (a site cut off from the fleet sees only its own members).
    pub unsummarised_sites: u32,
}

impl RingStats {
    /// Soaking members whose soak is over by this node's clock ([`RingStats::soaked`], never
    /// more than are soaking): the gate counts them as succeeded before their sites say so.
    pub fn soak_over(&self) -> u32 {
        self.soaked.min(self.soaking)
    }

    /// Soaking members whose soak is still running (the ones [`RingStats::soak_over`] leaves).
    pub fn soak_running(&self) -> u32 {
        self.soaking - self.soak_over()
    }
}

/// Members a ring's gate needs succeeded: `min_reports`, and `min_success_permille` of its
/// `targeted` members.
pub fn needed(gate: &super::policy::Gate, targeted: u32) -> u32 {
    let by_fraction =
        (u64::from(gate.min_success_permille) * u64::from(targeted)).div_ceil(1000) as u32;
    by_fraction.max(gate.min_reports)
}

/// Ring counts gathered so far: the part of [`ring_stats`] read from other sites' summaries,
/// which a caller may keep while the summaries held stay the same (see
/// [`Summaries::version`]), then add its own site's records to.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    rings: Vec<RingStats>,
    /// Per ring: when each soaking member's soak counts as ended, with how many members.
    soak_ends: Vec<Vec<(Millis, u32)>>,
    unsummarised: u32,
}

impl Tally {
    fn new(rollout: &RolloutEntry) -> Tally {
        let n = rollout.rings.len();
        Tally {
            rings: vec![RingStats::default(); n],
            soak_ends: vec![Vec::new(); n],
            unsummarised: 0,
        }
    }

    fn add(&mut self, ring: u8, status: RolloutStatus, count: u32) {
        let Some(r) = self.rings.get_mut(usize::from(ring)) else { return };
        match status {
            RolloutStatus::NotTargeted => return,
            RolloutStatus::Pending => r.pending += count,
            RolloutStatus::Installing => r.installing += count,
            RolloutStatus::Soaking => r.soaking += count,
            RolloutStatus::Succeeded => r.succeeded += count,
            RolloutStatus::RolledBack => r.rolled_back += count,
            RolloutStatus::Failed => {}
        }
        r.targeted += count;
    }

    /// Sorts each ring's soak ends and adds up the members of equal ends: soak starts are
    /// rounded to one grid everywhere, so a few hundred sites' entries come down to one per
    /// grid step.
    fn settle(&mut self) {
        for ends in &mut self.soak_ends {
            ends.sort_unstable();
            ends.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = kept.1.saturating_add(later.1);
                }
                same
            });
            ends.shrink_to_fit();
        }
    }

    fn soaks(&mut self, rollout: &RolloutEntry, ring: u8, began: Millis, count: u32) {
        let Some(spec) = rollout.rings.get(usize::from(ring)) else { return };
        let end = began.plus(spec.gate.min_soak_ms).plus(crate::limits::SOAK_COUNT_GRACE_MS);
        self.soak_ends[usize::from(ring)].push((end, count));
    }
}

/// What other sites' summaries say of `rollout` (every site but `own`).
pub fn other_sites(rollout: &RolloutEntry, own: &SiteId, summaries: &Summaries) -> Tally {
    let mut tally = Tally::new(rollout);
    let id = rollout.id;
    for (sid, held) in summaries.all() {
        if sid == own {
            continue;
        }
        let summary = held.summary();
        let (first, last) =
            ((id, 0, RolloutStatus::Pending), (id, u8::MAX, RolloutStatus::Soaking));
        let mut mentioned = false;
        for ((_, ring, status), count) in summary.counts.range(first..=last) {
            mentioned = true;
            tally.add(*ring, *status, *count);
        }
        for ((_, ring), starts) in summary.soaking.range((id, 0)..=(id, u8::MAX)) {
            for (began, count) in starts {
                tally.soaks(rollout, *ring, *began, *count);
            }
        }
        tally.unsummarised += u32::from(!mentioned);
    }
    tally.settle();
    tally
}

/// What this site's records say of `rollout` (a caller may keep it while the records stay
/// the same, see [`SiteState::records_changed`]).
pub fn own_site(rollout: &RolloutEntry, site: &SiteState) -> Tally {
    let mut tally = Tally::new(rollout);
    for held in site.records().values() {
        let record = held.record();
        if let Some(s) = record.rollouts.get(&rollout.id) {
            tally.add(s.ring, s.status, 1);
            if s.status == RolloutStatus::Soaking {
                tally.soaks(rollout, s.ring, crate::site::soak_start(record.written_at), 1);
            }
        }
    }
    tally.settle();
    tally
}

/// Collects ring statistics: this site as [`own_site`] tallied its records, other sites as
/// [`other_sites`] tallied their summaries, failures per ring as [`count_failures`] counts
/// them from the fleet-wide reports; soaks are judged ended or not at `now`.
pub fn ring_stats(
    rollout: &RolloutEntry,
    own: &Tally,
    others: &Tally,
    failed: &[u32],
    now: Millis,
) -> Vec<RingStats> {
    let n = rollout.rings.len();
    if own.rings.len() != n || others.rings.len() != n {
        // Tallied for another rollout: a caller's bug, but counted afresh rather than wrong.
        debug_assert!(false, "a tally of another rollout");
        return vec![RingStats::default(); n];
    }
    let mut rings = others.rings.clone();
    for (j, (r, spec)) in rings.iter_mut().zip(&rollout.rings).enumerate() {
        let mine = &own.rings[j];
        r.targeted += mine.targeted;
        r.pending += mine.pending;
        r.installing += mine.installing;
        r.soaking += mine.soaking;
        r.succeeded += mine.succeeded;
        r.rolled_back += mine.rolled_back;
        r.unsummarised_sites = others.unsummarised;
        // Both lists are sorted: walk them as one, without copying either.
        let (mut a, mut b) =
            (others.soak_ends[j].iter().peekable(), own.soak_ends[j].iter().peekable());
        let mut ends = std::iter::from_fn(|| match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        })
        .peekable();
        let mut soaked = 0u32;
        while let Some((_, c)) = ends.next_if(|(end, _)| *end <= now) {
            soaked = soaked.saturating_add(*c);
        }
        r.soaked = soaked.min(r.soaking);
        // The moment the soaks still running bring the ring to what its gate needs.
        let need = needed(&spec.gate, r.targeted);
        let mut have = r.succeeded + r.soaked;
        if have < need {
            r.enough_soaked_at = ends.find_map(|(end, c)| {
                have = have.saturating_add(*c);
                (have >= need).then_some(*end)
            });
        }
    }
    for (r, failed) in rings.iter_mut().zip(failed) {
        r.failed = *failed;
    }
    rings
}

/// Adds to `failed` (failure reports of `rollout` per ring, see [`ring_stats`]) the reports
/// merged after the first `counted`: reports only grow, so a caller keeps the counts and adds
/// each report once.
pub fn count_failures(
    rollout: &RolloutEntry,
    alarms: &Alarms,
    counted: usize,
    failed: &mut Vec<u32>,
) {
    failed.resize(rollout.rings.len(), 0);
    for alarm in alarms.arrived_after(&rollout.id, counted) {
        if let Some(ring) = ring_of(rollout, &alarm.evidence.node, &alarm.labels) {
            if let Some(n) = failed.get_mut(usize::from(ring)) {
                *n += 1;
            }
        }
    }
}

/// What stops a rollout, if anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Control {
    /// Moving.
    Running,
    /// Not enough admin approvals yet.
    AwaitingApproval,
    /// Paused by an admin.
    Paused,
    /// Aborted by an admin: every install rolls back.
    Aborted,
    /// Halted by its own failure evidence.
    Halted {
        /// The ring whose failures halted it.
        ring: u8,
        /// Failures counted against that ring.
        failures: u32,
    },
}

/// The verdict on a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// What stops it.
    pub control: Control,
    /// Distinct admins approving this exact rollout (its author included).
    pub approvals: u32,
    /// Approvals it needs.
    pub approvals_needed: u32,
    /// Rings whose members may install now: ring `k` may iff `k < open_rings`.
    pub open_rings: u8,
    /// Why the next ring is not open yet (empty when all are).
    pub waiting: String,
    /// When the next ring opens if the members soaking now end their soaks and nothing else
    /// changes (none fails): when to evaluate again.
    pub promotes_at: Option<Millis>,
    /// Per-ring counts.
    pub rings: Vec<RingStats>,
}

impl Verdict {
    /// True if ring members may start installs (not paused, halted, aborted or unapproved).
    pub fn running(&self) -> bool {
        self.control == Control::Running
    }

    /// True if installs must be undone (abort, or a halt when the rollout rolls back on halt).
    pub fn must_roll_back(&self, rollout: &RolloutEntry) -> bool {
        match self.control {
            Control::Aborted => true,
            Control::Halted { .. } => rollout.rollback_on_halt,
            _ => false,
        }
    }
}

fn cmd_order(key: &str, cmd: &AdminCommand) -> (u64, String) {
    (cmd.issued_at.0, key.to_string())
}

/// Judges a rollout from the commands about it, the trust state and ring statistics.
pub fn judge(
    authored: &Authored,
    commands: &[(String, AdminCommand)],
    trust: &Trust,
    rings: Vec<RingStats>,
    now: Millis,
) -> Verdict {
    let rollout = &authored.rollout;
    let admins = trust.admins();
    // Commands count from keys whose roles grant them over the whole rollout target.
    let (sites, labels) = (&rollout.target.sites, &rollout.target.labels);
    let current: Vec<&(String, AdminCommand)> = commands
        .iter()
        .filter(|(_, c)| {
            let perm = match c.action {
                CommandAction::Approve { .. } => crate::trust::Permission::Approve,
                _ => crate::trust::Permission::Control,
            };
            admins.grants_within(&c.admin, perm, sites, labels)
        })
        .collect();

    let (approvers, needed) = approvals(authored, &current, trust);
    let Overrides { aborted, paused, accepted_failures } = overrides(&current);
    let counted = |j: usize, r: &RingStats| {
        r.failed.saturating_sub(accepted_failures.get(&(j as u8)).copied().unwrap_or(0))
    };
    let halt = rings.iter().enumerate().find_map(|(j, r)| {
        let gate = &rollout.rings[j].gate;
        let failed = counted(j, r);
        // Failures are counted fleet-wide but members only from the sites summarised here:
        // with a site missing, "every member reported" cannot be known (and would be judged
        // against too few members), so only `max_failures` can halt until every site is in.
        let all_reported = r.targeted > 0
            && r.unsummarised_sites == 0
            && r.succeeded + failed + r.rolled_back >= r.targeted;
        let over_fraction =
            u64::from(failed) * 1000 > u64::from(gate.max_failure_permille) * u64::from(r.targeted);
        (failed > gate.max_failures || (all_reported && over_fraction))
            .then_some(Control::Halted { ring: j as u8, failures: failed })
    });

    let control = if aborted {
        Control::Aborted
    } else if let Some(h) = halt {
        h
    } else if (approvers.len() as u32) < needed {
        Control::AwaitingApproval
    } else if paused {
        Control::Paused
    } else {
        Control::Running
    };

    let (open_rings, waiting, promotes_at) = open_rings(rollout, &rings, counted, now);
    Verdict {
        control,
        approvals: approvers.len() as u32,
        approvals_needed: needed,
        open_rings,
        waiting,
        promotes_at,
        rings,
    }
}

/// The admins who approved this rollout (its author counts when still an admin) and how many
/// it needs: the mesh's threshold above `approval_above_nodes` targets, else one.
fn approvals(
    authored: &Authored,
    current: &[&(String, AdminCommand)],
    trust: &Trust,
) -> (BTreeSet<KeyId>, u32) {
    let rollout = &authored.rollout;
    let admins = trust.admins();
    let mut approvers: BTreeSet<KeyId> = BTreeSet::new();
    // The author counts once, and only if its roles grant approve over the target (a
    // publish-only role needs someone else's approval: separation of duties).
    let (sites, labels) = (&rollout.target.sites, &rollout.target.labels);
    if admins.grants_within(&authored.author, crate::trust::Permission::Approve, sites, labels) {
        approvers.insert(authored.author);
    }
    for (_, c) in current {
        if let CommandAction::Approve { rollout_hash } = &c.action {
            if *rollout_hash == authored.hash {
                approvers.insert(c.admin);
            }
        }
    }
    let mesh_rule = if rollout.max_targets > admins.approval_above_nodes {
        u32::from(admins.approval_threshold.max(1))
    } else {
        1
    };
    let needed = mesh_rule.max(u32::from(admins.publish_approvals(&authored.author)));

    (approvers, needed)
}

/// What current admins' commands say: aborted (an abort no resume lifted), paused (the latest
/// of pause and resume), and failures accepted per ring by resumes that overrode a halt.
struct Overrides {
    aborted: bool,
    paused: bool,
    accepted_failures: BTreeMap<u8, u32>,
}

fn overrides(current: &[&(String, AdminCommand)]) -> Overrides {
    // Resumes that lift an abort or a halt.
    let mut lifted_aborts: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut accepted_failures: BTreeMap<u8, u32> = BTreeMap::new();
    for (key, c) in current {
        if let CommandAction::Resume { overrides: Some(o) } = &c.action {
            match o {
                Override::Abort(abort_key) => {
                    let e = lifted_aborts.entry(abort_key.as_str()).or_insert((0, String::new()));
                    *e = (*e).clone().max(cmd_order(key, c));
                }
                Override::Halt { ring, failures } => {
                    let e = accepted_failures.entry(*ring).or_default();
                    *e = (*e).max(*failures);
                }
            }
        }
    }
    let aborted = current.iter().any(|(key, c)| {
        matches!(c.action, CommandAction::Abort)
            && lifted_aborts.get(key.as_str()).is_none_or(|lift| *lift <= cmd_order(key, c))
    });
    let paused = current
        .iter()
        .filter(|(_, c)| matches!(c.action, CommandAction::Pause | CommandAction::Resume { .. }))
        .max_by_key(|(key, c)| cmd_order(key, c))
        .is_some_and(|(_, c)| matches!(c.action, CommandAction::Pause));

    Overrides { aborted, paused, accepted_failures }
}

/// How many rings are open (the first, and each after a ring whose gate passed), and what the
/// first closed gate waits for.
fn open_rings(
    rollout: &RolloutEntry,
    rings: &[RingStats],
    counted: impl Fn(usize, &RingStats) -> u32,
    now: Millis,
) -> (u8, String, Option<Millis>) {
    let mut open_rings = 1u8;
    let mut waiting = String::new();
    let mut promotes_at = None;
    for (j, r) in rings.iter().enumerate().take(rollout.rings.len().saturating_sub(1)) {
        let gate = &rollout.rings[j].gate;
        let failed = counted(j, r);
        let need = needed(gate, r.targeted);
        let name = &rollout.rings[j].name;
        if r.unsummarised_sites > 0 {
            waiting = format!(
                "ring {name}: {} sites have not summarised the rollout yet",
                r.unsummarised_sites
            );
            break;
        }
        if r.targeted == 0 && need > 0 {
            // Every site is summarised and none counts a member: the gate can never pass.
            waiting = format!(
                "ring {name}: no node is in this ring, so its gate can never pass; abort this \
                 rollout and create one whose rings all have members"
            );
            break;
        }
        let succeeded = r.succeeded + r.soaked;
        let failures_over = failed > gate.max_failures
            || u64::from(failed) * 1000
                > u64::from(gate.max_failure_permille) * u64::from(r.targeted);
        if succeeded < need {
            promotes_at = r.enough_soaked_at.filter(|_| !failures_over);
            waiting = format!("ring {name}: {succeeded} of {need} succeeded members");
            if let Some(at) = r.enough_soaked_at {
                let more = need - succeeded;
                waiting += &format!(
                    "; {more} more end their soak in {:.1} s unless one fails",
                    at.0.saturating_sub(now.0) as f64 / 1000.0
                );
            }
            break;
        }
        if failures_over {
            waiting = format!("ring {name}: {failed} failures over the gate");
            break;
        }
        open_rings += 1;
    }
    (open_rings, waiting, promotes_at)
}
