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

use crate::crypto::{DecodeError, Domain, Envelope, SignatureCheck};
use crate::ids::{MeshId, Millis, NodeId, ObjectId, RolloutId, SiteId, StateHash};
use crate::limits;
use crate::trust::{Trust, TrustError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

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

/// A signed site object with its author's admission certificate, as it travels and is stored.
/// Shared by reference count: relaying or storing one never copies it.
///
/// The bundle memoises the pure parts of checking it — signature validity and decoding, both
/// functions of its bytes alone — so a bundle relayed through many hands is verified once per
/// process. Everything that depends on a node's trust state or clock (admin membership,
/// revocation, expiry, site) is checked by every node every time.
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    object: Envelope,
    admission: Envelope,
    #[serde(skip)]
    cache: BundleCache,
}

#[derive(Default)]
struct BundleCache {
    pure: std::sync::OnceLock<Result<Checked, SiteError>>,
    id: std::sync::OnceLock<ObjectId>,
    wire_bytes: std::sync::OnceLock<usize>,
    lanes: std::sync::OnceLock<[u64; 4]>,
}

/// What the pure checks of a bundle establish.
#[derive(Debug)]
struct Checked {
    body_hash: [u8; 32],
    cert: crate::trust::AdmissionCert,
    cert_signer: crate::ids::KeyId,
    signer: NodeId,
    body: Body,
}

/// The decoded body of a site object.
#[derive(Debug)]
enum Body {
    Record(NodeRecord),
    Evidence(Evidence),
    Summary(SiteSummary),
    /// An endorsement and the checked summary inside it.
    Endorsed(Box<(Endorsement, Checked)>),
    Beacon(Beacon),
}

impl Clone for Bundle {
    fn clone(&self) -> Self {
        Bundle::new(self.object.clone(), self.admission.clone())
    }
}

impl PartialEq for Bundle {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object && self.admission == other.admission
    }
}

impl Eq for Bundle {}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bundle({:?} by {:?})",
            self.object.domain,
            self.object.signatures.first().map(|s| s.key)
        )
    }
}

impl Bundle {
    /// A bundle of a signed object and its author's admission certificate.
    pub fn new(object: Envelope, admission: Envelope) -> Bundle {
        Bundle { object, admission, cache: BundleCache::default() }
    }
    /// The signed object.
    pub fn object(&self) -> &Envelope {
        &self.object
    }
    /// The author's admission certificate.
    pub fn admission(&self) -> &Envelope {
        &self.admission
    }
    /// Content id of the signed object.
    pub fn id(&self) -> ObjectId {
        *self.cache.id.get_or_init(|| self.object.id())
    }
    /// Exact size of its encoding on the wire.
    pub fn wire_bytes(&self) -> usize {
        *self.cache.wire_bytes.get_or_init(|| {
            postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
                .unwrap_or(0)
        })
    }

    fn pure(&self, check: &dyn SignatureCheck) -> Result<&Checked, SiteError> {
        self.cache.pure.get_or_init(|| self.check_pure(check)).as_ref().map_err(Clone::clone)
    }

    fn check_pure(&self, check: &dyn SignatureCheck) -> Result<Checked, SiteError> {
        let domain = self.object.domain;
        if !matches!(
            domain,
            Domain::NodeRecord
                | Domain::Evidence
                | Domain::SiteSummary
                | Domain::SummaryEndorsement
                | Domain::Beacon
        ) {
            return Err(
                TrustError::WrongDomain { expected: Domain::NodeRecord, got: domain }.into()
            );
        }
        if self.object.signatures.len() != 1 {
            return Err(SiteError::Invalid("site objects carry exactly one signature"));
        }
        self.object.verify_all(check).map_err(TrustError::from)?;
        let signer = NodeId(self.object.signatures[0].key.0);
        let (cert, cert_signer) = crate::trust::verify_admission_signature(&self.admission, check)?;
        let body = match domain {
            Domain::NodeRecord => Body::Record(self.object.open("node record")?),
            Domain::Evidence => Body::Evidence(self.object.open("evidence")?),
            Domain::SiteSummary => Body::Summary(self.object.open("site summary")?),
            Domain::Beacon => Body::Beacon(self.object.open("beacon")?),
            _ => {
                let e: Endorsement = self.object.open("summary endorsement")?;
                if e.summary.domain != Domain::SiteSummary {
                    return Err(TrustError::WrongDomain {
                        expected: Domain::SiteSummary,
                        got: e.summary.domain,
                    }
                    .into());
                }
                let inner =
                    Bundle::new(e.summary.clone(), e.admission.clone()).check_pure(check)?;
                Body::Endorsed(Box::new((e, inner)))
            }
        };
        Ok(Checked { body_hash: self.object.body_hash(), cert, cert_signer, signer, body })
    }

    /// Runs the pure checks (signatures, decoding) now and caches the result; any thread may
    /// do this ahead of time. The trust-dependent checks still run at each node.
    pub fn precheck(&self, check: &dyn SignatureCheck) -> Result<(), SiteError> {
        self.pure(check).map(|_| ())
    }

    /// The decoded record, once verified by [`verify_record`].
    pub fn record(&self) -> Option<&NodeRecord> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Record(ref r) => Some(r),
            _ => None,
        }
    }

    /// The decoded summary (the endorsed one, for an endorsement), once verified by
    /// [`verify_summary`].
    pub fn summary(&self) -> Option<&SiteSummary> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Summary(ref s) => Some(s),
            Body::Endorsed(ref e) => match e.1.body {
                Body::Summary(ref s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// The author's admission certificate, once the bundle is verified.
    pub fn admission_cert(&self) -> Option<&crate::trust::AdmissionCert> {
        Some(&self.cache.pure.get()?.as_ref().ok()?.cert)
    }

    /// The endorsing node, for a verified endorsement.
    pub fn endorser(&self) -> Option<NodeId> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Endorsed(ref e) => Some(e.0.endorser),
            _ => None,
        }
    }

    /// BLAKE3 of the summary's signed body: the bundle's own for a summary, the endorsed
    /// summary's for an endorsement (so both name the same summary alike).
    pub fn summary_body_hash(&self) -> Option<[u8; 32]> {
        match self.cache.pure.get()?.as_ref().ok()? {
            Checked { body: Body::Endorsed(ref e), .. } => Some(e.1.body_hash),
            Checked { body: Body::Summary(_), body_hash, .. } => Some(*body_hash),
            _ => None,
        }
    }

    /// BLAKE3 of the signed body, once verified.
    pub fn body_hash(&self) -> Option<[u8; 32]> {
        Some(self.cache.pure.get()?.as_ref().ok()?.body_hash)
    }

    /// Checks authorship against a node's trust state and clock: the object is signed by the
    /// node it names, that node's certificate is from a current admin of our mesh and has not
    /// expired, and the object's site is the certificate's site.
    fn authorize(
        &self,
        checked: &Checked,
        named: NodeId,
        site: &SiteId,
        trust: &Trust,
        now: Millis,
    ) -> Result<(), SiteError> {
        if checked.signer != named {
            return Err(SiteError::WrongSigner { claimed: named, signer: checked.signer });
        }
        trust.authorize_admission(&checked.cert, &checked.cert_signer, now)?;
        if checked.cert.node != named {
            return Err(SiteError::WrongSigner { claimed: named, signer: checked.cert.node });
        }
        if checked.cert.site != *site {
            return Err(SiteError::WrongSite {
                claimed: site.clone(),
                admitted: checked.cert.site.clone(),
            });
        }
        Ok(())
    }
}

/// A verified record as held: its version and the bundle (decoded record inside).
#[derive(Clone, Debug)]
pub struct HeldRecord {
    /// The record's version.
    pub version: u64,
    /// The bundle it came in (relayed as is).
    pub bundle: Arc<Bundle>,
}

impl HeldRecord {
    /// The record.
    pub fn record(&self) -> &NodeRecord {
        self.bundle.record().expect("held records are verified")
    }
    /// BLAKE3 of the signed body.
    pub fn body_hash(&self) -> [u8; 32] {
        self.bundle.body_hash().expect("held records are verified")
    }
    /// The first 8 bytes of the body hash, as site keys carry it.
    pub fn tag(&self) -> [u8; 8] {
        let h = self.body_hash();
        [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]
    }
}

/// A verified summary as held.
#[derive(Clone, Debug)]
pub struct HeldSummary {
    /// The bundle it came in (decoded summary inside). One pointer: a node holds one of these
    /// per site of the fleet.
    pub bundle: Arc<Bundle>,
}

impl HeldSummary {
    /// Its rank among summaries of the same site.
    pub fn rank(&self) -> SummaryRank {
        let hash = self.bundle.summary_body_hash().expect("held summaries are verified");
        self.summary().rank(self.endorsed(), hash)
    }
    /// Whether another member of the site endorsed it.
    pub fn endorsed(&self) -> bool {
        self.bundle.endorser().is_some()
    }
    /// Whether other sites may count it: endorsed, or about at most one record.
    pub fn countable(&self) -> bool {
        self.endorsed() || self.summary().record_count <= 1
    }
    /// The summary.
    pub fn summary(&self) -> &SiteSummary {
        self.bundle.summary().expect("held summaries are verified")
    }
}

/// Verifies a record bundle completely. Stores nothing.
pub fn verify_record(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<HeldRecord, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Record(record) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::NodeRecord,
            got: bundle.object.domain,
        }
        .into());
    };
    if record.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: record.mesh }.into());
    }
    if record.exposure.as_ref().is_some_and(|e| !e.within_limits())
        || record.rollouts.len() > limits::ROLLOUT_STATUS_PER_RECORD_MAX
        || record.inventory.os.len() > limits::TEXT_BYTES_MAX
        || record.inventory.kernel.len() > limits::TEXT_BYTES_MAX
    {
        return Err(SiteError::Invalid("record field too large"));
    }
    // A time zone is an IANA name (what a rehearsal and `patchmesh fleet` show of it).
    let zone = &record.inventory.zone;
    if zone.len() > limits::LABEL_BYTES_MAX
        || !zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
    {
        return Err(SiteError::Invalid("record zone is not a time zone name"));
    }
    bundle.authorize(checked, record.node, &record.site, trust, now)?;
    Ok(HeldRecord { version: record.version, bundle: bundle.clone() })
}

/// Verifies an evidence bundle completely. Stores nothing.
pub fn verify_evidence(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<Evidence, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Evidence(ev) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::Evidence,
            got: bundle.object.domain,
        }
        .into());
    };
    if ev.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: ev.mesh }.into());
    }
    if ev.detail.len() > limits::TEXT_BYTES_MAX {
        return Err(SiteError::Invalid("evidence detail too long"));
    }
    bundle.authorize(checked, ev.node, &ev.site, trust, now)?;
    Ok(ev.clone())
}

/// Verifies an evidence bundle like [`verify_evidence`] and also returns the labels of its
/// author's admission certificate (which rollout rings are computed from).
pub fn verify_evidence_labels(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<(Evidence, BTreeMap<String, String>), SiteError> {
    let ev = verify_evidence(bundle, trust, now, check)?;
    let checked = bundle.pure(check)?;
    Ok((ev, checked.cert.labels.clone()))
}

/// Verifies a beacon bundle: signed by the node it names, admitted by a current admin to the
/// site it names, in this mesh. Stores nothing; whether it is newer than what the node holds
/// of that site is [`crate::node::Reach`]'s to judge.
pub fn verify_beacon(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<Beacon, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Beacon(beacon) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::Beacon,
            got: bundle.object.domain,
        }
        .into());
    };
    if beacon.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: beacon.mesh }.into());
    }
    bundle.authorize(checked, beacon.node, &beacon.site, trust, now)?;
    Ok(beacon.clone())
}

/// Verifies a summary bundle. Stores nothing.
pub fn verify_summary(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<HeldSummary, SiteError> {
    let checked = bundle.pure(check)?;
    let (inner, endorsement) = match &checked.body {
        Body::Summary(_) => (checked, None),
        Body::Endorsed(e) => (&e.1, Some((&e.0, checked))),
        _ => {
            return Err(TrustError::WrongDomain {
                expected: Domain::SiteSummary,
                got: bundle.object.domain,
            }
            .into())
        }
    };
    let Body::Summary(summary) = &inner.body else {
        return Err(SiteError::Invalid("an endorsement must carry a summary"));
    };
    if summary.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: summary.mesh }.into());
    }
    let soak_entries: usize = summary.soaking.values().map(Vec::len).sum();
    if summary.counts.len() + summary.evidence.len() + soak_entries > limits::SUMMARY_COUNTERS_MAX
        || !summary.exposure.within_limits()
    {
        return Err(SiteError::Invalid("too many summary counters"));
    }
    if !summary.counts_consistent() {
        return Err(SiteError::Invalid("summary counts more members than records"));
    }
    bundle.authorize(inner, summary.author, &summary.site, trust, now)?;
    if let Some((e, outer)) = endorsement {
        if e.mesh != summary.mesh || e.site != summary.site {
            return Err(SiteError::Invalid("endorsement names another site than its summary"));
        }
        if e.endorser == summary.author {
            return Err(SiteError::Invalid("a summary endorsed by its own author"));
        }
        bundle.authorize(outer, e.endorser, &summary.site, trust, now)?;
    }
    Ok(HeldSummary { bundle: bundle.clone() })
}

/// The site and rank of a summary bundle from its pure checks alone (signature, decoding), so a
/// stale copy can be dropped before any further work.
pub fn summary_rank<'a>(
    bundle: &'a Bundle,
    check: &dyn SignatureCheck,
) -> Result<(&'a SiteId, SummaryRank), SiteError> {
    let checked = bundle.pure(check)?;
    match &checked.body {
        Body::Summary(s) => Ok((&s.site, s.rank(false, checked.body_hash))),
        Body::Endorsed(e) => match &e.1.body {
            Body::Summary(s) => Ok((&s.site, s.rank(true, e.1.body_hash))),
            _ => Err(SiteError::Invalid("an endorsement must carry a summary")),
        },
        _ => Err(TrustError::WrongDomain {
            expected: Domain::SiteSummary,
            got: bundle.object.domain,
        }
        .into()),
    }
}

/// The score by which a site elects its summary reporter: the member with the lowest score.
pub fn reporter_score(site: &SiteId, node: &NodeId) -> [u8; 32] {
    crate::crypto::hash_parts(&[site.0.as_bytes(), &node.0])
}

/// From items sorted by (key, precedence), keeps the last — the winning — item of each key.
fn keep_last_per_key<T, K: PartialEq>(sorted: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(sorted.len());
    for item in sorted {
        match out.last_mut() {
            Some(prev) if key(prev) == key(&item) => *prev = item,
            _ => out.push(item),
        }
    }
    out
}

/// Outcome of merging one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// It changed our state: relay it.
    New,
    /// We already held it (or something that dominates it).
    Duplicate,
}

/// One site's records and evidence, held in full by that site's nodes.
#[derive(Clone, Debug)]
pub struct SiteState {
    site: SiteId,
    records: BTreeMap<NodeId, HeldRecord>,
    evidence: BTreeMap<ObjectId, (Evidence, Arc<Bundle>)>,
    digest: Option<StateHash>,
    /// Counts changes to `records` (see [`SiteState::records_changed`]).
    records_changes: u64,
    /// Members caught signing audit checkpoints that contradict each other: the two signed
    /// records are the evidence (bounded by [`limits::EQUIVOCATIONS_MAX`]; the oldest kept).
    equivocations: Vec<Equivocation>,
}

/// Two records of one node whose audit checkpoints cannot both be true.
#[derive(Clone, Debug)]
pub struct Equivocation {
    /// The node.
    pub node: NodeId,
    /// The record held before.
    pub earlier: Arc<Bundle>,
    /// The record that contradicts it.
    pub later: Arc<Bundle>,
    /// What contradicts what.
    pub detail: String,
}

/// A key in the site digest: a record (by node, with its version and the first bytes of its
/// body hash) or a piece of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SiteKey {
    /// A node's record at a version, and the first 8 bytes of its body hash: two records of
    /// one version with different bodies (a node that signed a version twice, after losing its
    /// floor or on purpose) differ here, so repair carries each to the other side and every
    /// replica settles on the same one (the higher body hash).
    Record(NodeId, u64, [u8; 8]),
    /// A piece of evidence.
    Evidence(ObjectId),
}

impl SiteState {
    /// An empty state for `site`.
    pub fn new(site: SiteId) -> SiteState {
        SiteState {
            site,
            records: BTreeMap::new(),
            evidence: BTreeMap::new(),
            digest: None,
            records_changes: 0,
            equivocations: Vec::new(),
        }
    }

    /// Changes whenever the records held do: what a caller keeps something worked out from
    /// them by (see [`crate::rollout::verdict::own_site`]).
    pub fn records_changed(&self) -> u64 {
        self.records_changes
    }

    /// The site.
    pub fn site(&self) -> &SiteId {
        &self.site
    }
    /// Records held.
    pub fn records(&self) -> &BTreeMap<NodeId, HeldRecord> {
        &self.records
    }
    /// Evidence held.
    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.values().map(|(e, _)| e)
    }
    /// Evidence held, with its object id.
    pub fn evidence_bundles(&self) -> impl Iterator<Item = (ObjectId, &Evidence)> {
        self.evidence.iter().map(|(id, (e, _))| (*id, e))
    }
    /// Audit equivocations seen, oldest first.
    pub fn equivocations(&self) -> &[Equivocation] {
        &self.equivocations
    }
    /// Number of evidence reports held.
    pub fn evidence_count(&self) -> usize {
        self.evidence.len()
    }

    /// Merges a verified record: the highest version wins.
    pub fn merge_record(&mut self, held: HeldRecord) -> Result<Merge, SiteError> {
        let record = held.record();
        if record.site != self.site {
            return Err(SiteError::ForeignSite(record.site.clone()));
        }
        let node = record.node;
        if let Some(have) = self.records.get(&node) {
            if have.version > held.version {
                return Err(SiteError::Replay { floor: have.version, got: held.version });
            }
            // Equal versions with different bodies mean the node equivocated (on purpose, or
            // after losing its floor): both signed records are kept as evidence, and every
            // replica keeps the one with the higher body hash, so all pick the same one.
            if have.version == held.version {
                if have.body_hash() == held.body_hash() {
                    return Ok(Merge::Duplicate);
                }
                let detail = format!("two different records signed at version {}", held.version);
                let keep_held = held.body_hash() > have.body_hash();
                let (earlier, later) = (have.bundle.clone(), held.bundle.clone());
                self.note_equivocation(Equivocation { node, earlier, later, detail });
                if !keep_held {
                    return Ok(Merge::Duplicate);
                }
            } else if let (Some(a), Some(b)) = (have.record().audit, record.audit) {
                if let Some(detail) = a.contradicts(&b) {
                    let (earlier, later) = (have.bundle.clone(), held.bundle.clone());
                    self.note_equivocation(Equivocation { node, earlier, later, detail });
                }
            }
        } else if self.records.len() >= limits::RECORDS_MAX {
            return Err(SiteError::Full("site records"));
        }
        self.records.insert(node, held);
        self.digest = None;
        self.records_changes += 1;
        Ok(Merge::New)
    }

    /// Keeps the evidence of an equivocation once (bounded by [`limits::EQUIVOCATIONS_MAX`]).
    fn note_equivocation(&mut self, e: Equivocation) {
        let seen = self.equivocations.iter().any(|x| x.node == e.node && x.detail == e.detail);
        if !seen && self.equivocations.len() < limits::EQUIVOCATIONS_MAX {
            self.equivocations.push(e);
        }
    }

    /// Drops a node's record (a member this node no longer admits: its enrolment is over its
    /// voucher's limit or the voucher was revoked). Returns whether one was held.
    pub fn remove_record(&mut self, node: &NodeId) -> bool {
        let had = self.records.remove(node).is_some();
        if had {
            self.digest = None;
            self.records_changes += 1;
        }
        had
    }

    /// Merges many verified records. Into an empty state this builds the map in one pass
    /// (restoring a store of thousands of records at start); otherwise it merges one by one.
    /// Returns how many were refused.
    pub fn merge_records(&mut self, mut held: Vec<HeldRecord>) -> usize {
        if !self.records.is_empty() {
            return held.into_iter().filter(|h| self.merge_record(h.clone()).is_err()).count();
        }
        let before = held.len();
        held.retain(|h| h.record().site == self.site);
        // Highest version (then highest body hash) of each node wins, as in merge_record.
        held.sort_by(|a, b| {
            (a.record().node, a.version, a.body_hash()).cmp(&(
                b.record().node,
                b.version,
                b.body_hash(),
            ))
        });
        let mut last = keep_last_per_key(held, |h| h.record().node);
        last.truncate(limits::RECORDS_MAX);
        let kept = last.len();
        self.records = last.into_iter().map(|h| (h.record().node, h)).collect();
        self.digest = None;
        self.records_changes += 1;
        before - kept
    }

    /// Merges verified evidence (grow-only).
    pub fn merge_evidence(
        &mut self,
        ev: Evidence,
        bundle: Arc<Bundle>,
    ) -> Result<Merge, SiteError> {
        if ev.site != self.site {
            return Err(SiteError::ForeignSite(ev.site));
        }
        let id = bundle.id();
        if self.evidence.contains_key(&id) {
            return Ok(Merge::Duplicate);
        }
        if self.evidence.len() >= limits::EVIDENCE_MAX {
            return Err(SiteError::Full("site evidence"));
        }
        self.evidence.insert(id, (ev, bundle));
        self.digest = None;
        Ok(Merge::New)
    }

    /// The version of a node's record held, if any.
    pub fn record_version(&self, node: &NodeId) -> Option<u64> {
        self.records.get(node).map(|r| r.version)
    }

    /// Digest of the whole site state; equal on two replicas iff they hold the same objects.
    pub fn digest(&mut self) -> StateHash {
        if let Some(d) = self.digest {
            return d;
        }
        let (records_root, evidence_root) = self.roots();
        let d = StateHash(crate::crypto::hash_parts(&[
            b"site",
            self.site.0.as_bytes(),
            &records_root,
            &evidence_root,
        ]));
        self.digest = Some(d);
        d
    }

    fn roots(&self) -> ([u8; 32], [u8; 32]) {
        let mut h = blake3::Hasher::new();
        for (node, held) in &self.records {
            h.update(&node.0);
            h.update(&held.version.to_le_bytes());
            h.update(&held.body_hash());
        }
        let records_root = *h.finalize().as_bytes();
        let mut h = blake3::Hasher::new();
        for id in self.evidence.keys() {
            h.update(&id.0);
        }
        (records_root, *h.finalize().as_bytes())
    }

    /// Every key held, in order (for digest exchange).
    pub fn keys(&self) -> Vec<SiteKey> {
        let mut out: Vec<SiteKey> =
            self.records.iter().map(|(n, r)| SiteKey::Record(*n, r.version, r.tag())).collect();
        out.extend(self.evidence.keys().map(|id| SiteKey::Evidence(*id)));
        out
    }

    /// Bundles we hold that a peer holding `theirs` (sorted, deduplicated) lacks or holds an
    /// older version of, at most `max`.
    pub fn missing_from(&self, theirs: &[SiteKey], max: usize) -> Vec<Arc<Bundle>> {
        let their_version = |node: &NodeId| -> Option<(u64, [u8; 8])> {
            // Keys sort by (node, version, tag): the last entry for a node is its highest.
            let end = theirs.partition_point(|k| match k {
                SiteKey::Record(n, _, _) => n <= node,
                SiteKey::Evidence(_) => false,
            });
            match end.checked_sub(1).map(|i| &theirs[i]) {
                Some(SiteKey::Record(n, v, tag)) if n == node => Some((*v, *tag)),
                _ => None,
            }
        };
        let records = self
            .records
            .iter()
            .filter(|(n, r)| {
                their_version(n)
                    .is_none_or(|(v, tag)| v < r.version || v == r.version && tag != r.tag())
            })
            .map(|(_, r)| r.bundle.clone());
        let evidence = self
            .evidence
            .iter()
            .filter(|(id, _)| theirs.binary_search(&SiteKey::Evidence(**id)).is_err())
            .map(|(_, (_, b))| b.clone());
        records.chain(evidence).take(max).collect()
    }

    /// Computes this site's summary as `author` would sign it.
    pub fn summarise(&self, mesh: MeshId, author: NodeId) -> SiteSummary {
        let (records_root, evidence_root) = self.roots();
        let mut counts = Counts::new();
        for held in self.records.values() {
            for (rollout, standing) in &held.record().rollouts {
                *counts.entry((*rollout, standing.ring, standing.status)).or_default() += 1;
            }
        }
        let mut evidence: BTreeMap<(RolloutId, EvidenceKind), u32> = BTreeMap::new();
        for (ev, _) in self.evidence.values() {
            *evidence.entry((ev.rollout, ev.kind)).or_default() += 1;
        }
        SiteSummary {
            mesh,
            site: self.site.clone(),
            author,
            record_count: self.records.len() as u32,
            evidence_count: self.evidence.len() as u32,
            version_sum: self.records.values().map(|r| r.version).sum(),
            records_root,
            evidence_root,
            counts,
            evidence,
            exposure: crate::intel::report::site_exposure(
                self.records.values().filter_map(|r| r.record().exposure.as_ref()),
            ),
            shape: self.shape(),
            soaking: soak_starts(self.records.values().map(|held| held.record())),
        }
    }

    /// The shape of the members whose records are held (labels from their certificates).
    pub fn shape(&self) -> SiteShape {
        let mut shape = SiteShape::of(self.records.values().map(|held| {
            let inv = &held.record().inventory;
            MemberKind {
                zone: inv.zone.clone(),
                os: inv.os.clone(),
                quiet: inv.quiet,
                labels: held.bundle.admission_cert().map(|c| c.labels.clone()).unwrap_or_default(),
            }
        }));
        shape.min_free_disk_bytes =
            self.records.values().filter_map(|h| h.record().inventory.free_disk_bytes).min();
        shape
    }

    /// Checks a summary of this site against the records and evidence held: the audit that
    /// catches a lying summary once the site's signed objects are fetched.
    pub fn check_summary(&self, summary: &SiteSummary) -> Result<(), SiteError> {
        let mine = self.summarise(summary.mesh, summary.author);
        let mismatch = |reason| Err(SiteError::SummaryMismatch { site: self.site.clone(), reason });
        if summary.site != self.site {
            return mismatch("site");
        }
        if mine.records_root != summary.records_root || mine.record_count != summary.record_count {
            return mismatch("records root");
        }
        if mine.evidence_root != summary.evidence_root
            || mine.evidence_count != summary.evidence_count
        {
            return mismatch("evidence root");
        }
        if mine.counts != summary.counts || mine.evidence != summary.evidence {
            return mismatch("counts");
        }
        if mine.version_sum != summary.version_sum {
            return mismatch("version sum");
        }
        if mine.exposure != summary.exposure {
            return mismatch("exposure");
        }
        if mine.shape != summary.shape {
            return mismatch("shape");
        }
        if mine.soaking != summary.soaking {
            return mismatch("soak starts");
        }
        Ok(())
    }
}

/// Per (rollout, ring): members with a standing, members finished (succeeded, failed or rolled
/// back), members succeeded.
fn ring_tallies(counts: &Counts) -> BTreeMap<(RolloutId, u8), [u64; 3]> {
    use RolloutStatus as S;
    let mut out: BTreeMap<(RolloutId, u8), [u64; 3]> = BTreeMap::new();
    for ((rollout, ring, status), n) in counts {
        let t = out.entry((*rollout, *ring)).or_default();
        let n = u64::from(*n);
        if *status != S::NotTargeted {
            t[0] += n;
        }
        if matches!(status, S::Succeeded | S::Failed | S::RolledBack) {
            t[1] += n;
        }
        if *status == S::Succeeded {
            t[2] += n;
        }
    }
    out
}

impl SiteState {
    /// Whether a member holding these records may endorse `summary` for other sites: it claims
    /// nothing these records do not show. Per (rollout, ring), no more members finished and
    /// none more succeeded (successes that never happened would pass a gate elsewhere), and the
    /// same number of members (one hidden from its ring would let the gate pass before it
    /// reports; made-up pending ones would dilute its failure fraction);
    /// no more evidence reports of any kind; a version sum and evidence count (its rank) no
    /// higher, so it can never outrank the summaries after it; the same exposure.
    ///
    /// The roots are not compared: members' records keep changing (a busy site re-signs every
    /// few hundred milliseconds), so an exact match would rarely come. A summary a little
    /// behind these records is endorsed (its gates are only the more cautious); one ahead of
    /// them waits until the records here catch up, which they do, since every count above only
    /// grows as a rollout goes on (a ring's members are fixed once they have evaluated it).
    pub fn supports(&self, summary: &SiteSummary) -> Result<(), SiteError> {
        let mine = self.summarise(summary.mesh, summary.author);
        let mismatch = |reason| Err(SiteError::SummaryMismatch { site: self.site.clone(), reason });
        if summary.site != self.site {
            return mismatch("site");
        }
        if summary.version_sum > mine.version_sum || summary.evidence_count > mine.evidence_count {
            return mismatch("ahead of the records held");
        }
        let (theirs, ours) = (ring_tallies(&summary.counts), ring_tallies(&mine.counts));
        for key in theirs.keys().chain(ours.keys()) {
            let [t_members, t_finished, t_ok] = theirs.get(key).copied().unwrap_or_default();
            let [o_members, o_finished, o_ok] = ours.get(key).copied().unwrap_or_default();
            if t_finished > o_finished || t_ok > o_ok {
                return mismatch("more members finished than the records show");
            }
            if t_members != o_members {
                return mismatch("other members in a ring than the records show");
            }
        }
        if summary.evidence.iter().any(|(k, n)| mine.evidence.get(k).is_none_or(|m| n > m)) {
            return mismatch("evidence");
        }
        if mine.exposure != summary.exposure {
            return mismatch("exposure");
        }
        if mine.shape != summary.shape {
            return mismatch("shape");
        }
        if mine.soaking != summary.soaking {
            return mismatch("soak starts");
        }
        Ok(())
    }
}

/// Summaries of every site, one per site, the highest-ranked kept.
#[derive(Clone, Debug, Default)]
pub struct Summaries {
    by_site: BTreeMap<SiteId, HeldSummary>,
    /// Lane-wise wrapping sum of the entry hashes of every summary held: updated in O(1) as
    /// summaries are replaced, so the digest never walks the table (which at 500 sites means
    /// touching 500 objects on every anti-entropy round). The digest only decides whether two
    /// peers run a repair exchange; what a summary commits to is in its signed roots.
    sum: [u64; 4],
}

fn summary_entry_hash(_site: &SiteId, held: &HeldSummary) -> [u64; 4] {
    // The summary names the site, so its body hash alone identifies the entry (the same for
    // every endorsement of it).
    *held.bundle.cache.lanes.get_or_init(|| {
        let h = held.bundle.summary_body_hash().expect("held summaries are verified");
        let lane = |i: usize| u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        [lane(0), lane(1), lane(2), lane(3)]
    })
}

fn lanes_add(sum: &mut [u64; 4], x: [u64; 4], sign: bool) {
    for (s, v) in sum.iter_mut().zip(x) {
        *s = if sign { s.wrapping_add(v) } else { s.wrapping_sub(v) };
    }
}

impl Summaries {
    /// Merges a verified summary.
    pub fn merge(&mut self, held: HeldSummary) -> Result<Merge, SiteError> {
        let site = held.summary().site.clone();
        match self.by_site.get(&site) {
            Some(have) if have.rank() >= held.rank() => return Ok(Merge::Duplicate),
            None if self.by_site.len() >= limits::SITES_MAX => {
                return Err(SiteError::Full("site summaries"))
            }
            _ => {}
        }
        lanes_add(&mut self.sum, summary_entry_hash(&site, &held), true);
        if let Some(old) = self.by_site.insert(site.clone(), held) {
            lanes_add(&mut self.sum, summary_entry_hash(&site, &old), false);
        }
        Ok(Merge::New)
    }

    /// Merges many verified summaries; into an empty table in one pass. Returns how many did
    /// not end up held (outranked duplicates or over the limit).
    pub fn merge_all(&mut self, mut held: Vec<HeldSummary>) -> usize {
        if !self.by_site.is_empty() {
            return held.into_iter().filter(|h| self.merge(h.clone()) != Ok(Merge::New)).count();
        }
        let before = held.len();
        held.sort_by(|a, b| (&a.summary().site, a.rank()).cmp(&(&b.summary().site, b.rank())));
        let mut last = keep_last_per_key(held, |h| h.summary().site.clone());
        last.truncate(limits::SITES_MAX);
        let kept = last.len();
        for h in &last {
            lanes_add(&mut self.sum, summary_entry_hash(&h.summary().site, h), true);
        }
        self.by_site = last.into_iter().map(|h| (h.summary().site.clone(), h)).collect();
        before - kept
    }

    /// The rank of the summary held for `site`, if any.
    pub fn rank_of(&self, site: &SiteId) -> Option<SummaryRank> {
        self.by_site.get(site).map(HeldSummary::rank)
    }

    /// The summaries held.
    pub fn all(&self) -> &BTreeMap<SiteId, HeldSummary> {
        &self.by_site
    }

    /// (site, rank) of every summary held, for digest exchange.
    pub fn ranks(&self) -> Vec<(SiteId, SummaryRank)> {
        self.by_site.iter().map(|(s, h)| (s.clone(), h.rank())).collect()
    }

    /// Summaries that outrank what a peer holding `theirs` has, at most `max`.
    pub fn newer_than(&self, theirs: &[(SiteId, SummaryRank)], max: usize) -> Vec<Arc<Bundle>> {
        let theirs: BTreeMap<&SiteId, &SummaryRank> = theirs.iter().map(|(s, r)| (s, r)).collect();
        self.by_site
            .iter()
            .filter(|(s, h)| theirs.get(s).is_none_or(|r| **r < h.rank()))
            .map(|(_, h)| h.bundle.clone())
            .take(max)
            .collect()
    }

    /// Changes whenever the summaries held do (what any of them says, or which sites have
    /// one): what a caller keeps something worked out from them by (see
    /// [`crate::rollout::verdict::other_sites`]).
    pub fn version(&self) -> ([u64; 4], usize) {
        (self.sum, self.by_site.len())
    }

    /// Digest over all held summaries.
    pub fn digest(&mut self) -> StateHash {
        let mut h = blake3::Hasher::new();
        h.update(b"summaries");
        h.update(&(self.by_site.len() as u64).to_le_bytes());
        for lane in self.sum {
            h.update(&lane.to_le_bytes());
        }
        StateHash(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(soaking: u32, starts: Vec<(Millis, u32)>) -> SiteSummary {
        let r = RolloutId([1; 32]);
        let mut counts = Counts::new();
        counts.insert((r, 0, RolloutStatus::Succeeded), 2);
        if soaking > 0 {
            counts.insert((r, 0, RolloutStatus::Soaking), soaking);
        }
        let soaking = if starts.is_empty() { SoakStarts::new() } else { [((r, 0), starts)].into() };
        SiteSummary {
            mesh: MeshId([0; 32]),
            site: SiteId("a".into()),
            author: NodeId([2; 32]),
            record_count: 10,
            evidence_count: 0,
            version_sum: 1,
            records_root: [0; 32],
            evidence_root: [0; 32],
            counts,
            evidence: BTreeMap::new(),
            exposure: Default::default(),
            shape: SiteShape::default(),
            soaking,
        }
    }

    #[test]
    fn soak_starts_must_account_for_exactly_the_members_counted_soaking() {
        let (t1, t2) = (Millis(1_000), Millis(1_250));
        assert!(summary(3, vec![(t1, 1), (t2, 2)]).counts_consistent());
        assert!(summary(0, vec![]).counts_consistent());
        // Soaking members with no start, starts with no soaking member, totals that differ.
        assert!(!summary(3, vec![]).counts_consistent());
        assert!(!summary(0, vec![(t1, 1)]).counts_consistent());
        assert!(!summary(3, vec![(t1, 1), (t2, 1)]).counts_consistent());
        // Times not rising, or an empty entry.
        assert!(!summary(3, vec![(t2, 1), (t1, 2)]).counts_consistent());
        assert!(!summary(3, vec![(t1, 1), (t1, 2)]).counts_consistent());
        assert!(!summary(3, vec![(t1, 3), (t2, 0)]).counts_consistent());
    }

    #[test]
    fn a_soak_start_rounds_up_never_down() {
        let step = limits::SOAK_START_STEP_MS;
        assert_eq!(soak_start(Millis(0)), Millis(0));
        assert_eq!(soak_start(Millis(1)), Millis(step));
        assert_eq!(soak_start(Millis(step)), Millis(step));
        assert_eq!(soak_start(Millis(step + 1)), Millis(2 * step));
        assert_eq!(soak_start(Millis(u64::MAX)), Millis(u64::MAX));
    }
}
