//! Site-scoped replicated state: node records, evidence, and the per-site summaries that stand
//! for them across sites.
//!
//! ## Node records
//! A [`NodeRecord`] is written only by its node and signed with its key (domain
//! `patchmesh/v1/node-record`). It carries a version; the highest version wins, and a version at
//! or below the one held is a replay unless it is the very same object. This makes the record set
//! a state-based CRDT (a map of max-registers): merge is commutative, associative and idempotent,
//! and reconciliation compares digests rather than replaying a history.
//!
//! ## Evidence
//! [`Evidence`] (install results, health checks) is signed by the node that observed it and
//! kept as a grow-only set keyed by content hash. Gates are functions of this set, so a gate
//! that opened stays open.
//!
//! ## Bound on per-node state
//! A node holds records and evidence of **its own site only** (plus its own objects). For every
//! other site it holds one [`SiteSummary`]: counts per (rollout, status) and a hash committing to
//! the exact signed objects behind them. So a node holds
//! `O(site size + evidence of its site + number of sites)` objects, not `O(fleet)`: at 100,000
//! nodes in 500 sites that is about 200 records and 500 summaries. A summary is signed by a node
//! admitted to that site; any node that fetches the site's records can recompute the roots with
//! [`SiteState::check_summary`].
//!
//! ## Endorsed summaries
//! Other sites cannot recompute a summary, so one member's word is not enough for them: a
//! member could sign counts its records do not support (successes that never happened, or
//! fewer members than the site has) and make a ring's gate elsewhere pass early. A summary of
//! more than one record therefore counts outside its site only when **endorsed**: another
//! member recomputed it from its own copy of the site's records, found it identical, and signed
//! an [`Endorsement`] that carries the summary whole. The reporter's unendorsed summary is a
//! proposal that travels only inside its site. An endorsed summary outranks every unendorsed
//! one, whatever its version sum, so a member cannot bury an honest summary under a made-up
//! one either. It takes two admitted members of one site, colluding, to lie to other sites.
//! A summary of at most one record needs no endorsement (a site of one has no one to ask), and
//! it can claim at most one member's standing in each rollout.
//!
//! Every object travels with its author's admission certificate, so a receiver can check it
//! without any other state.
//!
//! ## Files
//! The object types and their rules are here; [`bundle`] holds a signed object with its
//! certificate and the checks each node makes of it, and [`state`] the replicas: one site's
//! records and evidence ([`SiteState`]) and every other site's summary ([`Summaries`]).

use crate::crypto::{DecodeError, Domain, Envelope, SignatureCheck};
use crate::ids::{MeshId, Millis, NodeId, ObjectId, RolloutId, SiteId, StateHash};
use crate::limits;
use crate::trust::{Trust, TrustError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

mod bundle;
mod state;
#[cfg(test)]
mod tests;

pub use bundle::*;
pub use state::*;

/// Where a node is with one rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RolloutStatus {
    /// Targeted, waiting for its ring, window or gate.
    Pending,
    /// Fetching, staging, installing, verifying or rolling back: holds one of the site's
    /// install slots (`max_concurrent_per_site`).
    Installing,
    /// Installed, verified and soaked.
    Succeeded,
    /// Install or verification failed.
    Failed,
    /// Rolled back after a failure or a halt.
    RolledBack,
    /// Not targeted by the rollout.
    NotTargeted,
    /// Installed and verified, soaking (re-verified until the ring's soak ends). The machine
    /// runs the new version and serves; it holds no install slot. (Last, so records written
    /// before it existed decode unchanged.)
    Soaking,
}

/// Where a node stands in one rollout: its ring (or [`crate::rollout::NO_RING`]) and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Standing {
    /// The node's ring, as every node computes it.
    pub ring: u8,
    /// Where the node is.
    pub status: RolloutStatus,
}

/// Nodes per (rollout, ring, status), as a site summary carries them.
pub type Counts = BTreeMap<(RolloutId, u8, RolloutStatus), u32>;

/// Per (rollout, ring): when the members soaking there began to soak, as (time, members) in
/// rising time. A member's soak is timed from its first record that says it soaks (its
/// `written_at`, rounded up by [`soak_start`]), so it begins no earlier than the member's own
/// soak did. Evaluators elsewhere count a soaking member as succeeded once
/// its ring's `min_soak_ms` has passed since then (see [`crate::rollout::verdict`]), so a site
/// need not send another summary when its members' soaks end.
pub type SoakStarts = BTreeMap<(RolloutId, u8), Vec<(Millis, u32)>>;

/// A soak start as summaries carry it: rounded up to [`limits::SOAK_START_STEP_MS`], so
/// members that entered their soak close together share an entry (and the rounding never
/// makes a soak look longer than it is).
pub fn soak_start(written_at: Millis) -> Millis {
    let step = limits::SOAK_START_STEP_MS;
    Millis(written_at.0.div_ceil(step).checked_mul(step).unwrap_or(u64::MAX))
}

/// Soak starts of the soaking members among `records` (each record's standings and
/// `written_at`), in the form summaries carry them.
pub fn soak_starts<'a>(records: impl Iterator<Item = &'a NodeRecord>) -> SoakStarts {
    let mut per: BTreeMap<(RolloutId, u8), BTreeMap<Millis, u32>> = BTreeMap::new();
    for record in records {
        for (rollout, standing) in &record.rollouts {
            if standing.status == RolloutStatus::Soaking {
                let at = soak_start(record.written_at);
                *per.entry((*rollout, standing.ring)).or_default().entry(at).or_default() += 1;
            }
        }
    }
    per.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect()
}

/// A summary of a node's installed software; the full list is served on request.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventorySummary {
    /// Operating system (e.g. `Debian GNU/Linux 12`).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Installed package count.
    pub package_count: u32,
    /// BLAKE3 over the sorted package list.
    pub packages_digest: [u8; 32],
    /// The node's IANA time zone (what its windows are read in); empty when unknown. Rollout
    /// rehearsals read it (`patchmesh rollout plan`).
    pub zone: String,
    /// The node's quiet hours (`--window auto`), once it has a week of activity history.
    pub quiet: Option<crate::rollout::activity::QuietHours>,
    /// Free space where the node keeps payloads, rounded down by [`round_free_disk`] (so the
    /// record is re-signed only when it moves by a sizeable step); `None` when unknown.
    pub free_disk_bytes: Option<u64>,
}

/// Rounds free disk space down to its leading three bits (steps of at most 25%): a node's
/// record changes only when its free space moves by a step, not with every file written.
pub fn round_free_disk(bytes: u64) -> u64 {
    let keep = 3;
    let bits = 64 - bytes.leading_zeros();
    if bits <= keep {
        return bytes;
    }
    let shift = bits - keep;
    (bytes >> shift) << shift
}

/// One kind of member in a site's shape: its time zone, OS and certificate labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberKind {
    /// IANA time zone (empty: unknown).
    pub zone: String,
    /// Operating system.
    pub os: String,
    /// Certificate labels.
    pub labels: BTreeMap<String, String>,
    /// Quiet hours.
    pub quiet: Option<crate::rollout::activity::QuietHours>,
}

impl MemberKind {
    /// Its size, counted as its strings' bytes (and its quiet hours' mask).
    fn bytes(&self) -> usize {
        self.quiet.map_or(0, |q| q.mask.len())
            + self.zone.len()
            + self.os.len()
            + self.labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// What a site is made of, as its summary carries it: members per kind (time zone, OS,
/// labels), the most common kinds first, and how many members are of the kinds left out. A
/// rollout rehearsal rebuilds other sites from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteShape {
    /// Members per kind, most common first (ties by kind).
    pub kinds: Vec<(MemberKind, u32)>,
    /// Members of kinds left out.
    pub other: u32,
    /// The least free disk space any member reports (rounded as its record carries it):
    /// a payload larger than this does not fit on some member.
    pub min_free_disk_bytes: Option<u64>,
}

impl SiteShape {
    /// The shape of `members`: the most common kinds, while they fit
    /// [`crate::limits::SITE_SHAPE_KINDS_MAX`] and [`crate::limits::SITE_SHAPE_BYTES_MAX`]; the
    /// rest counted in `other`.
    pub fn of(members: impl IntoIterator<Item = MemberKind>) -> SiteShape {
        let mut all: BTreeMap<MemberKind, u32> = BTreeMap::new();
        for m in members {
            *all.entry(m).or_default() += 1;
        }
        let mut sorted: Vec<(MemberKind, u32)> = all.into_iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut shape = SiteShape::default();
        let mut bytes = 0usize;
        for (kind, n) in sorted {
            let size = kind.bytes();
            if shape.kinds.len() < crate::limits::SITE_SHAPE_KINDS_MAX
                && bytes + size <= crate::limits::SITE_SHAPE_BYTES_MAX
            {
                bytes += size;
                shape.kinds.push((kind, n));
            } else {
                shape.other += n;
            }
        }
        shape
    }

    /// Members it counts.
    pub fn members(&self) -> u64 {
        self.kinds.iter().map(|k| u64::from(k.1)).sum::<u64>() + u64::from(self.other)
    }

    /// Whether it is within its bounds.
    fn within_limits(&self) -> bool {
        self.kinds.len() <= crate::limits::SITE_SHAPE_KINDS_MAX
            && self.kinds.iter().map(|(k, _)| k.bytes()).sum::<usize>()
                <= crate::limits::SITE_SHAPE_BYTES_MAX
    }
}

/// A node's self-description, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The mesh.
    pub mesh: MeshId,
    /// The node.
    pub node: NodeId,
    /// Its site (must match its admission certificate).
    pub site: SiteId,
    /// Version; the highest wins.
    pub version: u64,
    /// When the node wrote it (its own clock).
    pub written_at: Millis,
    /// Inventory summary.
    pub inventory: InventorySummary,
    /// Standing per rollout.
    pub rollouts: BTreeMap<RolloutId, Standing>,
    /// Exposure to known vulnerabilities, once the node has an intel bundle.
    pub exposure: Option<crate::intel::report::ExposureSummary>,
    /// The node's latest signed audit-log checkpoint: the members of its site hold it, so the
    /// node cannot later rewrite the entries it covers unnoticed.
    pub audit: Option<crate::audit::Head>,
}

/// What a piece of evidence reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EvidenceKind {
    /// Install and verify succeeded.
    InstallSucceeded,
    /// Install or verify failed.
    InstallFailed,
    /// A health check passed.
    HealthOk,
    /// A health check failed.
    HealthFailed,
    /// The patch was rolled back.
    RolledBack,
}

/// A signed observation by a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The mesh.
    pub mesh: MeshId,
    /// The observing node.
    pub node: NodeId,
    /// Its site.
    pub site: SiteId,
    /// The rollout observed.
    pub rollout: RolloutId,
    /// What happened.
    pub kind: EvidenceKind,
    /// When (node clock).
    pub at: Millis,
    /// Free text for audit (bounded).
    pub detail: String,
}

/// A per-site summary: what a site's records and evidence say, committed to by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSummary {
    /// The mesh.
    pub mesh: MeshId,
    /// The site summarised.
    pub site: SiteId,
    /// The node that computed and signed it (admitted to `site`).
    pub author: NodeId,
    /// Records behind it.
    pub record_count: u32,
    /// Evidence behind it.
    pub evidence_count: u32,
    /// Sum of record versions: grows whenever any record does, so newer summaries rank higher.
    pub version_sum: u64,
    /// Hash over the sorted (node, version, body hash) of the records.
    pub records_root: [u8; 32],
    /// Hash over the sorted evidence ids.
    pub evidence_root: [u8; 32],
    /// Nodes per (rollout, ring, status).
    pub counts: Counts,
    /// Evidence reports per (rollout, kind).
    pub evidence: BTreeMap<(RolloutId, EvidenceKind), u32>,
    /// The members' exposure to known vulnerabilities.
    pub exposure: crate::intel::report::SiteExposure,
    /// What the site is made of (zones, OS, labels).
    pub shape: SiteShape,
    /// When its soaking members began to soak: their `Soaking` counts in `counts`, in time.
    pub soaking: SoakStarts,
}

/// How summaries of one site rank: endorsed above unendorsed, then newer (version sum,
/// evidence count) above older; ties break on the summary's body hash, so every node keeps the
/// same summary. Two endorsements of one summary rank alike: whichever a node holds first, it
/// keeps, and neither spreads twice.
pub type SummaryRank = (bool, u64, u32, [u8; 32]);

impl SiteSummary {
    /// Its rank when held in an object with `body_hash`, endorsed or not.
    pub fn rank(&self, endorsed: bool, body_hash: [u8; 32]) -> SummaryRank {
        (endorsed, self.version_sum, self.evidence_count, body_hash)
    }

    /// Whether its counts are possible for its record and evidence counts: no rollout counts
    /// more members than there are records, no evidence kind more reports than evidence.
    fn counts_consistent(&self) -> bool {
        let mut per_rollout: BTreeMap<RolloutId, u64> = BTreeMap::new();
        for ((rollout, _, _), n) in &self.counts {
            *per_rollout.entry(*rollout).or_default() += u64::from(*n);
        }
        let evidence: u64 = self.evidence.values().map(|n| u64::from(*n)).sum();
        // Soak starts: rising times, no empty entry, and exactly the members counted soaking.
        let soaking_consistent = self.soaking.iter().all(|((rollout, ring), starts)| {
            let rising = starts.windows(2).all(|w| w[0].0 < w[1].0);
            let total: u64 = starts.iter().map(|(_, n)| u64::from(*n)).sum();
            let counted = self.counts.get(&(*rollout, *ring, RolloutStatus::Soaking));
            rising
                && starts.iter().all(|(_, n)| *n > 0)
                && Some(total) == counted.map(|n| u64::from(*n))
        }) && self
            .counts
            .iter()
            .filter(|((_, _, status), n)| *status == RolloutStatus::Soaking && **n > 0)
            .all(|((rollout, ring, _), _)| self.soaking.contains_key(&(*rollout, *ring)));
        soaking_consistent
            && per_rollout.values().all(|n| *n <= u64::from(self.record_count))
            && evidence <= u64::from(self.evidence_count)
            && self.shape.within_limits()
            && self.shape.members() <= u64::from(self.record_count)
    }
}

/// A site member's statement that a summary of its site is exactly what its own records give.
/// It carries the summary as its author signed it, so an endorsed summary travels as one object
/// with two signatures by two different members of the site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    /// The mesh.
    pub mesh: MeshId,
    /// The site (the summary's, and the endorser's admitted site).
    pub site: SiteId,
    /// The endorsing node; never the summary's author.
    pub endorser: NodeId,
    /// The summary, as its author signed it.
    pub summary: Envelope,
    /// The summary author's admission certificate.
    pub admission: Envelope,
}

/// A site's periodic word to the rest of the mesh, signed by the site's reporter: what it held
/// at `at` (its own clock). Other sites learn from it that they still hear this site, and
/// whether it holds catalog changes, failure reports or admin sets they lack (an eclipse that
/// forwards these beacons but withholds a halt shows up as falling behind; see
/// [`crate::node::Reach`]). Counts only grow (a revocation can lower the catalog's, at every
/// node alike), so "it holds more than I do" needs no listing of what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// The mesh.
    pub mesh: MeshId,
    /// The reporting node's site (must match its admission certificate).
    pub site: SiteId,
    /// The reporting node.
    pub node: NodeId,
    /// When it was signed (the reporter's clock); a site's beacons are taken newest first.
    pub at: Millis,
    /// Signed catalog changes held.
    pub catalog_changes: u32,
    /// Failure reports (alarms) held.
    pub alarms: u32,
    /// Admin-set version held.
    pub trust_version: u64,
}

/// Why a site object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Trust checks (signature, domain, admission) failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The body did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The object is signed by a key other than the node it names (or the certificate names
    /// another node).
    #[error("object names node {claimed:?} but is signed/admitted for {signer:?}")]
    WrongSigner {
        /// The node the body names.
        claimed: NodeId,
        /// The signing key or certificate subject.
        signer: NodeId,
    },
    /// The object's site differs from the author's admitted site.
    #[error("object claims site {claimed} but its author is admitted to {admitted}")]
    WrongSite {
        /// The site in the body.
        claimed: SiteId,
        /// The site in the certificate.
        admitted: SiteId,
    },
    /// An older version of a record we hold a newer one of.
    #[error("replay: record version {got} is not above {floor}")]
    Replay {
        /// Version held.
        floor: u64,
        /// Version offered.
        got: u64,
    },
    /// The object belongs to another site; this node keeps only its own site in full.
    #[error("object of site {0} is not kept here")]
    ForeignSite(SiteId),
    /// A store limit was reached.
    #[error("{0} is full")]
    Full(&'static str),
    /// A field is out of range.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// A summary of several records that no other member of its site endorsed: it counts
    /// nowhere outside its site, and only its site's members pass it on.
    #[error("summary of {0} covers several records but carries no endorsement")]
    Unendorsed(SiteId),
    /// A summary does not match the records and evidence it commits to.
    #[error("summary of {site} does not match its records: {reason}")]
    SummaryMismatch {
        /// The site.
        site: SiteId,
        /// What differs.
        reason: &'static str,
    },
}
