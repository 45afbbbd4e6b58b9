//! The `[enrol]` model: `machines` new machines join site 0 with one voucher that admits
//! `max_nodes`, booting at random times in `[at_ms, at_ms + spread_ms)`. Each makes its key and
//! signs its enrolment with its own (skewed) clock, exactly as `patchmesh node enroll` does,
//! and the site's nodes run the protocol's gate on it. Optionally the site splits in two for
//! `split_ms` from `split_at_ms` (a building losing its link): each half then admits up to
//! `max_nodes` of what it sees, and after the heal both refuse the same extras.
//!
//! Every `check_ms` the world reads each live member's gate (a member: a fleet node of site 0,
//! or a machine inside the limit): a machine is admitted by a member when the member has seen
//! its enrolment among the first `max_nodes` of the voucher (with no revocation or approval in
//! the scenario, exactly what the gate admits). Reported:
//! - `enrol_admitted_ms`: a machine's boot → every live member that was up when it booted
//!   admits it, over the machines inside the limit (the first `max_nodes` by enrolment time,
//!   node id);
//! - `enrol_all_admitted_after_last_boot_ms`: the last machine's boot → every live member
//!   admits every machine inside the limit (the whole voucher converged);
//! - `enrol_over_limit_max`: the most machines past the limit admitted by at least one member
//!   at one moment;
//! - `enrol_over_limit_last_ms`: the last moment any member admitted a machine past the limit,
//!   and `enrol_over_limit_after_heal_ms` how long after the split's heal that was;
//! - `enrol_refused_nodes`: machines no member admits at the end (must be the extras).
//!
//! Nodes of other sites hold no site records and check everything but the count, so
//! "everywhere" is the voucher's site, where the count is enforced.

use crate::stats::Percentiles;
use patchmesh_protocol::crypto::{Domain, Envelope, SecretKey};
use patchmesh_protocol::enrol::{Enrolled, Voucher};
use patchmesh_protocol::ids::{Millis, NodeId, SiteId};
use patchmesh_protocol::node::Node;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

fn d_machines() -> usize {
    1_000
}
fn d_at() -> u64 {
    5_000
}
fn d_spread() -> u64 {
    10_000
}
fn d_check() -> u64 {
    500
}
fn d_split_ms() -> u64 {
    10_000
}

/// `[enrol]` in a scenario.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolSpec {
    /// Machines that enrol with the voucher.
    #[serde(default = "d_machines")]
    pub machines: usize,
    /// The voucher's limit (default: `machines`).
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// When the first machine may boot.
    #[serde(default = "d_at")]
    pub at_ms: u64,
    /// Machines boot uniformly over this long.
    #[serde(default = "d_spread")]
    pub spread_ms: u64,
    /// How often the world reads the members' gates.
    #[serde(default = "d_check")]
    pub check_ms: u64,
    /// When site 0 splits in two halves (0: never).
    #[serde(default)]
    pub split_at_ms: u64,
    /// How long the split lasts.
    #[serde(default = "d_split_ms")]
    pub split_ms: u64,
}

impl EnrolSpec {
    /// The voucher's limit.
    pub fn limit(&self) -> u32 {
        self.max_nodes.unwrap_or(self.machines as u32)
    }
}

/// What the model reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnrolFigures {
    /// Machines that enrolled.
    pub enrol_machines: usize,
    /// The voucher's limit.
    pub enrol_max_nodes: u32,
    /// A machine's boot → every live member of its site that was up when it booted admits it
    /// (machines inside the limit).
    pub enrol_admitted_ms: Percentiles,
    /// Machines inside the limit counted in `enrol_admitted_ms`.
    pub enrol_admitted_nodes: usize,
    /// The last machine's boot → every live member admits every machine inside the limit.
    pub enrol_all_admitted_after_last_boot_ms: u64,
    /// Machines no member admits at the end.
    pub enrol_refused_nodes: usize,
    /// The most machines past the limit admitted somewhere at one moment.
    pub enrol_over_limit_max: usize,
    /// The split's heal → the last check that saw a machine past the limit admitted (0: none
    /// after the heal, or no split).
    pub enrol_over_limit_after_heal_ms: u64,
    /// Simulated time of the last check that saw a machine past the limit admitted (0: never).
    pub enrol_over_limit_last_ms: u64,
}

/// Events of the model.
#[derive(Debug, Clone, Copy)]
pub enum EnrolEv {
    /// A machine boots and joins.
    Join {
        /// The entity.
        node: u32,
    },
    /// The site splits (true) or heals (false).
    Split(bool),
    /// The world reads every member's gate.
    Check,
}

/// The model's state.
pub struct EnrolModel {
    pub(crate) spec: EnrolSpec,
    /// The voucher's envelope.
    pub(crate) voucher: Envelope,
    voucher_id: [u8; 16],
    /// First machine entity.
    pub(crate) first: u32,
    /// Per machine: boot time (µs).
    pub(crate) join_us: Vec<u64>,
    /// Per machine: its enrolment, filled when the world builds its config.
    enrolled: Vec<Option<Enrolled>>,
    /// Machine by rank key.
    by_key: BTreeMap<(Millis, NodeId), u32>,
    /// Per entity of site 0: in the half that the split cuts off.
    pub(crate) cut_off: BTreeSet<u32>,
    pub(crate) split: bool,
    /// Dials that failed across the split, made again when it heals.
    pub(crate) redial: Vec<(u32, u32)>,
    admitted_us: Vec<Option<u64>>,
    over_max: usize,
    over_last_us: u64,
    /// Machines past the limit admitted somewhere at the latest check.
    over_now: usize,
    /// First check, after every machine booted, at which every live member admits every
    /// machine inside the limit.
    all_admitted_us: Option<u64>,
}

impl EnrolModel {
    /// The voucher (signed by `admin` for site 0) and each machine's boot time.
    pub fn new(
        spec: EnrolSpec,
        first: u32,
        admin: &SecretKey,
        mesh: patchmesh_protocol::ids::MeshId,
        site: SiteId,
        epoch_ms: u64,
        draw: &mut impl rand::Rng,
    ) -> EnrolModel {
        let mut id = [0u8; 16];
        draw.fill_bytes(&mut id);
        let v = Voucher {
            mesh,
            id,
            site,
            labels: BTreeMap::new(),
            max_nodes: spec.limit(),
            // Issued before any skewed clock can read a time before it.
            issued_at: Millis(epoch_ms - 86_400_000),
            expires_at: Millis(epoch_ms + 30 * 86_400_000),
            valid_for_ms: 365 * 86_400_000,
            require_approval: false,
        };
        let voucher = Envelope::seal(Domain::Voucher, &v, &[admin]);
        let join_us = (0..spec.machines)
            .map(|_| (spec.at_ms + draw.gen_range(0..spec.spread_ms.max(1))) * 1000)
            .collect();
        EnrolModel {
            voucher,
            voucher_id: id,
            first,
            join_us,
            enrolled: vec![None; spec.machines],
            by_key: BTreeMap::new(),
            cut_off: BTreeSet::new(),
            split: false,
            redial: Vec::new(),
            admitted_us: vec![None; spec.machines],
            over_max: 0,
            over_last_us: 0,
            over_now: 0,
            all_admitted_us: None,
            spec,
        }
    }

    /// Whether entity `i` is one of the machines.
    pub(crate) fn is_machine(&self, i: u32) -> bool {
        i >= self.first && ((i - self.first) as usize) < self.spec.machines
    }

    /// Records machine `i`'s enrolment (made by the world with the machine's clock).
    pub(crate) fn set_enrolment(&mut self, i: u32, e: Enrolled) {
        let k = (i - self.first) as usize;
        self.by_key.insert(e.rank_key(), i);
        self.enrolled[k] = Some(e);
    }

    /// Whether a message between `a` and `b` is lost to the split.
    pub(crate) fn cut(&self, a: u32, b: u32) -> bool {
        self.split && (self.cut_off.contains(&a) != self.cut_off.contains(&b))
    }

    /// The machines inside the limit: the first `max_nodes` by rank key.
    fn inside(&self) -> BTreeSet<u32> {
        self.by_key.values().take(self.spec.limit() as usize).copied().collect()
    }

    /// Reads every live member's gate. `members` yields (entity, node) for the live fleet
    /// nodes of site 0 and the live machines.
    pub(crate) fn check<'a>(
        &mut self,
        now_us: u64,
        members: impl Iterator<Item = (u32, &'a Node)>,
    ) {
        let limit = self.spec.limit() as usize;
        let inside = self.inside();
        // A member's boot time: the fleet's is zero, a machine's its join.
        let boot =
            |i: u32| if self.is_machine(i) { self.join_us[(i - self.first) as usize] } else { 0 };
        let mut judges = BTreeSet::new();
        // Per machine: members admitting it, and those of them that were up when it booted.
        let mut admitted_by: BTreeMap<u32, usize> = BTreeMap::new();
        let mut early_by: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, node) in members {
            if self.is_machine(i) && !inside.contains(&i) {
                continue; // a refused machine is no member: whom it admits admits nothing
            }
            judges.insert(i);
            let Some(seen) = node.enrolments().seen.get(&self.voucher_id) else { continue };
            for key in seen.keys().take(limit) {
                if let Some(&m) = self.by_key.get(key) {
                    if m != i {
                        *admitted_by.entry(m).or_default() += 1;
                        if boot(i) <= boot(m) {
                            *early_by.entry(m).or_default() += 1;
                        }
                    }
                }
            }
        }
        let mut boots: Vec<u64> = judges.iter().map(|j| boot(*j)).collect();
        boots.sort_unstable();
        let over = admitted_by.keys().filter(|m| !inside.contains(m)).count();
        self.over_max = self.over_max.max(over);
        if over > 0 {
            self.over_last_us = now_us;
        }
        self.over_now = over;
        let mut all = self.join_us.iter().all(|t| *t <= now_us);
        for m in &inside {
            let k = (m - self.first) as usize;
            if !judges.contains(m) {
                all = false;
                continue;
            }
            let others = judges.len() - 1;
            all &= admitted_by.get(m).copied().unwrap_or(0) >= others;
            // Admitted by every live member that was up when it booted.
            let early = boots.partition_point(|b| *b <= self.join_us[k]) - 1;
            if self.admitted_us[k].is_none() && early_by.get(m).copied().unwrap_or(0) >= early {
                self.admitted_us[k] = Some(now_us);
            }
        }
        if all && self.all_admitted_us.is_none() {
            self.all_admitted_us = Some(now_us);
        }
    }

    /// Figures; a machine inside the limit never admitted everywhere, or a machine past it
    /// still admitted at the end, is a violation.
    pub(crate) fn finish(&self, violations: &mut Vec<String>) -> EnrolFigures {
        let inside = self.inside();
        let times: Vec<u64> = inside
            .iter()
            .filter_map(|m| {
                let k = (m - self.first) as usize;
                self.admitted_us[k].map(|t| (t - self.join_us[k]) / 1000)
            })
            .collect();
        if times.len() < inside.len() {
            violations.push(format!(
                "{} machines inside the voucher's limit were never admitted by every member up at their boot",
                inside.len() - times.len()
            ));
        }
        let machines = self.spec.machines;
        let last_boot = self.join_us.iter().copied().max().unwrap_or(0);
        let all_ms = match self.all_admitted_us {
            Some(t) => (t - last_boot) / 1000,
            None => {
                violations.push(
                    "the members never all admitted every machine inside the voucher's limit"
                        .into(),
                );
                0
            }
        };
        if self.enrolled.iter().any(Option::is_none) {
            violations.push("a machine never enrolled".into());
        }
        if self.over_now > 0 {
            violations.push(format!(
                "{} machines past the voucher's limit were still admitted at the end",
                self.over_now
            ));
        }
        EnrolFigures {
            enrol_machines: machines,
            enrol_max_nodes: self.spec.limit(),
            enrol_admitted_nodes: times.len(),
            enrol_admitted_ms: Percentiles::of(times),
            enrol_all_admitted_after_last_boot_ms: all_ms,
            enrol_refused_nodes: machines - inside.len(),
            enrol_over_limit_max: self.over_max,
            enrol_over_limit_after_heal_ms: if self.spec.split_at_ms > 0 {
                let heal = (self.spec.split_at_ms + self.spec.split_ms) * 1000;
                self.over_last_us.saturating_sub(heal) / 1000
            } else {
                0
            },
            enrol_over_limit_last_ms: self.over_last_us / 1000,
        }
    }
}
