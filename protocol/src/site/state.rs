//! The replicas: one site's records and evidence ([`SiteState`], held by its members) and every
//! other site's summary ([`Summaries`]).

use super::*;

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
    /// Shared on clone and copied on the first write after one (`Arc::make_mut`): replicas
    /// restored from one store can hold one table (see [`crate::node::RestoreMemo`]).
    records: Arc<BTreeMap<NodeId, HeldRecord>>,
    evidence: BTreeMap<ObjectId, (Evidence, Arc<Bundle>)>,
    /// Lane-wise wrapping sums of the body hashes of the records held and of the evidence ids
    /// held, updated in O(1) on every change: the digest never walks the records (a site of
    /// 200 members otherwise hashes all 200 again after each record that changes, on every
    /// member). As for [`Summaries`], the digest only decides whether two peers run a repair
    /// exchange; what a summary commits to is in its signed roots ([`SiteState::summarise`]).
    /// A record's body names its node and version, so its body hash alone identifies it.
    records_sum: [u64; 4],
    evidence_sum: [u64; 4],
    digest: Option<StateHash>,
    /// Counts changes to `records` (see [`SiteState::records_changed`]).
    records_changes: u64,
    /// Members caught signing audit checkpoints that contradict each other: the two signed
    /// records are the evidence (bounded by [`limits::EQUIVOCATIONS_MAX`]; the oldest kept).
    equivocations: Vec<Equivocation>,
}

/// A site's records as one replica holds them, shared with another ([`SiteState::records_table`]).
#[derive(Clone, Debug)]
pub(crate) struct RecordsTable {
    records: Arc<BTreeMap<NodeId, HeldRecord>>,
    sum: [u64; 4],
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
            records: Arc::default(),
            evidence: BTreeMap::new(),
            records_sum: [0; 4],
            evidence_sum: [0; 4],
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
        lanes_add(&mut self.records_sum, lanes(&held.body_hash()), true);
        if let Some(old) = Arc::make_mut(&mut self.records).insert(node, held) {
            lanes_add(&mut self.records_sum, lanes(&old.body_hash()), false);
        }
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
        let old = if self.records.contains_key(node) {
            Arc::make_mut(&mut self.records).remove(node)
        } else {
            None
        };
        let had = old.is_some();
        if let Some(old) = old {
            lanes_add(&mut self.records_sum, lanes(&old.body_hash()), false);
            self.digest = None;
            self.records_changes += 1;
        }
        had
    }

    /// The records table with its digest sum, to share with replicas restored from the same
    /// store ([`crate::node::RestoreMemo`]).
    pub(crate) fn records_table(&self) -> RecordsTable {
        RecordsTable { records: self.records.clone(), sum: self.records_sum }
    }

    /// Takes a records table another replica restored from the same store (shared until the
    /// first write). Only into a state that holds no records yet; otherwise does nothing.
    pub(crate) fn adopt_records(&mut self, table: &RecordsTable) {
        if self.records.is_empty() {
            self.records = table.records.clone();
            self.records_sum = table.sum;
            self.digest = None;
            self.records_changes += 1;
        }
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
        self.records_sum = [0; 4];
        for h in &last {
            lanes_add(&mut self.records_sum, lanes(&h.body_hash()), true);
        }
        self.records = Arc::new(last.into_iter().map(|h| (h.record().node, h)).collect());
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
        lanes_add(&mut self.evidence_sum, lanes(&id.0), true);
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
        let bytes = |sum: &[u64; 4]| -> [u8; 32] {
            let mut out = [0u8; 32];
            for (chunk, lane) in out.chunks_exact_mut(8).zip(sum) {
                chunk.copy_from_slice(&lane.to_le_bytes());
            }
            out
        };
        let d = StateHash(crate::crypto::hash_parts(&[
            b"site",
            self.site.0.as_bytes(),
            &bytes(&self.records_sum),
            &bytes(&self.evidence_sum),
        ]));
        self.digest = Some(d);
        d
    }

    fn roots(&self) -> ([u8; 32], [u8; 32]) {
        let mut h = blake3::Hasher::new();
        for (node, held) in self.records.iter() {
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
    /// Shared on clone, copied on the first write after one, as `SiteState`'s records.
    by_site: Arc<BTreeMap<SiteId, HeldSummary>>,
    /// Lane-wise wrapping sum of the entry hashes of every summary held: updated in O(1) as
    /// summaries are replaced, so the digest never walks the table (which at 500 sites means
    /// touching 500 objects on every anti-entropy round). The digest only decides whether two
    /// peers run a repair exchange; what a summary commits to is in its signed roots.
    sum: [u64; 4],
}

fn summary_entry_hash(_site: &SiteId, held: &HeldSummary) -> [u64; 4] {
    // The summary names the site, so its body hash alone identifies the entry (the same for
    // every endorsement of it).
    held.bundle.summary_lanes()
}

/// A 32-byte hash as four little-endian 64-bit lanes.
pub(super) fn lanes(h: &[u8; 32]) -> [u64; 4] {
    let lane = |i: usize| u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    [lane(0), lane(1), lane(2), lane(3)]
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
        if let Some(old) = Arc::make_mut(&mut self.by_site).insert(site.clone(), held) {
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
        self.by_site = Arc::new(last.into_iter().map(|h| (h.summary().site.clone(), h)).collect());
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
        let outranks = |theirs: Option<&SummaryRank>, held: &HeldSummary| {
            theirs.is_none_or(|r| *r < held.rank())
        };
        if !theirs.windows(2).all(|w| w[0].0 < w[1].0) {
            // Not in order (an honest peer sends `ranks()`, which is): look each site up.
            let theirs: BTreeMap<&SiteId, &SummaryRank> =
                theirs.iter().map(|(s, r)| (s, r)).collect();
            return self
                .by_site
                .iter()
                .filter(|(s, h)| outranks(theirs.get(s).copied(), h))
                .map(|(_, h)| h.bundle.clone())
                .take(max)
                .collect();
        }
        // Both in site order: one walk, nothing built.
        let mut j = 0;
        self.by_site
            .iter()
            .filter(|(s, h)| {
                while theirs.get(j).is_some_and(|(t, _)| t < *s) {
                    j += 1;
                }
                outranks(theirs.get(j).filter(|(t, _)| t == *s).map(|(_, r)| r), h)
            })
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
