//! What a node signs about itself and its site: its record (versions only rise, across
//! restarts too), its evidence, and — when it is the site's reporter — the site summary.
//!
//! ## Summary cadence
//! The site's reporter is the member whose id hashes lowest with the site name: every member
//! holding the same records elects the same one, with no coordination. It publishes a summary
//! when the site has been quiet for an anti-entropy period (one summary covers a burst of
//! changes), at most once per `summary_interval_ms`, at least every four intervals while the
//! site keeps changing, and never one that tells other sites nothing new: the same members,
//! counts, evidence and exposure as the summary in circulation (records re-signed for an audit
//! checkpoint or an inventory change move only its roots and rank).
//!
//! A site in the middle of a rollout is never quiet (its members change step every second or
//! two), so waiting for quiet would hold every gate up to four intervals behind the truth. One
//! change waits for nothing but the next tick: a ring of a rollout that *settled* here (none of
//! its members in this site installing any more, and what they came to differs from the
//! summary in circulation: more members soaking or succeeded, a soak that began, a failure or
//! a rollback). Soaking members travel with when their soak began, and evaluators elsewhere
//! count them as succeeded once the soak is over and a grace has passed (see
//! [`crate::rollout::verdict`]): the site has said what a gate elsewhere needs from it by the
//! time its last member starts soaking. It says so once more when the last of those soaks
//! ends (all its members there succeeded, failed or rolled back), because on a fast network
//! that word arrives before the grace runs out. That costs about two summaries per site per
//! ring, no more than one per site per ring before soak starts travelled (when the one
//! summary had to wait for the site's slowest soak).

use crate::crypto::{Domain, Envelope, SecretKey};
use crate::ids::{MeshId, Millis, NodeId, RolloutId, SiteId, StateHash};
use crate::limits;
use crate::site::{self, Bundle, Evidence, EvidenceKind, InventorySummary, NodeRecord};
use crate::site::{SiteState, Standing, Summaries};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The signing side of one node.
pub(crate) struct Publisher {
    key: SecretKey,
    admission: Envelope,
    mesh: MeshId,
    me: NodeId,
    site: SiteId,
    /// The highest record version signed.
    record_version: u64,
    /// Body hash of the last record signed in this run.
    last_record_body: Option<[u8; 32]>,
    /// When this run last signed a record (the node's clock).
    pub(crate) record_signed_at: Option<Millis>,
    /// The inventory summary the next record carries.
    pub(crate) inventory: InventorySummary,
    /// The exposure summary the next record carries.
    pub(crate) exposure: Option<crate::intel::report::ExposureSummary>,
    /// The audit checkpoint the next record carries.
    pub(crate) audit: Option<crate::audit::Head>,
    last_summary_at: Option<Millis>,
    last_summary_digest: Option<StateHash>,
    /// When the site state last changed.
    site_changed_at: Millis,
    reporter_cache: Option<(StateHash, bool)>,
}

impl Publisher {
    /// The publisher of node `key` (admitted by `admission` to `site` of `mesh`), whose records
    /// so far reached version `record_version_floor`.
    pub(crate) fn new(
        key: SecretKey,
        admission: Envelope,
        mesh: MeshId,
        site: SiteId,
        record_version_floor: u64,
        now: Millis,
    ) -> Publisher {
        Publisher {
            me: NodeId(key.public().0),
            key,
            admission,
            mesh,
            site,
            record_version: record_version_floor,
            last_record_body: None,
            record_signed_at: None,
            inventory: InventorySummary::default(),
            exposure: None,
            audit: None,
            last_summary_at: None,
            last_summary_digest: None,
            site_changed_at: now,
            reporter_cache: None,
        }
    }

    /// A record version read from the store, or seen on a record of ours a peer holds: the
    /// next record signs above it.
    pub(crate) fn raise_floor(&mut self, v: u64) {
        self.record_version = self.record_version.max(v);
    }

    /// The highest record version signed (or known to have been signed) by this node.
    pub(crate) fn record_version(&self) -> u64 {
        self.record_version
    }

    /// A record of ours read back from the store: known as signed by this node.
    pub(crate) fn adopt_record(&mut self, body_hash: [u8; 32]) {
        self.last_record_body = Some(body_hash);
    }

    /// The body hash of the last record this node signed in this run (or restored), if any.
    pub(crate) fn last_record_body(&self) -> Option<[u8; 32]> {
        self.last_record_body
    }

    /// The site state changed at `now` (a summary waits for it to be quiet).
    pub(crate) fn site_changed(&mut self, now: Millis) {
        self.site_changed_at = now;
    }

    /// Signs the next record: the version floor to persist before it leaves, and the record.
    pub(crate) fn record(
        &mut self,
        rollouts: BTreeMap<RolloutId, Standing>,
        now: Millis,
    ) -> (u64, Arc<Bundle>) {
        self.record_version += 1;
        let record = NodeRecord {
            mesh: self.mesh,
            node: self.me,
            site: self.site.clone(),
            version: self.record_version,
            written_at: now,
            inventory: self.inventory.clone(),
            rollouts,
            exposure: self.exposure.clone(),
            audit: self.audit,
        };
        let bundle = self.seal(Domain::NodeRecord, &record);
        // From the envelope: the bundle's own `body_hash` is known only once it is verified.
        self.last_record_body = Some(bundle.object().body_hash());
        self.record_signed_at = Some(now);
        (self.record_version, bundle)
    }

    /// Signs evidence about a rollout; the detail is cut to [`limits::TEXT_BYTES_MAX`].
    pub(crate) fn evidence(
        &self,
        rollout: RolloutId,
        kind: EvidenceKind,
        mut detail: String,
        now: Millis,
    ) -> Arc<Bundle> {
        if detail.len() > limits::TEXT_BYTES_MAX {
            let mut cut = limits::TEXT_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let ev = Evidence {
            mesh: self.mesh,
            node: self.me,
            site: self.site.clone(),
            rollout,
            kind,
            at: now,
            detail,
        };
        self.seal(Domain::Evidence, &ev)
    }

    /// A summary of `site` if one is due (see the module docs).
    pub(crate) fn summary_due(
        &mut self,
        site: &mut SiteState,
        summaries: &Summaries,
        summary_interval_ms: u64,
        quiet_ms: u64,
        now: Millis,
    ) -> Option<Arc<Bundle>> {
        if !self.is_reporter(site) {
            return None;
        }
        let since_last = self.last_summary_at.map(|t| now.since(t));
        let interval_passed = since_last.is_none_or(|ms| ms >= summary_interval_ms);
        let quiet = now.since(self.site_changed_at) >= quiet_ms;
        let overdue = since_last.is_some_and(|ms| ms >= 4 * summary_interval_ms);
        let digest = site.digest();
        if self.last_summary_digest == Some(digest) {
            return None;
        }
        let summary = site.summarise(self.mesh, self.me);
        let held = summaries.all().get(site.site()).map(|h| h.summary());
        let settled = settled_ring_changed(held, &summary);
        if !(settled || interval_passed && (quiet || overdue)) {
            return None;
        }
        self.last_summary_digest = Some(digest);
        // A summary that tells other sites nothing new is not published: the one in circulation
        // has the same members, counts, evidence, exposure and shape (the records behind it were only
        // re-signed: an audit checkpoint, an inventory change), or was restored from the store.
        if let Some(h) = held {
            let reads = |s: &site::SiteSummary| {
                (
                    s.record_count,
                    s.counts.clone(),
                    s.evidence.clone(),
                    s.exposure.clone(),
                    s.shape.clone(),
                    s.soaking.clone(),
                )
            };
            if reads(h) == reads(&summary) {
                return None;
            }
        }
        self.last_summary_at = Some(now);
        Some(self.seal(Domain::SiteSummary, &summary))
    }

    /// Whether this node is its site's reporter; re-elected only when the records changed.
    pub(crate) fn is_reporter(&mut self, site: &mut SiteState) -> bool {
        let digest = site.digest();
        if let Some((at, answer)) = self.reporter_cache {
            if at == digest {
                return answer;
            }
        }
        let score = |n: &NodeId| site::reporter_score(site.site(), n);
        let mine = score(&self.me);
        let answer = site.records().keys().all(|n| *n == self.me || score(n) > mine);
        self.reporter_cache = Some((digest, answer));
        answer
    }

    /// Signs the site's beacon: what this node holds, and when (see [`super::reach`]).
    pub(crate) fn beacon(&self, held: super::Holdings, now: Millis) -> Arc<Bundle> {
        let beacon = site::Beacon {
            mesh: self.mesh,
            site: self.site.clone(),
            node: self.me,
            at: now,
            catalog_changes: held.catalog_changes,
            alarms: held.alarms,
            trust_version: held.trust_version,
        };
        self.seal(Domain::Beacon, &beacon)
    }

    /// Endorses `summary`, a summary of this node's site its records agree with.
    pub(crate) fn endorse(&self, summary: &Bundle) -> Arc<Bundle> {
        let endorsement = site::Endorsement {
            mesh: self.mesh,
            site: self.site.clone(),
            endorser: self.me,
            summary: summary.object().clone(),
            admission: summary.admission().clone(),
        };
        self.seal(Domain::SummaryEndorsement, &endorsement)
    }

    fn seal<T: serde::Serialize>(&self, domain: Domain, body: &T) -> Arc<Bundle> {
        Arc::new(Bundle::new(Envelope::seal(domain, body, &[&self.key]), self.admission.clone()))
    }
}

/// Whether some (rollout, ring) has no member installing or soaking in `now` while its finished counts
/// (succeeded, failed, rolled back) differ from `held` (the summary in circulation, if any).
fn settled_ring_changed(held: Option<&site::SiteSummary>, now: &site::SiteSummary) -> bool {
    use site::RolloutStatus as S;
    let get = |c: &site::Counts, r: RolloutId, ring: u8, s: S| c.get(&(r, ring, s)).copied();
    let held_get = |r, ring, s| held.and_then(|h| get(&h.counts, r, ring, s)).unwrap_or(0);
    let rings: std::collections::BTreeSet<(RolloutId, u8)> =
        now.counts.keys().map(|(r, ring, _)| (*r, *ring)).collect();
    rings.into_iter().any(|(r, ring)| {
        let now_get = |s| get(&now.counts, r, ring, s).unwrap_or(0);
        if now_get(S::Installing) > 0 {
            return false;
        }
        // A member finishing its install, failing or rolling back is news, and so is a soak
        // that began anew; a soak ending is news only with the last one (evaluators count
        // the others from their start).
        let done = |g: &dyn Fn(S) -> u32| g(S::Succeeded) + g(S::Soaking);
        let held_done = done(&|s| held_get(r, ring, s));
        let outcome_changed =
            [S::Failed, S::RolledBack].into_iter().any(|s| now_get(s) != held_get(r, ring, s));
        let held_starts = held.and_then(|h| h.soaking.get(&(r, ring)));
        let new_start = now.soaking.get(&(r, ring)).is_some_and(|starts| {
            starts.iter().any(|(at, n)| {
                let before = held_starts.and_then(|h| h.iter().find(|(t, _)| t == at));
                before.is_none_or(|(_, m)| m < n)
            })
        });
        let soaks_over =
            now_get(S::Soaking) == 0 && now_get(S::Succeeded) != held_get(r, ring, S::Succeeded);
        outcome_changed || done(&now_get) != held_done || new_start || soaks_over
    })
}
